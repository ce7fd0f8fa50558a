"""The runner's contract: step records in ops_pipeline_runs and MLflow, failures, resume, CLI errors."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest
from pyspark.sql import functions as F

from crm_mining import pipeline
from crm_mining.pipeline import StepFailed, StepResult, run_pipeline

CALLS: list[str] = []


def _step_ok(ctx):
    CALLS.append("first")
    df = ctx.stamp(ctx.spark.range(3).withColumnRenamed("id", "n"))
    version = ctx.lake.replace_partition(df, "gold_demo", as_of_date=ctx.as_of)
    return StepResult(rows_in=3, rows_out=3, outputs={"gold_demo": version})


class _Killed(BaseException):
    """Stands in for the process dying: the runner catches no BaseException, so it records nothing."""


def _step_flaky(ctx):
    CALLS.append("second")
    if ctx.config.get_path("run.seed") == 13:
        raise RuntimeError("planted failure")
    if ctx.config.get_path("run.seed") == 99:
        raise _Killed()
    return StepResult(rows_in=1, rows_out=1, inputs={"gold_demo": ctx.lake.version("gold_demo")})


@pytest.fixture
def fake_steps(monkeypatch):
    module = types.ModuleType("crm_fake_steps")
    module.first, module.second = _step_ok, _step_flaky
    monkeypatch.setitem(sys.modules, "crm_fake_steps", module)
    monkeypatch.setattr(pipeline, "STEP_REGISTRY", {"first": "crm_fake_steps:first",
                                                   "second": "crm_fake_steps:second"})
    monkeypatch.setattr(pipeline, "available_steps", lambda: ["first", "second"])
    CALLS.clear()


def test_run_records_each_step_with_versions_and_mlflow(spark, make_config, fake_steps):
    import mlflow

    cfg = make_config("run.as_of=2020-01-31", "lake.database=crm_pipe_a")
    run_id = run_pipeline(spark, cfg, steps=["first", "second"])
    ops = spark.read.format("delta").load(f"{cfg['lake']['root']}/ops_pipeline_runs")
    rows = {r["step"]: r for r in ops.filter(F.col("run_id") == run_id).collect()}
    assert {s: rows[s]["status"] for s in rows} == {"first": "succeeded", "second": "succeeded"}
    assert rows["first"]["output_versions"] == {"gold_demo": 0}
    assert rows["second"]["input_versions"] == {"gold_demo": 0}
    assert rows["first"]["config_hash"] == cfg.hash
    gold = spark.table("crm_pipe_a.gold_demo")
    assert gold.filter((F.col("run_id") == run_id) & (F.col("as_of_date") == "2020-01-31")).count() == 3
    children = mlflow.search_runs(filter_string=f"tags.`crm.run_id` = '{run_id}'", output_format="list")
    nested = [r for r in children if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["crm.step"] for r in nested) == ["first", "second"]
    assert all(r.data.params["config_hash"] == cfg.hash for r in nested)
    assert rows["first"]["mlflow_run_id"] in {r.info.run_id for r in nested}


def test_failure_names_the_step_and_resume_finishes(spark, make_config, fake_steps):
    cfg = make_config("run.as_of=2020-01-31", "run.seed=13", "lake.database=crm_pipe_b")
    with pytest.raises(StepFailed, match="step 'second' failed: RuntimeError: planted failure"):
        run_pipeline(spark, cfg, steps=["first", "second"])
    ops = spark.read.format("delta").load(f"{cfg['lake']['root']}/ops_pipeline_runs")
    failed = ops.filter(F.col("status") == "failed").collect()
    assert len(failed) == 1 and "planted failure" in failed[0]["error"]
    CALLS.clear()
    cfg["run"]["seed"] = 7  # the cause is fixed; resume reruns only the failed step
    run_id = run_pipeline(spark, cfg, steps=["first", "second"], resume=True)
    assert run_id == failed[0]["run_id"]
    assert CALLS == ["second"]
    gold = spark.read.format("delta").load(f"{cfg['lake']['root']}/gold_demo")
    assert gold.count() == 3  # nothing duplicated
    # one row per step run: the failed row became the succeeded one
    ops = spark.read.format("delta").load(f"{cfg['lake']['root']}/ops_pipeline_runs").filter(F.col("run_id") == run_id)
    assert sorted((r["step"], r["status"]) for r in ops.collect()) == [("first", "succeeded"), ("second", "succeeded")]


def test_resume_after_a_kill_between_steps_runs_the_steps_not_started(spark, make_config, fake_steps):
    """Killed after one step succeeded and before the next recorded anything: resume goes on."""
    cfg = make_config("run.as_of=2020-01-31", "lake.database=crm_pipe_c")
    first_run = run_pipeline(spark, cfg, steps=["first"])  # all that was recorded before the kill
    CALLS.clear()
    assert run_pipeline(spark, cfg, steps=["first", "second"], resume=True) == first_run
    assert CALLS == ["second"]
    CALLS.clear()  # the run is now complete: a further --resume starts a new run
    assert run_pipeline(spark, cfg, steps=["first", "second"], resume=True) != first_run
    assert CALLS == ["first", "second"]


def test_a_step_killed_midway_leaves_no_row_and_resume_reruns_it(spark, make_config, fake_steps):
    """A step run is recorded when it ends: a kill inside it leaves the finished steps' rows only."""
    cfg = make_config("run.as_of=2020-01-31", "run.seed=99", "lake.database=crm_pipe_d")
    with pytest.raises(_Killed):
        run_pipeline(spark, cfg, steps=["first", "second"])
    ops_path = f"{cfg['lake']['root']}/ops_pipeline_runs"
    rows = spark.read.format("delta").load(ops_path).collect()
    assert [(r["step"], r["status"]) for r in rows] == [("first", "succeeded")]
    CALLS.clear()
    cfg["run"]["seed"] = 7
    assert run_pipeline(spark, cfg, steps=["first", "second"], resume=True) == rows[0]["run_id"]
    assert CALLS == ["second"]
    ops = spark.read.format("delta").load(ops_path)
    assert sorted((r["step"], r["status"]) for r in ops.collect()) == [("first", "succeeded"), ("second", "succeeded")]


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "crm_mining.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_rejects_unknown_key_before_spark(tmp_path):
    result = _cli("run", "--set", "lake.rooot=/tmp/x")
    assert result.returncode == 2
    assert "lake.rooot" in result.stderr
    assert "Spark" not in result.stderr and "log4j" not in result.stderr


