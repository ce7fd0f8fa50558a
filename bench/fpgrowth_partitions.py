"""FP-Growth time by number of partitions, on the retail baskets of a benchmark lake.

Builds the baskets of ``silver_retail_lines`` once per setting, plans the mining (the guard)
and mines with ``frequent_itemsets(plan, num_partitions=n)``; prints the times and the number
of itemsets, which must be the same for every n (FP-Growth is exact for any partitioning).
``0`` stands for the input's partitioning.

    python -m bench.fpgrowth_partitions --lake bench/work/run_10000000_0/lake --partitions 2,4,0
"""
from __future__ import annotations

import argparse
import datetime as dt
import time

from crm_mining.basket.baskets import retail_baskets, retail_lines_before
from crm_mining.basket.mining import frequent_itemsets, plan_mining
from crm_mining.session import get_spark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, help="lake root of a benchmark run")
    parser.add_argument("--partitions", default="2,4,0", help="comma-separated; 0 = the input's")
    parser.add_argument("--min-support", type=float, default=0.005)
    parser.add_argument("--driver-memory", default="16g")
    args = parser.parse_args()
    spark = get_spark({"master": "local[2]", "driver_memory": args.driver_memory, "shuffle_partitions": 32})
    lines = spark.read.format("delta").load(f"{args.lake}/silver_retail_lines")
    sales = retail_lines_before(lines, as_of=dt.date(2100, 1, 1))
    for n in (int(p) for p in args.partitions.split(",")):
        start = time.monotonic()
        plan = plan_mining(retail_baskets(sales), min_support=args.min_support)
        planned = time.monotonic()
        # 0 = the input's partitions, as Spark's FPGrowth does without numPartitions
        parts = n or plan.pruned.rdd.getNumPartitions()
        itemsets = frequent_itemsets(plan, num_partitions=parts).count()
        print(f"num_partitions={parts} plan {planned - start:.1f} s, FP-Growth "
              f"{time.monotonic() - planned:.1f} s, {itemsets} itemsets", flush=True)
        plan.pruned.unpersist()


if __name__ == "__main__":
    main()
