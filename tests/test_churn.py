"""Churn: cutoffs and labels, point-in-time features (no leakage), evaluation, reasons,
the champion/challenger rule, and the step end to end on generated data with planted churners."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from crm_mining.churn import evaluate as ev
from crm_mining.churn import features as ft
from crm_mining.churn import labels as lb
from crm_mining.churn import registry, score, train
from crm_mining.schemas import SILVER_BANK_TRANSACTIONS, SILVER_RETAIL_LINES
from conftest import shared_path

D = dt.date


def _ts(day: str, hour: int = 10) -> dt.datetime:
    return dt.datetime.fromisoformat(day) + dt.timedelta(hours=hour)


def _lines(spark, rows):
    """rows: (invoice, customer, day, amount, is_return)."""
    data = [(inv, cust, _ts(day), "P1", 1 if not ret else -1, abs(amount), amount, ret, "UK", "b")
            for inv, cust, day, amount, ret in rows]
    return spark.createDataFrame(data, SILVER_RETAIL_LINES)


# -- cutoffs and labels ---------------------------------------------------------------------
def test_training_cutoffs_end_one_horizon_before_as_of():
    cuts = lb.training_cutoffs(as_of=D(2011, 12, 8), horizon_days=90, n_cutoffs=3, step_days=30)
    assert cuts == [D(2011, 7, 11), D(2011, 8, 10), D(2011, 9, 9)]
    with pytest.raises(ValueError, match="n_cutoffs"):
        lb.training_cutoffs(as_of=D(2011, 12, 8), horizon_days=90, n_cutoffs=0, step_days=30)
    with pytest.raises(TypeError):
        lb.training_cutoffs(as_of="2011-12-08", horizon_days=90, n_cutoffs=1, step_days=30)


def test_retail_labels_population_and_horizon(spark):
    cutoff = D(2011, 6, 1)
    lines = _lines(spark, [
        ("1", "stays", "2011-05-01", 10.0, False), ("2", "stays", "2011-08-29", 5.0, False),   # day 89 after
        ("3", "leaves", "2011-05-20", 10.0, False), ("4", "leaves", "2011-08-30", 5.0, False),  # day 90: outside
        ("5", "too_old", "2010-01-01", 10.0, False), ("6", "too_old", "2011-07-01", 10.0, False),
        ("7", "returns_only", "2011-05-05", -10.0, True),
        ("8", "new", "2011-06-02", 10.0, False),
    ])
    got = lb.retail_labels(lb.retail_invoices(lines), lb.cutoff_frame(spark, [cutoff]),
                           horizon_days=90, lookback_days=365)
    expected = spark.createDataFrame([("stays", cutoff, 0), ("leaves", cutoff, 1)],
                                     "customer_key string, cutoff_date date, churned int")
    assertDataFrameEqual(got, expected)


def _bank(spark, rows):
    """rows: (customer, day, direction, amount, balance, category)."""
    data = [(f"t{i}", f"a-{c}", c, _ts(day), d, amt, bal, "op", cat) for i, (c, day, d, amt, bal, cat) in enumerate(rows)]
    return spark.createDataFrame(data, SILVER_BANK_TRANSACTIONS)


def test_bank_dormancy_ignores_interest_and_fees(spark):
    cutoff = D(1998, 1, 1)
    tx = _bank(spark, [
        ("active", "1997-12-01", "debit", 100.0, 900.0, "household"),
        ("active", "1998-02-01", "credit", 50.0, 950.0, "pension"),
        ("dormant", "1997-11-01", "credit", 500.0, 500.0, None),
        ("dormant", "1998-01-31", "credit", 1.0, 501.0, "interest_credited"),
        ("dormant", "1998-02-28", "debit", 3.0, 498.0, "statement_fee"),
        ("outside", "1997-11-01", "credit", 1.0, 1.0, "interest_credited"),  # bank-only: not active
    ])
    got = lb.bank_labels(tx, None, lb.cutoff_frame(spark, [cutoff]), horizon_days=90, lookback_days=180,
                         bank_initiated=["interest_credited", "statement_fee"])
    expected = spark.createDataFrame([("active", cutoff, 0), ("dormant", cutoff, 1)],
                                     "customer_key string, cutoff_date date, churned int")
    assertDataFrameEqual(got, expected)
    closed = spark.createDataFrame([("a-active", "active", D(1998, 1, 20))],
                                   "account_id string, customer_key string, closed_date date")
    got_closed = lb.bank_labels(tx, closed, lb.cutoff_frame(spark, [cutoff]), horizon_days=90, lookback_days=180,
                                bank_initiated=["interest_credited", "statement_fee"])
    assert {r["customer_key"]: r["churned"] for r in got_closed.collect()} == {"active": 1, "dormant": 1}


# -- point-in-time features -----------------------------------------------------------------
def test_retail_features_hand_computed(spark):
    lines = _lines(spark, [
        ("1", "c", "2011-01-01", 100.0, False), ("2", "c", "2011-04-01", 50.0, False),
        ("3", "c", "2011-05-22", 30.0, False), ("R", "c", "2011-05-25", -20.0, True),
        ("9", "c", "2011-06-01", 999.0, False),  # on the cutoff day: not before it
    ])
    row = ft.retail_features(lb.retail_invoices(lines), lb.cutoff_frame(spark, [D(2011, 6, 1)])).first()
    assert row["recency_days"] == 10 and row["tenure_days"] == 151
    assert row["purchases_total"] == 3 and row["purchases_30d"] == 1 and row["purchases_90d"] == 2
    assert row["spend_total"] == pytest.approx(180.0) and row["spend_90d"] == pytest.approx(80.0)
    assert row["mean_gap_days"] == pytest.approx((151 - 10) / 2)
    assert row["return_rate"] == pytest.approx(20.0 / 180.0)
    assert row["purchase_trend"] == pytest.approx((2 - 1) / (2 + 1 + 1))  # 2011-01-01 is 151 days back


def _random_events(spark, seed: int, *, shift_after: dt.date | None = None):
    rng = np.random.default_rng(seed)
    days = pd.to_datetime("2011-01-01") + pd.to_timedelta(rng.integers(0, 300, 400), unit="D")
    frame = pd.DataFrame({"invoice": [f"i{k}" for k in range(400)], "cust": rng.choice(list("abcdefghij"), 400),
                          "day": days.strftime("%Y-%m-%d"), "amount": rng.gamma(2.0, 20.0, 400).round(2),
                          "ret": rng.random(400) < 0.1})
    frame.loc[frame.ret, "amount"] *= -1
    if shift_after is not None:  # rewrite every event on or after the cutoff
        late = pd.to_datetime(frame.day) >= pd.Timestamp(shift_after)
        frame.loc[late, "amount"] = frame.loc[late, "amount"] * 7 + 1
        frame.loc[late, "cust"] = rng.choice(list("abcdefghijk"), int(late.sum()))
        frame.loc[late, "day"] = (pd.to_datetime(frame.loc[late, "day"])
                                  + pd.to_timedelta(rng.integers(0, 20, int(late.sum())), unit="D")).dt.strftime("%Y-%m-%d")
    return frame


def test_no_leakage_changing_events_after_cutoff_changes_no_feature(spark):
    cutoffs = [D(2011, 6, 1), D(2011, 8, 1)]
    cuts = lb.cutoff_frame(spark, cutoffs)
    original = _random_events(spark, 3)
    for cutoff in cutoffs:
        changed = _random_events(spark, 3, shift_after=cutoff)
        assert not changed.equals(original)
        feats = [ft.retail_features(lb.retail_invoices(_lines(spark, f.itertuples(index=False, name=None))), cuts)
                 .filter(F.col("cutoff_date") == F.lit(cutoff)) for f in (original, changed)]
        assert feats[0].count() > 5
        assertDataFrameEqual(feats[0], feats[1])
    # bank: the same property for balances, flows and counts
    tx = pd.DataFrame({"c": original.cust, "day": original.day, "d": np.where(original.ret, "debit", "credit"),
                       "amt": original.amount.abs(), "bal": original.amount.cumsum(), "cat": None})
    for cutoff in cutoffs:
        late = tx.copy()
        mask = pd.to_datetime(late.day) >= pd.Timestamp(cutoff)
        late.loc[mask, "amt"] += 1000.0
        late.loc[mask, "bal"] -= 5000.0
        late.loc[mask, "c"] = "z"
        feats = [ft.bank_features(_bank(spark, list(t.itertuples(index=False, name=None))), None, cuts,
                                  bank_initiated=["interest_credited"]).filter(F.col("cutoff_date") == F.lit(cutoff))
                 for t in (tx, late)]
        assertDataFrameEqual(feats[0], feats[1])


# -- evaluation, reasons, tiers --------------------------------------------------------------
def test_cost_threshold_and_gains_hand_case(spark):
    rows = [(0.9, 1), (0.8, 1), (0.7, 0), (0.4, 1), (0.3, 0), (0.2, 0), (0.1, 0), (0.05, 0), (0.02, 0), (0.01, 0)]
    scored = spark.createDataFrame(rows, "churn_probability double, churned int")
    # missed churner costs 5, offer costs 1: best to flag everyone >= 0.4 → fp 1 (0.7), fn 0: cost 1
    decision = ev.cost_threshold(scored, cost_missed_churner=5.0, cost_wasted_offer=1.0)
    assert decision["cost"] == 1.0 and (decision["tp"], decision["fp"], decision["fn"], decision["tn"]) == (3, 1, 0, 6)
    assert 0.3 < decision["threshold"] <= 0.4
    gains = ev.gains_table(scored)
    assert gains["customers"].sum() == 10 and gains.iloc[0]["churners"] == 1
    assert gains.iloc[0]["lift"] == pytest.approx((1 / 1) / 0.3)
    from sklearn.metrics import roc_auc_score
    assert ev.ranking_metrics(scored)["roc_auc"] == pytest.approx(
        roc_auc_score([r[1] for r in rows], [r[0] for r in rows]))
    brier, table = ev.calibration(scored)
    assert brier == pytest.approx(np.mean([(p - y) ** 2 for p, y in rows]))


def test_top_reasons_are_the_largest_positive_contributions(spark):
    weights = [{"feature": "a", "coefficient": 2.0, "mean": 0.0, "std": 1.0},
               {"feature": "b", "coefficient": -1.0, "mean": 0.0, "std": 1.0},
               {"feature": "c", "coefficient": 0.5, "mean": 0.0, "std": 1.0}]
    df = spark.createDataFrame([("x", 1.0, -5.0, 100.0), ("y", -1.0, 2.0, -1.0)], "k string, a double, b double, c double")
    got = {r["k"]: r["r"] for r in df.select("k", score.top_reasons(weights, top_k=2).alias("r")).collect()}
    # x: a → 2·log 2 = 1.39, b → -(-log 6) = 1.79, c → 0.5·log 101 = 2.31
    assert got == {"x": ["c", "b"], "y": []}


def test_risk_tiers_by_decile_and_threshold(spark):
    df = spark.createDataFrame([(float(i) / 100,) for i in range(100)], "churn_probability double")
    tiers = score.risk_tier(df, method="decile", high_deciles=1, medium_deciles=2).groupBy("risk_tier").count()
    assert {r[0]: r[1] for r in tiers.collect()} == {"high": 10, "medium": 20, "low": 70}
    tiers = score.risk_tier(df, method="threshold", high_threshold=0.9, medium_threshold=0.5)
    assert tiers.filter("risk_tier = 'high'").count() == 10
    with pytest.raises(ValueError, match="risk_tier_method"):
        score.risk_tier(df, method="quartile")


# -- champion / challenger -------------------------------------------------------------------
def test_a_domain_without_both_classes_is_not_trained(spark):
    from crm_mining.churn import trainable

    D = dt.date
    def rows(*pairs):
        return spark.createDataFrame([(c, y) for c, y in pairs], "cutoff_date date, churned int")

    test = D(2011, 9, 1)
    assert trainable(rows((D(2011, 8, 1), 0), (D(2011, 8, 1), 1), (test, 0)), test_cutoff=test) is None
    only_retained = trainable(rows((D(2011, 8, 1), 0), (test, 1)), test_cutoff=test)
    assert "classes ['0']" in only_retained and "2011-09-01" in only_retained
    assert "classes ['none']" in trainable(rows((test, 1)), test_cutoff=test)
    assert "no labelled customer at the test cutoff" in trainable(rows((D(2011, 8, 1), 0), (D(2011, 8, 1), 1)),
                                                                  test_cutoff=test)


def test_train_settings_are_checked():
    assert train.TrainSettings.from_config({"search_parallelism": 1}, seed=3).search_parallelism == 1
    assert train.TrainSettings.from_config({}, seed=3).seed == 3
    for bad in (0, 1.5, "2"):
        with pytest.raises(ValueError, match="churn.search_parallelism"):
            train.TrainSettings.from_config({"search_parallelism": bad}, seed=3)
    with pytest.raises(ValueError, match="churn.train_ratio"):
        train.TrainSettings.from_config({"train_ratio": 1.0}, seed=3)


def test_training_layout_follows_the_rows_and_not_their_arrival(spark):
    per = train.ROWS_PER_PARTITION  # the test session has 4 shuffle partitions
    rows = [(f"c{i % 40}", D(2011, 6, 1) + dt.timedelta(days=30 * (i // 40)), float(i), i % 2) for i in range(120)]
    schema = "customer_key string, cutoff_date date, spend_90d double, churned int"
    straight = spark.createDataFrame(rows, schema)
    shuffled = spark.createDataFrame(rows[::-1], schema).repartition(3)
    assert train.training_layout(straight, rows=120).rdd.getNumPartitions() == 1
    assert train.training_layout(straight, rows=100 * per).rdd.getNumPartitions() == 4
    laid_out = train.training_layout(straight, rows=2 * per + 1)
    assert laid_out.rdd.getNumPartitions() == 3
    assertDataFrameEqual(laid_out, straight)
    # the same rows arriving in another order and partitioning sit in the same places
    assert train.training_layout(shuffled, rows=2 * per + 1).rdd.glom().collect() == laid_out.rdd.glom().collect()
    with pytest.raises(ValueError, match="rows must be >= 0"):
        train.training_layout(straight, rows=-1)


def test_champion_rule():
    assert registry.beats_champion(challenger=0.5, champion=None)
    assert registry.beats_champion(challenger=0.61, champion=0.60)
    assert not registry.beats_champion(challenger=0.60, champion=0.60)
    assert not registry.beats_champion(challenger=0.61, champion=0.60, min_improvement=0.02)


def test_register_and_promote_keeps_the_better_champion(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    decisions = []
    for score_value in (0.50, 0.45, 0.55):
        with mlflow.start_run(experiment_id=exp):
            mlflow.log_text("x", "model/MLmodel")
            uri = f"runs:/{mlflow.active_run().info.run_id}/model"
            decisions.append(registry.register_and_promote(model_uri=uri, name="crm-churn-retail",
                                                           metric="pr_auc", score=score_value))
    assert [d["decision"] for d in decisions] == ["promoted", "kept_champion", "promoted"]
    assert decisions[1]["champion_score"] == 0.50 and decisions[1]["challenger_score"] == 0.45
    champion = MlflowClient().get_model_version_by_alias("crm-churn-retail", "champion")
    assert str(champion.version) == decisions[2]["version"] and champion.tags["oot_pr_auc"] == "0.55"


# -- end to end on generated data with planted churners ---------------------------------------
def silver_lines_from_csv(spark, path: str):
    """silver_retail_lines from a UCI-format CSV (test stand-in for ingest + refine)."""
    raw = spark.read.csv(path, header=True, inferSchema=False)
    ts = F.coalesce(F.try_to_timestamp("InvoiceDate", F.lit("yyyy-MM-dd HH:mm:ss")),
                    F.try_to_timestamp("InvoiceDate", F.lit("M/d/yyyy H:mm")))
    qty, price = F.col("Quantity").try_cast("long"), F.col("UnitPrice").try_cast("double")
    key = F.regexp_replace(F.trim("CustomerID"), r"\.0$", "")
    return (raw.select(F.col("InvoiceNo").alias("invoice_id"), key.alias("customer_key"), ts.alias("ts"),
                       F.col("StockCode").alias("product_id"), qty.alias("quantity"), price.alias("unit_price"),
                       (qty * price).alias("amount"), (qty < 0).alias("is_return"), F.col("Country").alias("country"),
                       F.lit("test").alias("_batch_id"))
            .filter("ts IS NOT NULL AND quantity IS NOT NULL AND quantity != 0 AND unit_price > 0 "
                    "AND customer_key IS NOT NULL AND customer_key != ''"))


FAST_TRAINING = ["churn.domains=[retail]", "churn.n_cutoffs=2", "churn.gbt_max_depth=[3]",
                 "churn.gbt_max_iter=20", "churn.lr_reg_param=[0.01]", "churn.refit_on_all=false"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from crm_mining.synth import generate

    out = tmp_path_factory.mktemp("churn_synth")
    generate(out, customers=1500, seed=11)
    return out


def test_step_on_planted_churners(spark, make_config, planted):
    from mlflow import MlflowClient

    from crm_mining.lake import Lake
    from crm_mining.pipeline import run_pipeline

    cfg = make_config("run.as_of=2011-12-10", *FAST_TRAINING)
    lake = Lake(spark, root=cfg.get_path("lake.root"), database=cfg.get_path("lake.database"))
    lake.overwrite(silver_lines_from_csv(spark, str(planted / "retail")), "silver_retail_lines")
    run_pipeline(spark, cfg, steps=["churn"])
    scores = lake.read("gold_churn_scores")
    assert set(scores.columns) >= {"customer_key", "churn_probability", "risk_tier", "top_reasons",
                                   "model_version", "domain", "as_of_date", "run_id"}
    assert scores.filter("top_reasons IS NULL OR size(top_reasons) > 3").count() == 0
    truth = pd.read_csv(planted / "truth" / "customers.csv", usecols=["CustomerID", "is_churner"])
    frame = scores.select("customer_key", "churn_probability", "risk_tier").toPandas()
    frame = frame.merge(truth.assign(customer_key=truth.CustomerID.astype(str)), on="customer_key")
    assert len(frame) > 1000
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(frame.is_churner, frame.churn_probability)
    top = frame.nlargest(len(frame) // 10, "churn_probability")
    capture_ratio = (top.is_churner.sum() / frame.is_churner.sum()) / (len(top) / len(frame))
    print(f"planted churners: ROC-AUC {auc:.3f}, top-decile capture {capture_ratio:.2f}x its share")
    assert auc >= 0.8 and capture_ratio >= 2.5
    high = frame[frame.risk_tier == "high"]
    assert 0.08 <= len(high) / len(frame) <= 0.12
    ops = lake.read("ops_pipeline_runs").filter(F.col("step") == "churn").first()
    assert ops.rows_out == scores.count()
    champion = MlflowClient().get_model_version_by_alias(f"{cfg.get_path('tracking.registry_prefix')}-churn-retail",
                                                         "champion")
    assert scores.select("model_version").distinct().first()[0] == str(champion.version)
    # a second run with the same data registers a challenger that does not beat the champion
    run_pipeline(spark, make_config("run.as_of=2011-12-10", "churn.mode=train", *FAST_TRAINING), steps=["churn"])
    again = MlflowClient().get_model_version_by_alias(f"{cfg.get_path('tracking.registry_prefix')}-churn-retail",
                                                      "champion")
    assert again.version == champion.version


# -- UCI Online Retail: out-of-time quality against scikit-learn --------------------------------
@pytest.mark.slow
@pytest.mark.real_data
def test_online_retail_out_of_time_matches_sklearn(spark):
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import average_precision_score, roc_auc_score

    from crm_mining.churn import fit_and_evaluate, retail_domain, training_data

    path = shared_path("online_retail", "online_retail.csv")
    as_of = D(2011, 12, 8)  # the test cutoff 2011-09-09 plus the 90-day horizon
    lines = silver_lines_from_csv(spark, str(path)).filter(F.col("ts") < F.lit(as_of).cast("timestamp"))
    domain = retail_domain(lines, horizon_days=90, lookback_days=365)
    cutoffs = lb.training_cutoffs(as_of=as_of, horizon_days=90, n_cutoffs=3, step_days=30)
    assert cutoffs[-1] == D(2011, 9, 9)
    data = training_data(spark, domain, cutoffs).persist()
    out = fit_and_evaluate(data, features=ft.RETAIL_FEATURES, settings=train.TrainSettings(seed=42),
                           test_cutoff=cutoffs[-1], refit_on_all=False)
    fit_rows, test_rows = train.out_of_time_split(data, test_cutoff=cutoffs[-1])
    names = list(ft.RETAIL_FEATURES)
    fit_pd = fit_rows.select(*names, "churned").toPandas()
    test_pd = test_rows.select("customer_key", *names, "churned").orderBy("customer_key").toPandas()
    reference = GradientBoostingClassifier(random_state=0).fit(fit_pd[names], fit_pd.churned)
    ref_p = reference.predict_proba(test_pd[names])[:, 1]
    ref = {"roc_auc": roc_auc_score(test_pd.churned, ref_p), "pr_auc": average_precision_score(test_pd.churned, ref_p)}
    chosen = out["chosen"]
    ours_pd = train.predict(out["oot_models"][chosen], test_rows).select(
        "customer_key", "churn_probability", "churned").orderBy("customer_key").toPandas()
    ours = {"roc_auc": roc_auc_score(ours_pd.churned, ours_pd.churn_probability),
            "pr_auc": average_precision_score(ours_pd.churned, ours_pd.churn_probability)}
    spark_metrics = {a: {k: round(v, 4) for k, v in e["metrics"].items() if k in ("roc_auc", "pr_auc")}
                     for a, e in out["evaluations"].items()}
    print(f"UCI out-of-time (test cutoff 2011-09-09, {len(test_pd)} customers, churn rate "
          f"{test_pd.churned.mean():.3f}): Spark evaluator {spark_metrics}; chosen {chosen} (sklearn metrics) "
          f"{ {k: round(v, 4) for k, v in ours.items()} }; sklearn GBC { {k: round(v, 4) for k, v in ref.items()} }")
    assert ours["roc_auc"] >= ref["roc_auc"] - 0.01
    assert ours["pr_auc"] >= ref["pr_auc"] - 0.01
    data.unpersist()
    domain.release()