def test_cli_names_a_missing_source_file(tmp_path):
    result = _cli("run", "--set", "run.demo=false", "--set", f"sources.online_retail.path={tmp_path}/none.csv",
                  "--set", "sources.berka.enabled=false", "--set", "sources.customer_link.enabled=false")
    assert result.returncode == 2
    assert f"{tmp_path}/none.csv" in result.stderr


def test_cli_requires_the_pii_key_outside_demo(tmp_path):
    data = tmp_path / "x.csv"
    data.write_text("InvoiceNo\n")
    result = _cli("run", "--set", "run.demo=false", "--set", f"sources.online_retail.path={data}",
                  "--set", "sources.berka.enabled=false", "--set", "sources.customer_link.enabled=false",
                  env_extra={"CRM_PII_KEY": ""})
    assert result.returncode == 2
    assert "CRM_PII_KEY" in result.stderr


@pytest.mark.parametrize("root, cause", [("blocker/lake", "is a file, not a directory"),
                                         ("locked/lake", "is not writable")])
def test_cli_names_an_unusable_lake_root_before_writing_anything(tmp_path, root, cause):
    import os

    (tmp_path / "blocker").write_text("a file where the lake's parent directory should be")
    (tmp_path / "locked").mkdir(mode=0o500)
    if cause == "is not writable" and os.access(tmp_path / "locked", os.W_OK):
        pytest.skip("running as a user who may write anywhere (root): a read-only directory cannot be made")
    result = _cli("run", "--set", f"lake.root={tmp_path / root}", "--set", f"run.workdir={tmp_path / 'work'}",
                  "--set", f"demo.out={tmp_path / 'demo'}")
    assert result.returncode == 2, result.stderr
    assert f"lake.root = {tmp_path / root}" in result.stderr and cause in result.stderr
    assert "Spark" not in result.stderr
    assert not (tmp_path / "demo").exists() and not (tmp_path / "work").exists()  # nothing written


def test_unknown_step_is_rejected(make_config):
    with pytest.raises(ValueError, match="unknown step"):
        pipeline.resolve_steps(["ingest", "nonsense"], make_config())
