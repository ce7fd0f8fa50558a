"""MLflow tracking: one parent run per pipeline execution, one nested run per step.

Steps log with the plain MLflow API (``mlflow.log_metric``, ``mlflow.log_figure``...) inside
the nested run the pipeline opened for them. The local default store is SQLite under the run's
working directory (MLflow 3 refuses the old ``./mlruns`` file store).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

log = logging.getLogger(__name__)


def tracking_uri(config: Mapping[str, Any]) -> str:
    """The tracking URI from ``tracking.uri``, else ``sqlite:///<run.workdir>/mlflow.db``."""
    uri = (config.get("tracking") or {}).get("uri")
    if uri:
        return str(uri)
    workdir = Path((config.get("run") or {}).get("workdir") or ".").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{workdir / 'mlflow.db'}"


def artifact_location(config: Mapping[str, Any]) -> str:
    """Where a new experiment keeps its artifacts when the store is local SQLite."""
    workdir = Path((config.get("run") or {}).get("workdir") or ".").resolve()
    return (workdir / "mlartifacts").as_uri()


def setup(config: Mapping[str, Any]) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow

    # Quiet MLflow's own chatter about the SQLite store; our progress lines say what happens.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = (config.get("tracking") or {}).get("experiment") or "crm-mining"
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_location(config) if uri.startswith("sqlite:") else None
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextlib.contextmanager
def run(name: str, *, nested: bool = False, tags: Mapping[str, str] | None = None,
        run_id: str | None = None) -> Iterator[Any]:
    """Open (or resume, with ``run_id``) an MLflow run; yields the active run."""
    import mlflow

    if run_id:
        with mlflow.start_run(run_id=run_id, nested=nested) as active:
            yield active
        return
    with mlflow.start_run(run_name=name, nested=nested, tags=dict(tags or {})) as active:
        yield active


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters, stringified and truncated to MLflow's limit."""
    import mlflow

    mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log numeric metrics; non-numeric or missing values are skipped."""
    import math

    import mlflow

    clean = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isnan(number):
            clean[key] = number
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_figure(figure: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artifact and close it."""
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


def active_run_id() -> str | None:
    """The id of the active MLflow run, if any."""
    import mlflow

    active = mlflow.active_run()
    return active.info.run_id if active else None


def is_enabled() -> bool:
    """Tracking can be switched off for library use with ``CRM_TRACKING=off``."""
    return os.environ.get("CRM_TRACKING", "on").lower() not in ("off", "0", "false")
