"""Scoring: churn probability, risk tier and top reasons for every active customer.

Reasons come from the logistic regression fitted with every churn model (the model itself
for LR, its companion for GBT): a customer's contribution of feature j is
``coefficient_j · (slog(x_j) - mean_j) / std_j``, computed as Spark expressions; the
features with the largest positive contributions are the ones pushing that customer's
risk up, named in ``top_reasons`` (at most ``top_reasons`` of them, none when nothing pushes
up). For a GBT champion these are the linear model's reasons, a faithful summary of the
direction of each feature but not of the trees' interactions.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Sequence

from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .evaluate import with_decile
from .train import PROBABILITY_COL, predict, signed_log

log = logging.getLogger(__name__)

REASONS_ARTIFACT = "churn_reasons.json"
SCORE_COLUMNS = ("customer_key", "domain", PROBABILITY_COL, "risk_tier", "top_reasons", "model_version")


def reason_contribution(weight: Mapping[str, Any]) -> Column:
    """One feature's contribution to the LR score of each row."""
    std = float(weight["std"])
    if std <= 0.0 or float(weight["coefficient"]) == 0.0:
        return F.lit(0.0)
    return F.lit(float(weight["coefficient"])) * (signed_log(weight["feature"]) - F.lit(float(weight["mean"]))) / std


def top_reasons(weights: Sequence[Mapping[str, Any]], *, top_k: int = 3) -> Column:
    """array<string>: the ``top_k`` features with the largest positive contributions, largest first.

    Examples
    --------
    >>> features.select(top_reasons(weights, top_k=3).alias("top_reasons"))
    """
    if top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    if not weights:
        return F.array().cast("array<string>")
    parts = F.array(*[F.struct(reason_contribution(w).alias("c"), F.lit(w["feature"]).alias("f"))
                      for w in weights])
    pushing_up = F.filter(parts, lambda s: s["c"] > 0)
    ranked = F.slice(F.sort_array(pushing_up, asc=False), 1, top_k)
    return F.transform(ranked, lambda s: s["f"])


def risk_tier(scored: DataFrame, *, method: str = "decile", high_threshold: float = 0.6,
              medium_threshold: float = 0.3, high_deciles: int = 1, medium_deciles: int = 2,
              probability_col: str = PROBABILITY_COL) -> DataFrame:
    """Add ``risk_tier`` (high / medium / low) by probability thresholds or by score decile.

    By decile, the riskiest ``high_deciles`` tenths are high and the next ``medium_deciles``
    medium (exact tenths by rank, ties split by ``customer_key``).
    """
    p = F.col(probability_col)
    if method == "threshold":
        if not 0.0 <= medium_threshold <= high_threshold <= 1.0:
            raise ValueError("thresholds must satisfy 0 <= medium_threshold <= high_threshold <= 1")
        tier = F.when(p >= high_threshold, "high").when(p >= medium_threshold, "medium").otherwise("low")
    elif method == "decile":
        if high_deciles < 0 or medium_deciles < 0 or high_deciles + medium_deciles > 10:
            raise ValueError("high_deciles and medium_deciles must be >= 0 and add up to at most 10")
        decile = F.col("decile")
        tier = F.when(decile <= high_deciles, "high").when(decile <= high_deciles + medium_deciles,
                                                            "medium").otherwise("low")
        return with_decile(scored, probability_col=probability_col).withColumn("risk_tier", tier).drop("decile")
    else:
        raise ValueError(f"risk_tier_method must be 'threshold' or 'decile', got {method!r}")
    return scored.withColumn("risk_tier", tier)


def score_customers(model: PipelineModel, features: DataFrame, *, weights: Sequence[Mapping[str, Any]],
                    domain: str, model_version: str, top_k: int = 3, tiers: Mapping[str, Any] | None = None
                    ) -> DataFrame:
    """Score one cutoff's features: the ``gold_churn_scores`` columns (before stamping).

    Parameters
    ----------
    model : the fitted pipeline (the champion).
    features : one row per active customer (point-in-time features at the as-of date).
    weights : :func:`crm_mining.churn.train.reason_weights` of the model's logistic regression.
    tiers : keyword arguments of :func:`risk_tier`.
    """
    scored = predict(model, features).withColumn("top_reasons", top_reasons(weights, top_k=top_k))
    scored = risk_tier(scored, **dict(tiers or {}))
    return scored.select(
        "customer_key", F.lit(domain).alias("domain"), F.col(PROBABILITY_COL).cast("double"), "risk_tier",
        "top_reasons", F.lit(str(model_version)).alias("model_version"),
    )


def load_champion(name: str) -> tuple[PipelineModel, str, dict[str, Any]] | None:
    """The champion's pipeline, version and reasons file, or ``None`` when there is none."""
    import mlflow
    import mlflow.spark
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    model = mlflow.spark.load_model(f"models:/{name}@champion")
    path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=REASONS_ARTIFACT)
    with open(path, encoding="utf-8") as fh:
        reasons = json.load(fh)
    return model, str(version.version), reasons
