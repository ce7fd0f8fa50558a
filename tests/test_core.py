"""Core: configuration layering and validation, the lake's Delta writes, pseudonymisation."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import pytest
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from crm_mining.config import ConfigError, check_source_paths, load_config, parse_override


# -- configuration -------------------------------------------------------------------------
def test_overrides_are_typed_and_nested():
    cfg = load_config(overrides=["lake.root=/tmp/x", "spark.shuffle_partitions=3", "run.steps=[ingest, refine]"])
    assert cfg.get_path("lake.root") == "/tmp/x"
    assert cfg.get_path("spark.shuffle_partitions") == 3
    assert cfg.get_path("run.steps") == ["ingest", "refine"]


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="lake.rooot"):
        load_config(overrides=["lake.rooot=/tmp/x"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="spark.shuffle_partitions.*expects int"):
        load_config(overrides=["spark.shuffle_partitions=many"])


def test_bad_as_of_is_rejected():
    with pytest.raises(ConfigError, match="run.as_of"):
        load_config(overrides=["run.as_of=2011-13-45"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(config_files=[tmp_path / "nope.yaml"])


def test_source_definitions_are_merged_and_paths_checked(tmp_path):
    cfg = load_config(overrides=[f"sources.online_retail.path={tmp_path}/missing.csv"])
    assert cfg.get_path("sources.online_retail.domain") == "retail"
    with pytest.raises(ConfigError, match="missing.csv"):
        check_source_paths(cfg)


def test_spark_conf_passes_any_spark_setting_through(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("spark:\n  conf:\n    spark.eventLog.enabled: 'true'\n    spark.eventLog.dir: /tmp/events\n")
    config = load_config(config_files=[str(extra)])
    assert config.get("spark")["conf"] == {"spark.eventLog.enabled": "true", "spark.eventLog.dir": "/tmp/events"}
    with pytest.raises(ConfigError, match="spark.confs"):
        load_config(overrides=["spark.confs.x=1"])
    # on the command line the Spark setting's own dots stay in its name
    config = load_config(config_files=[str(extra)],
                         overrides=["spark.conf.spark.driver.extraJavaOptions=-Xss64m -Dx=1"])
    assert config.get("spark")["conf"] == {"spark.eventLog.enabled": "true", "spark.eventLog.dir": "/tmp/events",
                                           "spark.driver.extraJavaOptions": "-Xss64m -Dx=1"}


def test_garbage_collector_is_chosen_by_name_and_the_session_runs_it(spark):
    from crm_mining.session import local_settings

    def driver_options(**cfg) -> str:
        return local_settings(cfg)["spark.driver.extraJavaOptions"]

    assert driver_options() == "-Xss32m -Duser.timezone=UTC -XX:+UseParallelGC"
    assert driver_options(gc="g1", thread_stack="64m") == "-Xss64m -Duser.timezone=UTC -XX:+UseG1GC"
    assert driver_options(gc=None) == "-Xss32m -Duser.timezone=UTC"
    assert local_settings({"gc": "g1"})["spark.executor.extraJavaOptions"].endswith("-XX:+UseG1GC")
    with pytest.raises(ValueError, match=r"spark.gc: 'zgc'"):
        local_settings({"gc": "zgc"})
    assert load_config().get("spark")["gc"] == "parallel"
    # the test session is built by get_spark as the CLI builds its own: its JVM runs the parallel
    # collector (whose young and old generation beans are "PS Scavenge" and "PS MarkSweep")
    beans = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    assert sorted(bean.getName() for bean in beans) == ["PS MarkSweep", "PS Scavenge"]


def test_parse_override_needs_equals():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("lake.root")


def test_config_hash_is_stable_and_sensitive():
    a = load_config(overrides=["lake.root=/a"])
    assert a.hash == load_config(overrides=["lake.root=/a"]).hash
    assert a.hash != load_config(overrides=["lake.root=/b"]).hash


# -- lake ----------------------------------------------------------------------------------
SCHEMA = T.StructType([T.StructField("k", T.StringType()), T.StructField("v", T.LongType()),
                       T.StructField("as_of_date", T.DateType())])


def test_replace_partition_is_idempotent_and_keeps_other_dates(spark, lake):
    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 2, 1)
    first = spark.createDataFrame([("a", 1, d1), ("b", 2, d1)], SCHEMA)
    second = spark.createDataFrame([("a", 5, d2)], SCHEMA)
    lake.replace_partition(first, "gold_x", as_of_date=d1)
    lake.replace_partition(second, "gold_x", as_of_date=d2)
    lake.replace_partition(first, "gold_x", as_of_date=d1)  # rerun of d1
    assertDataFrameEqual(lake.read("gold_x"), first.unionByName(second))
    assert spark.table(lake.qualified("gold_x")).count() == 3


def test_append_batch_adds_a_batch_once(spark, lake):
    schema = T.StructType([T.StructField("x", T.LongType()), T.StructField("_batch_id", T.StringType())])
    rows = spark.createDataFrame([(1, "b1"), (2, "b1")], schema)
    assert lake.append_batch(rows, "bronze_t", batch_id="b1") is not None
    assert lake.append_batch(rows, "bronze_t", batch_id="b1") is None
    assert lake.read("bronze_t").count() == 2


def test_rows_written_is_the_commits_own_row_count(spark, lake):
    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 2, 1)
    with pytest.raises(LookupError, match="gold_w"):
        lake.rows_written("gold_w")
    lake.replace_partition(spark.createDataFrame([("a", 1, d1), ("b", 2, d1)], SCHEMA), "gold_w", as_of_date=d1)
    lake.replace_partition(spark.createDataFrame([("c", 3, d2)], SCHEMA), "gold_w", as_of_date=d2)
    assert lake.rows_written("gold_w") == 1  # this commit's rows, not the table's 3
    assert lake.read("gold_w").count() == 3
    lake.overwrite(spark.createDataFrame([], SCHEMA), "gold_w")
    assert lake.rows_written("gold_w") == 0
    schema = T.StructType([T.StructField("x", T.LongType()), T.StructField("_batch_id", T.StringType())])
    lake.append_batch(spark.createDataFrame([(1, "b1"), (2, "b1")], schema), "bronze_w", batch_id="b1")
    assert lake.rows_written("bronze_w") == 2
    lake.append_batch(spark.createDataFrame([(1, "b1")], schema), "bronze_w", batch_id="b1")
    with pytest.raises(LookupError):  # nothing was written: no count to report
        lake.rows_written("bronze_w")


def test_merge_upserts_on_keys(spark, lake):
    lake.merge(spark.createDataFrame([("a", 1, None), ("b", 2, None)], SCHEMA), "t", keys=["k"])
    version = lake.merge(spark.createDataFrame([("b", 20, None), ("c", 3, None)], SCHEMA), "t", keys=["k"])
    assert version == 1
    assert sorted(tuple(r) for r in lake.read("t").select("k", "v").collect()) == [("a", 1), ("b", 20), ("c", 3)]
    assert lake.read("t", version=0).count() == 2  # time travel


def _race(*writes):
    """Run the writes in threads released together; returns the errors they raised."""
    import threading

    start, errors = threading.Barrier(len(writes)), []

    def go(write):
        start.wait()
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - collected and checked by the test
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(w,)) for w in writes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parametrize("operation", ["replace_partition", "append_batch", "merge"])
def test_concurrent_writers_leave_one_consistent_table(spark, lake, operation):
    """Two writers of the same rows-to-be at once: one version wins, none is mixed or doubled."""
    from pyspark.sql import functions as F

    from crm_mining.lake import LakeConflictError

    def rows(writer: str):
        return (spark.range(200).select(F.col("id").cast("string").alias("k"), F.lit(writer).alias("writer"))
                .withColumn("as_of_date", F.lit("2024-01-01").cast("date")).withColumn("_batch_id", F.lit("b1")))

    def write(writer: str):
        if operation == "replace_partition":
            return lambda: lake.replace_partition(rows(writer), "t", as_of_date="2024-01-01")
        if operation == "append_batch":
            return lambda: lake.append_batch(rows(writer), "t", batch_id="b1")
        return lambda: lake.merge(rows(writer), "t", keys=["k"])

    lake.replace_partition(rows("seed").limit(1), "t", as_of_date="2024-01-01") if operation != "append_batch" \
        else lake.append_batch(rows("seed").limit(0), "t", batch_id="b0")
    for _ in range(3):
        errors = _race(write("a"), write("b"))
        assert all(isinstance(e, LakeConflictError) and "table t" in str(e) for e in errors), errors
        assert len(errors) < 2
    table = lake.read("t")
    assert table.count() == 200 and table.select("k").distinct().count() == 200
    if operation != "merge":  # merge updates row by row: last writer wins each key, still one row per key
        assert table.select("writer").distinct().count() == 1
    versions = [r["version"] for r in lake.history("t").collect()]
    assert sorted(versions) == list(range(max(versions) + 1))  # Delta history intact, no gap


def test_lake_rejects_bad_names(spark, lake):
    with pytest.raises(ValueError, match="lower_snake_case"):
        lake.path("Bad-Name")


# -- pseudonymisation ----------------------------------------------------------------------
def test_hmac_matches_python_hmac(spark):
    from pyspark.sql import functions as F

    from crm_mining.pii import hmac_sha256

    key = b"k" * 70  # longer than a block: hashed first, as RFC 2104 says
    ids = ["12346", "", "17850", "é-ünïcode"]
    df = spark.createDataFrame([(i,) for i in ids], "id string")
    got = dict(df.select("id", hmac_sha256(F.col("id"), key).alias("h")).collect())
    for i in ids:
        assert got[i] == hmac.new(key, i.encode(), hashlib.sha256).hexdigest()


def test_the_key_shows_in_no_query_plan(spark, capsys):
    # Plans reach explain output, the Spark UI and event logs; a pad there gives the key back.
    from pyspark.sql import functions as F

    from crm_mining.pii import _padded, pseudonymize

    key = b"plan-secret"
    secrets = [key.hex().upper(), *(bytes(b ^ pad for b in _padded(key)).hex().upper() for pad in (0x36, 0x5C))]
    df = spark.createDataFrame([("17850",)], "id string").select(
        pseudonymize(F.col("id"), key, namespace="retail").alias("customer_key"))
    assert df.first()["customer_key"] == hmac.new(key, b"retail:17850", hashlib.sha256).hexdigest()[:24]
    df.explain(mode="extended")
    plans = capsys.readouterr().out.upper()
    assert "SHA2" in plans  # the plans were printed
    assert [s for s in secrets if s in plans] == []
    assert "SUBQUERY" in plans  # the pads are read from a one-row table


def test_missing_key_outside_demo_fails(monkeypatch):
    from crm_mining.pii import MissingKeyError, resolve_key

    monkeypatch.delenv("CRM_PII_KEY_X", raising=False)
    with pytest.raises(MissingKeyError, match="CRM_PII_KEY_X"):
        resolve_key(key_env="CRM_PII_KEY_X", demo=False)
    assert resolve_key(key_env="CRM_PII_KEY_X", demo=True)


def test_a_name_registered_by_another_lake_is_repointed(spark, tmp_path):
    from crm_mining.lake import Lake

    first = Lake(spark, root=str(tmp_path / "one"), database="crm_repoint")
    second = Lake(spark, root=str(tmp_path / "two"), database="crm_repoint")
    first.overwrite(spark.range(1), "t")
    second.overwrite(spark.range(5), "t")
    assert spark.table("crm_repoint.t").count() == 5
    first.register_all()
    assert spark.table("crm_repoint.t").count() == 1
    spark.sql("DROP DATABASE crm_repoint CASCADE")


def test_a_first_write_killed_before_its_commit_leaves_no_table(spark, lake):
    """Data files and an empty _delta_log (a job killed in a table's first write) are no table."""
    import os

    from pyspark.sql import functions as F

    orphan = lake.path("ops_pipeline_runs")
    os.makedirs(os.path.join(orphan, "_delta_log"))
    spark.range(3).write.parquet(os.path.join(orphan, "part-orphan"))
    assert "ops_pipeline_runs" not in lake.tables() and not lake.exists("ops_pipeline_runs")
    lake.register_all()  # a restarted run opens the lake without failing on it
    rows = spark.range(2).withColumn("as_of_date", F.lit("2024-01-01").cast("date"))
    assert lake.replace_partition(rows, "ops_pipeline_runs", as_of_date="2024-01-01") == 0
    assert lake.read("ops_pipeline_runs").count() == 2 and "ops_pipeline_runs" in lake.tables()
