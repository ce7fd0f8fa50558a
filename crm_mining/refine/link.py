"""Refine, link room: bronze customer links → ``silver_customer_link`` (retail key ↔ bank key).

A link row pairs a retail customer id with a bank client id (a loyalty card used at both). Both
ids are pseudonymised with the namespaces the other rooms use — ``retail`` for retail customer
ids (as in ``silver_retail_lines``), ``bank`` for Berka client ids (as in the bank tables) — so
the keys join. Rules, first that holds wins: ``malformed_line``, ``duplicate`` (an exact copy of
an earlier row, or the same pair of ids written differently), ``missing_value`` (either id empty), ``conflicting_link`` (a retail id linked
to a second, different bank client, or a bank client to a second retail customer: only the
first link by (file, line) is kept, since a customer belongs to one person).
"""
from __future__ import annotations

from typing import Mapping

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from crm_mining.pii import pseudonymize
from crm_mining.quality import first_reason, malformed_line_reason, mark_exact_duplicates, reason
from crm_mining.refine.retail import clean_customer_id
from crm_mining.schemas import BRONZE_LINEAGE, SILVER_CUSTOMER_LINK
from crm_mining.sources import bronze_column

REQUIRED_COLUMNS = ("retail_customer_id", "bank_client_id")


def _order() -> list:
    """Row order that decides which of two rows came first: file, line, batch."""
    return [F.col("_source_file").asc_nulls_last(), F.col("_line_number").asc_nulls_last(), F.col("_batch_id")]


def classify_links(bronze: DataFrame, *, columns: Mapping[str, str]) -> DataFrame:
    """Bronze link rows with ``__retail_id``, ``__bank_id`` and ``_reason`` (null = accepted).

    Examples
    --------
    >>> classify_links(bronze, columns={"retail_customer_id": "CustomerID", "bank_client_id": "client_id"})
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"customer link mapping lacks {missing} (sources.<name>.tables.<table>.columns)")
    raw = {k: bronze_column(v) for k, v in columns.items()}
    raw_cols = [c for c in bronze.columns if c not in BRONZE_LINEAGE]
    df = bronze.withColumn("__retail_id", clean_customer_id(F.col(raw["retail_customer_id"]))) \
               .withColumn("__bank_id", clean_customer_id(F.col(raw["bank_client_id"])))
    df = mark_exact_duplicates(df, raw_cols=[*raw_cols, "_corrupt_record"], out_col="__is_duplicate")
    usable = F.col("_corrupt_record").isNull() & ~F.col("__is_duplicate") & \
        F.col("__retail_id").isNotNull() & F.col("__bank_id").isNotNull()
    conflict = F.lit(False)
    for side, other in (("__retail_id", "__bank_id"), ("__bank_id", "__retail_id")):
        window = Window.partitionBy(usable, F.col(side)).orderBy(*_order()).rowsBetween(
            Window.unboundedPreceding, Window.currentRow)
        conflict = conflict | (usable & (F.first(F.col(other)).over(window) != F.col(other)))
    same_pair = Window.partitionBy(usable, F.col("__retail_id"), F.col("__bank_id")).orderBy(*_order())
    repeated = usable & (F.row_number().over(same_pair) > 1)
    rules = [
        malformed_line_reason(),
        (F.col("__is_duplicate"), F.lit("duplicate")),
        (F.col("__retail_id").isNull(), reason("missing_value", columns["retail_customer_id"],
                                               F.col(raw["retail_customer_id"]))),
        (F.col("__bank_id").isNull(), reason("missing_value", columns["bank_client_id"], F.col(raw["bank_client_id"]))),
        (repeated, F.lit("duplicate")),
        (conflict, reason("conflicting_link", columns["retail_customer_id"], F.col(raw["retail_customer_id"]))),
    ]
    return df.withColumn("_reason", first_reason(rules))


def silver_links(ok: DataFrame, *, key: bytes) -> DataFrame:
    """Accepted links as ``silver_customer_link`` (both ids pseudonymised)."""
    values = {"retail_customer_key": pseudonymize(F.col("__retail_id"), key, namespace="retail"),
              "bank_customer_key": pseudonymize(F.col("__bank_id"), key, namespace="bank")}
    return ok.select(*[values[f.name].cast(f.dataType).alias(f.name) for f in SILVER_CUSTOMER_LINK.fields])
