"""Benchmark of the segment k sweep on generated customer features with planted clusters.

Builds N customers' features directly in Spark (five planted segments, log-normal features),
runs the feature Pipeline, the k sweep (best of several seeds per k, sampled silhouette) and
the final assignment, and prints the wall time of each phase, the adjusted Rand index against
the planted segments (on a sample) and the peak memory of the driver (Python) and the JVM.

    python -m bench.segment_bench --rows 1000000 --k-min 3 --k-max 8 --seeds 2

The figures are added to ``bench/results`` (step ``segment_k_sweep``, scale = customers).
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import psutil
from pyspark.sql import functions as F

FEATURES = ["net_spend", "invoices", "recency_days", "tenure_days", "avg_basket_value", "distinct_products"]
PLANTED = [  # share, log-means of FEATURES
    (0.15, [8.0, 3.2, 1.5, 5.8, 5.5, 4.0]),
    (0.35, [5.0, 0.5, 4.7, 5.5, 4.5, 2.0]),
    (0.12, [9.5, 2.2, 3.0, 5.8, 7.5, 4.5]),
    (0.18, [6.0, 0.3, 2.0, 3.0, 5.5, 3.0]),
    (0.20, [6.5, 2.0, 5.6, 5.9, 4.5, 3.0]),
]


def planted_features(spark, rows: int, *, seed: int = 7, partitions: int = 8):
    edges = np.cumsum([s for s, _ in PLANTED])
    edges = edges / edges[-1]
    seg = F.lit(len(PLANTED) - 1)
    for i in reversed(range(len(PLANTED) - 1)):
        seg = F.when(F.col("u") < float(edges[i]), i).otherwise(seg)
    df = spark.range(0, rows, 1, partitions).withColumn("u", F.rand(seed)).withColumn("planted", seg).drop("u")
    for j, name in enumerate(FEATURES):
        mu = F.element_at(F.array(*[F.lit(m[j]) for _, m in PLANTED]), F.col("planted") + 1)
        df = df.withColumn(name, F.exp(mu + 0.3 * F.randn(seed + 1 + j)))
    return df.withColumn("customer_key", F.sha2(F.col("id").cast("string"), 256)).drop("id")


class PeakMemory:
    """Samples the RSS of this process and of its child processes (the JVM) every 0.2 s."""

    def __init__(self) -> None:
        self.driver = self.jvm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            jvm = 0
            for child in me.children(recursive=True):
                try:
                    jvm += child.memory_info().rss
                except psutil.Error:
                    pass
            self.jvm = max(self.jvm, jvm)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--k-min", type=int, default=3)
    parser.add_argument("--k-max", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--silhouette-sample", type=int, default=50000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    args = parser.parse_args()

    from sklearn.metrics import adjusted_rand_score

    from crm_mining.segment import model as M
    from crm_mining.session import get_spark

    with PeakMemory() as peak:
        start = time.monotonic()
        spark = get_spark({"master": args.master, "driver_memory": args.driver_memory,
                           "shuffle_partitions": 8, "log_level": "ERROR"})
        features = planted_features(spark, args.rows).cache()
        features.count()
        t_data = time.monotonic()
        prep = M.feature_pipeline(features, feature_cols=FEATURES).fit(features)
        prepared = prep.transform(features).select("customer_key", "planted", M.FEATURES_COL).cache()
        prepared.count()
        t_prep = time.monotonic()
        candidates = M.sweep_k(prepared, ks=list(range(args.k_min, args.k_max + 1)), algorithm="kmeans",
                               seeds=[42 + i for i in range(args.seeds)], sample_rows=args.silhouette_sample,
                               max_iter=args.max_iter)
        chosen = M.choose_k(candidates, rule="silhouette")
        t_sweep = time.monotonic()
        sample = (chosen.model.transform(prepared).sample(fraction=min(1.0, 100000 / args.rows), seed=1)
                  .select("planted", M.CLUSTER_COL).toPandas())
        ari = adjusted_rand_score(sample.planted, sample[M.CLUSTER_COL])
        t_end = time.monotonic()
    print(f"rows={args.rows} features={len(FEATURES)} ks={args.k_min}..{args.k_max} seeds/k={args.seeds} "
          f"master={args.master}")
    for c in candidates:
        print(f"  k={c.k} cost={c.cost:.5g} silhouette={c.silhouette:.4f}")
    print(f"chosen k={chosen.k} silhouette={chosen.silhouette:.4f} ARI(sample)={ari:.4f}")
    print(f"time: generate {t_data - start:.1f}s, feature pipeline {t_prep - t_data:.1f}s, "
          f"k sweep {t_sweep - t_prep:.1f}s ({(t_sweep - t_prep) / len(candidates):.1f}s per k), "
          f"scoring+ARI {t_end - t_sweep:.1f}s, total {t_end - start:.1f}s")
    print(f"peak memory: driver (python) {peak.driver / 2**20:.0f} MiB, JVM {peak.jvm / 2**20:.0f} MiB")
    spark.stop()
    from bench.run_bench import record_results

    record_results([{
        "system": "crm-mining", "scale_lines": args.rows, "step": "segment_k_sweep", "repeat": 1,
        "wall_s": round(t_end - start, 1), "rows_in": args.rows, "rows_per_s": round(args.rows / (t_end - start)),
        "peak_driver_mb": round(peak.jvm / 2**20), "peak_python_mb": round(peak.driver / 2**20), "status": "ok",
        "note": f"scale = customers; k {args.k_min}..{args.k_max}, {args.seeds} seeds per k, "
                f"sweep {t_sweep - t_prep:.0f} s, chosen k={chosen.k}, ARI {ari:.3f}",
    }], module="bench.segment_bench", args=args)


if __name__ == "__main__":
    main()
