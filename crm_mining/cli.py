"""The `crm-mining` command line: run the pipeline, generate demo data, render the report.

Everything that can be checked without Spark (settings, paths, the pseudonymisation key) is
checked before the session starts, and a problem ends the command with exit code 2 and a
message naming the key or file.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from .config import Config, ConfigError, check_source_paths, check_writable_dir, load_config

log = logging.getLogger("crm_mining")


def setup_logging(verbose: bool = False) -> None:
    """Plain progress lines on stderr: readable in a terminal and in a scheduler's log."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("crm_mining")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="extra YAML settings, applied in order (repeatable)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="override one setting with a dotted key, e.g. lake.root=/tmp/lake")
    parser.add_argument("--profile", default=None, help="settings profile: local (default) or cluster")
    parser.add_argument("--as-of", default=None, metavar="YYYY-MM-DD",
                        help="analytic as-of date (default: the last event date + 1 day)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crm-mining", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (all steps, or --steps a,b)")
    _add_config_args(run)
    run.add_argument("--steps", default=None, help="comma-separated steps to run, in pipeline order")
    run.add_argument("--resume", action="store_true",
                     help="continue the last unfinished run from its first unfinished step")

    gen = sub.add_parser("generate", help="write synthetic retail and bank data")
    gen.add_argument("--customers", type=int, default=2000)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--out", required=True, help="output directory")
    gen.add_argument("--lines-per-customer", type=float, default=None,
                     help="mean retail lines per customer (scales the data)")

    report = sub.add_parser("report", help="render the HTML report of the latest run")
    _add_config_args(report)
    return parser


def configure(args: argparse.Namespace) -> Config:
    """Load the settings for a command, with --as-of folded in as run.as_of."""
    overrides = list(args.overrides)
    if getattr(args, "as_of", None):
        overrides.append(f"run.as_of={args.as_of}")
    return load_config(config_files=args.config, overrides=overrides, profile=args.profile)


def prepare_demo(config: Config) -> None:
    """In demo mode, generate the embedded default data when it is not there yet."""
    if not config.get_path("run.demo"):
        return
    demo = config.section("demo")
    out = Path(demo["out"])
    if (out / "truth" / "truth.json").is_file():
        return
    from .synth import generate

    log.info("demo mode: generating %d customers (seed %d) into %s", demo["customers"], demo["seed"], out)
    generate(out, customers=int(demo["customers"]), seed=int(demo["seed"]))


def check_writable(config: Config) -> None:
    """Fail before anything is written when the lake root or the working directory is unusable."""
    check_writable_dir(str(config.get_path("lake.root")), setting="lake.root")
    check_writable_dir(str(config.get_path("run.workdir")), setting="run.workdir")


def check_before_spark(config: Config, steps: Sequence[str] | None) -> None:
    """Fail fast on what needs no Spark: the PII key and the input paths."""
    from .pii import resolve_key

    resolve_key(key_env=config.get_path("pii.key_env"), demo=bool(config.get_path("run.demo")))
    if steps is None or "ingest" in steps:
        check_source_paths(config)


def cmd_run(args: argparse.Namespace) -> int:
    config = configure(args)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else None
    check_writable(config)  # before the demo data is generated: nothing is written on a bad setting
    prepare_demo(config)
    check_before_spark(config, steps)
    from . import tracking
    from .pipeline import run_pipeline
    from .session import get_spark

    # MLflow's imports and its store get ready while the JVM starts: each takes seconds.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-setup") as pool:
        tracking_ready = pool.submit(tracking.setup, config)
        spark = get_spark(config.get("spark"))
        tracking_ready.result()
    run_id = run_pipeline(spark, config, steps=steps, resume=args.resume)
    print_where(config, run_id)
    return 0


def print_where(config: Config, run_id: str) -> None:
    """Tell the user where the outputs of the run are."""
    from .tracking import tracking_uri

    lake_root = os.path.abspath(config.get_path("lake.root"))
    report = Path(config.get_path("report.out")).resolve() / "index.html"
    lines = [
        f"run {run_id} finished",
        f"  tables : {lake_root} (SQL: SELECT * FROM {config.get_path('lake.database')}.gold_customer_value)",
        f"  mlflow : mlflow ui --backend-store-uri {tracking_uri(config)}",
    ]
    if report.is_file():
        lines.append(f"  report : {report}")
    print("\n".join(lines))


def cmd_generate(args: argparse.Namespace) -> int:
    from .synth import generate

    summary = generate(Path(args.out), customers=args.customers, seed=args.seed,
                       lines_per_customer=args.lines_per_customer)
    print(f"generated into {args.out}: {summary.get('counts', summary) if isinstance(summary, dict) else summary}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    config = configure(args)
    from .report import render_report
    from .session import get_spark

    spark = get_spark(config.get("spark"))
    path = render_report(spark, config)
    print(f"report: {path}")
    return 0


COMMANDS = {"run": cmd_run, "generate": cmd_generate, "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    from .pii import MissingKeyError
    from .pipeline import StepFailed

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, MissingKeyError) as exc:
        print(f"crm-mining: configuration error: {exc}", file=sys.stderr)
        return 2
    except StepFailed as exc:
        print(f"crm-mining: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
