"""Spark session: a local Delta-enabled session by default, the existing one on a cluster.

Under ``spark-submit`` or on a managed cluster a session (or its settings) already exists and
is used as it is: nothing here overrides it. Only when crm-mining starts Spark itself does it
choose local settings: Delta from Maven Central through ``configure_spark_with_delta_pip``
(resolved once into the Ivy cache), AQE on, small shuffle partitions, UI off, the parallel
garbage collector, Python workers on the interpreter that runs crm-mining.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any, Mapping

from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def _launched_by_spark_submit() -> bool:
    # spark-submit starts Python with the gateway already running and says so here.
    return "PYSPARK_GATEWAY_PORT" in os.environ or "SPARK_ENV_LOADED" in os.environ


#: ``spark.gc`` → the JVM option choosing that garbage collector (``None``: the JVM's default).
GC_OPTIONS = {"parallel": "-XX:+UseParallelGC", "g1": "-XX:+UseG1GC", None: ""}


def _java_options(spark_cfg: Mapping[str, Any]) -> str:
    gc = spark_cfg.get("gc", "parallel")
    if gc not in GC_OPTIONS:
        raise ValueError(f"spark.gc: {gc!r} is not a garbage collector crm-mining knows "
                         f"(parallel, g1, or null for the JVM's default)")
    stack = spark_cfg.get("thread_stack") or "32m"
    return " ".join(o for o in (f"-Xss{stack}", "-Duser.timezone=UTC", GC_OPTIONS[gc]) if o)


def local_settings(spark_cfg: Mapping[str, Any]) -> dict[str, str]:
    """The Spark settings crm-mining uses for a session it creates itself."""
    java_options = _java_options(spark_cfg)
    settings = {
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.driver.memory": str(spark_cfg.get("driver_memory") or "4g"),
        # UTC everywhere: event timestamps carry no zone and dates must not shift.
        "spark.driver.extraJavaOptions": java_options,
        "spark.executor.extraJavaOptions": java_options,
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.shuffle.partitions": str(spark_cfg.get("shuffle_partitions") or 8),
        "spark.ui.enabled": "true" if spark_cfg.get("ui") else "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Delta rebuilds table state with 50 tasks by default: far too many for a laptop.
        "spark.databricks.delta.snapshotPartitions": str(spark_cfg.get("delta_snapshot_partitions") or 2),
        # Our own progress lines replace the console bars, which garble logs.
        "spark.ui.showConsoleProgress": "false",
    }
    for key, value in (spark_cfg.get("conf") or {}).items():
        settings[str(key)] = str(value)
    return settings


def get_spark(spark_cfg: Mapping[str, Any] | None = None) -> SparkSession:
    """Return the active session, or build a local Delta-enabled one.

    Parameters
    ----------
    spark_cfg : the ``spark`` section of the configuration (``master``, ``driver_memory``,
        ``shuffle_partitions``, ``thread_stack``, ``gc``, ``ui``, ``log_level``, ``conf``).

    Examples
    --------
    >>> spark = get_spark({"master": "local[2]", "shuffle_partitions": 4})
    >>> spark.range(3).count()
    3
    """
    spark_cfg = dict(spark_cfg or {})
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if _launched_by_spark_submit():
        # spark-submit owns master, memory and packages: take its settings as they are.
        spark = SparkSession.builder.appName(spark_cfg.get("app_name") or "crm-mining").getOrCreate()
    else:
        from delta import configure_spark_with_delta_pip

        builder = SparkSession.builder.appName(spark_cfg.get("app_name") or "crm-mining")
        builder = builder.master(spark_cfg.get("master") or "local[*]")
        for key, value in local_settings(spark_cfg).items():
            builder = builder.config(key, value)
        log.info("starting a local Spark session (%s)", spark_cfg.get("master") or "local[*]")
        # PySpark starts its Python workers (the CLV pandas UDFs) with PYSPARK_PYTHON, else with the
        # first python3 on PATH; the interpreter running crm-mining has the package and its
        # dependencies.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        spark = configure_spark_with_delta_pip(builder).getOrCreate()
    spark.sparkContext.setLogLevel(spark_cfg.get("log_level") or "WARN")
    return spark


def partitions_for(rows: int, *, rows_per_partition: int, max_partitions: int) -> int:
    """One partition per ``rows_per_partition`` rows, at least one and at most ``max_partitions``.

    For the inputs of iterative pyspark.ml fits (K-Means, L-BFGS, boosted trees): every
    iteration is a Spark job with a task per partition, so on small data spread over the
    shuffle partitions the tasks' own overhead, not the maths, sets the time.

    Examples
    --------
    >>> partitions_for(8_400, rows_per_partition=25_000, max_partitions=32)
    1
    >>> partitions_for(91_600, rows_per_partition=25_000, max_partitions=32)
    4
    """
    if rows < 0 or rows_per_partition < 1 or max_partitions < 1:
        raise ValueError(f"rows must be >= 0, rows_per_partition and max_partitions >= 1; "
                         f"got {rows}, {rows_per_partition}, {max_partitions}")
    return max(1, min(max_partitions, math.ceil(rows / rows_per_partition)))


def laid_out_by(df: DataFrame, *keys: str, rows: int, rows_per_partition: int) -> DataFrame:
    """``df`` hashed by ``keys`` into :func:`partitions_for` partitions (at most the session's
    shuffle partitions) and sorted by them within each: a layout that depends on the rows alone,
    not on how they were read or joined, so sampling ml fits give the same result on a rerun.

    Examples
    --------
    >>> laid_out_by(vectors, "customer_key", rows=91_600, rows_per_partition=25_000).rdd.getNumPartitions()
    4
    """
    partitions = partitions_for(rows, rows_per_partition=rows_per_partition,
                                max_partitions=int(df.sparkSession.conf.get("spark.sql.shuffle.partitions")))
    return df.repartition(partitions, *keys).sortWithinPartitions(*keys)


def describe_jobs(spark: SparkSession, description: str) -> None:
    """Label the Spark jobs that follow, so the Spark UI reads as the pipeline."""
    spark.sparkContext.setJobDescription(description)
