"""Quality: row rules, quarantine rows and the "nothing lost" reconciliation.

A rule is a pair (condition, reason) of Spark columns; the first rule that holds gives a row its
``_reason`` (null = accepted). Reasons read ``<kind>`` or ``<kind>: <column>='<value>'``; the
kind (the text before the colon) is what the per-reason counts group by. The reconciliation
checks, for every bronze table, rows in = rows accepted + rows quarantined, and fails the step
when they differ.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

log = logging.getLogger("crm_mining.quality")


class ReconciliationError(RuntimeError):
    """Rows in differ from rows accepted + rows quarantined for some table."""


def reason(kind: str, column: str | None = None, value: Column | None = None) -> Column:
    """A reason text: ``kind``, or ``kind: column='value'`` naming the offending value.

    Examples
    --------
    >>> df.select(reason("bad_quantity", "Quantity", F.col("Quantity")))  # bad_quantity: Quantity='12a'
    """
    if not kind or not isinstance(kind, str):
        raise ValueError("kind must be a non-empty string")
    if column is None:
        return F.lit(kind)
    shown = F.coalesce(value, F.lit("")) if value is not None else F.lit("")
    return F.concat(F.lit(f"{kind}: {column}='"), shown, F.lit("'"))


def first_reason(rules: Sequence[tuple[Column, Column]]) -> Column:
    """The reason of the first rule whose condition is true, else null."""
    if not rules:
        return F.lit(None).cast("string")
    chained = None
    for condition, text in rules:
        chained = F.when(condition, text) if chained is None else chained.when(condition, text)
    return chained.otherwise(F.lit(None).cast("string"))


def malformed_line_reason(*, corrupt_col: str = "_corrupt_record", line_col: str = "_line_number",
                          file_col: str = "_source_file") -> tuple[Column, Column]:
    """Rule: a line the reader could not split → ``malformed_line: line N of <file>``."""
    file_name = F.regexp_extract(F.col(file_col), r"([^/\\]*)$", 1)
    text = F.concat(F.lit("malformed_line: line "), F.coalesce(F.col(line_col).cast("string"), F.lit("?")),
                    F.lit(" of "), F.coalesce(file_name, F.lit("?")))
    return F.col(corrupt_col).isNotNull(), text


def mark_exact_duplicates(df: DataFrame, *, raw_cols: Sequence[str], out_col: str = "_is_duplicate",
                          order_cols: Sequence[str] = ("_source_file", "_line_number", "_batch_id")) -> DataFrame:
    """Flag every exact copy (same ``raw_cols``) of an earlier row; the first copy is not flagged.

    "Earlier" is the order of ``order_cols`` (file, line, batch), so reruns flag the same rows.
    The hash of the row leads the partition keys so the sort mostly compares one long.

    Examples
    --------
    >>> mark_exact_duplicates(bronze, raw_cols=["InvoiceNo", "StockCode"]).filter("_is_duplicate")
    """
    if not raw_cols:
        raise ValueError("raw_cols must name at least one column")
    keys = [F.xxhash64(*[F.col(c) for c in raw_cols]), *[F.col(c) for c in raw_cols]]
    window = Window.partitionBy(*keys).orderBy(*[F.col(c).asc_nulls_last() for c in order_cols])
    return df.withColumn(out_col, F.row_number().over(window) > 1)


def reason_kind(reason_col: str = "_reason") -> Column:
    """The kind of a reason: the text before the first colon."""
    return F.split(F.col(reason_col), ":", 2).getItem(0)


def reason_counts(quarantine: DataFrame, *, reason_col: str = "_reason") -> dict[str, int]:
    """Quarantined rows by reason kind (a small result, collected)."""
    rows = quarantine.groupBy(reason_kind(reason_col).alias("kind")).count().collect()
    return {r["kind"]: int(r["count"]) for r in sorted(rows, key=lambda r: r["kind"] or "")}


def reconcile(counts: Mapping[str, tuple[int, int, int]]) -> dict[str, float]:
    """Check rows in = accepted + quarantined per table; returns the figures as metrics.

    Parameters
    ----------
    counts : bronze table → (rows in, rows accepted, rows quarantined).

    Raises
    ------
    ReconciliationError
        naming every table whose rows do not add up.

    Examples
    --------
    >>> reconcile({"bronze_online_retail": (10, 8, 2)})["reconcile.bronze_online_retail.rows_in"]
    10.0
    """
    metrics, broken = {}, []
    for table, (rows_in, accepted, quarantined) in sorted(counts.items()):
        metrics[f"reconcile.{table}.rows_in"] = float(rows_in)
        metrics[f"reconcile.{table}.accepted"] = float(accepted)
        metrics[f"reconcile.{table}.quarantined"] = float(quarantined)
        if rows_in != accepted + quarantined:
            broken.append(f"{table}: {rows_in} rows in != {accepted} accepted + {quarantined} quarantined")
        else:
            log.info("[refine] reconciled %s: %d rows in = %d accepted + %d quarantined",
                     table, rows_in, accepted, quarantined)
    if broken:
        raise ReconciliationError("rows lost or duplicated in refine: " + "; ".join(broken))
    return metrics
