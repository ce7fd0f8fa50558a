"""The JVM garbage collectors side by side: the same pipeline steps with ``spark.gc`` = g1 and parallel.

Each round runs the steps once per collector, each in a fresh JVM through the CLI on the
generated data of one scale (a new lake every run, as ``run_bench`` does); the collectors take
turns so that a slow moment of the machine falls on both. Rows go to ``bench/results`` as
``<step>_gc_<collector>`` (``all_gc_<collector>`` for the whole run, JVM start-up included),
each the median of the rounds.

    python -m bench.gc_compare --scale 1000000 --steps ingest,refine,customer360,value --rounds 2
"""
from __future__ import annotations

import argparse

from bench.run_bench import bench_crm_mining, ensure_data, medians, record_results

COLLECTORS = ("g1", "parallel")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1_000_000, help="retail lines (generated data of bench/)")
    parser.add_argument("--steps", default="ingest,refine,customer360,value", help="crm-mining steps to run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per collector (median reported)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    data = ensure_data(args.scale, args.seed)
    rows = []
    for round_no in range(args.rounds):
        for gc in COLLECTORS:
            for row in bench_crm_mining(args.scale, data, steps, 1, args.timeout, overrides=[f"spark.gc={gc}"]):
                rows.append({**row, "step": f"{row['step']}_gc_{gc}", "repeat": round_no})
    summary = medians(rows)
    for gc in COLLECTORS:
        print(f"{gc:9s} " + "  ".join(f"{r['step'].rsplit('_gc_', 1)[0]} {float(r['wall_s']):.1f} s"
                                      for r in summary if r["step"].endswith(f"_gc_{gc}")))
    record_results(summary, module="bench.gc_compare", args=args)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
