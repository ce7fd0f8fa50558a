"""Benchmark suite: crm-mining's pipeline at several scales, with single-machine peers beside it.

For each scale (retail lines) the generator writes the data once (cached under
``bench/work``); then crm-mining runs the chosen steps in a fresh JVM through its own CLI,
and each peer runs the same workload in its own process. A sampler records the peak resident
memory of each process tree (the Python driver and the JVM apart). Per-step times and row
counts come from ``ops_pipeline_runs``; shuffle volume and the number of Spark jobs per step
from the Spark event log (jobs carry the step in their description): on small data the job
count, not the data, sets a step's time. Results go to ``bench/results/results.csv`` and
``results.md`` with the machine, versions and settings.

    python -m bench.run_bench --scales 1000000,10000000 --repeat 3
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from bench.peers.common import DEFAULT_MIN_SUPPORT

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work"
RESULTS = HERE / "results"
LINES_PER_CUSTOMER = 100  # the generator's default mean; customers = lines / this
# About 257 transactions per bank account and 1.19 clients per account: a bank share of 0.2
# gives ~0.43 bank transactions per retail line (20M transactions beside 50M retail lines).
BANK_SHARE, LINK_SHARE = 0.2, 0.1

#: The analytic steps of the peers' whole workload (pandas + mlxtend + scikit-learn + lifetimes).
PEER_WORKLOAD = {"basket", "segment", "value", "churn"}

FIELDS = ["system", "scale_lines", "step", "repeat", "wall_s", "rows_in", "rows_per_s", "mb_per_s",
          "input_mb", "peak_driver_mb", "peak_python_mb", "peak_executor_mb", "shuffle_mb", "status", "note",
          "command", "spark_jobs"]


class PeakSampler(threading.Thread):
    """Samples the resident memory of a process tree: JVM and Python apart, peak kept."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_jvm = self.peak_python = self.peak_total = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            jvm = python = 0.0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss / 2**20
                    name = proc.name()
                except psutil.Error:
                    continue
                if "java" in name:
                    jvm += rss
                else:
                    python += rss
            self.peak_jvm = max(self.peak_jvm, jvm)
            self.peak_python = max(self.peak_python, python)
            self.peak_total = max(self.peak_total, jvm + python)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def run_measured(cmd: list[str], *, timeout: float, env: dict | None = None, log: Path) -> dict:
    """Run a command with its memory sampled; status ok, timeout, oom or error."""
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        sampler = PeakSampler(proc.pid)
        sampler.start()
        try:
            code = proc.wait(timeout=timeout)
            status = "ok" if code == 0 else "error"
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
            code, status = -9, "timeout"
        finally:
            sampler.stop()
    tail = log.read_text(errors="replace")[-4000:]
    if status == "error" and ("MemoryError" in tail or "OutOfMemoryError" in tail or code == -9):
        status = "oom"
    return {"wall_s": time.monotonic() - start, "status": status, "peak_jvm_mb": sampler.peak_jvm,
            "peak_python_mb": sampler.peak_python, "peak_total_mb": sampler.peak_total, "log_tail": tail}


def dir_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def ensure_data(scale: int, seed: int) -> Path:
    """Generated data for a scale, written once and reused."""
    out = WORK / f"data_{scale}"
    if (out / "truth" / "truth.json").is_file():
        return out
    if out.exists():
        shutil.rmtree(out)
    customers = max(100, scale // LINES_PER_CUSTOMER)
    print(f"generating {scale:,} retail lines ({customers:,} customers) into {out}", flush=True)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "crm_mining.synth", "--customers", str(customers),
                    "--seed", str(seed), "--out", str(out), "--bank-share", str(BANK_SHARE),
                    "--link-share", str(LINK_SHARE)], check=True, cwd=REPO)
    print(f"  generated in {time.monotonic() - started:.0f} s", flush=True)
    return out


def bench_config(data: Path, scale: int, run_dir: Path) -> Path:
    """The YAML settings of a benchmark run: real-data mode on the generated files."""
    events = run_dir / "events"
    events.mkdir(parents=True, exist_ok=True)
    settings = {
        "run": {"demo": False, "workdir": str(run_dir)},
        "lake": {"root": str(run_dir / "lake")},
        "report": {"out": str(run_dir / "reports")},
        "spark": {"driver_memory": "16g", "shuffle_partitions": 8 if scale <= 2_000_000 else 32,
                  "conf": {"spark.eventLog.enabled": "true", "spark.eventLog.dir": events.as_uri(),
                           # Spark 4 rolls and compresses event logs by default: one plain file to read
                           "spark.eventLog.rolling.enabled": "false", "spark.eventLog.compress": "false"}},
        "sources": {
            "online_retail": {"enabled": True, "path": str(data / "retail")},
            "berka": {"enabled": True, "path": str(data / "berka")},
            "customer_link": {"enabled": True, "path": str(data / "link")},
        },
    }
    path = run_dir / "bench.yaml"
    import yaml

    path.write_text(yaml.safe_dump(settings))
    return path


