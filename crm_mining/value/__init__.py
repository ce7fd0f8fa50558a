"""Customer value: RFM, ABC/Pareto, lifetime value, value tiers, lifecycle and a composite score.

The step ``value`` reads ``silver_retail_lines`` (purchases) and the as-of partition of
``gold_customer_360`` (customers, domains and bank features) and writes
``gold_customer_value``, one row per customer:

``customer_key, recency_days, frequency, monetary, r_score, f_score, m_score, rfm_segment,
abc_class, clv_historic, p_alive, expected_purchases, clv_predicted, value_tier,
lifecycle_stage, relationship_class, customer_score, domain, as_of_date, run_id``.

Value per domain: retail customers are valued by their purchases (``clv_historic`` = net
spend after returns; ``clv_predicted`` = BG/NBD × Gamma-Gamma discounted over the horizon);
bank customers by the margin model of :mod:`.bank_value`; linked customers by the sum of both.
RFM, p_alive and expected purchases exist for customers with retail purchases only.
Only histograms, quantile cut points, the Pareto curve and per-bucket means reach the driver.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Mapping

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..pipeline import StepContext, StepResult
from . import abc, bank_value, clv, lifecycle, rfm, score

log = logging.getLogger(__name__)

OUTPUT_TABLE = "gold_customer_value"
OUTPUT_COLUMNS = ("customer_key", "recency_days", "frequency", "monetary", "r_score", "f_score", "m_score",
                  "rfm_segment", "abc_class", "clv_historic", "p_alive", "expected_purchases",
                  "clv_predicted", "value_tier", "lifecycle_stage", "relationship_class", "customer_score",
                  "domain")
BGNBD_COLUMNS = ("x", "t_x_days", "T_days", "n")
GG_COLUMNS = ("x", "m", "n")


def fit_clv(lines: DataFrame, *, as_of: dt.date, settings: Mapping, start: dt.date | None = None):
    """Fit BG/NBD and Gamma-Gamma on the purchases before ``as_of``; returns the Spark
    customer summary (lazy) and the two parameter sets (fitted on collected histograms)."""
    unit = float(settings.get("time_unit_days", 7.0))
    max_rows = int(settings.get("max_histogram_rows", 2_000_000))
    # Materialised once: both histograms and the scoring read it (one scan of the lines).
    summary = clv.customer_summary(clv.purchase_days(lines, as_of=as_of, start=start), as_of=as_of,
                                   time_unit_days=unit).localCheckpoint(eager=True)
    bg = clv.fit_bgnbd(clv.collect_histogram(clv.bgnbd_histogram(summary), max_rows=max_rows,
                                             columns=BGNBD_COLUMNS), time_unit_days=unit)
    gg = clv.fit_gamma_gamma(clv.collect_histogram(
        clv.gamma_gamma_histogram(summary, decimals=int(settings.get("monetary_decimals", 2))),
        max_rows=max_rows, columns=GG_COLUMNS))
    return summary, bg, gg


def retail_value(lines: DataFrame, *, as_of: dt.date, settings: Mapping) -> tuple[DataFrame, dict]:
    """Per retail customer: RFM values and scores, CLV model scores; plus the fit details."""
    rfm_cfg, clv_cfg = settings.get("rfm", {}), settings.get("clv", {})
    summary, bg, gg = fit_clv(lines, as_of=as_of, settings=clv_cfg)
    values = rfm.rfm_values(lines, as_of=as_of, frequency=rfm_cfg.get("frequency", "purchase_days"))
    scored, cuts = rfm.rfm_scores(values, relative_error=float(rfm_cfg.get("relative_error", 0.001)))
    unit = float(clv_cfg.get("time_unit_days", 7.0))
    months = int(clv_cfg.get("horizon_months", 12))
    terms = int(clv_cfg.get("max_series_terms", 3000))
    horizon = months * clv.DAYS_PER_MONTH / unit
    model = summary.select(
        "customer_key", F.datediff(F.lit(as_of), "first_day").alias("tenure_days"),
        clv.p_alive_col(bg).alias("p_alive"),
        clv.expected_purchases_col(bg, horizon, max_terms=terms).alias("expected_purchases"),
        clv.clv_predicted_col(bg, gg, horizon_months=months, time_unit_days=unit,
                              discount_rate_monthly=float(clv_cfg.get("discount_rate_monthly", 0.01)),
                              margin=float(clv_cfg.get("margin", 1.0)), max_terms=terms).alias("clv_predicted"))
    out = (scored.join(model, "customer_key", "left")
           .withColumn("rfm_segment", rfm.segment_col(rfm_cfg.get("segments") or DEFAULT_SEGMENTS)))
    return out, {"bgnbd": bg, "gamma_gamma": gg, "rfm_cuts": cuts}


DEFAULT_SEGMENTS = [
    {"name": "Champions", "r": [5, 5], "f": [4, 5]}, {"name": "Loyal", "r": [3, 4], "f": [4, 5]},
    {"name": "Potential loyalist", "r": [4, 5], "f": [2, 3]}, {"name": "New", "r": [5, 5], "f": [1, 1]},
    {"name": "Promising", "r": [4, 4], "f": [1, 1]}, {"name": "Need attention", "r": [3, 3], "f": [3, 3]},
    {"name": "About to sleep", "r": [3, 3], "f": [1, 2]}, {"name": "Can't lose", "r": [1, 2], "f": [5, 5]},
    {"name": "At risk", "r": [1, 2], "f": [3, 4]}, {"name": "Hibernating", "r": [2, 2], "f": [1, 2]},
    {"name": "Lost", "r": [1, 1], "f": [1, 2]},
]


def value_tier(df: DataFrame, *, settings: Mapping) -> tuple[DataFrame, dict]:
    """Add ``value_tier`` from current (``clv_historic``) × future (``clv_predicted``) value.

    A value is "high" above the configured quantile of its column (computed by Spark); the
    tier map names the four cells (default: high/high platinum, high current gold, high
    future iron, low/low lead).
    """
    q_now, q_future = float(settings.get("current_quantile", 0.5)), float(settings.get("future_quantile", 0.5))
    err = float(settings.get("relative_error", 0.001))
    tiers = {"high_high": "platinum", "high_low": "gold", "low_high": "iron", "low_low": "lead",
             **dict(settings.get("tiers") or {})}
    now = df.filter(F.col("clv_historic").isNotNull()).approxQuantile("clv_historic", [q_now], err)
    fut = df.filter(F.col("clv_predicted").isNotNull()).approxQuantile("clv_predicted", [q_future], err)
    cut_now, cut_fut = (now[0] if now else 0.0), (fut[0] if fut else 0.0)
    high_now = F.coalesce(F.col("clv_historic") > cut_now, F.lit(False))
    high_fut = F.coalesce(F.col("clv_predicted") > cut_fut, F.lit(False))
    tier = (F.when(high_now & high_fut, tiers["high_high"]).when(high_now, tiers["high_low"])
            .when(high_fut, tiers["low_high"]).otherwise(tiers["low_low"]))
    return df.withColumn("value_tier", tier), {"tier_cut_current": cut_now, "tier_cut_future": cut_fut}


def customer_value(lines: DataFrame, c360: DataFrame | None, *, as_of: dt.date,
                   settings: Mapping) -> tuple[DataFrame, dict]:
    """The ``gold_customer_value`` rows (without as_of_date/run_id) and the fit details.

    Examples
    --------
    >>> rows, info = customer_value(lines, c360, as_of=dt.date(2011, 12, 10), settings=cfg.section("value"))
    >>> info["bgnbd"].r
    """
    if not isinstance(as_of, dt.date):
        raise TypeError("as_of must be a datetime.date")
    # Settings errors first, before any Spark work: the AHP matrix and the segment map.
    score_cfg = settings.get("score", {})
    weights, cr = score.ahp_weights(score_cfg.get("pairwise") or DEFAULT_PAIRWISE,
                                    max_cr=float(score_cfg.get("max_consistency_ratio", 0.1)))
    rfm.check_segment_map(settings.get("rfm", {}).get("segments") or DEFAULT_SEGMENTS)
    retail, info = retail_value(lines, as_of=as_of, settings=settings)
    retail = retail.withColumnRenamed("customer_key", "retail_customer_key")
    if c360 is None:
        base = retail.select(F.col("retail_customer_key").alias("customer_key"), "*",
                             F.lit(None).cast("double").alias("gap_days_trend"), F.lit("retail").alias("domain"),
                             F.lit(None).cast("double").alias("bank_clv_historic"),
                             F.lit(None).cast("double").alias("bank_clv_predicted"))
    else:
        keys = c360.select("customer_key", "retail_customer_key", "domain",
                           *(["gap_days_trend"] if "gap_days_trend" in c360.columns else []))
        if "gap_days_trend" not in keys.columns:
            keys = keys.withColumn("gap_days_trend", F.lit(None).cast("double"))
        base = keys.join(retail, "retail_customer_key", "left")
        if "avg_balance" in c360.columns:
            bank = bank_value.bank_value(c360, settings=settings.get("bank", {}), as_of=as_of)
            base = base.join(bank.drop("bank_annual_margin"), "customer_key", "left")
        else:
            base = (base.withColumn("bank_clv_historic", F.lit(None).cast("double"))
                    .withColumn("bank_clv_predicted", F.lit(None).cast("double")))
    both = (base.withColumn("clv_historic", _sum_or_null("monetary", "bank_clv_historic"))
            .withColumn("clv_predicted", _sum_or_null("clv_predicted", "bank_clv_predicted")))
    life = settings.get("lifecycle", {})
    both = (both.withColumn("lifecycle_stage", lifecycle.lifecycle_stage_col(life))
            .withColumn("relationship_class", lifecycle.relationship_class_col(life)))
    abc_cfg = settings.get("abc", {})
    # cumulative_share checkpoints its input: the CLV series are evaluated once, and the
    # quantiles, Pareto figures, score bounds and the write all read the materialised rows.
    ranked = abc.cumulative_share(both, value_col="clv_historic")
    ranked = abc.abc_classes(ranked, a_share=float(abc_cfg.get("a_share", 0.8)),
                             b_share=float(abc_cfg.get("b_share", 0.95))).localCheckpoint(eager=True)
    ranked, tier_info = value_tier(ranked, settings=settings.get("value_tier", {}))
    info.update(tier_info)
    info["pareto"] = abc.pareto_metrics(ranked, top_share=float(abc_cfg.get("top_share", 0.2)))
    info["lorenz"] = abc.lorenz_points(ranked, points=int(abc_cfg.get("curve_points", 100)))
    info["ahp_weights"], info["ahp_cr"] = weights.tolist(), cr
    scored = score.customer_score(ranked, indicators=score_cfg.get("indicators") or DEFAULT_INDICATORS,
                                  weights=weights)
    return scored.select(*[_typed(c) for c in OUTPUT_COLUMNS]), info


DEFAULT_INDICATORS = ["r_score", "f_score", "m_score", "clv_predicted"]
DEFAULT_PAIRWISE = [[1, 1 / 2, 1 / 3, 1 / 4], [2, 1, 1 / 2, 1 / 3], [3, 2, 1, 1 / 2], [4, 3, 2, 1]]
_TYPES = {"recency_days": "int", "frequency": "long", "r_score": "int", "f_score": "int", "m_score": "int"}


def _typed(column: str):
    dtype = _TYPES.get(column)
    if dtype:
        return F.col(column).cast(dtype).alias(column)
    if column in ("monetary", "clv_historic", "p_alive", "expected_purchases", "clv_predicted", "customer_score"):
        return F.col(column).cast("double").alias(column)
    return F.col(column)


def _sum_or_null(a: str, b: str):
    return F.when(F.col(a).isNull() & F.col(b).isNull(), F.lit(None).cast("double")).otherwise(
        F.coalesce(F.col(a), F.lit(0.0)) + F.coalesce(F.col(b), F.lit(0.0)))


def holdout_evaluation(lines: DataFrame, *, as_of: dt.date, settings: Mapping) -> dict:
    """Fit BG/NBD on [.., as_of − holdout) and compare predicted with actual purchase days in
    the holdout, per customer (MAE, in Spark) and per calibration-frequency bucket."""
    days = int(settings.get("holdout_days", 90))
    cal_end = as_of - dt.timedelta(days=days)
    summary, bg, _ = fit_clv(lines, as_of=cal_end, settings=settings)
    unit = float(settings.get("time_unit_days", 7.0))
    cap = int(settings.get("holdout_bucket_cap", 7))
    holdout = clv.purchase_days(lines, as_of=as_of, start=cal_end)
    comparison = clv.holdout_comparison(summary, holdout, bg, holdout_length=days / unit, bucket_cap=cap,
                                        max_terms=int(settings.get("max_series_terms", 3000)))
    mae, buckets = clv.holdout_summary(comparison)
    return {"calibration_end": cal_end, "bgnbd": bg, "mae": mae, "buckets": buckets, "bucket_cap": cap}


# -- the step ------------------------------------------------------------------------------
def run(ctx: StepContext) -> StepResult:
    """The ``value`` step: silver_retail_lines + gold_customer_360 → gold_customer_value."""
    settings = ctx.config.section("value")
    if not ctx.lake.exists("silver_retail_lines"):
        raise ValueError("value needs silver_retail_lines; run ingest and refine first")
    inputs = ["silver_retail_lines"] + (["gold_customer_360"] if ctx.lake.exists("gold_customer_360") else [])
    result = StepResult(inputs={t: ctx.lake.version(t) for t in inputs})
    lines = ctx.lake.read("silver_retail_lines")
    c360 = None
    if "gold_customer_360" in inputs:
        c360 = ctx.lake.read("gold_customer_360").filter(F.col("as_of_date") == F.lit(ctx.as_of))
        if c360.limit(1).count() == 0:
            raise ValueError(f"gold_customer_360 has no rows for {ctx.as_of}; run customer360 first")
    rows, info = customer_value(lines, c360, as_of=ctx.as_of, settings=settings)
    result.outputs[OUTPUT_TABLE] = ctx.lake.replace_partition(ctx.stamp(rows), OUTPUT_TABLE, as_of_date=ctx.as_of)
    written = ctx.lake.read(OUTPUT_TABLE).filter(F.col("as_of_date") == F.lit(ctx.as_of))
    segments = written.groupBy("rfm_segment").agg(F.count(F.lit(1)).alias("customers")).toPandas()
    result.rows_in = int(segments["customers"].sum())
    result.rows_out = result.rows_in
    holdout = None
    if int(settings.get("clv", {}).get("holdout_days", 90)) > 0:
        holdout = holdout_evaluation(lines, as_of=ctx.as_of, settings=settings.get("clv", {}))
    result.metrics = metrics(info, holdout, customers=result.rows_out)
    _track(ctx, result, info, holdout, segments)
    p = info["pareto"]
    log.info("[value] %d customers; top 20%% of customers bring %.1f%% of value (Gini %.3f)",
             result.rows_out, 100 * p["top20_share"], p["gini"])
    return result


def metrics(info: Mapping, holdout: Mapping | None, *, customers: int) -> dict[str, float]:
    """The step's metrics: customers, Pareto figures, the CLV fits and the holdout MAE."""
    bg, gg = info["bgnbd"], info["gamma_gamma"]
    out = {"customers": customers, "gini": info["pareto"]["gini"], "top20_share": info["pareto"]["top20_share"],
           "bgnbd_r": bg.r, "bgnbd_alpha": bg.alpha, "bgnbd_a": bg.a, "bgnbd_b": bg.b,
           "bgnbd_log_likelihood": bg.log_likelihood, "gg_p": gg.p, "gg_q": gg.q, "gg_gamma": gg.gamma,
           "gg_log_likelihood": gg.log_likelihood, "ahp_consistency_ratio": info["ahp_cr"]}
    if holdout is not None:
        out["holdout_mae"] = holdout["mae"]
    return {k: float(v) for k, v in out.items()}


def _track(ctx: StepContext, result: StepResult, info: Mapping, holdout: Mapping | None, segments) -> None:
    from .. import tracking

    if not tracking.is_enabled() or tracking.active_run_id() is None:
        return
    import mlflow

    tracking.log_params({"as_of_date": ctx.as_of.isoformat(), "config_hash": ctx.config.hash,
                         "ahp_weights": json.dumps([round(w, 4) for w in info["ahp_weights"]]),
                         **{f"input_version.{k}": v for k, v in result.inputs.items()}})
    tracking.log_metrics(result.metrics)
    p = info["pareto"]
    tracking.log_figure(abc.pareto_figure(info["lorenz"], gini=p["gini"], top20_share=p["top20_share"]),
                        "value/pareto_curve.png")
    mlflow.log_text(segments.sort_values("customers", ascending=False).to_csv(index=False),
                    "value/rfm_segment_sizes.csv")
    if holdout is not None:
        tracking.log_figure(clv.holdout_figure(holdout["buckets"], bucket_cap=holdout["bucket_cap"]),
                            "value/clv_calibration.png")
        mlflow.log_text(holdout["buckets"].to_csv(index=False), "value/clv_holdout_buckets.csv")
