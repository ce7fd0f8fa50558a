"""What Spark alone costs on this machine for the ingest of raw retail CSV: the floor under crm-mining.

Reads the generated retail CSV files of one scale with an explicit all-string schema (as bronze
keeps every row as read) and measures, in a fresh local session with the settings crm-mining
uses for its own sessions:

- ``parse``: every field of every line parsed (the CSV reader alone);
- ``parquet``: the rows written as Parquet (no Delta log, no statistics);
- ``delta``: the rows written as one Delta table (what a bronze append costs at least).

No cleaning, no lineage columns, no deduplication: any ingest + refine on Spark here is slower
than the ``delta`` figure. MB/s is of the raw CSV.

    python -m bench.spark_floor --scale 10000000

The figures are added to ``bench/results`` (system ``spark-floor``).
"""
from __future__ import annotations

import argparse
import shutil
import time

from bench.run_bench import WORK, PeakSampler, dir_mb, ensure_data, record_results

RETAIL_COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
                  "CustomerID", "Country"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10_000_000, help="retail lines (generated data of bench/)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import os

    from pyspark.sql import functions as F, types as T

    from crm_mining.session import get_spark

    data = ensure_data(args.scale, args.seed) / "retail"
    input_mb = dir_mb(data)
    sampler = PeakSampler(os.getpid())
    sampler.start()
    started = time.monotonic()
    spark = get_spark({"master": args.master, "driver_memory": args.driver_memory, "shuffle_partitions": 32,
                       "log_level": "ERROR"})
    startup = time.monotonic() - started
    schema = T.StructType([T.StructField(c, T.StringType()) for c in RETAIL_COLUMNS])
    raw = spark.read.csv(str(data), header=True, schema=schema)
    out = WORK / f"floor_{args.scale}"
    shutil.rmtree(out, ignore_errors=True)
    timings = {}
    clock = time.monotonic()
    # a hash of every column: a bare count() lets the reader skip parsing the fields
    lines, _ = raw.agg(F.count(F.lit(1)), F.sum(F.hash(*RETAIL_COLUMNS))).first()
    timings["parse"] = time.monotonic() - clock
    for fmt in ("parquet", "delta"):
        clock = time.monotonic()
        raw.write.format(fmt).mode("overwrite").save(str(out / fmt))
        timings[fmt] = time.monotonic() - clock
    sampler.stop()
    spark.stop()
    shutil.rmtree(out, ignore_errors=True)
    print(f"{lines:,} lines, {input_mb:.0f} MB of CSV; session start {startup:.1f} s")
    rows = []
    for step, seconds in timings.items():
        print(f"  {step:8s} {seconds:7.1f} s  {input_mb / seconds:6.1f} MB/s  {lines / seconds:,.0f} rows/s")
        rows.append({"system": "spark-floor", "scale_lines": args.scale, "step": step, "repeat": 0,
                     "wall_s": round(seconds, 2), "rows_in": lines, "rows_per_s": round(lines / seconds),
                     "mb_per_s": round(input_mb / seconds, 1), "input_mb": round(input_mb, 1),
                     "peak_driver_mb": round(sampler.peak_jvm), "peak_python_mb": round(sampler.peak_python),
                     "status": "ok",
                     "note": f"plain Spark, {args.master}, retail CSV only, all-string schema; "
                             f"{step}: " + {"parse": "read, every field parsed", "parquet": "read and write Parquet",
                                            "delta": "read and write one Delta table"}[step]})
    print(f"peak JVM {sampler.peak_jvm:,.0f} MB")
    record_results(rows, module="bench.spark_floor", args=args)


if __name__ == "__main__":
    main()
