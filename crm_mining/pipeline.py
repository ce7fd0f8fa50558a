"""The pipeline: the ordered steps, the context they run in, and the run bookkeeping.

A step is a function ``run(ctx: StepContext) -> StepResult`` in its own module. The runner
opens one MLflow parent run per pipeline execution and a nested run per step, prints when a
step starts and ends, and records each step run in ``ops_pipeline_runs`` when it ends (status,
row counts, Delta versions read and written, config hash, MLflow run id, error). A failed step
stops the run; ``resume=True`` reruns a failed or interrupted run from its first unfinished step.

A step run gets its row when it ends, not when it starts: one blind append per step instead of
an append and a merge (on a small run those two commits took about a tenth of its time). A
step killed midway therefore leaves no row (its MLflow run stays ``RUNNING``), and ``--resume``
reruns it as a step that never started.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import importlib.util
import logging
import time
import traceback
import uuid
from typing import Any, Callable, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import tracking
from .config import Config
from .lake import Lake
from .session import describe_jobs

log = logging.getLogger("crm_mining")

#: Step name → "module:function", in pipeline order.
STEP_REGISTRY: dict[str, str] = {
    "ingest": "crm_mining.ingest:run",
    "refine": "crm_mining.refine:run",
    "customer360": "crm_mining.customer360:run",
    "value": "crm_mining.value:run",
    "segment": "crm_mining.segment:run",
    "basket": "crm_mining.basket:run",
    "churn": "crm_mining.churn:run",
    "report": "crm_mining.report:run",
}

OPS_TABLE = "ops_pipeline_runs"

OPS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("step", T.StringType(), False),
    T.StructField("status", T.StringType(), False),
    T.StructField("as_of_date", T.DateType(), True),
    T.StructField("started_at", T.TimestampType(), True),
    T.StructField("ended_at", T.TimestampType(), True),
    T.StructField("duration_s", T.DoubleType(), True),
    T.StructField("rows_in", T.LongType(), True),
    T.StructField("rows_out", T.LongType(), True),
    T.StructField("rows_quarantined", T.LongType(), True),
    T.StructField("input_versions", T.MapType(T.StringType(), T.LongType()), True),
    T.StructField("output_versions", T.MapType(T.StringType(), T.LongType()), True),
    T.StructField("metrics", T.MapType(T.StringType(), T.DoubleType()), True),
    T.StructField("config_hash", T.StringType(), True),
    T.StructField("mlflow_run_id", T.StringType(), True),
    T.StructField("error", T.StringType(), True),
])


class StepFailed(RuntimeError):
    """A step raised; the message names the step and the cause."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"step '{step}' failed: {type(cause).__name__}: {cause}")
        self.step = step
        self.cause = cause


@dataclasses.dataclass
class StepResult:
    """What a step reports: row counts, table versions read and written, metrics."""

    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    inputs: dict[str, int | None] = dataclasses.field(default_factory=dict)
    outputs: dict[str, int | None] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StepContext:
    """Everything a step needs: the session, settings, lake, run id and as-of date."""

    spark: SparkSession
    config: Config
    lake: Lake
    run_id: str
    #: steps of this run that already have a row in ``ops_pipeline_runs`` (a resumed run's failed ones)
    recorded: set[str] = dataclasses.field(default_factory=set)
    _as_of: dt.date | None = None

    @property
    def seed(self) -> int:
        return int(self.config.get_path("run.seed", 42))

    @property
    def as_of(self) -> dt.date:
        """The analytic as-of date: ``run.as_of``, else the last event date + 1 day."""
        if self._as_of is None:
            given = self.config.get_path("run.as_of")
            self._as_of = dt.date.fromisoformat(str(given)) if given else default_as_of(self.lake)
        return self._as_of

    def stamp(self, df: DataFrame) -> DataFrame:
        """Add the ``as_of_date`` and ``run_id`` columns every gold and result row carries."""
        return df.withColumn("as_of_date", F.lit(self.as_of).cast("date")).withColumn(
            "run_id", F.lit(self.run_id)
        )


def default_as_of(lake: Lake) -> dt.date:
    """The day after the last event in the silver event tables."""
    last: list[dt.datetime] = []
    for table in ("silver_retail_lines", "silver_bank_transactions"):
        if lake.exists(table):
            value = lake.read(table).agg(F.max("ts")).first()[0]
            if value is not None:
                last.append(value)
    if not last:
        raise ValueError(
            "cannot derive the as-of date: no events in silver_retail_lines or "
            "silver_bank_transactions (run ingest and refine first, or pass --as-of)"
        )
    latest = max(last)
    day = latest.date() if isinstance(latest, dt.datetime) else latest
    return day + dt.timedelta(days=1)


