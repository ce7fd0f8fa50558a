"""Command line: ``python -m crm_mining.synth --customers N --seed S --out DIR``."""
from __future__ import annotations

import argparse
import json
import sys
import time

from .generator import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crm_mining.synth",
                                     description="Write synthetic retail, bank, link and truth files.")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--lines-per-customer", type=float, default=None,
                        help="mean clean retail lines per customer (default 100)")
    parser.add_argument("--bank-share", type=float, default=0.6)
    parser.add_argument("--link-share", type=float, default=0.4)
    parser.add_argument("--chunk-customers", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 2)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    truth = generate(args.out, customers=args.customers, seed=args.seed,
                     lines_per_customer=args.lines_per_customer, bank_share=args.bank_share,
                     link_share=args.link_share, chunk_customers=args.chunk_customers, workers=args.workers)
    seconds = time.perf_counter() - started
    counts = truth["counts"]
    print(json.dumps(counts))
    print(f"{counts['retail_lines']:,} retail lines and {counts['bank_transactions']:,} bank transactions "
          f"in {seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
