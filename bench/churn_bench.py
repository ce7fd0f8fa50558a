"""Benchmark of the churn step's work: features, training and scoring on N generated customers.

Retail lines are generated directly in Spark (one line per invoice, purchase days spread
over the year, a quarter of the customers lapsing at a random day with their purchases
thinning out before it), written once to Parquet, then timed:

1. labelled point-in-time features over the training cutoffs (counted, cached);
2. fitting and tuning LR and GBT and the out-of-time evaluation;
3. scoring every active customer at the as-of date with reasons and risk tiers (written).

Peak memory: the JVM's high-water resident set (VmHWM) and the Python driver's.

    python -m bench.churn_bench --customers 100000
    python -m bench.churn_bench --customers 1000000 --master local[2] --driver-memory 12g

The figures are added to ``bench/results`` (step ``churn_train_score``, scale = customers).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from pyspark.sql import functions as F

START = dt.date(2010, 12, 1)
DAYS = 374


def generate_lines(spark, customers: int, invoices_per_customer: float, seed: int):
    """One retail line per invoice for ``customers`` customers, as silver_retail_lines columns."""
    people = spark.range(customers).select(
        F.col("id").alias("cid"),
        (F.rand(seed) * 120).alias("first_day"),
        F.when(F.rand(seed + 1) < 0.25, 90 + F.rand(seed + 2) * 270).otherwise(F.lit(10_000.0)).alias("lapse_day"),
        F.greatest(F.lit(1), F.round(F.exp(F.randn(seed + 3) * 0.7) * invoices_per_customer * 0.8)).cast("int")
        .alias("invoices"),
        F.exp(F.randn(seed + 4) * 0.5).alias("spend_scale"),
    )
    slots = people.withColumn("k", F.explode(F.sequence(F.lit(1), F.col("invoices"))))
    # purchase days spread from the first day to the lapse (or the end); sqrt skews churners early
    end = F.least(F.col("lapse_day"), F.lit(float(DAYS)))
    u = F.rand(seed + 5)
    day = F.col("first_day") + F.when(F.col("lapse_day") < DAYS, F.sqrt(u)).otherwise(u) * (end - F.col("first_day"))
    ts = F.timestamp_seconds(F.lit(dt.datetime(START.year, START.month, START.day).timestamp()) + day * 86400)
    ret = F.rand(seed + 6) < 0.05
    amount = F.round(F.exp(F.randn(seed + 7) * 0.8) * 20 * F.col("spend_scale"), 2)
    return slots.select(
        F.concat(F.lit("i"), F.col("cid"), F.lit("-"), F.col("k")).alias("invoice_id"),
        F.sha2(F.col("cid").cast("string"), 256).substr(1, 24).alias("customer_key"),
        ts.alias("ts"), F.lit("P1").alias("product_id"), F.when(ret, -1).otherwise(1).cast("long").alias("quantity"),
        amount.alias("unit_price"), F.when(ret, -amount).otherwise(amount).alias("amount"), ret.alias("is_return"),
        F.lit("UK").alias("country"), F.lit("bench").alias("_batch_id"),
    )


def peak_memory_mb(spark) -> dict[str, float]:
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    jvm = 0.0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                jvm = int(line.split()[1]) / 1024
    python = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"jvm_peak_rss_mb": round(jvm, 1), "python_peak_rss_mb": round(python, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--invoices-per-customer", type=float, default=10.0)
    parser.add_argument("--n-cutoffs", type=int, default=2)
    parser.add_argument("--gbt-max-iter", type=int, default=20)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--shuffle-partitions", type=int, default=16)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    from crm_mining.churn import fit_and_evaluate, labels, retail_domain, scoring_features, training_data
    from crm_mining.churn import score, train
    from crm_mining.session import get_spark

    spark = get_spark({"master": args.master, "driver_memory": args.driver_memory,
                       "shuffle_partitions": args.shuffle_partitions, "log_level": "ERROR"})
    work = Path(args.workdir or tempfile.mkdtemp(prefix="churn_bench_"))
    timings: dict[str, float] = {}
    clock = time.monotonic()
    generate_lines(spark, args.customers, args.invoices_per_customer, 42).write.mode("overwrite").parquet(
        str(work / "lines"))
    timings["generate_s"] = time.monotonic() - clock
    lines = spark.read.parquet(str(work / "lines"))
    as_of = START + dt.timedelta(days=DAYS)

    clock = time.monotonic()
    domain = retail_domain(lines, horizon_days=90, lookback_days=365)
    cutoffs = labels.training_cutoffs(as_of=as_of, horizon_days=90, n_cutoffs=args.n_cutoffs, step_days=30)
    data = training_data(spark, domain, cutoffs).persist()
    rows = data.count()
    timings["features_labels_s"] = time.monotonic() - clock

    clock = time.monotonic()
    settings = train.TrainSettings(lr_reg_param=(0.01,), gbt_max_depth=(4,), gbt_max_iter=args.gbt_max_iter)
    out = fit_and_evaluate(data, features=domain.feature_names, settings=settings, test_cutoff=cutoffs[-1],
                           refit_on_all=False)
    timings["train_evaluate_s"] = time.monotonic() - clock
    data.unpersist()

    clock = time.monotonic()
    scored = score.score_customers(out["model"], scoring_features(spark, domain, as_of), weights=out["reasons"],
                                   domain="retail", model_version="bench", top_k=3)
    scored.write.mode("overwrite").parquet(str(work / "scores"))
    timings["score_s"] = time.monotonic() - clock
    scored_rows = spark.read.parquet(str(work / "scores")).count()
    report = {
        "customers": args.customers, "lines": lines.count(), "training_rows": rows, "scored_customers": scored_rows,
        "cutoffs": [c.isoformat() for c in cutoffs], "chosen": out["chosen"],
        "oot": {a: {k: round(v, 4) for k, v in e["metrics"].items() if k in ("roc_auc", "pr_auc")}
                for a, e in out["evaluations"].items()},
        **{k: round(v, 1) for k, v in timings.items()}, **peak_memory_mb(spark),
    }
    print(json.dumps(report, indent=2))
    from bench.run_bench import record_results

    total = sum(timings.values())
    record_results([{
        "system": "crm-mining", "scale_lines": args.customers, "step": "churn_train_score", "repeat": 1,
        "wall_s": round(total, 1), "rows_in": report["lines"], "rows_per_s": round(report["lines"] / total),
        "peak_driver_mb": report["jvm_peak_rss_mb"], "peak_python_mb": report["python_peak_rss_mb"], "status": "ok",
        "note": "scale = customers; " + ", ".join(f"{k} {round(v)}" for k, v in timings.items())
                + f"; out-of-time ROC-AUC {json.dumps(report['oot'])}",
    }], module="bench.churn_bench", args=args)
    domain.release()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
