"""Airflow example: the crm-mining pipeline once a day with spark-submit on a cluster.

Copy this file into the DAGs folder of an Airflow with ``apache-airflow-providers-apache-spark``
and a Spark connection (``spark_default``, master ``yarn``; for Kubernetes see
docs/cluster.md). The pipeline runs as one spark-submit of ``jobs/run_pipeline.py`` (all
steps in order, one MLflow parent run, one row per step in ``crm.ops_pipeline_runs``). The
as-of date is the end of the DAG run's data interval, so a backfill of an earlier day
recomputes exactly that day, and a retry replaces the same partitions instead of adding rows.

Airflow Variables read when a task runs (templates, so parsing the DAG touches no database):

- ``crm_repo``: a checkout or unpacked release on the Airflow worker with ``jobs/`` and
  ``dist/crm_mining_env.tar.gz`` (the packed Python environment, see docs/cluster.md);
- ``crm_config``: the YAML that declares this installation's sources (shipped with --files);
- ``crm_lake_root``: the lake on object storage, e.g. ``s3a://bucket/crm/lake``;
- ``crm_tracking_uri``: the MLflow tracking server, e.g. ``http://mlflow:5000``;
- ``crm_pii_secret``: the pseudonymisation key (Airflow masks variables named ``*secret*``;
  a secrets backend is better still).
"""
from __future__ import annotations

import datetime as dt

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

REPO = "{{ var.value.get('crm_repo', '/opt/crm-mining') }}"
CONFIG = "{{ var.value.get('crm_config', '/opt/crm-mining/conf/crm.yaml') }}"
LAKE_ROOT = "{{ var.value.get('crm_lake_root', 's3a://crm-data/lake') }}"
TRACKING_URI = "{{ var.value.get('crm_tracking_uri', 'http://mlflow:5000') }}"

# The Delta JAR matching pyspark 4.2 / delta-spark 4.4.0 (Scala 2.13), resolved by spark-submit.
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"

SPARK_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.extraJavaOptions": "-Xss32m -Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Xss32m -Duser.timezone=UTC",
    # The packed virtualenv (crm-mining and its dependencies) unpacked as ./environment on
    # every node; driver and executors run its Python.
    "spark.archives": f"{REPO}/dist/crm_mining_env.tar.gz#environment",
    "spark.pyspark.python": "./environment/bin/python",
}

with DAG(
    dag_id="crm_mining",
    description="crm-mining: ingest, refine, customer360, value, segment, basket, churn, report",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs on one lake must not overlap
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=10)},
    tags=["crm", "spark"],
) as dag:
    pipeline = SparkSubmitOperator(
        task_id="crm_mining_pipeline",
        conn_id="spark_default",
        application=f"{REPO}/jobs/run_pipeline.py",
        name="crm-mining-{{ ds_nodash }}",
        packages=DELTA_PACKAGE,
        conf=SPARK_CONF,
        deploy_mode="cluster",
        files=CONFIG,  # lands in the driver's working directory under its base name
        application_args=[
            "--profile", "cluster",
            "--config", "{{ var.value.get('crm_config', '/opt/crm-mining/conf/crm.yaml').split('/')[-1] }}",
            "--as-of", "{{ data_interval_end | ds }}",
            "--set", f"lake.root={LAKE_ROOT}",
            "--set", f"tracking.uri={TRACKING_URI}",
        ],
        # In YARN cluster mode these become spark.yarn.appMasterEnv.*; in client mode the
        # environment of spark-submit. Only the driver needs the key (hashing runs in Spark
        # expressions built on the driver).
        env_vars={"CRM_PII_KEY": "{{ var.value.crm_pii_secret }}"},
    )
