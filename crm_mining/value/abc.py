"""ABC / Pareto analysis: customers ranked by value, classes by cumulative value share.

Customers are sorted by value (negative values count as 0), best first; the cumulative share
of the total value decides the class: A up to ``a_share`` (0.8), B up to ``b_share`` (0.95),
C the rest. Ties share a class (the cumulative sum includes all equal values). The Lorenz
curve, the Gini coefficient and the share of the top 20% are computed in Spark; only the
~100 points of the curve and a few numbers reach the driver.

The running sum is a prefix sum over a range-partitioned sort: every partition holds a
contiguous value range (equal values never straddle partitions), its total comes from a tiny
aggregate, and each row adds the totals of the partitions above it. No single-partition
window over all customers.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def cumulative_share(df: DataFrame, *, value_col: str, partitions: int | None = None) -> DataFrame:
    """Add ``_v`` (value clipped at 0), ``value_rank`` (1 = best; ties broken by key for
    the rank only), ``cum_value_share`` (ties included) and ``cum_customer_share``."""
    v = F.greatest(F.coalesce(F.col(value_col).cast("double"), F.lit(0.0)), F.lit(0.0))
    n_parts = partitions or max(1, df.sparkSession.sparkContext.defaultParallelism)
    # Materialise the input first: the range partitioner samples it, then the rows are read.
    ranged = (df.withColumn("_v", v).localCheckpoint(eager=True).repartitionByRange(n_parts, F.col("_v").desc())
              .withColumn("_part", F.spark_partition_id()).localCheckpoint(eager=True))
    parts = ranged.groupBy("_part").agg(F.sum("_v").alias("_ps"), F.count(F.lit(1)).alias("_pn"))
    above = Window.orderBy(F.col("_part")).rowsBetween(Window.unboundedPreceding, -1)
    offsets = parts.select("_part", F.coalesce(F.sum("_ps").over(above), F.lit(0.0)).alias("_off_v"),
                           F.coalesce(F.sum("_pn").over(above), F.lit(0)).alias("_off_n"))
    totals = parts.agg(F.sum("_ps").alias("_total_v"), F.sum("_pn").alias("_total_n"))
    within_ties = Window.partitionBy("_part").orderBy(F.col("_v").desc()).rangeBetween(
        Window.unboundedPreceding, Window.currentRow)
    within_rows = Window.partitionBy("_part").orderBy(F.col("_v").desc(), F.col("customer_key"))
    return (ranged.join(F.broadcast(offsets), "_part").crossJoin(F.broadcast(totals))
            .withColumn("value_rank", F.row_number().over(within_rows) + F.col("_off_n"))
            .withColumn("_cum_v", F.sum("_v").over(within_ties) + F.col("_off_v"))
            .withColumn("cum_value_share", F.when(F.col("_total_v") > 0, F.col("_cum_v") / F.col("_total_v"))
                        .otherwise(F.lit(1.0)))
            .withColumn("cum_customer_share", F.col("value_rank") / F.col("_total_n"))
            .drop("_part", "_off_v", "_off_n", "_cum_v"))


def abc_classes(ranked: DataFrame, *, a_share: float = 0.8, b_share: float = 0.95) -> DataFrame:
    """Add ``abc_class`` to a :func:`cumulative_share` frame.

    A customer is A while the cumulative share *before* it is below ``a_share`` (so the
    customer that crosses 80% is still A), B likewise up to ``b_share``, else C.
    """
    if not 0 < a_share < b_share <= 1:
        raise ValueError(f"need 0 < value.abc.a_share < value.abc.b_share <= 1, got {a_share}, {b_share}")
    before = F.col("cum_value_share") - F.when(F.col("_total_v") > 0, F.col("_v") / F.col("_total_v")).otherwise(0.0)
    return ranked.withColumn("abc_class", F.when(before < a_share - 1e-12, "A")
                             .when(before < b_share - 1e-12, "B").otherwise("C"))


def pareto_metrics(ranked: DataFrame, *, top_share: float = 0.2) -> dict:
    """Gini coefficient and the value share of the top ``top_share`` of customers.

    Gini = Σ (2i − n − 1)·v_(i) / (n·Σv) with i the ascending rank.
    """
    row = ranked.agg(
        F.sum((2 * (F.col("_total_n") - F.col("value_rank") + 1) - F.col("_total_n") - 1) * F.col("_v"))
        .alias("g"), F.first("_total_n").alias("n"), F.first("_total_v").alias("total"),
        F.sum(F.when(F.col("value_rank") <= F.ceil(F.col("_total_n") * top_share), F.col("_v"))
              .otherwise(0.0)).alias("top")).first()
    n, total = int(row["n"] or 0), float(row["total"] or 0.0)
    if n == 0 or total <= 0:
        return {"gini": float("nan"), "top20_share": float("nan"), "customers": n}
    return {"gini": float(row["g"]) / (n * total), "top20_share": float(row["top"]) / total, "customers": n}


def lorenz_points(ranked: DataFrame, *, points: int = 100):
    """~``points`` points of the Pareto curve (customer share → value share), as pandas."""
    step = F.greatest(F.lit(1), F.floor(F.col("_total_n") / points))
    return (ranked.filter((F.col("value_rank") % step == 0) | (F.col("value_rank") == F.col("_total_n")))
            .select("cum_customer_share", "cum_value_share").orderBy("cum_customer_share").toPandas())


def pareto_figure(curve, *, gini: float, top20_share: float):
    """The Pareto (cumulative value) curve with the 80/20 reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot([0, *curve["cum_customer_share"]], [0, *curve["cum_value_share"]], label="customers by value")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="equal value")
    ax.axvline(0.2, color="orange", linestyle=":", label=f"top 20%: {top20_share:.0%} of value")
    ax.set_xlabel("share of customers (best first)")
    ax.set_ylabel("cumulative share of value")
    ax.set_title(f"Pareto curve (Gini {gini:.3f})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
