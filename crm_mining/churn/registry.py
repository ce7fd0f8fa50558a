"""Model registry: register churn models and keep the ``champion`` alias on the best one.

Each registered version carries its out-of-time metric as a tag (``oot_<metric>``). A new
version takes the alias ``champion`` only when it beats the current champion's out-of-time
metric by more than ``min_improvement``; the decision and both scores are returned for
logging. Names are ``<tracking.registry_prefix>-churn-<domain>``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

log = logging.getLogger(__name__)

CHAMPION = "champion"


def model_name(*, prefix: str, domain: str) -> str:
    """Registered model name, e.g. ``crm-mining-churn-retail``."""
    if not prefix or not domain:
        raise ValueError("both the registry prefix and the domain are needed")
    return f"{prefix}-churn-{domain}"


def beats_champion(*, challenger: float, champion: float | None, min_improvement: float = 0.0) -> bool:
    """Whether a challenger's metric earns it the champion alias (higher is better).

    Examples
    --------
    >>> beats_champion(challenger=0.61, champion=0.60)
    True
    >>> beats_champion(challenger=0.60, champion=0.60)
    False
    >>> beats_champion(challenger=0.5, champion=None)
    True
    """
    if challenger is None:
        raise ValueError("the challenger has no score")
    if champion is None:
        return True
    return float(challenger) > float(champion) + float(min_improvement)


def champion_score(client: Any, name: str, metric: str) -> tuple[str | None, float | None]:
    """(version, out-of-time metric) of the current champion, or (None, None)."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    score = version.tags.get(f"oot_{metric}")
    return version.version, (float(score) if score is not None else None)


def register_and_promote(*, model_uri: str, name: str, metric: str, score: float,
                         min_improvement: float = 0.0, tags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name``; make it champion if it wins.

    Returns the new version, the decision (``promoted`` or ``kept_champion``) and both scores.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    previous_version, previous_score = champion_score(client, name, metric)
    registered = mlflow.register_model(model_uri, name)
    client.set_model_version_tag(name, registered.version, f"oot_{metric}", str(float(score)))
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, registered.version, str(key), str(value)[:5000])
    promote = beats_champion(challenger=score, champion=previous_score, min_improvement=min_improvement)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, registered.version)
    decision = {
        "model_name": name, "version": str(registered.version), "metric": metric,
        "challenger_score": float(score), "champion_score": previous_score,
        "champion_version": previous_version,
        "decision": "promoted" if promote else "kept_champion",
    }
    log.info("churn registry %s: version %s %s (%s %.4f vs champion %s)", name, registered.version,
             decision["decision"], metric, score, "none" if previous_score is None else f"{previous_score:.4f}")
    return decision
