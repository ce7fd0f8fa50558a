"""The churn step: early warning of customers about to leave, and why, per domain.

Per domain (retail, banking) it builds point-in-time features and labels at several training
cutoffs derived from the as-of date, fits logistic regression and gradient-boosted trees,
evaluates them out of time, logs everything to MLflow, registers the better model and
promotes it to ``champion`` when it beats the current one; then it scores every customer
active at the as-of date with the champion into ``gold_churn_scores``.
``churn.mode`` (train, score, both) picks the halves.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from typing import Any, Callable, Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..pipeline import StepContext, StepResult
from . import evaluate as ev
from . import labels as lb
from . import features as ft
from . import registry, score, train

log = logging.getLogger("crm_mining")

OUTPUT_TABLE = "gold_churn_scores"
MODES = ("train", "score", "both")


@dataclasses.dataclass
class Domain:
    """How one domain turns its silver events into features, population and labels at cutoffs."""

    name: str
    feature_names: Sequence[str]
    features: Callable[[DataFrame], DataFrame]      # cutoffs → features
    population: Callable[[DataFrame], DataFrame]    # cutoffs → (customer_key, cutoff_date)
    labels: Callable[[DataFrame], DataFrame]        # cutoffs → population with `churned`
    horizon_days: int
    cached: list[DataFrame] = dataclasses.field(default_factory=list)

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()


def retail_domain(lines: DataFrame, *, horizon_days: int, lookback_days: int) -> Domain:
    """The retail domain from ``silver_retail_lines`` (already limited to events before as-of)."""
    invoices = lb.retail_invoices(lines).persist()
    return Domain(
        name="retail", feature_names=ft.RETAIL_FEATURES,
        features=lambda cuts: ft.retail_features(invoices, cuts),
        population=lambda cuts: lb.retail_population(invoices, cuts, lookback_days=lookback_days),
        labels=lambda cuts: lb.retail_labels(invoices, cuts, horizon_days=horizon_days, lookback_days=lookback_days),
        horizon_days=horizon_days, cached=[invoices],
    )


def bank_domain(transactions: DataFrame, accounts: DataFrame | None, *, horizon_days: int, lookback_days: int,
                bank_initiated: Sequence[str]) -> Domain:
    """The banking domain from ``silver_bank_transactions`` and ``silver_bank_accounts``."""
    tx = transactions.persist()
    codes = list(bank_initiated)
    return Domain(
        name="banking", feature_names=ft.BANK_FEATURES,
        features=lambda cuts: ft.bank_features(tx, accounts, cuts, bank_initiated=codes),
        population=lambda cuts: lb.bank_population(tx, cuts, lookback_days=lookback_days, bank_initiated=codes),
        labels=lambda cuts: lb.bank_labels(tx, accounts, cuts, horizon_days=horizon_days,
                                           lookback_days=lookback_days, bank_initiated=codes),
        horizon_days=horizon_days, cached=[tx],
    )


def training_data(spark: SparkSession, domain: Domain, cutoffs: Sequence[dt.date]) -> DataFrame:
    """Labelled point-in-time features of every cutoff, stacked."""
    cuts = lb.cutoff_frame(spark, cutoffs)
    return ft.training_set(domain.features(cuts), domain.labels(cuts))


def scoring_features(spark: SparkSession, domain: Domain, as_of: dt.date) -> DataFrame:
    """Features at ``as_of`` of the customers active before it."""
    cuts = lb.cutoff_frame(spark, [as_of])
    return domain.population(cuts).join(domain.features(cuts), ["customer_key", lb.CUTOFF_COL], "inner")


def fit_and_evaluate(data: DataFrame, *, features: Sequence[str], settings: train.TrainSettings,
                     test_cutoff: dt.date, cost_missed_churner: float = 5.0, cost_wasted_offer: float = 1.0,
                     refit_on_all: bool = True, rows: int | None = None) -> dict[str, Any]:
    """Fit LR and GBT on the cutoffs before ``test_cutoff``, evaluate on it, pick the better.

    Returns the out-of-time evaluations per algorithm, the chosen algorithm, its model (refit
    on every cutoff when ``refit_on_all``) and the companion LR's reason weights. ``rows`` is
    the count of ``data`` when the caller has it; it sizes the partitions the models fit on.

    Examples
    --------
    >>> out = fit_and_evaluate(data, features=RETAIL_FEATURES, settings=TrainSettings(),
    ...                        test_cutoff=dt.date(2011, 9, 9))
    >>> out["chosen"], out["evaluations"]["gbt"]["metrics"]["pr_auc"]
    """
    data = train.training_layout(data, rows=data.count() if rows is None else int(rows)).persist()
    fit_rows, test_rows = train.out_of_time_split(data, test_cutoff=test_cutoff)
    fit_rows = train.with_class_weights(fit_rows).persist()
    test_rows = test_rows.persist()
    models, evaluations = {}, {}
    for algorithm in train.ALGORITHMS:
        models[algorithm] = train.tune(fit_rows, algorithm=algorithm, features=features, settings=settings)
        evaluations[algorithm] = ev.evaluate(train.predict(models[algorithm], test_rows),
                                             cost_missed_churner=cost_missed_churner,
                                             cost_wasted_offer=cost_wasted_offer)
    metric = settings.selection_metric
    chosen = max(train.ALGORITHMS, key=lambda a: evaluations[a]["metrics"][metric])
    final, companion = models[chosen], models["lr"]
    fit_rows.unpersist()
    test_rows.unpersist()
    if refit_on_all:
        everything = train.with_class_weights(data).persist()
        final = train.refit(final, everything, algorithm=chosen, features=features, settings=settings)
        companion = final if chosen == "lr" else train.refit(
            companion, everything, algorithm="lr", features=features, settings=settings)
        everything.unpersist()
    data.unpersist()
    return {"evaluations": evaluations, "chosen": chosen, "model": final,
            "reasons": train.reason_weights(companion, features),
            "importances": train.feature_importances(final, features),
            "oot_models": models}


def p_alive_baseline(lines: DataFrame, test: DataFrame, *, cutoff: dt.date,
                     clv_settings: Mapping[str, Any] | None = None) -> dict[str, float] | None:
    """Out-of-time ROC-AUC / PR-AUC of ``1 - P(alive)`` from the CLV step's BG/NBD at the cutoff.

    The BG/NBD model is fitted by :func:`crm_mining.value.fit_clv` on the same purchases before
    the test cutoff and scored with :func:`crm_mining.value.clv.p_alive_col`; ``None`` (with a
    log line) when that module is not installed.
    """
    try:
        from ..value import clv, fit_clv
    except ImportError as exc:
        log.info("[churn] P(alive) baseline skipped: the CLV step is not available (%s)", exc)
        return None
    summary, bg, _ = fit_clv(lines, as_of=cutoff, settings=dict(clv_settings or {}))
    alive = summary.select("customer_key", clv.p_alive_col(bg).alias("p_alive"))
    scored = test.join(alive, "customer_key", "inner").withColumn(train.PROBABILITY_COL, 1.0 - F.col("p_alive"))
    return ev.ranking_metrics(scored)


# ------------------------------------------------------------------------------ the step
def _settings(ctx: StepContext) -> dict[str, Any]:
    cfg = ctx.config.section("churn")
    if cfg.get("mode") not in MODES:
        raise ValueError(f"churn.mode must be one of {MODES}, got {cfg.get('mode')!r}")
    unknown = [d for d in cfg.get("domains") or [] if d not in ("retail", "banking")]
    if unknown:
        raise ValueError(f"churn.domains: unknown domain(s) {unknown}; known: retail, banking")
    return cfg


def _load_domain(ctx: StepContext, name: str, cfg: Mapping[str, Any], result: StepResult):
    """The domain over silver events before the as-of date, or None when its tables are absent."""
    before = F.col("ts") < F.lit(ctx.as_of).cast("timestamp")
    sub = cfg[name]
    if name == "retail":
        if not ctx.lake.exists("silver_retail_lines"):
            return None, None
        result.inputs.update(ctx.lake.versions(["silver_retail_lines"]))
        lines = ctx.lake.read("silver_retail_lines").filter(before)
        return retail_domain(lines, horizon_days=int(sub["horizon_days"]),
                             lookback_days=int(sub["lookback_days"])), lines
    if not ctx.lake.exists("silver_bank_transactions"):
        return None, None
    result.inputs.update(ctx.lake.versions(["silver_bank_transactions", "silver_bank_accounts"]))
    tx = ctx.lake.read("silver_bank_transactions").filter(before)
    accounts = ctx.lake.read("silver_bank_accounts") if ctx.lake.exists("silver_bank_accounts") else None
    if accounts is not None and "opened_date" in accounts.columns:
        accounts = accounts.filter(F.col("opened_date") < F.lit(ctx.as_of))
    return bank_domain(tx, accounts, horizon_days=int(sub["horizon_days"]), lookback_days=int(sub["lookback_days"]),
                       bank_initiated=sub.get("bank_initiated") or []), None


def _log_evaluation(domain: str, algorithm: str, evaluation: Mapping[str, Any]) -> None:
    import mlflow

    from .. import tracking

    prefix = f"{domain}.{algorithm}.oot"
    tracking.log_metrics({f"{prefix}_{k}": v for k, v in evaluation["metrics"].items()})
    mlflow.log_text(evaluation["gains"].to_csv(index=False), f"churn/{domain}/{algorithm}_gains.csv")
    mlflow.log_text(evaluation["reliability"].to_csv(index=False), f"churn/{domain}/{algorithm}_reliability.csv")
    tracking.log_figure(ev.gains_figure(evaluation["gains"], title=f"{domain} {algorithm}: cumulative gains"),
                        f"churn/{domain}/{algorithm}_gains.png")
    tracking.log_figure(ev.reliability_figure(evaluation["reliability"], brier=evaluation["metrics"]["brier"]),
                        f"churn/{domain}/{algorithm}_reliability.png")


def trainable(data: DataFrame, *, test_cutoff: dt.date) -> str | None:
    """Why labelled rows cannot train and test a model (``None`` when they can).

    Both classes are needed before the test cutoff to fit on, and rows at it to test on: a
    domain whose customers were all inactive in the look-back (for example bank data years
    older than the as-of date) has neither.
    """
    counts = {(bool(r[0] < test_cutoff), r[1]): r[2] for r in
              data.groupBy(lb.CUTOFF_COL, lb.LABEL_COL).count().collect()}
    fit_classes = {label for (before, label), n in counts.items() if before and n}
    if len(fit_classes) < 2:
        found = sorted(str(c) for c in fit_classes) or ["none"]
        return (f"the rows before the test cutoff {test_cutoff.isoformat()} hold the classes {found}; both "
                f"churned and retained customers are needed (is the as-of date inside the data's period?)")
    if not any(n for (before, _), n in counts.items() if not before):
        return f"no labelled customer at the test cutoff {test_cutoff.isoformat()}"
    return None


def _train_domain(ctx: StepContext, domain: Domain, lines: DataFrame | None, cfg: Mapping[str, Any]) -> dict:
    import mlflow
    import mlflow.spark

    from .. import tracking

    cutoffs = lb.training_cutoffs(as_of=ctx.as_of, horizon_days=domain.horizon_days,
                                  n_cutoffs=int(cfg["n_cutoffs"]), step_days=int(cfg["cutoff_step_days"]))
    if len(cutoffs) < 2:
        raise ValueError("churn.n_cutoffs must be at least 2: one to fit on, the latest to test out of time")
    settings = train.TrainSettings.from_config(cfg, seed=ctx.seed)
    data = training_data(ctx.spark, domain, cutoffs).persist()
    rows = data.count()
    tracking.log_params({f"{domain.name}.cutoffs": ",".join(c.isoformat() for c in cutoffs),
                         f"{domain.name}.horizon_days": domain.horizon_days, f"{domain.name}.training_rows": rows})
    log.info("[churn] %s: %d labelled rows over cutoffs %s", domain.name, rows, [c.isoformat() for c in cutoffs])
    unusable = trainable(data, test_cutoff=cutoffs[-1])
    if unusable:
        log.warning("[churn] %s: no model trained as of %s: %s", domain.name, ctx.as_of.isoformat(), unusable)
        tracking.log_params({f"{domain.name}.skipped": unusable[:250]})
        data.unpersist()
        return {"rows": rows, "decision": None, "metrics": {}}
    out = fit_and_evaluate(data, features=domain.feature_names, settings=settings, test_cutoff=cutoffs[-1],
                           cost_missed_churner=float(cfg["cost_missed_churner"]),
                           cost_wasted_offer=float(cfg["cost_wasted_offer"]), refit_on_all=bool(cfg["refit_on_all"]),
                           rows=rows)
    for algorithm, evaluation in out["evaluations"].items():
        _log_evaluation(domain.name, algorithm, evaluation)
    if lines is not None:
        _, test_rows = train.out_of_time_split(data, test_cutoff=cutoffs[-1])
        clv_settings = (ctx.config.get_path("value") or {}).get("clv") or {}
        baseline = p_alive_baseline(lines, test_rows, cutoff=cutoffs[-1], clv_settings=clv_settings)
        if baseline:
            tracking.log_metrics({f"{domain.name}.p_alive.oot_{k}": v for k, v in baseline.items()})
    data.unpersist()
    metric = settings.selection_metric
    score_value = out["evaluations"][out["chosen"]]["metrics"][metric]
    name = registry.model_name(prefix=ctx.config.get_path("tracking.registry_prefix"), domain=domain.name)
    with mlflow.start_run(run_name=f"churn-{domain.name}-{out['chosen']}", nested=True):
        import pyspark

        # explicit requirements: inferring them starts a subprocess that imports the model
        info = mlflow.spark.log_model(out["model"], "model",  # positional: the keyword differs across MLflow 3.x
                                      pip_requirements=[f"pyspark=={pyspark.__version__}"])
        mlflow.log_text(json.dumps({"features": list(domain.feature_names), "weights": out["reasons"],
                                    "algorithm": out["chosen"]}, indent=2), score.REASONS_ARTIFACT)
        tracking.log_params({"algorithm": out["chosen"], "domain": domain.name, "as_of": ctx.as_of.isoformat()})
        decision = registry.register_and_promote(
            model_uri=info.model_uri, name=name, metric=metric, score=score_value,
            min_improvement=float(cfg["min_improvement"]),
            tags={"algorithm": out["chosen"], "as_of": ctx.as_of.isoformat(), "crm.run_id": ctx.run_id})
    tracking.log_params({f"{domain.name}.chosen_algorithm": out["chosen"],
                         f"{domain.name}.registry_decision": decision["decision"],
                         f"{domain.name}.model_version": decision["version"]})
    tracking.log_metrics({f"{domain.name}.challenger_{metric}": decision["challenger_score"],
                          f"{domain.name}.champion_{metric}": decision["champion_score"]})
    mlflow.log_dict(decision, f"churn/{domain.name}/registry_decision.json")
    return {"rows": rows, "decision": decision, "metrics": out["evaluations"][out["chosen"]]["metrics"]}


def _score_domain(ctx: StepContext, domain: Domain, cfg: Mapping[str, Any]) -> DataFrame | None:
    name = registry.model_name(prefix=ctx.config.get_path("tracking.registry_prefix"), domain=domain.name)
    champion = score.load_champion(name)
    if champion is None:
        log.warning("[churn] %s: no champion model registered as %s: scoring skipped (train first)",
                    domain.name, name)
        return None
    model, version, reasons = champion
    tiers = {"method": cfg["risk_tier_method"], "high_threshold": float(cfg["high_threshold"]),
             "medium_threshold": float(cfg["medium_threshold"]), "high_deciles": int(cfg["high_deciles"]),
             "medium_deciles": int(cfg["medium_deciles"])}
    features = scoring_features(ctx.spark, domain, ctx.as_of)
    return score.score_customers(model, features, weights=reasons["weights"], domain=domain.name,
                                 model_version=version, top_k=int(cfg["top_reasons"]), tiers=tiers)


def run(ctx: StepContext) -> StepResult:
    """The churn step: train (and register) and/or score per domain, per ``churn.mode``."""
    cfg = _settings(ctx)
    mode, result, scored, loaded = cfg["mode"], StepResult(), [], []
    try:
        for name in cfg["domains"]:
            domain, lines = _load_domain(ctx, name, cfg, result)
            if domain is None:
                log.info("[churn] %s: silver tables absent, domain skipped", name)
                continue
            loaded.append(domain)
            if mode in ("train", "both"):
                trained = _train_domain(ctx, domain, lines, cfg)
                result.rows_in += trained["rows"]
                result.metrics.update({f"{name}_oot_{k}": v for k, v in trained["metrics"].items()
                                       if k in ("roc_auc", "pr_auc", "brier", "top_decile_lift")})
            if mode in ("score", "both"):
                rows = _score_domain(ctx, domain, cfg)
                if rows is not None:
                    scored.append(rows)
        if scored:
            _write_scores(ctx, scored, result)
    finally:
        for domain in loaded:
            domain.release()
    return result


def _write_scores(ctx: StepContext, scored: list[DataFrame], result: StepResult) -> None:
    """Replace the as-of partition of gold_churn_scores with every scored domain at once."""
    out = scored[0]
    for more in scored[1:]:
        out = out.unionByName(more)
    version = ctx.lake.replace_partition(ctx.stamp(out), OUTPUT_TABLE, as_of_date=ctx.as_of)
    result.outputs[OUTPUT_TABLE] = version
    result.rows_out = ctx.lake.rows_written(OUTPUT_TABLE)
