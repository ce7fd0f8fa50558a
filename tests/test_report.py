"""The report: Spark aggregates against small hand-checkable references, the page and its plots.

The input tables are small, inline and written with :class:`crm_mining.lake.Lake` into a
temporary lake, so the report is tested without running the pipeline. A headless Chromium
renders the page and reports, for every <img>, whether it decoded to a picture.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from crm_mining import report
from crm_mining.config import load_config
from crm_mining.lake import Lake
from crm_mining.pipeline import OPS_SCHEMA

AS_OF = dt.date(2024, 3, 1)
OLD = dt.date(2024, 2, 1)
RUN, OLD_RUN = "20240301T000000-aaaaaaaa", "20240201T000000-bbbbbbbb"
N_CUSTOMERS = 60

VALUE_SCHEMA = T.StructType([
    T.StructField("customer_key", T.StringType()), T.StructField("recency_days", T.IntegerType()),
    T.StructField("frequency", T.LongType()), T.StructField("monetary", T.DoubleType()),
    T.StructField("rfm_segment", T.StringType()), T.StructField("abc_class", T.StringType()),
    T.StructField("clv_predicted", T.DoubleType()), T.StructField("value_tier", T.StringType()),
    T.StructField("lifecycle_stage", T.StringType()), T.StructField("as_of_date", T.DateType()),
    T.StructField("run_id", T.StringType()),
])
PROFILE_SCHEMA = T.StructType([
    T.StructField("segment_id", T.IntegerType()), T.StructField("size", T.LongType()),
    T.StructField("share_customers", T.DoubleType()), T.StructField("share_value", T.DoubleType()),
    T.StructField("feature_means", T.MapType(T.StringType(), T.DoubleType())),
    T.StructField("feature_z", T.MapType(T.StringType(), T.DoubleType())),
    T.StructField("segment_name", T.StringType()), T.StructField("domain", T.StringType()),
    T.StructField("as_of_date", T.DateType()), T.StructField("run_id", T.StringType()),
])
RULE_SCHEMA = T.StructType([
    T.StructField("antecedent", T.ArrayType(T.StringType())),
    T.StructField("consequent", T.ArrayType(T.StringType())),
    T.StructField("support", T.DoubleType()), T.StructField("confidence", T.DoubleType()),
    T.StructField("lift", T.DoubleType()), T.StructField("domain", T.StringType()),
    T.StructField("level", T.StringType()), T.StructField("as_of_date", T.DateType()),
    T.StructField("run_id", T.StringType()),
])
CHURN_SCHEMA = T.StructType([
    T.StructField("customer_key", T.StringType()), T.StructField("domain", T.StringType()),
    T.StructField("churn_probability", T.DoubleType()), T.StructField("risk_tier", T.StringType()),
    T.StructField("top_reasons", T.ArrayType(T.StringType())), T.StructField("as_of_date", T.DateType()),
    T.StructField("run_id", T.StringType()),
])
QUARANTINE_SCHEMA = T.StructType([
    T.StructField("InvoiceNo", T.StringType()), T.StructField("_reason", T.StringType()),
    T.StructField("_batch_id", T.StringType()),
])


def monetary_values() -> list[float]:
    # A skewed spread with a tie, a zero and a net-return (negative) customer.
    values = [float(round(1000 / (i + 1) ** 1.3, 2)) for i in range(N_CUSTOMERS - 3)]
    return values + [values[5], 0.0, -12.5]


def value_rows(as_of: dt.date, run_id: str, scale: float = 1.0) -> list[tuple]:
    rows = []
    for i, m in enumerate(monetary_values()):
        tier = ("platinum", "gold", "iron", "lead")[min(3, i // 15)]
        segment = ("champions", "loyal", "at risk", "hibernating")[i % 4]
        rows.append((f"c{i:03d}", i, i % 7 + 1, m * scale, segment, "ABC"[min(2, i // 20)], m * 1.5,
                     tier, "growth" if i % 2 else "maturity", as_of, run_id))
    return rows


def churn_probabilities() -> list[float]:
    return [round(((i * 37) % 100) / 100.0, 2) for i in range(N_CUSTOMERS)]


def write_tables(spark, lake: Lake, *, churn_mlflow_run_id: str | None = None) -> None:
    lake.replace_partition(spark.createDataFrame(value_rows(OLD, OLD_RUN, scale=3.0), VALUE_SCHEMA),
                           "gold_customer_value", as_of_date=OLD)
    lake.replace_partition(spark.createDataFrame(value_rows(AS_OF, RUN), VALUE_SCHEMA),
                           "gold_customer_value", as_of_date=AS_OF)
    profiles = [(0, 10, 10 / 40, 0.7, {"monetary": 300.0, "recency_days": 12.0}, {"monetary": 1.5},
                 "big spenders", "retail", AS_OF, RUN),
                (1, 30, 30 / 40, 0.3, {"monetary": 40.0, "recency_days": 30.0}, {"monetary": -0.5},
                 "regulars", "retail", AS_OF, RUN),
                (0, 20, 1.0, 1.0, {"balance_mean": 5000.0}, {"balance_mean": 0.0}, "savers", "banking", AS_OF, RUN)]
    lake.replace_partition(spark.createDataFrame(profiles, PROFILE_SCHEMA), "gold_segment_profiles",
                           as_of_date=AS_OF)
    rules = [(["tea cup"], ["saucer"], 0.05, 0.8, 6.0, "retail", "product", AS_OF, RUN),
             (["bread", "butter"], ["jam"], 0.02, 0.5, 3.5, "retail", "product", AS_OF, RUN),
             (["<b>mug</b>"], ["spoon"], 0.03, 0.3, 1.2, "retail", "category", AS_OF, RUN)]
    lake.replace_partition(spark.createDataFrame(rules, RULE_SCHEMA), "gold_association_rules",
                           as_of_date=AS_OF)
    churn = [(f"c{i:03d}", "retail" if i < 40 else "banking", p,
              "high" if p >= 0.6 else "medium" if p >= 0.3 else "low", ["recency_days"], AS_OF, RUN)
             for i, p in enumerate(churn_probabilities())]
    lake.replace_partition(spark.createDataFrame(churn, CHURN_SCHEMA), "gold_churn_scores", as_of_date=AS_OF)
    started = dt.datetime(2024, 3, 1, 6, 0)
    ops = [(RUN, step, "succeeded", AS_OF, started + dt.timedelta(minutes=i), None, 1.5, 100, 92 if step == "ingest" else 100,
            8 if step == "ingest" else 0, {}, {}, metrics, "h", mlflow_id, None)
           for i, (step, metrics, mlflow_id) in enumerate([
               ("ingest", {"quarantine.online_retail.bad_price": 3.0,
                           "quarantine.online_retail.missing_invoice": 5.0}, None),
               ("refine", {}, None), ("value", {"customers": 60.0}, None),
               ("segment", {"retail_k": 2.0, "retail_silhouette": 0.4321, "banking_k": 2.0,
                            "banking_silhouette": float("nan")}, None),
               ("churn", {}, churn_mlflow_run_id)])]
    lake.merge(spark.createDataFrame(ops, OPS_SCHEMA), "ops_pipeline_runs", keys=["run_id", "step"])
    quarantine = [("1", "bad_price", "b1"), ("2", "bad_price", "b1"), ("3", "missing_invoice", "b1")]
    lake.append_batch(spark.createDataFrame(quarantine, QUARANTINE_SCHEMA), "quarantine_online_retail",
                      batch_id="b1")


#: An out-of-time gains table as the churn step logs it (10 deciles of 100, 100 churners).
OOT_CHURNERS = [40, 20, 12, 8, 6, 5, 4, 3, 1, 1]


def log_churn_evaluation(tracking_uri: str, artifact_root: Path) -> str:
    """An MLflow run holding ``churn/retail/gbt_gains.csv``, like the churn step's run."""
    import mlflow

    churners = np.array(OOT_CHURNERS)
    gains = pd.DataFrame({"decile": range(1, 11), "customers": 100, "churners": churners,
                          "mean_probability": np.linspace(0.9, 0.05, 10)})
    gains["churn_rate"] = gains["churners"] / 100
    gains["lift"] = gains["churn_rate"] / 0.1
    gains["capture_rate"] = gains["churners"] / 100
    gains["cumulative_customers_share"] = gains["customers"].cumsum() / 1000
    gains["cumulative_capture"] = gains["churners"].cumsum() / 100
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("report-test", artifact_location=artifact_root.as_uri())
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, gains.to_csv(index=False), "churn/retail/gbt_gains.csv")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture(scope="module")
def full_report(spark, tmp_path_factory):
    """A lake with every table the report reads, and the rendered report."""
    root = tmp_path_factory.mktemp("report")
    database = "crm_report_test"
    cfg = load_config(overrides=[f"lake.root={root / 'lake'}", f"lake.database={database}",
                                 f"report.out={root / 'reports'}", f"run.workdir={root}",
                                 "spark.shuffle_partitions=2"])
    lake = Lake(spark, root=str(root / "lake"), database=database)
    churn_run = log_churn_evaluation(f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts")
    write_tables(spark, lake, churn_mlflow_run_id=churn_run)
    html_path = report.render_report(spark, cfg)
    yield html_path, cfg, lake
    spark.sql(f"DROP DATABASE IF EXISTS {database} CASCADE")


# -- aggregates against numpy / pandas references --------------------------------------------
def test_global_rank_matches_a_sort(spark):
    values = [5.0, 1.0, 9.0, 3.0, 9.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.5]
    df = spark.createDataFrame([(v,) for v in values], "x double")
    ranked = report.with_global_rank(df, value_col="x", partitions=3).orderBy("rank").toPandas()
    expected = np.sort(values)[::-1]
    assert ranked["rank"].tolist() == list(range(1, len(values) + 1))
    np.testing.assert_allclose(ranked["x"], expected)
    np.testing.assert_allclose(ranked["cum_value"], np.cumsum(expected))
    assert set(ranked["n_total"]) == {len(values)}


def test_lorenz_points_match_numpy(spark):
    values = monetary_values()
    df = spark.createDataFrame([(v,) for v in values], "monetary double")
    points = report.lorenz_points(df, value_col="monetary", points=12, partitions=4).toPandas()
    clipped = np.sort(np.clip(values, 0, None))[::-1]
    cum_share = np.cumsum(clipped) / clipped.sum()
    n = len(values)
    ranks = np.rint(points["customer_share"] * n).astype(int)
    np.testing.assert_allclose(points["value_share"], cum_share[ranks - 1])
    assert len(points) == 12 and ranks.iloc[-1] == n
    assert points["value_share"].iloc[-1] == pytest.approx(1.0)
    assert points["value_share"].is_monotonic_increasing


def test_decile_gains_match_pandas(spark):
    rng = np.random.default_rng(7)
    score = rng.random(200)
    label = (rng.random(200) < score).astype(int)
    df = spark.createDataFrame(pd.DataFrame({"p": score, "y": label}))
    gains = report.decile_gains(df, score_col="p", label_col="y", partitions=3).toPandas()
    ref = pd.DataFrame({"p": score, "y": label}).sort_values("p", ascending=False).reset_index(drop=True)
    ref["decile"] = np.arange(len(ref)) // 20 + 1
    per = ref.groupby("decile").agg(customers=("y", "size"), positives=("y", "sum"), mean_score=("p", "mean"))
    np.testing.assert_array_equal(gains["customers"], per["customers"])
    np.testing.assert_allclose(gains["positives"], per["positives"])
    np.testing.assert_allclose(gains["mean_score"], per["mean_score"])
    np.testing.assert_allclose(gains["cum_gain"], per["positives"].cumsum() / label.sum())
    assert gains["cum_gain"].iloc[-1] == pytest.approx(1.0)


def test_quarantine_counts_from_step_metrics(spark):
    ops = spark.createDataFrame(
        [({"quarantine.berka_trans.bad_date": 2.0, "quarantine.berka_trans.bad.amount": 1.0, "rows": 9.0},),
         ({"quarantine.online_retail.bad_price": 4.0},), (None,)],
        "metrics map<string,double>")
    expected = spark.createDataFrame(
        [("berka_trans", "bad_date", 2), ("berka_trans", "bad.amount", 1), ("online_retail", "bad_price", 4)],
        "source string, reason string, rows long")
    assertDataFrameEqual(report.quarantine_from_metrics(ops), expected)


def test_segment_choices_come_from_the_latest_segment_run_of_the_date(spark):
    t0 = dt.datetime(2024, 3, 1, 6, 0)
    ops = spark.createDataFrame(
        [("segment", "succeeded", AS_OF, t0, {"retail_k": 4.0, "retail_silhouette": 0.3, "rows": 9.0}),
         ("segment", "succeeded", AS_OF, t0 + dt.timedelta(hours=1), {"retail_k": 5.0, "retail_silhouette": 0.5}),
         ("segment", "failed", AS_OF, t0 + dt.timedelta(hours=2), {"retail_k": 7.0}),
         ("segment", "succeeded", OLD, t0 + dt.timedelta(hours=3), {"retail_k": 3.0}),
         ("value", "succeeded", AS_OF, t0 + dt.timedelta(hours=4), {"retail_k": 9.0})],
        "step string, status string, as_of_date date, started_at timestamp, metrics map<string,double>")
    assert report.segment_choices(ops, as_of=AS_OF) == {"retail": {"k": 5.0, "silhouette": 0.5}}
    assert report.segment_choices(ops) == {"retail": {"k": 3.0}}
    assert report.segment_choices(ops.filter("step = 'value'")) == {}


def test_latest_partition_picks_latest_date_and_run(spark):
    df = spark.createDataFrame([(1, OLD, "r9"), (2, AS_OF, "r1"), (3, AS_OF, "r2")],
                               "x int, as_of_date date, run_id string")
    assert [r.x for r in report.latest_partition(df).collect()] == [3]
    assert [r.x for r in report.latest_partition(df, as_of=OLD).collect()] == [1]
    with pytest.raises(ValueError, match="run_id"):
        report.latest_partition(df.drop("run_id"))


def test_group_counts_shares(spark):
    df = spark.createDataFrame([("a", 10.0), ("a", -5.0), ("b", 30.0)], "g string, m double")
    rows = {r["g"]: r for r in report.group_counts(df, group_col="g", value_col="m").collect()}
    assert rows["a"]["customers"] == 2 and rows["a"]["share_customers"] == pytest.approx(2 / 3)
    assert rows["a"]["share_value"] == pytest.approx(0.25)  # net returns count as no value


# -- the page --------------------------------------------------------------------------------
def test_report_has_every_section_with_its_plots(full_report):
    html_path, _, _ = full_report
    text = html_path.read_text(encoding="utf-8")
    for title in ("Data quality", "Pareto", "RFM segments", "Value tiers", "Segment profiles",
                  "Cross-selling rules", "Churn early warning"):
        assert title in text
    assert 'class="missing"' not in text
    images = re.findall(r'<img src="([^"]+)"', text)
    expected = {"quarantine.png", "pareto.png", "rfm_segments.png", "value_tiers.png", "segments.png",
                "churn_gains_banking.png", "churn_gains_retail.png", "churn_risk_banking.png",
                "churn_risk_retail.png"}
    assert set(images) == expected
    for name in images:
        assert "/" not in name and (html_path.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"as of {AS_OF.isoformat()} (run {RUN})" in text and OLD_RUN not in text
    assert "&lt;b&gt;mug&lt;/b&gt;" in text and "<b>mug</b>" not in text  # table cells are escaped
    assert "bread, butter" in text and text.index("tea cup") < text.index("bread, butter")
    assert "missing_invoice" in text  # quarantine counts of the run's step metrics
    assert "mean monetary" in text and "mean balance_mean" in text and "savers" in text  # profiles per domain
    # the segment step's choice of k per domain, from its recorded metrics
    assert "k = 2 segments chosen, silhouette 0.432;" in text and "k = 2 segments chosen;" in text
    # The churn step's out-of-time gains, read from its MLflow run: 40 of 100 churners in decile 1.
    assert "<b>40%</b>of actual churners in the riskiest decile, out-of-time test (gbt, lift 4.0)" in text


def test_pareto_headline_matches_numpy(full_report):
    html_path, _, _ = full_report
    clipped = np.sort(np.clip(monetary_values(), 0, None))[::-1]
    top20 = np.cumsum(clipped)[int(0.2 * N_CUSTOMERS) - 1] / clipped.sum()
    assert f"<b>{top20:.0%}</b>of value from the top 20% of customers" in html_path.read_text()


def test_report_step_records_itself_and_names_missing_tables(spark, tmp_path):
    """The step on a lake with only customer value: one run of the runner, sections say what is missing.

    The report is the run's first step and a step run is recorded when it ends, so it finds no
    ``ops_pipeline_runs`` yet and says so.
    """
    import mlflow

    from crm_mining.pipeline import run_pipeline

    database = "crm_report_sparse"
    cfg = load_config(overrides=[f"lake.root={tmp_path / 'lake'}", f"lake.database={database}",
                                 f"report.out={tmp_path / 'reports'}", f"run.workdir={tmp_path}",
                                 f"run.as_of={AS_OF.isoformat()}", "spark.shuffle_partitions=2"])
    lake = Lake(spark, root=str(tmp_path / "lake"), database=database)
    lake.replace_partition(spark.createDataFrame(value_rows(AS_OF, RUN), VALUE_SCHEMA),
                           "gold_customer_value", as_of_date=AS_OF)
    try:
        run_id = run_pipeline(spark, cfg, steps=["report"])
        row = lake.read("ops_pipeline_runs").filter(f"run_id = '{run_id}' AND step = 'report'").first()
    finally:
        spark.sql(f"DROP DATABASE IF EXISTS {database} CASCADE")
    text = (tmp_path / "reports" / "index.html").read_text()
    for name in ("ops_pipeline_runs", "gold_segment_profiles", "gold_association_rules", "gold_churn_scores"):
        assert f"Table {database}.{name} is missing" in text
    assert 'src="pareto.png"' in text and 'src="segments.png"' not in text and "churn_gains" not in text
    assert row["status"] == "succeeded"
    assert row["input_versions"] == {"gold_customer_value": 0}
    assert row["metrics"]["sections_missing"] == 4.0
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(row["mlflow_run_id"], "report")}
    assert {"report/index.html", "report/pareto.png", "report/rfm_segments.png"} <= artifacts


# -- headless browser --------------------------------------------------------------------------
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var out = Array.prototype.map.call(document.images, function (img) {
    return {src: img.getAttribute('src'), complete: img.complete, width: img.naturalWidth,
            shown: img.getBoundingClientRect().width};
  });
  var pre = document.createElement('pre');
  pre.id = 'img-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium on PATH (apt-get install -y chromium); the page is not rendered")


def test_every_plot_is_displayed_in_a_browser(full_report, tmp_path):
    browser = chromium()
    html_path, _, _ = full_report
    # A copy beside the original, so the relative image paths resolve exactly as for a reader.
    probe = html_path.parent / "_render_check.html"
    probe.write_text(html_path.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    try:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-dev-shm-usage", "--allow-file-access-from-files",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
             "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    match = re.search(r'<pre id="img-check">(.*?)</pre>', done.stdout, re.S)
    assert match, f"the page did not finish loading in Chromium: {done.stderr[-2000:]}"
    images = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(images) == 9
    broken = [img["src"] for img in images if not (img["complete"] and img["width"] > 0 and img["shown"] > 0)]
    assert not broken, f"plots not displayed: {broken}"