def events_by_step(events_dir: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Shuffle bytes written (MB) and Spark jobs started, per step, from the Spark event log."""
    job_step: dict[int, str] = {}
    stage_step: dict[int, str] = {}
    totals: dict[str, float] = {}
    jobs: dict[str, int] = {}
    # One plain JSON-lines file per application (the bench settings turn rolling and
    # compression off); anything else in the folder is skipped.
    for log in (p for p in events_dir.rglob("*") if p.is_file() and p.suffix not in (".zstd", ".lz4", ".snappy")):
        with log.open(errors="replace") as fh:
            for line in fh:
                if '"Event":"SparkListenerJobStart"' in line:
                    event = json.loads(line)
                    desc = (event.get("Properties") or {}).get("spark.job.description") or ""
                    step = desc.replace("crm-mining ", "") if desc.startswith("crm-mining ") else "other"
                    job_step[event["Job ID"]] = step
                    jobs[step] = jobs.get(step, 0) + 1
                    for stage in event.get("Stage IDs", []):
                        stage_step[stage] = step
                elif '"Event":"SparkListenerTaskEnd"' in line:
                    event = json.loads(line)
                    metrics = (event.get("Task Metrics") or {}).get("Shuffle Write Metrics") or {}
                    step = stage_step.get(event.get("Stage ID"), "other")
                    totals[step] = totals.get(step, 0.0) + metrics.get("Shuffle Bytes Written", 0) / 2**20
    return totals, jobs


def ops_rows(lake_root: Path) -> list[dict]:
    """The step records of the run, read without Spark."""
    from deltalake import DeltaTable

    table = DeltaTable(str(lake_root / "ops_pipeline_runs")).to_pandas()
    return table.sort_values("started_at").to_dict("records")


def _number(value) -> float:
    """A figure of an ops_pipeline_runs row; null (NaN once read, as for a failed step) is 0."""
    return 0.0 if value is None or value != value else float(value)


def bench_crm_mining(scale: int, data: Path, steps: list[str], repeat: int, timeout: float,
                     overrides: list[str] = (), reuse_lake: bool = False) -> list[dict]:
    """Run the steps in a fresh JVM and return result rows: one per step and one ``all``.

    With ``reuse_lake`` the lake of the last run of this scale is kept and only ``steps`` run
    on it: each step is then measured alone, and its row carries the peak memory of the run
    (no ``all`` row, which stays the one of the full run).
    """
    rows = []
    input_mb = dir_mb(data / "retail") + dir_mb(data / "berka") + dir_mb(data / "link")
    for rep in range(repeat):
        run_dir = WORK / f"run_{scale}_{0 if reuse_lake else rep}"
        if reuse_lake and not (run_dir / "lake").is_dir():
            raise SystemExit(f"--reuse-lake: no lake of an earlier run at {run_dir / 'lake'}; "
                             "run the steps before these first")
        if run_dir.exists() and not reuse_lake:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for old_events in (run_dir / "events").glob("*") if reuse_lake else []:
            old_events.unlink()
        config = bench_config(data, scale, run_dir)
        env = {**os.environ, "CRM_PII_KEY": "benchmark-key"}
        cmd = [sys.executable, "-m", "crm_mining.cli", "run", "--config", str(config),
               "--steps", ",".join(steps), *[a for o in overrides for a in ("--set", o)]]
        print(f"crm-mining {scale:,} lines, repeat {rep + 1}/{repeat}: {' '.join(steps)}", flush=True)
        result = run_measured(cmd, timeout=timeout, env=env, log=run_dir / "run.log")
        shuffle, jobs = events_by_step(run_dir / "events")
        per_step = ops_rows(run_dir / "lake") if (run_dir / "lake" / "ops_pipeline_runs").exists() else []
        if reuse_lake and per_step:  # the records of this run only
            per_step = [r for r in per_step if r["run_id"] == per_step[-1]["run_id"]]
        for rec in per_step:
            rows_in = int(_number(rec.get("rows_in")))
            dur = _number(rec.get("duration_s"))
            rows.append({"system": "crm-mining", "scale_lines": scale, "step": rec["step"], "repeat": rep,
                         "wall_s": round(dur, 2), "rows_in": rows_in,
                         "rows_per_s": round(rows_in / dur) if dur else "",
                         "mb_per_s": round(input_mb / dur, 1) if rec["step"] == "ingest" and dur else "",
                         "input_mb": round(input_mb, 1), "peak_driver_mb": "", "peak_python_mb": "",
                         "peak_executor_mb": "", "shuffle_mb": round(shuffle.get(rec["step"], 0.0), 1),
                         "spark_jobs": jobs.get(rec["step"], 0),
                         "status": "ok" if rec["status"] == "succeeded" else "error", "note": ""})
        if reuse_lake:
            if len(per_step) == 1:
                rows[-1].update(peak_driver_mb=round(result["peak_jvm_mb"]),
                                peak_python_mb=round(result["peak_python_mb"]),
                                peak_executor_mb=round(result["peak_jvm_mb"]),
                                note=f"measured alone on the lake of the earlier run"
                                     f"{' with ' + ' '.join(overrides) if overrides else ''}; "
                                     f"{result['wall_s']:.0f} s with JVM start-up; local mode")
            if result["status"] != "ok":
                print(result["log_tail"][-2000:], flush=True)
            continue
        ingest_refine = sum(float(r["wall_s"]) for r in rows[-len(per_step):] if r["step"] in ("ingest", "refine")) \
            if per_step else 0.0
        rows.append({"system": "crm-mining", "scale_lines": scale, "step": "all", "repeat": rep,
                     "wall_s": round(result["wall_s"], 2), "rows_in": scale,
                     "rows_per_s": round(scale / result["wall_s"]),
                     "mb_per_s": round(input_mb / ingest_refine, 1) if ingest_refine else "",
                     "input_mb": round(input_mb, 1), "peak_driver_mb": round(result["peak_jvm_mb"]),
                     "peak_python_mb": round(result["peak_python_mb"]),
                     "peak_executor_mb": round(result["peak_jvm_mb"]),
                     "shuffle_mb": round(sum(shuffle.values()), 1), "spark_jobs": sum(jobs.values()),
                     "status": result["status"],
                     "note": f"steps {'+'.join(steps)}{' with ' + ' '.join(overrides) if overrides else ''}; "
                             "wall includes JVM start-up; mb_per_s = raw input / (ingest + refine); "
                             "local mode: executors run in the driver JVM"})
        if result["status"] != "ok":
            print(result["log_tail"][-2000:], flush=True)
    return rows


def peer_min_support(overrides: list[str]) -> float | None:
    """The ``basket.min_support`` of the crm-mining runs, so that peers mine at the same threshold."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.strip() == "basket.min_support":
            return float(value)
    return None


def bench_peer(name: str, scale: int, data: Path, repeat: int, timeout: float,
               min_support: float | None = None) -> list[dict]:
    rows = []
    input_mb = dir_mb(data / "retail")
    for rep in range(repeat):
        log = WORK / f"peer_{name}_{scale}_{rep}.log"
        cmd = [sys.executable, "-m", f"bench.peers.{name}", "--data", str(data)]
        if min_support is not None:
            cmd += ["--min-support", str(min_support)]
        print(f"peer {name} {scale:,} lines, repeat {rep + 1}/{repeat}", flush=True)
        result = run_measured(cmd, timeout=timeout, log=log)
        steps = {}
        for line in result["log_tail"].splitlines():
            if line.startswith("STEP "):
                _, step, seconds = line.split()
                steps[step] = float(seconds)
        for step, seconds in steps.items():
            rows.append({"system": name, "scale_lines": scale, "step": step, "repeat": rep,
                         "wall_s": round(seconds, 2), "rows_in": scale,
                         "rows_per_s": round(scale / seconds) if seconds else "", "mb_per_s": "",
                         "input_mb": round(input_mb, 1), "peak_driver_mb": "", "peak_python_mb": "",
                         "peak_executor_mb": "", "shuffle_mb": "", "status": "ok", "note": ""})
        rows.append({"system": name, "scale_lines": scale, "step": "all", "repeat": rep,
                     "wall_s": round(result["wall_s"], 2), "rows_in": scale,
                     "rows_per_s": round(scale / result["wall_s"]), "mb_per_s": "",
                     "input_mb": round(input_mb, 1), "peak_driver_mb": round(result["peak_total_mb"]),
                     "peak_python_mb": round(result["peak_python_mb"]), "peak_executor_mb": "",
                     "shuffle_mb": "", "status": result["status"],
                     "note": f"single process; FP-Growth min support {min_support or DEFAULT_MIN_SUPPORT}"})
    return rows


def medians(rows: list[dict]) -> list[dict]:
    """One row per (system, scale, step): the median of the repeats' wall times."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["system"], row["scale_lines"], row["step"]), []).append(row)
    out = []
    for (system, scale, step), items in groups.items():
        ok = [r for r in items if r["status"] == "ok"] or items
        wall = statistics.median(float(r["wall_s"]) for r in ok)
        best = min(ok, key=lambda r: abs(float(r["wall_s"]) - wall))
        out.append({**best, "wall_s": round(wall, 2), "repeat": f"median of {len(ok)}"})
    return out


def environment() -> dict:
    import pyspark

    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    except OSError:
        java = "not found"
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
                       f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
            "python": platform.python_version(), "pyspark": pyspark.__version__, "java": java}


def previous_results() -> list[dict]:
    """Rows of results.csv from earlier invocations (kept unless measured again)."""
    path = RESULTS / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["scale_lines"] = int(row["scale_lines"])
    return rows


def write_results(rows: list[dict], env: dict, args: argparse.Namespace) -> None:
    command = "python -m bench.run_bench " + shlex.join(sys.argv[1:])
    merge_results(medians(rows), env=env, command=command, args=vars(args))


def record_results(rows: list[dict], *, module: str, args: argparse.Namespace) -> None:
    """Merge the rows of a benchmark script run as ``python -m <module>`` into the results,
    with the command line that measured them."""
    merge_results(rows, env=environment(), command=f"python -m {module} " + shlex.join(sys.argv[1:]),
                  args=vars(args))


def merge_results(rows: list[dict], *, env: dict, command: str, args: dict) -> None:
    """Add freshly measured rows to results.csv (replacing earlier ones of the same system,
    scale and step) and rewrite results.md from it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    fresh = [{**{f: "" for f in FIELDS}, **r, "command": command} for r in rows]
    measured = {(r["system"], r["scale_lines"], r["step"]) for r in fresh}
    kept = [r for r in previous_results() if (r["system"], r["scale_lines"], r["step"]) not in measured]
    summary = sorted(kept + fresh, key=lambda r: (r["scale_lines"], r["system"], r["step"]))
    with (RESULTS / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(summary)
    lines = ["# Benchmark results", "",
             f"Measured {env['date']} on {env['machine']}; Python {env['python']}, "
             f"PySpark {env['pyspark']}, {env['java']}.",
             "Each row was measured by the command in the CSV's `command` column (latest: "
             f"`{command}`); `note` says which steps and settings the `all` row covers.", "",
             "| system | lines | step | wall s | rows/s | MB/s | peak driver MB | shuffle MB | Spark jobs | status "
             "| ratio to crm-mining |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    crm = {(r["scale_lines"], r["step"]): float(r["wall_s"]) for r in summary if r["system"] == "crm-mining"}
    steps_of = {}
    for r in summary:
        steps_of.setdefault((r["system"], r["scale_lines"]), set()).add(r["step"])
    for r in summary:
        ratio = ""
        # a whole-run ratio only where both ran the whole workload (DuckDB and Polars clean and score
        # only; a crm-mining run may have left steps out)
        comparable = r["step"] != "all" or (PEER_WORKLOAD <= steps_of[(r["system"], r["scale_lines"])]
                                            and PEER_WORKLOAD <= steps_of[("crm-mining", r["scale_lines"])])
        if r["system"] != "crm-mining" and (r["scale_lines"], r["step"]) in crm and float(r["wall_s"]) \
                and comparable:
            ratio = f"{crm[(r['scale_lines'], r['step'])] / float(r['wall_s']):.2f}x"
        lines.append(f"| {r['system']} | {r['scale_lines']:,} | {r['step']} | {r['wall_s']} | {r['rows_per_s']} | "
                     f"{r['mb_per_s']} | {r['peak_driver_mb']} | {r['shuffle_mb']} | {r.get('spark_jobs', '')} | "
                     f"{r['status']} | {ratio} |")
    (RESULTS / "results.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "environment.json").write_text(json.dumps({**env, "args": args}, indent=2))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1000000,10000000,50000000",
                        help="comma-separated retail line counts")
    parser.add_argument("--steps", default="ingest,refine,customer360,value,segment,basket,churn",
                        help="crm-mining steps to run ('' for the peers alone)")
    parser.add_argument("--peers", default="pandas_peer,duckdb_peer,polars_peer",
                        help="comma-separated peer modules under bench/peers ('' for none)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (median reported)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run counts as timeout")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--reuse-lake", action="store_true",
                        help="run --steps on the lake of the last run of each scale (a step measured alone)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a crm-mining setting for the benchmark runs (repeatable)")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    steps = [s for s in args.steps.split(",") if s]
    peers = [p for p in args.peers.split(",") if p]
    rows: list[dict] = []
    env = environment()
    for scale in (int(float(s)) for s in args.scales.split(",")):
        data = ensure_data(scale, args.seed)
        if steps:  # --steps '' measures the peers alone
            rows += bench_crm_mining(scale, data, steps, args.repeat, args.timeout, args.overrides,
                                     args.reuse_lake)
        for peer in peers:
            rows += bench_peer(peer, scale, data, args.repeat, args.timeout, peer_min_support(args.overrides))
        write_results(rows, env, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