def available_steps() -> list[str]:
    """The steps whose modules exist in this installation, in pipeline order."""
    out = []
    for name, target in STEP_REGISTRY.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def resolve_steps(requested: Sequence[str] | None, config: Config) -> list[str]:
    """Steps to run: the requested ones (checked), else the configured ones that exist."""
    existing = available_steps()
    if requested:
        unknown = [s for s in requested if s not in STEP_REGISTRY]
        if unknown:
            raise ValueError(f"unknown step(s) {unknown}; known steps: {list(STEP_REGISTRY)}")
        missing = [s for s in requested if s not in existing]
        if missing:
            raise ValueError(f"step(s) {missing} are not available in this installation")
        return [s for s in STEP_REGISTRY if s in requested]
    configured = config.get_path("run.steps") or list(STEP_REGISTRY)
    return [s for s in STEP_REGISTRY if s in configured and s in existing]


def step_function(step: str) -> Callable[[StepContext], StepResult]:
    module, func = STEP_REGISTRY[step].split(":")
    return getattr(importlib.import_module(module), func)


def _ops_row(spark: SparkSession, record: dict[str, Any]) -> DataFrame:
    values = {field.name: record.get(field.name) for field in OPS_SCHEMA.fields}
    return spark.createDataFrame([tuple(values.values())], OPS_SCHEMA)


def record_step(lake: Lake, record: dict[str, Any], *, new: bool = False) -> None:
    """Upsert one step run into ``ops_pipeline_runs`` (keyed by run id and step).

    ``new=True`` says the run has no row for the step yet: the row is appended, a commit
    a few times cheaper than a merge (the merge scans and rewrites the table's files), and
    one that concurrent runs' appends do not conflict with.
    """
    if new:
        lake.append(_ops_row(lake.spark, record), OPS_TABLE)
    else:
        lake.merge(_ops_row(lake.spark, record), OPS_TABLE, keys=["run_id", "step"])


def unfinished_run(lake: Lake, steps: Sequence[str] = ()) -> tuple[str, str | None, list[str], list[str]] | None:
    """The latest run, unless it finished: (run id, as-of date, succeeded steps, recorded steps).

    A run is unfinished when one of its recorded steps did not succeed, or when one of
    ``steps`` (those the resuming command asks for) has no row: a job killed inside a step or
    between two steps has recorded nothing of that step. A run killed in its first step has
    recorded nothing at all, so resuming it starts a new run.
    """
    if not lake.exists(OPS_TABLE):
        return None
    ops = lake.read(OPS_TABLE)
    latest = ops.orderBy(F.col("started_at").desc()).select("run_id").first()
    if latest is None:
        return None
    rows = ops.filter(F.col("run_id") == latest[0]).select("step", "status", "as_of_date").collect()
    done = [r["step"] for r in rows if r["status"] == "succeeded"]
    if len(done) == len(rows) and set(steps) <= set(done):
        return None
    as_of = next((r["as_of_date"] for r in rows if r["as_of_date"] is not None), None)
    return latest[0], (as_of.isoformat() if as_of else None), done, [r["step"] for r in rows]


