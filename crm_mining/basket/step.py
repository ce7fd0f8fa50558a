"""The ``basket`` step: mine association rules for the shop and the bank, recommend, evaluate.

Reads ``silver_retail_lines`` / ``silver_products`` and the silver bank tables, writes
``gold_association_rules`` and ``gold_cross_sell_recommendations`` for the as-of date, and logs
to MLflow the mining guard's counts, the rule table (CSV artifact) and the out-of-period hit
rate of the retail recommendations against a popularity baseline (metrics and a plot).
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .. import tracking
from ..pipeline import StepContext, StepResult
from .baskets import (bank_holdings, baskets_from_pairs, customer_items,
                      retail_baskets, retail_lines_before)
from .mining import MiningPlan, frequent_itemsets, item_counts, plan_mining
from .recommend import evaluate_hit_rate, recommend
from .rules import RULE_SCHEMA, add_significance, association_rules, prune_redundant

log = logging.getLogger(__name__)

RULES_TABLE = "gold_association_rules"
RECOMMENDATIONS_TABLE = "gold_cross_sell_recommendations"
BANK_TABLES = ("silver_bank_accounts", "silver_bank_cards", "silver_bank_loans", "silver_bank_orders",
               "silver_bank_transactions")

GOLD_RULE_SCHEMA = T.StructType([*RULE_SCHEMA.fields, T.StructField("domain", T.StringType(), False),
                                 T.StructField("level", T.StringType(), False)])
GOLD_RECOMMENDATION_SCHEMA = T.StructType([
    T.StructField("customer_key", T.StringType(), True), T.StructField("rank", T.IntegerType(), True),
    T.StructField("item", T.StringType(), True), T.StructField("score", T.DoubleType(), True),
    T.StructField("rule_antecedent", T.ArrayType(T.StringType()), True),
    T.StructField("rule_consequent", T.ArrayType(T.StringType()), True),
    T.StructField("confidence", T.DoubleType(), True), T.StructField("lift", T.DoubleType(), True),
    T.StructField("domain", T.StringType(), False)])


def mine_rules(baskets: DataFrame, *, min_support: float, min_confidence: float, max_basket_items: int = 1000,
               max_patterns: int = 1_000_000, max_pair_occurrences: float = 2e8,
               redundancy_margin: float | None = 0.0, alpha: float | None = 0.05,
               num_partitions: int | None = None) -> tuple[DataFrame, MiningPlan]:
    """Guarded FP-Growth, rules with metrics, redundancy pruning and the significance filter.

    Returns the rules (schema :data:`~crm_mining.basket.rules.RULE_SCHEMA`) and the mining plan.
    ``redundancy_margin=None`` keeps redundant rules; ``alpha=None`` keeps every rule (p- and
    q-values still computed).

    Examples
    --------
    >>> rules, plan = mine_rules(baskets, min_support=0.01, min_confidence=0.2)  # doctest: +SKIP
    """
    plan = plan_mining(baskets, min_support=min_support, max_basket_items=max_basket_items,
                       max_patterns=max_patterns, max_pair_occurrences=max_pair_occurrences)
    try:
        itemsets = frequent_itemsets(plan, num_partitions=num_partitions).cache()
        candidates = association_rules(itemsets, baskets=plan.baskets).cache()
        rules = candidates.filter(F.col("confidence") >= float(min_confidence))
        if redundancy_margin is not None:
            rules = prune_redundant(rules, candidates=candidates, margin=redundancy_margin)
        result = add_significance(rules, alpha=alpha)
        plan.frequent_itemsets = itemsets.count()
        candidates.unpersist()
        itemsets.unpersist()
    finally:
        plan.pruned.unpersist()
    return result, plan


def _mine(section: Mapping[str, Any], baskets: DataFrame, *, min_support: float, min_confidence: float):
    return mine_rules(baskets, min_support=float(min_support), min_confidence=float(min_confidence),
                      max_basket_items=int(section["max_basket_items"]), max_patterns=int(section["max_patterns"]),
                      max_pair_occurrences=float(section["max_pair_occurrences"]),
                      redundancy_margin=section.get("redundancy_margin"), alpha=section.get("alpha"),
                      num_partitions=section.get("num_partitions"))


def _has_categories(products: DataFrame | None) -> bool:
    return products is not None and products.filter(F.col("category").isNotNull()).limit(1).count() > 0


def _log_plan(prefix: str, plan: MiningPlan, seconds: float) -> dict[str, float]:
    metrics = {f"{prefix}.{k}": v for k, v in plan.metrics().items()}
    metrics[f"{prefix}.mining_seconds"] = seconds
    tracking.log_metrics(metrics)
    return metrics


def _empty(spark: SparkSession, schema: T.StructType) -> DataFrame:
    return spark.createDataFrame([], schema)


def retail_rules(section: Mapping[str, Any], lines: DataFrame, products: DataFrame | None, *,
                 as_of: dt.date, start: dt.date | None = None) -> tuple[dict[str, DataFrame], dict[str, float]]:
    """Mine the retail rules of each configured level from lines in [start, as_of)."""
    sales = retail_lines_before(lines, as_of=as_of, start=start, exclude_items=section["exclude_items"],
                                include_anonymous=bool(section["include_anonymous"]))
    out, metrics = {}, {}
    for level in section["levels"]:
        if level == "category" and not _has_categories(products):
            log.info("basket: no product categories known, category-level rules skipped")
            continue
        clock = time.monotonic()
        rules, plan = _mine(section, retail_baskets(sales, products=products, level=level),
                            min_support=section["min_support"], min_confidence=section["min_confidence"])
        rules = rules.withColumn("domain", F.lit("retail")).withColumn("level", F.lit(level)).cache()
        metrics.update(_log_plan(f"retail.{level}", plan, time.monotonic() - clock))
        metrics[f"retail.{level}.rules"] = rules.count()
        out[level] = rules
    return out, metrics


def _evaluate(ctx: StepContext, section: Mapping[str, Any], lines: DataFrame) -> dict[str, float]:
    settings = section["evaluation"]
    split = ctx.as_of - dt.timedelta(days=int(settings["holdout_days"]))
    train = retail_lines_before(lines, as_of=split, exclude_items=section["exclude_items"],
                                include_anonymous=bool(section["include_anonymous"]))
    if train.limit(1).count() == 0:
        log.warning("basket evaluation skipped: no sales before %s", split)
        return {}
    rules, _ = _mine(section, retail_baskets(train), min_support=section["min_support"],
                     min_confidence=section["min_confidence"])
    after = retail_lines_before(lines, as_of=ctx.as_of, start=split, exclude_items=section["exclude_items"])
    popularity = item_counts(retail_baskets(train))
    # the rules' and the baseline's scoring each read both: built from the lines once
    held, bought = customer_items(train).persist(), customer_items(after).persist()
    try:
        result = evaluate_hit_rate(train_holdings=held, rules=rules, bought_after=bought, popularity=popularity,
                                   top_n=int(section["top_n"]), score_col=section["score"],
                                   candidates=int(settings["popularity_candidates"]))
    finally:
        held.unpersist()
        bought.unpersist()
    metrics = {"evaluation.customers": result["customers"], "evaluation.hit_rate_at_n": result["hit_rate_at_n"],
               "evaluation.baseline_hit_rate_at_n": result["baseline_hit_rate_at_n"],
               "evaluation.lift_over_baseline": result["lift_over_baseline"]}
    tracking.log_metrics(metrics)
    tracking.log_params({"evaluation.split_date": split.isoformat(), "evaluation.top_n": section["top_n"]})
    for n, (hit, base) in enumerate(zip(result["hit_rate"], result["baseline_hit_rate"]), start=1):
        tracking.log_metrics({"evaluation.hit_rate": hit, "evaluation.baseline_hit_rate": base}, step=n)
    tracking.log_figure(hit_rate_figure(result, split=split, as_of=ctx.as_of), "basket/hit_rate_at_n.png")
    return metrics


def hit_rate_figure(result: Mapping[str, Any], *, split: dt.date, as_of: dt.date):
    """Hit rate at N of the rule recommendations and of the popularity baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = list(range(1, len(result["hit_rate"]) + 1))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, result["hit_rate"], marker="o", label="association rules")
    ax.plot(n, result["baseline_hit_rate"], marker="s", label="popularity baseline")
    ax.set_xlabel("N (items recommended)")
    ax.set_ylabel("hit rate at N")
    ax.set_title(f"Out-of-period hit rate: rules mined before {split}, bought {split}..{as_of}\n"
                 f"{result['customers']} customers", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def run(ctx: StepContext) -> StepResult:
    """Mine, recommend, evaluate and write the basket results for ``ctx.as_of``."""
    section = ctx.config.section("basket")
    lake, spark, as_of = ctx.lake, ctx.spark, ctx.as_of
    result = StepResult()
    tracking.log_params({f"basket.{k}": v for k, v in section.items() if not isinstance(v, Mapping)})
    rules_out: list[DataFrame] = []
    recs_out: list[DataFrame] = []
    if lake.exists("silver_retail_lines"):
        lines = lake.read("silver_retail_lines")
        products = lake.read("silver_products") if lake.exists("silver_products") else None
        result.inputs.update(lake.versions(["silver_retail_lines", "silver_products"]))
        retail, metrics = retail_rules(section, lines, products, as_of=as_of)
        result.metrics.update(metrics)
        rules_out += list(retail.values())
        if "product" in retail:
            sales = retail_lines_before(lines, as_of=as_of, exclude_items=section["exclude_items"])
            recs_out.append(recommend(customer_items(sales), retail["product"], top_n=int(section["top_n"]),
                                      score_col=section["score"]).withColumn("domain", F.lit("retail")))
        if section["evaluation"]["enabled"]:
            result.metrics.update(_evaluate(ctx, section, lines))
    banking = section["banking"]
    if banking["enabled"] and lake.exists("silver_bank_accounts"):
        tables = {name: lake.read(name) if lake.exists(name) else None for name in BANK_TABLES}
        result.inputs.update(lake.versions([n for n, t in tables.items() if t is not None]))
        holdings = bank_holdings(accounts=tables["silver_bank_accounts"], cards=tables["silver_bank_cards"],
                                 loans=tables["silver_bank_loans"], orders=tables["silver_bank_orders"],
                                 transactions=tables["silver_bank_transactions"], as_of=as_of,
                                 credit_categories=banking["credit_categories"]).cache()
        clock = time.monotonic()
        rules, plan = _mine(section, baskets_from_pairs(holdings), min_support=banking["min_support"],
                            min_confidence=banking["min_confidence"])
        rules = rules.withColumn("domain", F.lit("banking")).withColumn("level", F.lit("product")).cache()
        result.metrics.update(_log_plan("banking", plan, time.monotonic() - clock))
        result.metrics["banking.rules"] = rules.count()
        rules_out.append(rules)
        recs_out.append(recommend(holdings, rules, top_n=int(section["top_n"]), score_col=section["score"])
                        .withColumn("domain", F.lit("banking")))
    all_rules = _union(spark, rules_out, GOLD_RULE_SCHEMA)
    all_recs = _union(spark, recs_out, GOLD_RECOMMENDATION_SCHEMA)
    result.outputs[RULES_TABLE] = lake.replace_partition(ctx.stamp(all_rules), RULES_TABLE, as_of_date=as_of)
    result.outputs[RECOMMENDATIONS_TABLE] = lake.replace_partition(ctx.stamp(all_recs), RECOMMENDATIONS_TABLE,
                                                                  as_of_date=as_of)
    table = lake.read(RULES_TABLE).filter(F.col("as_of_date") == F.lit(as_of)).drop("run_id").toPandas()
    _log_rule_table(table)
    result.rows_out = len(table)
    result.metrics["recommendations"] = lake.rows_written(RECOMMENDATIONS_TABLE)
    for frame in rules_out:
        frame.unpersist()
    return result


def _union(spark: SparkSession, frames: list[DataFrame], schema: T.StructType) -> DataFrame:
    out = _empty(spark, schema)
    for frame in frames:
        out = out.unionByName(frame.select(*[F.col(f.name).cast(f.dataType) for f in schema.fields]))
    return out


def _log_rule_table(table) -> None:
    import mlflow

    if mlflow.active_run() is None:
        return
    text = table.assign(antecedent=table["antecedent"].map(lambda a: " & ".join(a)),
                        consequent=table["consequent"].map(lambda a: " & ".join(a))).to_csv(index=False)
    mlflow.log_text(text, "basket/association_rules.csv")
