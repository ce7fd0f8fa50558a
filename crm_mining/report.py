"""The report room: one static HTML page with PNG plots of the latest run, readable without Spark.

Spark does every aggregation on the lake's tables; only small results reach the driver (a few
hundred curve points, one row per segment, tier, decile or rule). Plots are drawn with
matplotlib's object API (no pyplot state, no display needed) and saved as PNG files next to
``index.html``, which refers to them by relative paths, so the folder can be copied, zipped or
served as it is. A section whose table is missing says so in the page instead of a plot.

Sections: data quality (steps of the run, quarantined rows by source and reason), Pareto
(Lorenz curve of customer value, ABC classes), RFM segments, value tiers, segment profiles,
cross-selling rules, churn (cumulative gains by score decile, risk tiers).

Examples
--------
>>> from crm_mining.report import render_report
>>> render_report(spark, config)          # doctest: +SKIP
PosixPath('/home/me/crm/reports/index.html')
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import html
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from .config import Config
from .lake import Lake
from .pipeline import OPS_TABLE, StepContext, StepResult

log = logging.getLogger(__name__)

#: Tables the report reads, in section order.
REPORT_TABLES = (
    OPS_TABLE, "gold_customer_value", "gold_segment_profiles", "gold_association_rules",
    "gold_churn_scores",
)
QUARANTINE_PREFIX = "quarantine_"
METRIC_QUARANTINE = "quarantine."
#: Tier orders for plots (best first); unknown labels follow in alphabetical order.
TIER_ORDER = ("platinum", "gold", "iron", "lead")
RISK_ORDER = ("high", "medium", "low")
PALETTE = ("#1b4f72", "#2e86c1", "#85c1e9", "#d4e6f1", "#f5b041", "#cb4335", "#7d3c98", "#229954")


# -- pure aggregations: DataFrame -> DataFrame -----------------------------------------------
def latest_partition(df: DataFrame, *, date_col: str = "as_of_date", run_col: str = "run_id",
                     as_of: dt.date | None = None) -> DataFrame:
    """Keep the rows of one as-of date (``as_of``, else the latest) and its latest run.

    Run ids start with their UTC start time, so the greatest run id of a date is its latest run.

    Examples
    --------
    >>> latest_partition(spark.table("crm.gold_customer_value")).count()  # doctest: +SKIP
    """
    for col in (date_col, run_col):
        if col not in df.columns:
            raise ValueError(f"latest_partition: column '{col}' not in {df.columns}")
    chosen = df.filter(F.col(date_col) == F.lit(as_of)) if as_of else df
    # One small aggregate finds both: the greatest (date, run id) pair.
    last = chosen.agg(F.max(F.struct(F.col(date_col).alias("d"), F.col(run_col).alias("r"))).alias("m")).first()["m"]
    if last is None:
        return chosen.limit(0)
    return chosen.filter((F.col(date_col) == F.lit(last["d"])) & (F.col(run_col) == F.lit(last["r"])))


def with_global_rank(df: DataFrame, *, value_col: str, keep: Sequence[str] = (),
                     partitions: int = 8) -> DataFrame:
    """Rank rows by ``value_col`` (largest first) with running sums, without one-partition windows.

    Rows are range-partitioned by value, ranked and summed within each partition, then shifted
    by the counts and sums of the partitions before them (a tiny table, broadcast). Returns
    ``value_col``, the ``keep`` columns, ``rank`` (1..n), ``cum_value``, ``n_total`` and
    ``value_total``. Rows with a null value are dropped.

    Examples
    --------
    >>> with_global_rank(df, value_col="monetary").orderBy("rank").first()["rank"]  # doctest: +SKIP
    1
    """
    missing = [c for c in (value_col, *keep) if c not in df.columns]
    if missing:
        raise ValueError(f"with_global_rank: columns {missing} not in {df.columns}")
    if not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions must be a positive int, got {partitions!r}")
    v = F.col(value_col)
    ordered = (df.select(v.cast("double").alias(value_col), *keep).filter(v.isNotNull())
               .repartitionByRange(partitions, v.desc()).withColumn("_part", F.spark_partition_id()))
    within = Window.partitionBy("_part").orderBy(v.desc())
    local = (ordered.withColumn("_rank", F.row_number().over(within))
             .withColumn("_cum", F.sum(v).over(within.rowsBetween(Window.unboundedPreceding, 0))))
    before = Window.orderBy("_part").rowsBetween(Window.unboundedPreceding, -1)
    everything = Window.partitionBy(F.lit(1))
    offsets = (local.groupBy("_part").agg(F.count(F.lit(1)).alias("_n"), F.sum(v).alias("_s"))
               .select("_part",
                       F.coalesce(F.sum("_n").over(before), F.lit(0)).alias("_n_before"),
                       F.coalesce(F.sum("_s").over(before), F.lit(0.0)).alias("_s_before"),
                       F.sum("_n").over(everything).alias("n_total"),
                       F.sum("_s").over(everything).alias("value_total")))
    return local.join(F.broadcast(offsets), "_part").select(
        v, *keep, (F.col("_n_before") + F.col("_rank")).alias("rank"),
        (F.col("_s_before") + F.col("_cum")).alias("cum_value"), "n_total", "value_total")


def lorenz_points(df: DataFrame, *, value_col: str = "monetary", points: int = 200,
                  partitions: int = 8) -> DataFrame:
    """The Pareto (concentration) curve: share of value held by the top share of customers.

    Customers are sorted by value, largest first; negative values (net returns) count as 0 and
    customers without a value are left out.
    About ``points`` evenly spaced rows are kept, always including the last (1, 1).
    Columns: ``customer_share``, ``value_share``.

    Examples
    --------
    >>> pts = lorenz_points(gold_value, value_col="monetary", points=100).toPandas()  # doctest: +SKIP
    """
    if not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an int >= 2, got {points!r}")
    # Customers without a value (e.g. bank-only customers have no monetary) are not on the curve.
    clipped = df.filter(F.col(value_col).isNotNull()).select(
        F.greatest(F.col(value_col).cast("double"), F.lit(0.0)).alias(value_col))
    ranked = with_global_rank(clipped, value_col=value_col, partitions=partitions)
    step = F.floor(F.col("rank") * points / F.col("n_total"))
    previous = F.floor((F.col("rank") - 1) * points / F.col("n_total"))
    total = F.when(F.col("value_total") > 0, F.col("value_total"))
    return (ranked.filter(step != previous)
            .select((F.col("rank") / F.col("n_total")).alias("customer_share"),
                    F.coalesce(F.col("cum_value") / total, F.col("rank") / F.col("n_total"))
                    .alias("value_share"))
            .orderBy("customer_share"))


def decile_gains(df: DataFrame, *, score_col: str = "churn_probability", label_col: str | None = None,
                 partitions: int = 8) -> DataFrame:
    """Cumulative gains by score decile (decile 1 = highest scores).

    Without ``label_col`` the positives are the expected ones (the sum of probabilities), which
    is what can be known on the as-of date; with a 0/1 ``label_col`` they are the observed ones.
    Columns: ``decile``, ``customers``, ``mean_score``, ``positives``, ``cum_customer_share``,
    ``cum_gain`` (share of all positives found in deciles 1..d), ``lift``.

    Examples
    --------
    >>> decile_gains(scores).toPandas()  # doctest: +SKIP
    """
    for col in (score_col, label_col):
        if col is not None and col not in df.columns:
            raise ValueError(f"decile_gains: column '{col}' not in {df.columns}")
    positive = F.col(label_col) if label_col else F.col(score_col)
    scored = df.select(F.col(score_col).cast("double").alias("_score"), positive.cast("double").alias("_pos"))
    ranked = with_global_rank(scored, value_col="_score", keep=["_pos"], partitions=partitions)
    deciles = ranked.withColumn("decile", F.ceil(F.col("rank") * 10 / F.col("n_total")).cast("int"))
    per_decile = deciles.groupBy("decile").agg(F.count(F.lit(1)).alias("customers"),
                                               F.avg("_score").alias("mean_score"),
                                               F.sum("_pos").alias("positives"))
    return _cumulate(per_decile)


def _cumulate(per_decile: DataFrame) -> DataFrame:
    # At most ten rows: one partition is right here.
    upto = Window.orderBy("decile").rowsBetween(Window.unboundedPreceding, 0)
    every = Window.partitionBy(F.lit(1))
    cum_customers = F.sum("customers").over(upto) / F.sum("customers").over(every)
    cum_gain = F.sum("positives").over(upto) / F.sum("positives").over(every)
    return (per_decile.withColumn("cum_customer_share", cum_customers)
            .withColumn("cum_gain", cum_gain)
            .withColumn("lift", F.col("cum_gain") / F.col("cum_customer_share"))
            .orderBy("decile"))


def group_counts(df: DataFrame, *, group_col: str, value_col: str | None = None) -> DataFrame:
    """Customers per group, with the group's share of customers and of ``value_col``.

    Columns: ``group_col``, ``customers``, ``share_customers`` and, with ``value_col``,
    ``value`` and ``share_value``.

    Examples
    --------
    >>> group_counts(gold_value, group_col="rfm_segment", value_col="monetary")  # doctest: +SKIP
    """
    if group_col not in df.columns:
        raise ValueError(f"group_counts: column '{group_col}' not in {df.columns}")
    aggs = [F.count(F.lit(1)).alias("customers")]
    if value_col is not None:
        aggs.append(F.sum(F.greatest(F.col(value_col).cast("double"), F.lit(0.0))).alias("value"))
    grouped = df.groupBy(F.coalesce(F.col(group_col).cast("string"), F.lit("(none)")).alias(group_col)).agg(*aggs)
    every = Window.partitionBy(F.lit(1))
    out = grouped.withColumn("share_customers", F.col("customers") / F.sum("customers").over(every))
    if value_col is not None:
        out = out.withColumn("share_value", F.col("value") / F.sum("value").over(every))
    return out


def quarantine_from_metrics(ops: DataFrame) -> DataFrame:
    """Quarantined rows by source and reason from ``metrics['quarantine.<source>.<reason>']``.

    Columns: ``source``, ``reason``, ``rows``.
    """
    exploded = ops.select(F.explode_outer("metrics").alias("key", "value"))
    parts = F.split(F.col("key"), r"\.", 3)
    return (exploded.filter(F.col("key").startswith(METRIC_QUARANTINE))
            .select(parts.getItem(1).alias("source"), parts.getItem(2).alias("reason"),
                    F.col("value").cast("long").alias("rows"))
            .filter(F.col("reason").isNotNull())
            .groupBy("source", "reason").agg(F.sum("rows").alias("rows")))


def quarantine_from_table(df: DataFrame, *, source: str, reason_col: str = "_reason") -> DataFrame:
    """Rows of one ``quarantine_<source>`` table by reason. Columns: ``source``, ``reason``, ``rows``."""
    if reason_col not in df.columns:
        raise ValueError(f"quarantine table of '{source}' has no '{reason_col}' column")
    kind = F.split(F.col(reason_col), ":", 2).getItem(0)  # "bad_price: -1.0" counts as bad_price
    return df.groupBy(F.lit(source).alias("source"), kind.alias("reason")).agg(F.count(F.lit(1)).alias("rows"))


def latest_step_runs(ops: DataFrame, *, exclude: Sequence[str] = ("report",)) -> DataFrame:
    """The latest record of every step in ``ops_pipeline_runs`` (by start time)."""
    newest = Window.partitionBy("step").orderBy(F.col("started_at").desc_nulls_last())
    return (ops.filter(~F.col("step").isin(list(exclude)))
            .withColumn("_n", F.row_number().over(newest)).filter(F.col("_n") == 1).drop("_n"))


def segment_choices(ops: DataFrame, *, as_of: dt.date | None = None) -> dict[str, dict[str, float]]:
    """The chosen k and its silhouette per domain, from the latest succeeded segment step
    (of ``as_of`` when given): ``{domain: {"k": ..., "silhouette": ...}}``.

    The segment step records them as the metrics ``<domain>_k`` and ``<domain>_silhouette``.
    """
    runs = ops.filter((F.col("step") == "segment") & (F.col("status") == "succeeded"))
    if as_of is not None:
        runs = runs.filter(F.col("as_of_date") == F.lit(as_of))
    latest = runs.orderBy(F.col("started_at").desc_nulls_last()).select("metrics").first()
    out: dict[str, dict[str, float]] = {}
    for name, value in ((latest and latest["metrics"]) or {}).items():
        domain, _, what = name.rpartition("_")
        if domain and what in ("k", "silhouette") and value is not None:
            out.setdefault(domain, {})[what] = float(value)
    return out


def top_rules(rules: DataFrame, *, limit: int = 20) -> DataFrame:
    """The ``limit`` rules with the highest lift (then confidence), items joined as text."""
    def as_text(name: str):
        col = F.col(name)
        return F.array_join(col, ", ") if dict(rules.dtypes).get(name, "").startswith("array") else col

    extras = [c for c in ("domain", "level", "leverage", "conviction") if c in rules.columns]
    return (rules.orderBy(F.col("lift").desc(), F.col("confidence").desc(), F.col("support").desc())
            .limit(limit)
            .select(as_text("antecedent").alias("antecedent"), as_text("consequent").alias("consequent"),
                    "support", "confidence", "lift", *extras))


def probability_histogram(df: DataFrame, *, score_col: str = "churn_probability", bins: int = 20) -> DataFrame:
    """Counts of ``score_col`` in ``bins`` equal bins over [0, 1]. Columns: ``bin_start``, ``customers``."""
    bucket = F.least(F.floor(F.col(score_col) * bins), F.lit(bins - 1))
    return (df.filter(F.col(score_col).isNotNull()).groupBy(bucket.alias("_b"))
            .agg(F.count(F.lit(1)).alias("customers"))
            .select((F.col("_b") / bins).alias("bin_start"), "customers").orderBy("bin_start"))


def churn_evaluation_gains(mlflow_run_id: str, *, tracking_uri: str | None = None) -> dict[str, dict[str, Any]]:
    """The out-of-time gains tables of a churn step run, by domain and algorithm (pandas, ten rows each).

    Reads the ``churn/<domain>/<algorithm>_gains.csv`` artifacts the churn step logs.
    """
    import tempfile

    import mlflow
    import mlflow.artifacts
    import pandas as pd

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for folder in client.list_artifacts(mlflow_run_id, "churn"):
            if not folder.is_dir:
                continue
            domain = folder.path.split("/")[-1]
            for item in client.list_artifacts(mlflow_run_id, folder.path):
                if item.path.endswith("_gains.csv"):
                    local = mlflow.artifacts.download_artifacts(run_id=mlflow_run_id, artifact_path=item.path,
                                                                dst_path=tmp, tracking_uri=tracking_uri)
                    algorithm = item.path.split("/")[-1][: -len("_gains.csv")]
                    found.setdefault(domain, {})[algorithm] = pd.read_csv(local)
    return found


# -- plots (matplotlib object API: no global state, no display) ------------------------------
def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path.name


def _ordered(labels: Sequence[str], preferred: Sequence[str]) -> list[str]:
    known = [p for p in preferred if p in labels]
    return known + sorted(l for l in labels if l not in preferred)


def plot_lorenz(points, path: Path, *, top_share: float | None) -> str:
    fig, ax = _figure(6.0, 4.5)
    xs = [0.0] + [float(x) for x in points["customer_share"]]
    ys = [0.0] + [float(y) for y in points["value_share"]]
    ax.plot(xs, ys, color=PALETTE[0], lw=2, label="customers, largest value first")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="equal value")
    if top_share is not None:
        ax.axvline(0.2, color=PALETTE[5], lw=1)
        ax.annotate(f"top 20% → {top_share:.0%} of value", (0.2, top_share),
                    xytext=(0.3, max(0.1, top_share - 0.25)), arrowprops={"arrowstyle": "->"})
    ax.set_xlabel("share of customers")
    ax.set_ylabel("share of value (monetary)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.set_title("Pareto curve of customer value")
    return _save(fig, path)


def plot_bars(labels: Sequence[str], values: Sequence[float], path: Path, *, title: str, xlabel: str,
              second: Sequence[float] | None = None, second_label: str = "", first_label: str = "") -> str:
    """Horizontal bars, optionally a second series beside the first (shares)."""
    fig, ax = _figure(7.0, max(2.5, 0.42 * len(labels) + 1.2))
    ys = list(range(len(labels)))
    height = 0.4 if second is not None else 0.7
    ax.barh([y - (height / 2 if second is not None else 0) for y in ys], values, height=height,
            color=PALETTE[1], label=first_label or None)
    if second is not None:
        ax.barh([y + height / 2 for y in ys], second, height=height, color=PALETTE[4], label=second_label)
        ax.legend(loc="lower right")
    ax.set_yticks(ys)
    ax.set_yticklabels([str(l) for l in labels])
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, path)


def plot_gains(gains, path: Path, *, evaluated: dict | None = None) -> str:
    """Cumulative gains of today's scores (expected churners), with the out-of-time test's
    observed gains per algorithm when given, and the mean probability per decile."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), dpi=100)
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    xs = [0.0] + [float(x) for x in gains["cum_customer_share"]]
    ys = [0.0] + [float(y) for y in gains["cum_gain"]]
    ax.plot(xs, ys, marker="o", color=PALETTE[5], label="expected, today's scores")
    for i, (algorithm, table) in enumerate(sorted((evaluated or {}).items())):
        ax.plot([0.0, *table["cumulative_customers_share"]], [0.0, *table["cumulative_capture"]], marker=".",
                color=PALETTE[(i + 1) % len(PALETTE)], label=f"observed, out-of-time test ({algorithm})")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", label="random")
    ax.set_xlabel("share of customers contacted (riskiest first)")
    ax.set_ylabel("share of churners reached")
    ax.set_title("Cumulative gains")
    ax.legend(loc="lower right", fontsize="small")
    ax2.bar([int(d) for d in gains["decile"]], [float(m) for m in gains["mean_score"]], color=PALETTE[1])
    ax2.set_xlabel("score decile (1 = riskiest)")
    ax2.set_ylabel("mean churn probability")
    ax2.set_xticks(range(1, 11))
    ax2.set_title("Churn probability by decile")
    return _save(fig, path)


