"""Cross-selling: per-customer recommendations from the rules, and their out-of-period check.

:func:`recommend` finds, for every customer, the rules whose antecedent the customer holds
entirely and whose consequent the customer does not hold yet, keeps the best rule per item and
ranks the items — joins and a window, all in Spark. :func:`evaluate_hit_rate` checks the
recommendations against what the customers bought in the following period, next to a
popularity baseline (the most popular items the customer does not hold).
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

RECOMMENDATION_COLUMNS = ("customer_key", "rank", "item", "score", "rule_antecedent", "rule_consequent",
                          "confidence", "lift")


def recommend(holdings: DataFrame, rules: DataFrame, *, top_n: int = 10, score_col: str = "confidence",
              customer_col: str = "customer_key", item_col: str = "item") -> DataFrame:
    """Top-N items per customer from the rules.

    Parameters
    ----------
    holdings : distinct (customer, item) pairs the customers hold or bought.
    rules : ``antecedent``, ``consequent`` (one item), ``confidence``, ``lift``.
    top_n : items per customer.
    score_col : the rule measure that scores an item (``confidence`` or ``lift``); an item
        takes the score of its best rule.

    Examples
    --------
    >>> recommend(customer_items(sales), rules, top_n=5).show()  # doctest: +SKIP
    """
    if int(top_n) < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    if score_col not in ("confidence", "lift"):
        raise ValueError(f"score_col must be 'confidence' or 'lift', got {score_col!r}")
    rule = (rules.select("antecedent", "consequent", "confidence", "lift")
            .withColumn("rule_id", F.monotonically_increasing_id()))
    rule_items = rule.select("rule_id", F.explode("antecedent").alias(item_col),
                             F.size("antecedent").alias("antecedent_size"))
    held = holdings.select(customer_col, item_col)
    # A customer matches a rule when every antecedent item is among the customer's items.
    matched = (held.join(F.broadcast(rule_items), item_col)
               .groupBy(customer_col, "rule_id", "antecedent_size").agg(F.count("*").alias("hits"))
               .filter(F.col("hits") == F.col("antecedent_size"))
               .join(F.broadcast(rule), "rule_id")
               .withColumn(item_col, F.col("consequent")[0]))
    fresh = matched.join(held, [customer_col, item_col], "left_anti")
    best = Window.partitionBy(customer_col, item_col).orderBy(
        F.col(score_col).desc(), F.col("lift").desc(), F.col("confidence").desc(),
        F.size("antecedent"), F.array_join("antecedent", "\u0001"))
    per_item = (fresh.withColumn("_best", F.row_number().over(best)).filter(F.col("_best") == 1))
    ranked = Window.partitionBy(customer_col).orderBy(F.col(score_col).desc(), F.col("lift").desc(), F.col(item_col))
    return (per_item.withColumn("rank", F.row_number().over(ranked)).filter(F.col("rank") <= int(top_n))
            .select(customer_col, F.col("rank").cast("int").alias("rank"), item_col,
                    F.col(score_col).alias("score"), F.col("antecedent").alias("rule_antecedent"),
                    F.col("consequent").alias("rule_consequent"), "confidence", "lift"))


def popularity_baseline(holdings: DataFrame, popularity: DataFrame, *, customers: DataFrame, top_n: int = 10,
                        candidates: int = 200, customer_col: str = "customer_key", item_col: str = "item") -> DataFrame:
    """The ``top_n`` most popular items each customer does not hold (rank, item).

    ``popularity`` has (item, count); only its ``candidates`` most popular items are
    considered, so a customer holding nearly all of them may get fewer than ``top_n``.
    """
    top = (popularity.orderBy(F.col("count").desc(), F.col(item_col)).limit(int(candidates))
           .select(item_col, F.col("count").alias("popularity")))
    pairs = customers.select(customer_col).distinct().crossJoin(F.broadcast(top))
    fresh = pairs.join(holdings.select(customer_col, item_col), [customer_col, item_col], "left_anti")
    ranked = Window.partitionBy(customer_col).orderBy(F.col("popularity").desc(), F.col(item_col))
    return (fresh.withColumn("rank", F.row_number().over(ranked)).filter(F.col("rank") <= int(top_n))
            .select(customer_col, F.col("rank").cast("int").alias("rank"), item_col))


def first_hit_ranks(recommendations: DataFrame, bought: DataFrame, *, customer_col: str = "customer_key",
                    item_col: str = "item") -> DataFrame:
    """(customer, first_hit_rank): the best rank of a recommended item the customer then bought
    (null when none was bought), for customers with recommendations."""
    hits = (recommendations.join(bought.select(customer_col, item_col).distinct(), [customer_col, item_col])
            .groupBy(customer_col).agg(F.min("rank").alias("first_hit_rank")))
    return recommendations.select(customer_col).distinct().join(hits, customer_col, "left")


def hit_rate_curve(first_hits: DataFrame, *, top_n: int, customer_col: str = "customer_key") -> list[float]:
    """Hit rate at N for N = 1..top_n: the share of customers with a hit within the first N."""
    row = first_hits.agg(F.count("*").alias("customers"),
                         *[F.sum((F.col("first_hit_rank") <= n).cast("long")).alias(f"at_{n}")
                           for n in range(1, int(top_n) + 1)]).first()
    total = row["customers"] or 0
    return [((row[f"at_{n}"] or 0) / total) if total else float("nan") for n in range(1, int(top_n) + 1)]


def evaluate_hit_rate(*, train_holdings: DataFrame, rules: DataFrame, bought_after: DataFrame,
                      popularity: DataFrame, top_n: int = 10, score_col: str = "confidence",
                      candidates: int = 200, customer_col: str = "customer_key",
                      item_col: str = "item") -> dict:
    """Out-of-period hit rate at N of the rule recommendations vs the popularity baseline.

    Both are scored on the same customers: those who get a rule recommendation and buy
    something in the following period. A hit is a recommended item bought in that period.

    Returns
    -------
    dict with ``customers``, ``hit_rate`` and ``baseline_hit_rate`` (lists for N = 1..top_n),
    ``hit_rate_at_n``, ``baseline_hit_rate_at_n`` and ``lift_over_baseline`` (at ``top_n``).
    """
    active = bought_after.select(customer_col).distinct()
    recs = recommend(train_holdings, rules, top_n=top_n, score_col=score_col,
                     customer_col=customer_col, item_col=item_col).join(active, customer_col, "left_semi").cache()
    try:
        scored = recs.select(customer_col).distinct()
        base = popularity_baseline(train_holdings, popularity, customers=scored, top_n=top_n,
                                   candidates=candidates, customer_col=customer_col, item_col=item_col)
        rule_curve = hit_rate_curve(first_hit_ranks(recs, bought_after, customer_col=customer_col, item_col=item_col),
                                    top_n=top_n)
        base_hits = first_hit_ranks(base, bought_after, customer_col=customer_col, item_col=item_col)
        base_curve = hit_rate_curve(scored.join(base_hits, customer_col, "left"), top_n=top_n)
        customers = scored.count()
    finally:
        recs.unpersist()
    at_n, base_at_n = rule_curve[-1], base_curve[-1]
    return {"customers": customers, "top_n": int(top_n), "hit_rate": rule_curve, "baseline_hit_rate": base_curve,
            "hit_rate_at_n": at_n, "baseline_hit_rate_at_n": base_at_n,
            "lift_over_baseline": (at_n / base_at_n) if base_at_n else float("nan")}
