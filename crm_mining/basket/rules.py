"""Association rules from frequent itemsets: metrics, redundancy pruning, significance.

Rules have one item as consequent (the item to recommend). Every metric is computed from
three counts — baskets holding the antecedent, the consequent, and both — and the number of
baskets, so a rule carries exact supports (no float drift between measures). Significance is
the one-sided Fisher exact test of positive association on the 2x2 table of those counts,
with Benjamini–Hochberg control of the false discovery rate over the rules tested; it is
computed on the driver from the rule table, which is small (one row per rule).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

RULE_COLUMNS = ("antecedent", "consequent", "antecedent_support", "consequent_support", "support",
                "confidence", "lift", "leverage", "conviction", "zhangs_metric")

RULE_SCHEMA = T.StructType([
    T.StructField("antecedent", T.ArrayType(T.StringType()), False),
    T.StructField("consequent", T.ArrayType(T.StringType()), False),
    *[T.StructField(name, T.DoubleType(), True) for name in RULE_COLUMNS[2:]],
    T.StructField("antecedent_count", T.LongType(), False),
    T.StructField("consequent_count", T.LongType(), False),
    T.StructField("count", T.LongType(), False),
    T.StructField("baskets", T.LongType(), False),
    T.StructField("p_value", T.DoubleType(), True),
    T.StructField("q_value", T.DoubleType(), True),
])


def _ratio(num: Column, den: Column) -> Column:
    # ANSI mode raises on x/0; a zero denominator means "undefined" here.
    return F.when(den != 0, num / den)


def rule_metrics(*, n_a: Column, n_c: Column, n_ac: Column, baskets: int) -> list[Column]:
    """Support, confidence, lift, leverage, conviction and Zhang's metric from counts.

    Conviction is +inf for a rule of confidence 1 (as in mlxtend).
    """
    n = F.lit(float(baskets))
    s_a, s_c, s_ac = n_a / n, n_c / n, n_ac / n
    confidence = n_ac.cast("double") / n_a
    lift = _ratio(confidence, s_c)
    leverage = s_ac - s_a * s_c
    conviction = F.when(confidence >= 1.0, F.lit(float("inf"))).otherwise((1 - s_c) / (1 - confidence))
    zhang = _ratio(leverage, F.greatest(s_ac * (1 - s_a), s_a * (s_c - s_ac)))
    return [s_a.alias("antecedent_support"), s_c.alias("consequent_support"), s_ac.alias("support"),
            confidence.alias("confidence"), lift.alias("lift"), leverage.alias("leverage"),
            conviction.alias("conviction"), zhang.alias("zhangs_metric")]


def association_rules(itemsets: DataFrame, *, baskets: int, min_confidence: float = 0.0,
                      items_col: str = "items", count_col: str = "count") -> DataFrame:
    """All rules A → {c} from frequent itemsets, with their counts and metrics.

    Parameters
    ----------
    itemsets : ``items`` (sorted arrays) and ``count`` (see ``frequent_itemsets``).
    baskets : number of baskets the counts are out of.
    min_confidence : keep rules with confidence >= this.

    Examples
    --------
    >>> rules = association_rules(itemsets, baskets=plan.baskets, min_confidence=0.2)  # doctest: +SKIP
    """
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    if int(baskets) <= 0:
        raise ValueError(f"baskets must be positive, got {baskets}")
    sets = itemsets.select(F.array_sort(items_col).alias("items"), F.col(count_col).alias("n"))
    whole = sets.filter(F.size("items") >= 2).select(
        "items", F.col("n").alias("count"), F.explode("items").alias("item"))
    candidates = whole.select(F.array_sort(F.array_remove("items", F.col("item"))).alias("antecedent"),
                              F.array("item").alias("consequent"), "count")
    ante = sets.select(F.col("items").alias("antecedent"), F.col("n").alias("antecedent_count"))
    cons = sets.filter(F.size("items") == 1).select(F.col("items").alias("consequent"),
                                                     F.col("n").alias("consequent_count"))
    joined = candidates.join(ante, "antecedent").join(F.broadcast(cons), "consequent")
    metrics = rule_metrics(n_a=F.col("antecedent_count"), n_c=F.col("consequent_count"),
                           n_ac=F.col("count"), baskets=int(baskets))
    return (joined.select("antecedent", "consequent", *metrics, "antecedent_count", "consequent_count",
                          "count", F.lit(int(baskets)).cast("long").alias("baskets"))
            .filter(F.col("confidence") >= float(min_confidence)))


def prune_redundant(rules: DataFrame, *, candidates: DataFrame | None = None, margin: float = 0.0) -> DataFrame:
    """Drop a rule whose antecedent has a proper subset giving the same consequent at a
    confidence no more than ``margin`` below it (the extra items add too little).

    Parameters
    ----------
    rules : the rules to prune.
    candidates : the sub-rules to compare with (default ``rules``); pass the rules before the
        confidence filter to compare with every sub-rule.
    margin : the confidence gain a more specific antecedent must bring.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    subs = (candidates if candidates is not None else rules).select(
        F.col("antecedent").alias("sub_antecedent"), F.col("consequent").alias("sub_consequent"),
        F.col("confidence").alias("sub_confidence"))
    long_rules = rules.filter(F.size("antecedent") >= 2)
    redundant = (long_rules.join(subs, long_rules.consequent == subs.sub_consequent)
                 .filter((F.size("sub_antecedent") < F.size("antecedent"))
                         & (F.size(F.array_except("sub_antecedent", "antecedent")) == 0)
                         & (F.col("confidence") < F.col("sub_confidence") + F.lit(float(margin))))
                 .select("antecedent", "consequent").distinct())
    return rules.join(redundant, ["antecedent", "consequent"], "left_anti")


def fisher_p_values(frame: pd.DataFrame) -> np.ndarray:
    """One-sided Fisher exact p-values (positive association) from the rule counts.

    P(X >= n_ac) for X hypergeometric: ``baskets`` baskets, ``antecedent_count`` of them
    holding the antecedent, ``consequent_count`` drawn.
    """
    from scipy.stats import hypergeom

    return hypergeom.sf(frame["count"].to_numpy() - 1, frame["baskets"].to_numpy(),
                        frame["antecedent_count"].to_numpy(), frame["consequent_count"].to_numpy())


def add_significance(rules: DataFrame, *, alpha: float | None = 0.05) -> DataFrame:
    """Add ``p_value`` (Fisher, one-sided) and ``q_value`` (Benjamini–Hochberg) to the rules;
    keep those with ``q_value <= alpha`` (all when ``alpha`` is None).

    The rule table is collected to compute the p-values: it holds one row per rule, never per
    customer or basket.
    """
    from scipy.stats import false_discovery_control

    if alpha is not None and not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    spark: SparkSession = rules.sparkSession
    frame = rules.select(*[f.name for f in RULE_SCHEMA.fields if f.name not in ("p_value", "q_value")]).toPandas()
    if frame.empty:
        return spark.createDataFrame([], RULE_SCHEMA)
    frame["p_value"] = fisher_p_values(frame)
    frame["q_value"] = false_discovery_control(frame["p_value"].to_numpy(), method="bh")
    if alpha is not None:
        frame = frame[frame["q_value"] <= alpha]
    frame = frame.assign(antecedent=frame["antecedent"].map(list), consequent=frame["consequent"].map(list))
    return spark.createDataFrame(frame[[f.name for f in RULE_SCHEMA.fields]], RULE_SCHEMA)
