"""RFM: recency, frequency and monetary value per customer, quantile scores 1–5, segments.

Definitions (as of a date, events strictly before it):

- ``recency_days`` = as-of date − date of the last purchase (a purchase is a non-return line);
- ``frequency`` = purchase days (default) or distinct purchase invoices (``value.rfm.frequency``);
- ``monetary`` = net spend: purchases minus returns.

Scores are quintiles computed on the distributed data: ``approxQuantile`` (relative error
``value.rfm.relative_error``; 0 = exact) gives the cut points and each customer's score is
1 + the number of cut points strictly below its value (recency is reversed: recent = 5).
Tie rule: equal values always get equal scores, so heavily tied values (e.g. many
customers with one purchase day) may leave some scores empty.
"""
from __future__ import annotations

import datetime as dt
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

FREQUENCY_DEFINITIONS = ("purchase_days", "invoices")


def rfm_values(lines: DataFrame, *, as_of: dt.date, frequency: str = "purchase_days") -> DataFrame:
    """Per customer with a purchase before ``as_of``: ``recency_days``, ``frequency``, ``monetary``.

    Examples
    --------
    >>> rfm_values(spark.table("crm.silver_retail_lines"), as_of=dt.date(2011, 12, 10))
    """
    if frequency not in FREQUENCY_DEFINITIONS:
        raise ValueError(f"value.rfm.frequency must be one of {FREQUENCY_DEFINITIONS}, got {frequency!r}")
    if not isinstance(as_of, dt.date):
        raise TypeError("as_of must be a datetime.date")
    rows = lines.filter(F.col("customer_key").isNotNull()
                        & (F.col("ts") < F.lit(dt.datetime.combine(as_of, dt.time()))))
    buy = ~F.coalesce(F.col("is_return"), F.lit(False))
    counted = F.to_date("ts") if frequency == "purchase_days" else F.col("invoice_id")
    out = rows.groupBy("customer_key").agg(
        F.max(F.when(buy, F.to_date("ts"))).alias("_last"),
        F.countDistinct(F.when(buy, counted)).alias("frequency"),
        F.sum("amount").cast("double").alias("monetary"))
    return (out.filter(F.col("_last").isNotNull())
            .select("customer_key", F.datediff(F.lit(as_of), "_last").alias("recency_days"),
                    "frequency", "monetary"))


def quantile_cuts(df: DataFrame, column: str, *, bins: int = 5, relative_error: float = 0.001) -> list[float]:
    """The ``bins - 1`` inner quantile cut points of ``column``, computed by Spark."""
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    probs = [i / bins for i in range(1, bins)]
    return [float(v) for v in df.approxQuantile(column, probs, relative_error)]


def score_col(column: str, cuts: Sequence[float], *, reverse: bool = False) -> Column:
    """1 + number of cut points strictly below the value (equal values → equal scores)."""
    score = F.lit(1)
    for cut in cuts:
        score = score + F.when(F.col(column) > F.lit(cut), 1).otherwise(0)
    if reverse:
        score = F.lit(len(cuts) + 2) - score
    return score.cast("int")


def rfm_scores(values: DataFrame, *, relative_error: float = 0.001, bins: int = 5) -> tuple[DataFrame, dict]:
    """Add ``r_score``, ``f_score``, ``m_score``; returns the frame and the cut points used."""
    cuts = {c: quantile_cuts(values, c, bins=bins, relative_error=relative_error)
            for c in ("recency_days", "frequency", "monetary")}
    scored = values.select("*", score_col("recency_days", cuts["recency_days"], reverse=True).alias("r_score"),
                           score_col("frequency", cuts["frequency"]).alias("f_score"),
                           score_col("monetary", cuts["monetary"]).alias("m_score"))
    return scored, cuts


def check_segment_map(rules: Sequence[Mapping], *, bins: int = 5) -> None:
    """Every (r, f) score pair must be matched by a rule (first match wins)."""
    if not rules:
        raise ValueError("value.rfm.segments is empty")
    for rule in rules:
        if "name" not in rule or "r" not in rule or "f" not in rule:
            raise ValueError(f"value.rfm.segments: each rule needs name, r and f ranges; got {dict(rule)}")
    uncovered = [(r, f) for r in range(1, bins + 1) for f in range(1, bins + 1)
                 if not any(rule["r"][0] <= r <= rule["r"][1] and rule["f"][0] <= f <= rule["f"][1]
                            for rule in rules)]
    if uncovered:
        raise ValueError(f"value.rfm.segments leaves (r_score, f_score) pairs unassigned: {uncovered}")


def segment_col(rules: Sequence[Mapping], *, r_col: str = "r_score", f_col: str = "f_score") -> Column:
    """``rfm_segment`` from the configured rules: ``{name, r: [lo, hi], f: [lo, hi]}``, first match wins."""
    check_segment_map(rules)
    out = None
    for rule in rules:
        cond = F.col(r_col).between(int(rule["r"][0]), int(rule["r"][1])) & \
            F.col(f_col).between(int(rule["f"][0]), int(rule["f"][1]))
        out = F.when(cond, F.lit(str(rule["name"]))) if out is None else out.when(cond, F.lit(str(rule["name"])))
    return out
