"""The deployment examples point at real entry points and pass arguments the CLI accepts.

Airflow and the Databricks CLI are not test dependencies: the DAG file is executed against
small stand-ins of the two Airflow classes it uses (capturing the operator's arguments), its
templates are rendered with Jinja, and the rendered arguments are parsed by the real
``crm-mining`` parser. The bundle is read as YAML and checked against setup.py and jobs/.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import re
import runpy
import sys
import types
from pathlib import Path

import pytest
import yaml

from crm_mining.cli import build_parser, configure

REPO = Path(__file__).resolve().parent.parent
DAG_FILE = REPO / "deploy" / "airflow" / "crm_mining_dag.py"
BUNDLE = REPO / "deploy" / "databricks" / "databricks.yml"


def delta_coordinate() -> str:
    spark = ".".join(importlib.metadata.version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark}_2.13:{importlib.metadata.version('delta-spark')}"


@pytest.fixture
def captured_operator(monkeypatch):
    """Run the DAG file with stand-in Airflow modules; return the operator's keyword arguments."""
    captured: dict = {}

    class DAG:
        def __init__(self, **kwargs):
            captured["dag"] = kwargs

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class SparkSubmitOperator:
        def __init__(self, **kwargs):
            captured["operator"] = kwargs

    modules = {
        "airflow": types.ModuleType("airflow"),
        "airflow.sdk": types.ModuleType("airflow.sdk"),
        "airflow.providers": types.ModuleType("airflow.providers"),
        "airflow.providers.apache": types.ModuleType("airflow.providers.apache"),
        "airflow.providers.apache.spark": types.ModuleType("airflow.providers.apache.spark"),
        "airflow.providers.apache.spark.operators": types.ModuleType("airflow.providers.apache.spark.operators"),
        "airflow.providers.apache.spark.operators.spark_submit":
            types.ModuleType("airflow.providers.apache.spark.operators.spark_submit"),
    }
    modules["airflow.sdk"].DAG = DAG
    modules["airflow.providers.apache.spark.operators.spark_submit"].SparkSubmitOperator = SparkSubmitOperator
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    runpy.run_path(str(DAG_FILE))
    return captured


def render(template, variables: dict, interval_end: dt.datetime):
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["ds"] = lambda value: value.strftime("%Y-%m-%d")

    class Values(dict):
        def __getattr__(self, name):
            return self[name]

    context = {"var": {"value": Values(variables)}, "data_interval_end": interval_end,
               "ds_nodash": (interval_end - dt.timedelta(days=1)).strftime("%Y%m%d")}
    if isinstance(template, list):
        return [env.from_string(item).render(context) for item in template]
    if isinstance(template, dict):
        return {k: env.from_string(v).render(context) for k, v in template.items()}
    return env.from_string(template).render(context)


def test_airflow_dag_submits_the_pipeline_job_with_valid_arguments(captured_operator, tmp_path):
    op = captured_operator["operator"]
    assert captured_operator["dag"]["max_active_runs"] == 1
    assert op["packages"] == delta_coordinate()
    variables = {"crm_repo": str(REPO), "crm_config": str(tmp_path / "crm.yaml"),
                 "crm_lake_root": "s3a://bucket/lake", "crm_tracking_uri": "http://mlflow:5000",
                 "crm_pii_secret": "k"}
    end = dt.datetime(2011, 12, 10)
    application = render(op["application"], variables, end)
    assert Path(application) == REPO / "jobs" / "run_pipeline.py" and Path(application).is_file()
    args = render(op["application_args"], variables, end)
    parsed = build_parser().parse_args(["run", *args])
    assert parsed.as_of == "2011-12-10" and parsed.profile == "cluster" and parsed.config == ["crm.yaml"]
    assert Path(render(op["files"], variables, end)).name == "crm.yaml"
    assert render(op["env_vars"], variables, end) == {"CRM_PII_KEY": "k"}
    # The overrides name real configuration keys (an unknown key would raise here).
    parsed.config = []
    config = configure(parsed)
    assert config.get_path("lake.root") == "s3a://bucket/lake"
    assert config.get_path("tracking.uri") == "http://mlflow:5000"


def test_databricks_bundle_uses_the_real_entry_points():
    bundle = yaml.safe_load(BUNDLE.read_text())
    setup_text = (REPO / "setup.py").read_text()
    jobs = bundle["resources"]["jobs"]
    wheel_task = jobs["crm_mining"]["tasks"][0]["python_wheel_task"]
    script, target = re.search(r'"(crm-mining)=([\w.:]+)"', setup_text).groups()
    assert wheel_task["entry_point"] == script and target == "crm_mining.cli:main"
    assert re.sub(r"[-_.]+", "_", wheel_task["package_name"]) == "crm_mining"
    python_file = jobs["crm_mining_submit"]["tasks"][0]["spark_python_task"]["python_file"]
    assert (BUNDLE.parent / python_file).resolve() == REPO / "jobs" / "run_pipeline.py"
    assert (BUNDLE.parent / bundle["artifacts"]["crm_mining_wheel"]["path"]).resolve() == REPO
    for job in jobs.values():
        task = job["tasks"][0]
        params = task.get("python_wheel_task", task.get("spark_python_task"))["parameters"]
        if params[0] == "run":
            params = params[1:]
        resolved = [re.sub(r"\$\{var\.(\w+)\}", lambda m: str(bundle["variables"][m.group(1)]["default"]), p)
                    for p in params]
        parsed = build_parser().parse_args(["run", *resolved])
        parsed.config = []
        assert configure(parsed).get_path("lake.root") == bundle["variables"]["lake_root"]["default"]
        cluster = job["job_clusters"][0]["new_cluster"]
        assert cluster["spark_env_vars"]["CRM_PII_KEY"].startswith("{{secrets/")


def test_cluster_doc_names_the_installed_delta_package():
    text = (REPO / "docs" / "cluster.md").read_text()
    assert delta_coordinate() in text
    for setting in ("CRM_PII_KEY", "lake.root", "tracking.uri", "conf/cluster.yaml", "venv-pack",
                    "--py-files", "--packages"):
        assert setting in text
