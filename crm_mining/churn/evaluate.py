"""Churn model evaluation: ranking quality, gains by decile, calibration and the cost threshold.

Everything is computed in Spark on the scored rows; only small tables (ten deciles, ten
calibration bins, a hundred threshold counts) reach the driver for metrics and plots.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from .labels import LABEL_COL
from .train import PROBABILITY_COL

THRESHOLD_STEPS = 100


def ranking_metrics(scored: DataFrame, *, label_col: str = LABEL_COL,
                    probability_col: str = PROBABILITY_COL) -> dict[str, float]:
    """ROC-AUC and PR-AUC of a probability column (``BinaryClassificationEvaluator``)."""
    _check_columns(scored, label_col, probability_col)
    data = scored.select(F.col(probability_col).cast("double").alias("p"),
                         F.col(label_col).cast("double").alias("y"))
    out = {}
    for name, metric in (("roc_auc", "areaUnderROC"), ("pr_auc", "areaUnderPR")):
        evaluator = BinaryClassificationEvaluator(rawPredictionCol="p", labelCol="y", metricName=metric)
        out[name] = float(evaluator.evaluate(data))
    return out


def with_decile(scored: DataFrame, *, probability_col: str = PROBABILITY_COL,
                tiebreak_col: str | None = "customer_key") -> DataFrame:
    """Add ``decile``: 1 for the riskiest tenth of the rows … 10 for the safest.

    Exact tenths by rank (``ntile`` over the score, ties split by ``tiebreak_col`` when the
    rows have it), so tied scores - common with trees - cannot empty or swell a decile. The
    ranking sorts one (score, key) pair per row in a single partition: cheap next to the
    feature work even for millions of customers.
    """
    order = [F.col(probability_col).desc()]
    if tiebreak_col and tiebreak_col in scored.columns:
        order.append(F.col(tiebreak_col))
    return scored.withColumn("decile", F.ntile(10).over(Window.orderBy(*order)))


def gains_table(scored: DataFrame, *, label_col: str = LABEL_COL,
                probability_col: str = PROBABILITY_COL) -> pd.DataFrame:
    """Per score decile: customers, churners, churn rate, lift, capture rate and cumulative gains.

    Lift is the decile's churn rate over the overall rate; capture rate is its share of all
    churners.
    """
    _check_columns(scored, label_col, probability_col)
    keep = [c for c in (label_col, probability_col, "customer_key") if c in scored.columns]
    table = (
        with_decile(scored.select(*keep), probability_col=probability_col).groupBy("decile")
        .agg(F.count(F.lit(1)).alias("customers"), F.sum(F.col(label_col)).alias("churners"),
             F.avg(F.col(probability_col)).alias("mean_probability"))
        .orderBy("decile").toPandas()
    )
    total, churners = table["customers"].sum(), table["churners"].sum()
    table["churn_rate"] = table["churners"] / table["customers"]
    table["lift"] = table["churn_rate"] / (churners / total if churners else float("nan"))
    table["capture_rate"] = table["churners"] / churners if churners else 0.0
    table["cumulative_customers_share"] = table["customers"].cumsum() / total
    table["cumulative_capture"] = table["churners"].cumsum() / churners if churners else 0.0
    return table


def calibration(scored: DataFrame, *, bins: int = 10, label_col: str = LABEL_COL,
                probability_col: str = PROBABILITY_COL) -> tuple[float, pd.DataFrame]:
    """Brier score and the reliability table (mean predicted vs observed rate per bin)."""
    _check_columns(scored, label_col, probability_col)
    p, y = F.col(probability_col), F.col(label_col).cast("double")
    bin_col = F.least(F.floor(p * bins), F.lit(bins - 1)).cast("int")
    grouped = scored.groupBy(bin_col.alias("bin")).agg(
        F.count(F.lit(1)).alias("customers"), F.avg(p).alias("mean_predicted"),
        F.avg(y).alias("observed_rate"), F.sum((p - y) * (p - y)).alias("_squared_error"),
    ).orderBy("bin").toPandas()
    brier = float(grouped["_squared_error"].sum() / grouped["customers"].sum())
    return brier, grouped.drop(columns="_squared_error")


def cost_threshold(scored: DataFrame, *, cost_missed_churner: float, cost_wasted_offer: float,
                   label_col: str = LABEL_COL, probability_col: str = PROBABILITY_COL) -> dict[str, float]:
    """The threshold (a multiple of 1/100) minimising the cost of errors, and its confusion matrix.

    A churner scored below the threshold costs ``cost_missed_churner``; a stayer scored at or
    above it costs ``cost_wasted_offer`` (a retention offer nobody needed).
    """
    if cost_missed_churner < 0 or cost_wasted_offer < 0:
        raise ValueError("costs must be non-negative")
    _check_columns(scored, label_col, probability_col)
    step = F.least(F.floor(F.col(probability_col) * THRESHOLD_STEPS), F.lit(THRESHOLD_STEPS - 1))
    counts = (scored.groupBy(step.cast("int").alias("step"))
              .agg(F.sum(F.col(label_col)).alias("pos"), F.sum(1 - F.col(label_col)).alias("neg"))
              .toPandas().set_index("step").reindex(range(THRESHOLD_STEPS), fill_value=0))
    pos_total, neg_total = float(counts["pos"].sum()), float(counts["neg"].sum())
    best: dict[str, float] | None = None
    for k in range(THRESHOLD_STEPS + 1):  # threshold k/100: predicted churner when p >= k/100
        fn = float(counts["pos"].iloc[:k].sum())
        tn = float(counts["neg"].iloc[:k].sum())
        cost = cost_missed_churner * fn + cost_wasted_offer * (neg_total - tn)
        if best is None or cost < best["cost"]:
            best = {"threshold": k / THRESHOLD_STEPS, "cost": cost, "tp": pos_total - fn, "fn": fn,
                    "fp": neg_total - tn, "tn": tn}
    return best


def evaluate(scored: DataFrame, *, cost_missed_churner: float = 5.0, cost_wasted_offer: float = 1.0,
             label_col: str = LABEL_COL, probability_col: str = PROBABILITY_COL) -> dict[str, Any]:
    """All evaluations of one scored test set: metrics (flat dict) and small tables.

    Examples
    --------
    >>> result = evaluate(predict(model, test))
    >>> result["metrics"]["pr_auc"], result["gains"].head(1)
    """
    kwargs = {"label_col": label_col, "probability_col": probability_col}
    metrics = ranking_metrics(scored, **kwargs)
    gains = gains_table(scored, **kwargs)
    brier, reliability = calibration(scored, **kwargs)
    decision = cost_threshold(scored, cost_missed_churner=cost_missed_churner,
                              cost_wasted_offer=cost_wasted_offer, **kwargs)
    top = gains.iloc[0]
    metrics.update(brier=brier, top_decile_lift=float(top["lift"]), top_decile_capture=float(top["capture_rate"]),
                   churn_rate=float(gains["churners"].sum() / gains["customers"].sum()),
                   rows=float(gains["customers"].sum()),
                   **{f"cost_{k}": float(v) for k, v in decision.items()})
    return {"metrics": metrics, "gains": gains, "reliability": reliability, "decision": decision}


def gains_figure(gains: pd.DataFrame, *, title: str = "Cumulative gains"):
    """Cumulative capture vs share of customers contacted, with lift per decile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    share = [0.0, *gains["cumulative_customers_share"]]
    left.plot(share, [0.0, *gains["cumulative_capture"]], marker="o", label="model")
    left.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    left.set(xlabel="share of customers (riskiest first)", ylabel="share of churners captured", title=title)
    left.legend()
    right.bar(gains["decile"], gains["lift"])
    right.axhline(1.0, color="grey", linestyle="--")
    right.set(xlabel="decile (1 = riskiest)", ylabel="lift", title="Lift by decile")
    fig.tight_layout()
    return fig


def reliability_figure(reliability: pd.DataFrame, *, brier: float):
    """Observed churn rate against the mean predicted probability per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot(reliability["mean_predicted"], reliability["observed_rate"], marker="o", label="model")
    ax.set(xlabel="mean predicted probability", ylabel="observed churn rate",
           title=f"Reliability (Brier {brier:.3f})", xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    return fig


def _check_columns(df: DataFrame, *columns: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"the scored rows have no column(s) {missing}; they have {df.columns}")
