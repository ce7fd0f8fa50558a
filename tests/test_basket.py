"""Tests of the basket room: baskets, guarded FP-Growth, rule metrics and significance,
recommendations, the evaluation and the step; mlxtend and scipy are the references."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from crm_mining.basket import (PatternExplosionError, add_significance, association_rules, bank_holdings,
                               baskets_from_pairs, customer_items, evaluate_hit_rate, frequent_itemsets, item_counts,
                               min_count_for, mine_rules, plan_mining, prune_redundant,
                               recommend, retail_baskets, retail_lines_before)
from crm_mining.schemas import SILVER_RETAIL_LINES

from conftest import shared_path

AS_OF = dt.date(2011, 12, 10)


def read_retail_csv(spark, path):
    """UCI-format CSV → silver_retail_lines columns with the refine policy's minimal cleaning.

    Unparsable lines are dropped, exact duplicate rows kept once, non-positive prices dropped;
    cancellations ('C' invoices) and negative quantities are returns. CustomerID is kept as
    read (test data only; silver holds keyed hashes).
    """
    raw = spark.read.csv(str(path), header=True, inferSchema=False).dropDuplicates()
    quantity = F.col("Quantity").try_cast("long")
    return (raw.select(F.col("InvoiceNo").alias("invoice_id"), F.col("CustomerID").alias("customer_key"),
                       F.try_to_timestamp("InvoiceDate", F.lit("yyyy-MM-dd HH:mm:ss")).alias("ts"),
                       F.trim("StockCode").alias("product_id"), quantity.alias("quantity"),
                       F.col("UnitPrice").try_cast("double").alias("unit_price"),
                       (F.col("InvoiceNo").startswith("C") | (quantity < 0)).alias("is_return"))
            .filter(F.col("ts").isNotNull() & quantity.isNotNull() & (F.col("unit_price") > 0)))


def frame(spark, rows):
    return spark.createDataFrame([(str(i), sorted(items)) for i, items in enumerate(rows)],
                                 "basket_id string, items array<string>")


TOY = [["a", "b", "c"], ["a", "b"], ["a", "c"], ["b", "c", "d"], ["a", "b", "c", "d"], ["d"], ["e"]]


def mlxtend_rules(baskets, min_support, min_confidence):
    from mlxtend.frequent_patterns import association_rules as ml_rules, fpgrowth
    from mlxtend.preprocessing import TransactionEncoder

    encoder = TransactionEncoder()
    onehot = pd.DataFrame(encoder.fit(baskets).transform(baskets), columns=encoder.columns_)
    itemsets = fpgrowth(onehot, min_support=min_support, use_colnames=True)
    rules = ml_rules(itemsets, num_itemsets=len(baskets), metric="confidence", min_threshold=min_confidence)
    return itemsets, rules[rules["consequents"].map(len) == 1]


def as_dict(rules_pd, key=("antecedent", "consequent")):
    return {(frozenset(r[key[0]]), frozenset(r[key[1]])): r for _, r in rules_pd.iterrows()}


# --------------------------------------------------------------------------- baskets

def test_min_count_matches_the_support_test():
    assert min_count_for(0.01, 300) == 3 and min_count_for(0.3, 7) == 3 and min_count_for(1.0, 5) == 5
    for n in (7, 300, 1234, 25900):
        c = min_count_for(0.01, n)
        assert c / n >= 0.01 and (c == 1 or (c - 1) / n < 0.01)
    with pytest.raises(ValueError, match="min_support"):
        min_count_for(0.0, 10)


def test_retail_baskets_drop_returns_and_late_lines_keep_anonymous(spark):
    ts, late = dt.datetime(2011, 1, 1), dt.datetime(2011, 12, 10)
    rows = [("1", "c1", ts, "A", 1, 1.0, 1.0, False, "UK", "b"), ("1", "c1", ts, "A", 2, 1.0, 2.0, False, "UK", "b"),
            ("1", "c1", ts, "X", 1, 1.0, 1.0, False, "UK", "b"), ("1", "c1", ts, "POST", 1, 1.0, 1.0, False, "UK", "b"),
            ("2", None, ts, "A", 1, 1.0, 1.0, False, "UK", "b"), ("2", None, ts, "C", 1, 1.0, 1.0, False, "UK", "b"),
            ("C3", "c1", ts, "X", -1, 1.0, -1.0, True, "UK", "b"), ("4", "c2", late, "D", 1, 1.0, 1.0, False, "UK", "b")]
    lines = spark.createDataFrame(rows, SILVER_RETAIL_LINES)
    products = spark.createDataFrame([("A", "x", "cups"), ("X", "y", "cups"), ("C", "z", None)], "product_id string, description string, category string")
    sales = retail_lines_before(lines, as_of=AS_OF)
    expected = spark.createDataFrame([("1", ["A", "X"]), ("2", ["A", "C"])], "basket_id string, items array<string>")
    assertDataFrameEqual(retail_baskets(sales), expected)
    assertDataFrameEqual(retail_baskets(sales, products=products, level="category"),
                         spark.createDataFrame([("1", ["cups"]), ("2", ["cups"])], "basket_id string, items array<string>"))
    named = retail_baskets(retail_lines_before(lines, as_of=AS_OF, include_anonymous=False))
    assert [r.basket_id for r in named.collect()] == ["1"]
    assertDataFrameEqual(customer_items(sales), spark.createDataFrame([("c1", "A"), ("c1", "X")], "customer_key string, item string"))
    with pytest.raises(ValueError, match="level"):
        retail_baskets(sales, level="brand")


def test_bank_holdings_as_of(spark):
    d = dt.date
    accounts = spark.createDataFrame([("a1", "k1", "1", "monthly", d(1995, 1, 1)), ("a2", "k2", "1", "weekly", d(1999, 1, 1))],
                                     "account_id string, customer_key string, district_id string, frequency string, opened_date date")
    cards = spark.createDataFrame([("c1", "a1", "k1", "gold", d(1996, 1, 1))],
                                  "card_id string, account_id string, customer_key string, card_type string, issued_date date")
    loans = spark.createDataFrame([("l1", "a1", "k1", d(1997, 1, 1), 1.0, 12, 1.0, "A", "finished_ok")],
                                  "loan_id string, account_id string, customer_key string, granted_date date, amount double, duration_months int, monthly_payment double, status string, status_desc string")
    orders = spark.createDataFrame([("o1", "a1", "k1", 5.0, "household")],
                                   "order_id string, account_id string, customer_key string, amount double, category string")
    txns = spark.createDataFrame([("t1", "a1", "k1", dt.datetime(1996, 5, 1), "credit", 1.0, 1.0, None, "pension"),
                                  ("t2", "a1", "k1", dt.datetime(1996, 5, 1), "credit", 1.0, 1.0, None, "interest")],
                                 "txn_id string, account_id string, customer_key string, ts timestamp, direction string, amount double, balance double, operation string, category string")
    held = bank_holdings(accounts=accounts, cards=cards, loans=loans, orders=orders, transactions=txns, as_of=d(1998, 1, 1))
    expected = ["account:monthly", "card:gold", "credit:pension", "loan:finished_ok", "order:household"]
    assertDataFrameEqual(baskets_from_pairs(held), spark.createDataFrame([("k1", expected)], "basket_id string, items array<string>"))


# --------------------------------------------------------------------------- mining and rules

def test_rules_and_metrics_equal_mlxtend_on_a_hand_case(spark):
    plan = plan_mining(frame(spark, TOY), min_support=0.25)
    assert (plan.baskets, plan.min_count, plan.frequent_items) == (7, 2, 4)
    itemsets = frequent_itemsets(plan)
    rules = association_rules(itemsets, baskets=plan.baskets, min_confidence=0.5).toPandas()
    ml_sets, ml_rules = mlxtend_rules(TOY, 0.25, 0.5)
    assert {frozenset(r["items"]): r["count"] / 7 for _, r in itemsets.toPandas().iterrows()} == pytest.approx(
        {r.itemsets: r.support for r in ml_sets.itertuples()}, abs=1e-12)
    ours, theirs = as_dict(rules), as_dict(ml_rules, key=("antecedents", "consequents"))
    assert set(ours) == set(theirs) and len(ours) > 5
    for key, ml in theirs.items():
        for metric, ml_metric in [("antecedent_support", "antecedent support"), ("consequent_support", "consequent support"),
                                  ("support", "support"), ("confidence", "confidence"), ("lift", "lift"),
                                  ("leverage", "leverage"), ("conviction", "conviction"), ("zhangs_metric", "zhangs_metric")]:
            assert ours[key][metric] == pytest.approx(ml[ml_metric], abs=1e-12), (key, metric)


def test_redundant_rules_are_pruned(spark):
    rules = association_rules(frequent_itemsets(plan_mining(frame(spark, TOY), min_support=0.25)), baskets=7).cache()
    kept = prune_redundant(rules, margin=0.0).toPandas()
    keys = set(as_dict(kept))
    # {c,d}→b has confidence 1 > d→b (2/3) and c→b (3/4): kept; {a,b}→c (2/3) < a→c (3/4): dropped.
    assert (frozenset("cd"), frozenset("b")) in keys and (frozenset("ab"), frozenset("c")) not in keys
    strict = set(as_dict(prune_redundant(rules, margin=0.3).toPandas()))
    assert (frozenset("cd"), frozenset("b")) not in strict and (frozenset("a"), frozenset("b")) in strict


def test_significance_equals_scipy_fisher_and_bh(spark):
    from scipy.stats import false_discovery_control, fisher_exact

    rules = association_rules(frequent_itemsets(plan_mining(frame(spark, TOY * 5), min_support=0.2)), baskets=35)
    out = add_significance(rules, alpha=None).toPandas()
    expected = []
    for r in out.itertuples():
        a, b, c = r.count, r.antecedent_count - r.count, r.consequent_count - r.count
        expected.append(fisher_exact([[a, b], [c, r.baskets - a - b - c]], alternative="greater")[1])
    np.testing.assert_allclose(out["p_value"], expected, rtol=1e-9)
    np.testing.assert_allclose(out["q_value"], false_discovery_control(expected, method="bh"), rtol=1e-9)
    kept = add_significance(rules, alpha=0.05).toPandas()
    assert len(kept) == int((out["q_value"] <= 0.05).sum()) and len(kept) < len(out)


def test_guard_refuses_an_explosive_setting_before_mining(spark, monkeypatch):
    from pyspark.ml.fpm import FPGrowth

    def never(*args, **kwargs):
        raise AssertionError("FP-Growth must not start")

    monkeypatch.setattr(FPGrowth, "fit", never)
    rng = np.random.default_rng(3)
    dense = [sorted(set(rng.choice(40, size=25, replace=False).astype(str))) for _ in range(200)]
    # FP-Growth is never started: the refusal costs only the counting passes of the guard.
    with pytest.raises(PatternExplosionError, match=r"refused before FP-Growth.*basket.max_patterns=5000"):
        mine_rules(frame(spark, dense), min_support=0.001, min_confidence=0.1, max_patterns=5000)
    with pytest.raises(PatternExplosionError, match="max_pair_occurrences"):
        plan_mining(frame(spark, dense), min_support=0.001, max_pair_occurrences=1000)
    # a basket over the cap is left out and reported; the bound is an upper bound
    plan = plan_mining(frame(spark, TOY + [list("abcdefgh")]), min_support=0.25, max_basket_items=4)
    assert plan.baskets_over_cap == 1 and plan.pruned.count() == 7  # the basket ["e"] stays


def test_planning_caches_the_baskets_only_while_it_needs_them(spark):
    baskets = frame(spark, TOY)
    plan = plan_mining(baskets, min_support=0.25)
    assert not baskets.storageLevel.useMemory  # released once the pruned baskets are built
    assert plan.pruned.count() == 6  # every basket but ["e"]
    kept = frame(spark, TOY).cache()  # the caller's cache is the caller's to release
    assert plan_mining(kept, min_support=0.25).frequent_items == plan.frequent_items == 4
    # also when it reaches planning as another DataFrame of the same plan
    assert plan_mining(kept.select(*kept.columns), min_support=0.25).frequent_items == 4
    assert kept.storageLevel.useMemory
    kept.unpersist()


def test_bound_is_an_upper_bound(spark):
    rng = np.random.default_rng(5)
    baskets = [sorted(set(rng.choice(12, size=rng.integers(1, 8), replace=False).astype(str))) for _ in range(300)]
    plan = plan_mining(frame(spark, baskets), min_support=0.05)
    mined = frequent_itemsets(plan).count()
    assert plan.frequent_pairs <= mined <= plan.pattern_bound


# --------------------------------------------------------------------------- recommendations

def test_recommendations_rank_rules_the_customer_can_use(spark):
    rules = spark.createDataFrame([(["a"], ["b"], 0.5, 2.0), (["a", "c"], ["d"], 0.9, 3.0), (["a"], ["d"], 0.6, 1.5),
                                   (["x"], ["y"], 0.99, 9.0), (["c"], ["a"], 0.8, 1.2)],
                                  "antecedent array<string>, consequent array<string>, confidence double, lift double")
    holdings = spark.createDataFrame([("k1", "a"), ("k1", "c"), ("k2", "a"), ("k2", "b")], "customer_key string, item string")
    got = recommend(holdings, rules, top_n=2)
    expected = spark.createDataFrame(
        [("k1", 1, "d", 0.9, ["a", "c"], ["d"], 0.9, 3.0), ("k1", 2, "b", 0.5, ["a"], ["b"], 0.5, 2.0),
         ("k2", 1, "d", 0.6, ["a"], ["d"], 0.6, 1.5)],
        "customer_key string, rank int, item string, score double, rule_antecedent array<string>, "
        "rule_consequent array<string>, confidence double, lift double")
    assertDataFrameEqual(got, expected)
    bought = spark.createDataFrame([("k1", "b"), ("k2", "c")], "customer_key string, item string")
    popularity = spark.createDataFrame([("c", 10), ("b", 9), ("d", 1)], "item string, count long")
    result = evaluate_hit_rate(train_holdings=holdings, rules=rules, bought_after=bought, popularity=popularity, top_n=2)
    # rules: k1 hits b at rank 2, k2 misses; popularity: k1 gets [b] (hit at 1), k2 gets [c, d] (hit at 1)
    assert result["hit_rate"] == [0.0, 0.5] and result["baseline_hit_rate"] == [1.0, 1.0]
    assert result["lift_over_baseline"] == 0.5


# --------------------------------------------------------------------------- generated data

@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from crm_mining.synth import generate

    out = tmp_path_factory.mktemp("basket_synth")
    generate(out, customers=300, seed=7)
    return out


def test_planted_rules_found_noise_pairs_rejected(spark, synth_dir):
    truth = json.loads((synth_dir / "truth" / "truth.json").read_text())
    lines = read_retail_csv(spark, synth_dir / "retail")
    # the truth counts clean baskets of known customers
    baskets = retail_baskets(retail_lines_before(lines, as_of=AS_OF, include_anonymous=False))
    rules, plan = mine_rules(baskets, min_support=0.005, min_confidence=0.05, alpha=None, redundancy_margin=0.0)
    assert plan.baskets == truth["counts"]["clean_baskets"]
    all_rules = rules.toPandas()
    found = as_dict(all_rules[all_rules["q_value"] <= 0.05])  # the significance filter at alpha = 0.05
    for planted in truth["association_rules"]:
        rule = found[(frozenset(planted["antecedent"]), frozenset(planted["consequent"]))]
        for metric in ("support", "confidence", "lift"):
            assert rule[metric] == pytest.approx(planted[metric], abs=1e-9), (planted, metric)
    tested = 0
    for noise in truth["noise_pairs"]:
        a, c = frozenset(noise["antecedent"]), frozenset(noise["consequent"])
        tested += (a, c) in as_dict(all_rules)
        assert (a, c) not in found and (c, a) not in found, noise
    assert tested >= len(truth["noise_pairs"]) // 2  # the noise pairs were mined and tested


def test_step_writes_rules_and_recommendations(spark, synth_dir, make_config):
    from crm_mining.lake import Lake
    from crm_mining.pipeline import run_pipeline

    cfg = make_config("run.as_of=2011-12-10", "basket.min_support=0.02", "basket.banking.min_support=0.2",
                      "basket.evaluation.holdout_days=60", "basket.top_n=3")
    lake = Lake(spark, root=cfg.get_path("lake.root"), database=cfg.get_path("lake.database"))
    lines = read_retail_csv(spark, synth_dir / "retail").withColumn("amount", F.col("quantity") * F.col("unit_price"))
    lake.overwrite(lines.select(*[F.col(f.name).cast(f.dataType) if f.name in lines.columns else F.lit(None).cast(f.dataType).alias(f.name)
                                  for f in SILVER_RETAIL_LINES.fields]), "silver_retail_lines")
    accounts = spark.createDataFrame([(f"a{i}", f"k{i}", "1", "monthly" if i % 2 else "weekly", dt.date(1995, 1, 1)) for i in range(40)],
                                     "account_id string, customer_key string, district_id string, frequency string, opened_date date")
    cards = spark.createDataFrame([(f"c{i}", f"a{i}", f"k{i}", "gold", dt.date(1996, 1, 1)) for i in range(40) if i % 2],
                                  "card_id string, account_id string, customer_key string, card_type string, issued_date date")
    lake.overwrite(accounts, "silver_bank_accounts")
    lake.overwrite(cards, "silver_bank_cards")
    run_pipeline(spark, cfg, steps=["basket"])
    rules = lake.read("gold_association_rules")
    assert {"antecedent", "consequent", "antecedent_support", "consequent_support", "support", "confidence", "lift",
            "leverage", "conviction", "zhangs_metric", "p_value", "q_value", "domain", "level", "as_of_date",
            "run_id"} <= set(rules.columns)
    domains = {r.domain: r["count"] for r in rules.groupBy("domain").count().collect()}
    assert domains.get("retail", 0) > 0 and domains.get("banking", 0) == 2  # card:gold <-> account:monthly
    recs = lake.read("gold_cross_sell_recommendations")
    assert recs.filter(F.col("rank") > 3).count() == 0 and recs.filter(F.col("domain") == "retail").count() > 0
    bank = recs.filter(F.col("domain") == "banking").select("customer_key", "item").distinct()
    assert bank.count() == 0  # every monthly customer already holds the gold card
    ops = lake.read("ops_pipeline_runs").filter(F.col("step") == "basket").first()
    assert ops.status == "succeeded" and ops.metrics["evaluation.customers"] > 0
    assert ops.metrics["recommendations"] == recs.count() and ops.rows_out == rules.count()


# --------------------------------------------------------------------------- UCI Online Retail

@pytest.mark.slow
@pytest.mark.real_data
def test_uci_rules_equal_mlxtend(spark):
    path = shared_path("online_retail", "online_retail.csv")
    lines = read_retail_csv(spark, path)
    baskets = retail_baskets(retail_lines_before(lines, as_of=AS_OF)).cache()
    rules, plan = mine_rules(baskets, min_support=0.01, min_confidence=0.2, alpha=None, redundancy_margin=None)
    assert plan.baskets_over_cap == 0
    ours = as_dict(rules.toPandas())
    collected = [r.items for r in baskets.collect()]  # the reference needs the baskets on the driver
    ml_sets, ml_rules = mlxtend_rules(collected, 0.01, 0.2)
    assert plan.frequent_itemsets == len(ml_sets)
    theirs = as_dict(ml_rules, key=("antecedents", "consequents"))
    assert set(ours) == set(theirs) and len(ours) > 100
    for key, ml in theirs.items():
        for metric in ("support", "confidence", "lift"):
            assert ours[key][metric] == pytest.approx(ml[metric], abs=1e-9), (key, metric)
    baskets.unpersist()


@pytest.mark.slow
@pytest.mark.real_data
def test_uci_recommendations_beat_the_popularity_baseline(spark, make_config):
    """Rules mined before 2011-09-11 (the step's 90-day holdout), checked on purchases after it."""
    section = make_config()["basket"]
    settings = section["evaluation"]
    split = AS_OF - dt.timedelta(days=int(settings["holdout_days"]))
    lines = read_retail_csv(spark, shared_path("online_retail", "online_retail.csv")).cache()
    train = retail_lines_before(lines, as_of=split, exclude_items=section["exclude_items"])
    after = retail_lines_before(lines, as_of=AS_OF, start=split, exclude_items=section["exclude_items"])
    rules, _ = mine_rules(retail_baskets(train), min_support=section["min_support"],
                          min_confidence=section["min_confidence"], alpha=section["alpha"],
                          redundancy_margin=section["redundancy_margin"])
    result = evaluate_hit_rate(train_holdings=customer_items(train), rules=rules, bought_after=customer_items(after),
                               popularity=item_counts(retail_baskets(train)), top_n=int(section["top_n"]),
                               score_col=section["score"], candidates=int(settings["popularity_candidates"]))
    lines.unpersist()
    print(f"\nUCI hit rate at {section['top_n']}: rules {result['hit_rate_at_n']:.4f}, popularity "
          f"{result['baseline_hit_rate_at_n']:.4f}, lift {result['lift_over_baseline']:.3f}, "
          f"customers {result['customers']}")
    assert result["customers"] > 500
    assert result["hit_rate_at_n"] > result["baseline_hit_rate_at_n"]
    # The curves are cumulative: a hit within the top n is a hit within the top n + 1.
    assert all(a <= b for a, b in zip(result["hit_rate"], result["hit_rate"][1:]))