def plot_histogram(hist, path: Path, *, bins: int, title: str, xlabel: str) -> str:
    fig, ax = _figure(7.0, 3.5)
    ax.bar([float(b) for b in hist["bin_start"]], [int(c) for c in hist["customers"]], width=1.0 / bins,
           align="edge", color=PALETTE[5], edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("customers")
    ax.set_title(title)
    return _save(fig, path)


def plot_quality(quarantine, path: Path) -> str:
    labels = [f"{s}: {r}" for s, r in zip(quarantine["source"], quarantine["reason"])]
    return plot_bars(labels, [int(x) for x in quarantine["rows"]], path,
                     title="Quarantined rows by source and reason", xlabel="rows")


# -- HTML --------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 1 else f"{value:,.2f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(value.items()))
    return str(value)


def html_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """An HTML table of a few rows (dicts); values escaped, numbers right-aligned."""
    if not rows:
        return '<p class="missing">No rows.</p>'
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f'<td{" class=num" if numeric else ""}>{html.escape(_fmt(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def profile_row(row: dict) -> dict:
    """A segment profile for the page: plain columns first, then one ``mean <feature>`` per feature."""
    hidden = {"as_of_date", "run_id", "domain", "feature_medians", "feature_z", "feature_names"}
    out = {k: v for k, v in row.items() if k not in hidden and not isinstance(v, (dict, list))}
    for feature, mean in sorted((row.get("feature_means") or {}).items()):
        out[f"mean {feature}"] = mean
    return out


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def _missing(what: str) -> str:
    return f'<p class="missing">{html.escape(what)}</p>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;color:#1c2833;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #d4e6f1;padding-bottom:.2rem;margin-top:2.2rem}
.meta{color:#566573}.missing{background:#fdf2e9;border-left:4px solid #f5b041;padding:.5rem .8rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
th,td{border:1px solid #d5d8dc;padding:.25rem .5rem;text-align:left}th{background:#eaf2f8}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;display:block;margin:.6rem 0}
.kpi{display:inline-block;margin:.3rem 1.2rem .3rem 0}.kpi b{font-size:1.4rem;display:block}
nav a{margin-right:.8rem}
"""


@dataclasses.dataclass
class Section:
    """One part of the page: an anchor, a title and its HTML body."""

    anchor: str
    title: str
    body: str
    ok: bool = True


def page(title: str, meta: str, sections: Sequence[Section]) -> str:
    """The whole page: a title, a line of context, a table of contents and the sections."""
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    parts = [f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for s in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"meta\">{meta}</p><nav>{nav}</nav>"
            + "".join(parts) + "</body></html>\n")


# -- the report: reads, sections, files --------------------------------------------------------
@dataclasses.dataclass
class ReportBuilder:
    """Reads the latest partitions from the lake and builds the sections into ``out``."""

    lake: Lake
    out: Path
    as_of: dt.date | None = None
    top_rules: int = 20
    curve_points: int = 200
    partitions: int = 8
    tracking_uri: str | None = None
    evaluation_gains: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    inputs: dict[str, int | None] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    shown: dict[str, tuple[str, Any]] = dataclasses.field(default_factory=dict)

    def _latest(self, name: str) -> DataFrame | None:
        if not self.lake.exists(name):
            return None
        self.inputs[name] = self.lake.version(name)
        df = self.lake.read(name)
        if "as_of_date" not in df.columns or "run_id" not in df.columns:
            return df
        rows = latest_partition(df, as_of=self.as_of)
        head = rows.select("as_of_date", "run_id").first()
        if head is None:
            return None
        self.shown[name] = (head["as_of_date"], head["run_id"])
        return rows

    def _png(self, name: str) -> Path:
        return self.out / name

    def quality(self) -> Section:
        parts, ok = [], False
        if self.lake.exists(OPS_TABLE):
            self.inputs[OPS_TABLE] = self.lake.version(OPS_TABLE)
            steps = latest_step_runs(self.lake.read(OPS_TABLE)).cache()
            rows = [r.asDict() for r in steps.select(
                "step", "status", "as_of_date", "run_id", "rows_in", "rows_out", "rows_quarantined",
                F.round("duration_s", 1).alias("duration_s"), "error").collect()]
            order = {s: i for i, s in enumerate(("ingest", "refine", "customer360", "value", "segment",
                                                 "basket", "churn"))}
            rows.sort(key=lambda r: order.get(r["step"], 99))
            parts.append("<p>The latest run of every step. The input steps check that rows in = "
                         "rows accepted + rows quarantined.</p>")
            parts.append(html_table(rows))
            quarantine = quarantine_from_metrics(steps)
            ok = True
        else:
            parts.append(_missing(f"Table {self.lake.qualified(OPS_TABLE)} is missing: no step run has been recorded yet."))
            quarantine = None
        q = quarantine.orderBy(F.col("rows").desc()).limit(30).toPandas() if quarantine is not None else None
        if quarantine is not None:
            steps.unpersist()
        if q is None or q.empty:
            q = self._quarantine_tables()
        if q is not None and not q.empty:
            self.metrics["quarantined_rows"] = float(q["rows"].sum())
            parts.append("<h3>Quarantine</h3>")
            parts.append(_img(plot_quality(q, self._png("quarantine.png")), "quarantined rows by reason"))
            parts.append(html_table(q.to_dict("records")))
        else:
            parts.append(_missing("No quarantined rows recorded (no quarantine_* table and no "
                                  "quarantine counts in the step metrics)."))
        return Section("quality", "Data quality", "".join(parts), ok)

    def _quarantine_tables(self):
        names = [n for n in self.lake.tables() if n.startswith(QUARANTINE_PREFIX)]
        frames = []
        for name in names:
            df = self.lake.read(name)
            if "_reason" in df.columns:
                self.inputs[name] = self.lake.version(name)
                frames.append(quarantine_from_table(df, source=name[len(QUARANTINE_PREFIX):]))
        if not frames:
            return None
        union = frames[0]
        for other in frames[1:]:
            union = union.unionByName(other)
        return union.orderBy(F.col("rows").desc()).limit(30).toPandas()

    def value(self) -> list[Section]:
        df = self._latest("gold_customer_value")
        table = self.lake.qualified("gold_customer_value")
        if df is None:
            note = _missing(f"Table {table} is missing or empty: run the value step.")
            return [Section("pareto", "Pareto: customer value concentration", note, False),
                    Section("rfm", "RFM segments", note, False),
                    Section("tiers", "Value tiers", note, False)]
        df = df.cache()
        sections = [self._pareto(df), self._rfm(df), self._tiers(df)]
        df.unpersist()
        return sections

    def _pareto(self, df: DataFrame) -> Section:
        import numpy as np

        pts = lorenz_points(df, value_col="monetary", points=self.curve_points,
                            partitions=self.partitions).toPandas()
        if pts.empty:
            return Section("pareto", "Pareto: customer value concentration", _missing("No customers."), False)
        top = float(np.interp(0.2, [0.0, *pts["customer_share"]], [0.0, *pts["value_share"]]))
        self.metrics["pareto_top20_value_share"] = top
        kpis = [f'<span class="kpi"><b>{top:.0%}</b>of value from the top 20% of customers</span>']
        parts = ["".join(kpis), _img(plot_lorenz(pts, self._png("pareto.png"), top_share=top), "Pareto curve")]
        if "abc_class" in df.columns:
            abc = group_counts(df, group_col="abc_class", value_col="monetary").orderBy("abc_class")
            parts.append("<h3>ABC classes</h3>")
            parts.append(html_table([r.asDict() for r in abc.collect()]))
        return Section("pareto", "Pareto: customer value concentration", "".join(parts))

    def _rfm(self, df: DataFrame) -> Section:
        if "rfm_segment" not in df.columns:
            return Section("rfm", "RFM segments", _missing("gold_customer_value has no rfm_segment column."), False)
        rated = df.filter(F.col("rfm_segment").isNotNull())  # customers with purchases
        seg = group_counts(rated, group_col="rfm_segment", value_col="monetary").orderBy(F.col("customers").desc())
        rows = [r.asDict() for r in seg.collect()]
        img = plot_bars([r["rfm_segment"] for r in rows], [r["share_customers"] for r in rows],
                        self._png("rfm_segments.png"), title="RFM segments", xlabel="share",
                        first_label="customers", second=[r["share_value"] for r in rows],
                        second_label="value (monetary)")
        return Section("rfm", "RFM segments", _img(img, "RFM segment sizes") + html_table(rows))

    def _tiers(self, df: DataFrame) -> Section:
        if "value_tier" not in df.columns:
            return Section("tiers", "Value tiers", _missing("gold_customer_value has no value_tier column."), False)
        value_col = "clv_predicted" if "clv_predicted" in df.columns else "monetary"
        tiers = {r["value_tier"]: r.asDict() for r in group_counts(df, group_col="value_tier",
                                                                  value_col=value_col).collect()}
        rows = [tiers[t] for t in _ordered(list(tiers), TIER_ORDER)]
        img = plot_bars([r["value_tier"] for r in rows], [r["share_customers"] for r in rows],
                        self._png("value_tiers.png"), title="Customer value tiers", xlabel="share",
                        first_label="customers", second=[r["share_value"] for r in rows],
                        second_label=f"value ({value_col})")
        extra = ""
        if "lifecycle_stage" in df.columns:
            stages = group_counts(df, group_col="lifecycle_stage").orderBy(F.col("customers").desc())
            extra = "<h3>Lifecycle stages</h3>" + html_table([r.asDict() for r in stages.collect()])
        return Section("tiers", "Value tiers", _img(img, "value tiers") + html_table(rows) + extra)

    def segments(self) -> Section:
        df = self._latest("gold_segment_profiles")
        if df is None:
            return Section("segments", "Segment profiles", _missing(
                f"Table {self.lake.qualified('gold_segment_profiles')} is missing or empty: run the segment step."), False)
        order = [F.col(c) for c in ("domain",) if c in df.columns] + [F.col("size").desc()]
        rows = [r.asDict() for r in df.orderBy(*order).limit(100).collect()]  # one row per segment
        labels = [" · ".join(str(r[c]) for c in ("domain", "segment_id", "segment_name") if r.get(c) is not None)
                  for r in rows]
        second = [r.get("share_value") or 0.0 for r in rows] if "share_value" in df.columns else None
        img = plot_bars(labels, [r.get("share_customers") or 0.0 for r in rows], self._png("segments.png"),
                        title="Segments: share of customers and of value (per domain)", xlabel="share",
                        first_label="customers", second=second, second_label="value")
        self.metrics["segments"] = float(len(rows))
        shown_as_of = self.shown.get("gold_segment_profiles", (None, None))[0]
        choices = (segment_choices(self.lake.read(OPS_TABLE), as_of=shown_as_of)
                   if self.lake.exists(OPS_TABLE) else {})
        parts = [_img(img, "segment sizes")]
        for domain in dict.fromkeys(r.get("domain") for r in rows):
            members = [r for r in rows if r.get("domain") == domain]
            if domain is not None:
                parts.append(f"<h3>{html.escape(str(domain))}</h3>")
            choice = choices.get(str(domain), {})
            if "k" in choice:
                score = choice.get("silhouette")
                silhouette = f", silhouette {score:.3f}" if score is not None and score == score else ""  # NaN: none
                parts.append(f"<p>k = {int(choice['k'])} segments chosen{silhouette}; the sweep over k is in "
                             f"the MLflow run of the segment step.</p>")
            parts.append(html_table([profile_row(r) for r in members]))
        return Section("segments", "Segment profiles", "".join(parts))

    def rules(self) -> Section:
        df = self._latest("gold_association_rules")
        if df is None:
            return Section("rules", "Cross-selling rules", _missing(
                f"Table {self.lake.qualified('gold_association_rules')} is missing or empty: run the basket step."), False)
        rows = [r.asDict() for r in top_rules(df, limit=self.top_rules).collect()]
        total = df.count()
        self.metrics["rules"] = float(total)
        intro = f"<p>{total:,} rules; the {len(rows)} with the highest lift:</p>"
        return Section("rules", "Cross-selling rules", intro + html_table(rows))

    def churn(self) -> Section:
        df = self._latest("gold_churn_scores")
        self.evaluation_gains = self._churn_evaluation() if df is not None else {}
        if df is None:
            return Section("churn", "Churn early warning", _missing(
                f"Table {self.lake.qualified('gold_churn_scores')} is missing or empty: run the churn step."), False)
        df = df.cache()
        parts = []
        domains = ([r[0] for r in df.select("domain").distinct().orderBy("domain").collect()]
                   if "domain" in df.columns else [None])
        for domain in domains:
            scores = df if domain is None else df.filter(F.col("domain") == domain)
            suffix = "" if domain is None else f"_{domain}"
            title = "" if domain is None else f"<h3>{html.escape(str(domain))}</h3>"
            gains = decile_gains(scores, score_col="churn_probability", partitions=self.partitions).toPandas()
            evaluated = self.evaluation_gains.get(domain, {}) if domain is not None else {}
            parts.append(title)
            if gains.empty:
                parts.append(_missing("No scores."))
                continue
            top_decile = float(gains["cum_gain"].iloc[0])
            self.metrics[f"churn_top_decile_gain{suffix}"] = top_decile
            parts.append(f'<span class="kpi"><b>{top_decile:.0%}</b>of expected churners are in the '
                         f'riskiest 10% of customers</span>')
            parts.append(_img(plot_gains(gains, self._png(f"churn_gains{suffix}.png"), evaluated=evaluated),
                              "cumulative gains"))
            for algorithm, table in evaluated.items():
                top = table.iloc[0]
                parts.append(f'<span class="kpi"><b>{float(top["cumulative_capture"]):.0%}</b>of actual churners '
                             f'in the riskiest decile, out-of-time test ({html.escape(algorithm)}, lift '
                             f'{float(top["lift"]):.1f})</span>')
            parts.append(self._risk(scores, suffix))
        df.unpersist()
        note = ("<p>Expected gains use today's scores (expected churners = the sum of churn "
                "probabilities); observed gains are the churn step's out-of-time test (actual churners "
                "at the latest labelled cutoff), read from its MLflow run.</p>")
        return Section("churn", "Churn early warning", note + "".join(parts))

    def _churn_evaluation(self) -> dict[str, dict[str, Any]]:
        """Out-of-time gains tables the churn step logged (``churn/<domain>/<algorithm>_gains.csv``)."""
        if not self.lake.exists(OPS_TABLE):
            return {}
        row = (self.lake.read(OPS_TABLE).filter((F.col("step") == "churn") & (F.col("status") == "succeeded"))
               .orderBy(F.col("started_at").desc()).select("mlflow_run_id").first())
        if row is None or not row["mlflow_run_id"]:
            return {}
        try:
            return churn_evaluation_gains(row["mlflow_run_id"], tracking_uri=self.tracking_uri)
        except Exception as exc:  # the report still shows the expected gains
            log.warning("report: could not read the churn evaluation from MLflow run %s: %s", row["mlflow_run_id"], exc)
            return {}

    def _risk(self, scores: DataFrame, suffix: str) -> str:
        parts = []
        if "risk_tier" in scores.columns:
            tiers = {r["risk_tier"]: r.asDict() for r in group_counts(
                scores, group_col="risk_tier", value_col="churn_probability").collect()}
            rows = [tiers[t] for t in _ordered(list(tiers), RISK_ORDER)]
            for row in rows:
                row["expected_churners"] = row.pop("value")
                row["share_expected_churners"] = row.pop("share_value")
            parts.append(html_table(rows))
        hist = probability_histogram(scores, bins=20).toPandas()
        parts.insert(0, _img(plot_histogram(hist, self._png(f"churn_risk{suffix}.png"), bins=20,
                                            title="Distribution of churn probability",
                                            xlabel="churn probability"), "churn risk distribution"))
        return "".join(parts)

    def build(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        for old in self.out.glob("*.png"):  # plots of an earlier run must not linger
            old.unlink()
        sections = [self.quality(), *self.value(), self.segments(), self.rules(), self.churn()]
        self.metrics["sections_missing"] = float(sum(not s.ok for s in sections))
        when = sorted({(str(d), r) for d, r in self.shown.values()})
        meta = "; ".join(f"as of {html.escape(d)} (run {html.escape(r)})" for d, r in when) or "no results yet"
        target = self.out / "index.html"
        target.write_text(page("crm-mining report", f"Lake {html.escape(self.lake.root)} — {meta}", sections),
                          encoding="utf-8")
        log.info("report written to %s", target)
        return target


def _builder(lake: Lake, config: Config, as_of: dt.date | None) -> ReportBuilder:
    settings = config.section("report")
    out = Path(settings.get("out") or "./reports").resolve()
    top = int(settings.get("top_rules") or 20)
    points = int(settings.get("curve_points") or 200)
    if top < 1 or points < 2:
        raise ValueError("report.top_rules must be >= 1 and report.curve_points >= 2")
    partitions = int(config.get_path("spark.shuffle_partitions") or 8)
    from .tracking import tracking_uri

    return ReportBuilder(lake=lake, out=out, as_of=as_of, top_rules=top, curve_points=points,
                         partitions=max(1, min(partitions, 64)), tracking_uri=tracking_uri(config))


def _configured_as_of(config: Config) -> dt.date | None:
    given = config.get_path("run.as_of")
    return dt.date.fromisoformat(str(given)) if given else None


def render_report(spark: SparkSession, config: Config) -> Path:
    """Render the report of the latest run into ``report.out``; returns the HTML file's path.

    Each table is shown at its latest as-of date (or ``run.as_of`` when set) and that date's
    latest run.

    Examples
    --------
    >>> cfg = load_config(overrides=["lake.root=./lake"])      # doctest: +SKIP
    >>> render_report(get_spark(cfg["spark"]), cfg)             # doctest: +SKIP
    PosixPath('.../reports/index.html')
    """
    if not isinstance(spark, SparkSession):
        raise TypeError("spark must be a SparkSession")
    lake = Lake(spark, root=config.get_path("lake.root"), database=config.get_path("lake.database"))
    return _builder(lake, config, _configured_as_of(config)).build()


def run(ctx: StepContext) -> StepResult:
    """The ``report`` step: render the page and keep a copy of it in the step's MLflow run."""
    builder = _builder(ctx.lake, ctx.config, _configured_as_of(ctx.config))
    target = builder.build()
    _log_artifacts(target.parent, builder.metrics)
    return StepResult(rows_in=0, rows_out=0, inputs=dict(builder.inputs), metrics=dict(builder.metrics))


def _log_artifacts(folder: Path, metrics: dict[str, float]) -> None:
    import mlflow

    from . import tracking

    if mlflow.active_run() is None:
        return
    tracking.log_metrics({f"report.{k}": v for k, v in metrics.items()})
    for path in [folder / "index.html", *sorted(folder.glob("*.png"))]:
        mlflow.log_artifact(str(path), artifact_path="report")