def _new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def run_pipeline(
    spark: SparkSession,
    config: Config,
    *,
    steps: Sequence[str] | None = None,
    resume: bool = False,
) -> str:
    """Run steps in order under one MLflow parent run; returns the pipeline run id.

    Raises
    ------
    StepFailed
        when a step raises; its row in ``ops_pipeline_runs`` says ``failed`` with the error.
    """
    lake = Lake(spark, root=config.get_path("lake.root"), database=config.get_path("lake.database"))
    lake.register_all()
    chosen = resolve_steps(steps, config)
    run_id, done, recorded, resumed = _new_run_id(), [], [], False
    if resume:
        previous = unfinished_run(lake, chosen)
        if previous is None:
            log.info("resume: no unfinished run found; starting a new run")
        else:
            run_id, as_of, done, recorded = previous
            resumed = True
            if as_of and not config.get_path("run.as_of"):
                config["run"]["as_of"] = as_of
            log.info("resume: run %s, skipping finished steps %s", run_id, done)
    ctx = StepContext(spark=spark, config=config, lake=lake, run_id=run_id, recorded=set(recorded))
    tracking.setup(config)
    tags = {"crm.run_id": run_id, "crm.config_hash": config.hash}
    parent_id = _parent_mlflow_id(run_id) if resumed else None
    with tracking.run(f"pipeline {run_id}", tags=tags, run_id=parent_id) as parent:
        if parent_id is None:
            tracking.log_params({"steps": ",".join(chosen), "config_hash": config.hash,
                                 "run_id": run_id, "lake_root": lake.root})
        else:  # params are immutable in MLflow; a resumed run notes its settings as tags
            import mlflow

            mlflow.set_tags({"crm.resumed_config_hash": config.hash, "crm.resumed_steps": ",".join(chosen)})
        for step in chosen:
            if step in done:
                log.info("[%s] already succeeded in run %s, skipped", step, run_id)
                continue
            run_step(ctx, step)
        log.info("pipeline run %s finished (MLflow run %s)", run_id, parent.info.run_id)
    return run_id


def _parent_mlflow_id(run_id: str) -> str | None:
    """The MLflow parent run of an earlier execution of ``run_id``, to resume into it."""
    import mlflow

    found = mlflow.search_runs(filter_string=f"tags.`crm.run_id` = '{run_id}'",
                               output_format="list", max_results=10)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    return parents[0].info.run_id if parents else None


def run_step(ctx: StepContext, step: str) -> StepResult:
    """Run one step in a nested MLflow run, print its progress and record it."""
    func = step_function(step)
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    clock = time.monotonic()
    log.info("[%s] started", step)
    describe_jobs(ctx.spark, f"crm-mining {step}")
    record: dict[str, Any] = {
        "run_id": ctx.run_id, "step": step, "started_at": started,
        "config_hash": ctx.config.hash,
        "as_of_date": dt.date.fromisoformat(ctx.config.get_path("run.as_of"))
        if ctx.config.get_path("run.as_of") else None,
    }
    with tracking.run(step, nested=True, tags={"crm.run_id": ctx.run_id, "crm.step": step}) as child:
        record["mlflow_run_id"] = child.info.run_id
        try:
            result = func(ctx)
        except Exception as exc:  # recorded, then re-raised with the step named
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:4000],
                          ended_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                          duration_s=time.monotonic() - clock)
            log.error("[%s] failed: %s", step, record["error"])
            log.debug("%s", traceback.format_exc())
            _safe_record(ctx, record)
            raise StepFailed(step, exc) from exc
        finally:
            describe_jobs(ctx.spark, None)
        duration = time.monotonic() - clock
        record.update(
            status="succeeded", ended_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
            duration_s=duration, rows_in=result.rows_in, rows_out=result.rows_out,
            rows_quarantined=result.rows_quarantined,
            input_versions={k: v for k, v in result.inputs.items() if v is not None},
            output_versions={k: v for k, v in result.outputs.items() if v is not None},
            metrics={k: float(v) for k, v in result.metrics.items() if v is not None},
        )
        if ctx._as_of is not None:
            record["as_of_date"] = ctx._as_of
        tracking.log_params({"config_hash": ctx.config.hash, "run_id": ctx.run_id,
                             **{f"input_version.{k}": v for k, v in record["input_versions"].items()},
                             **{f"output_version.{k}": v for k, v in record["output_versions"].items()}})
        tracking.log_metrics({"rows_in": result.rows_in, "rows_out": result.rows_out,
                              "rows_quarantined": result.rows_quarantined, "duration_s": duration})
        _record(ctx, record)
    log.info("[%s] done in %.1f s: %d rows in, %d out, %d quarantined", step, duration,
             result.rows_in, result.rows_out, result.rows_quarantined)
    return result


def _record(ctx: StepContext, record: dict[str, Any]) -> None:
    """Write the step run's row: appended, or merged over the row of an earlier failed attempt
    when a resumed run repeats the step."""
    record_step(ctx.lake, record, new=record["step"] not in ctx.recorded)
    ctx.recorded.add(record["step"])


def _safe_record(ctx: StepContext, record: dict[str, Any]) -> None:
    try:
        _record(ctx, record)
    except Exception as exc:  # the step's own error matters more than the bookkeeping's
        log.warning("could not record the failed step in %s: %s", OPS_TABLE, exc)
