"""What the peers share: the workload's definitions, timing lines and argument parsing.

The workload (the same definitions crm-mining's steps use on the same files): clean the retail
lines (drop missing customer, cancellations, quantity ≤ 0, price ≤ 0, exact duplicates,
non-product codes), then RFM with quintile scores as of the last invoice day + 1.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Iterator

NON_PRODUCT_CODES = ["POST", "D", "M", "DOT", "BANK CHARGES", "AMAZONFEE", "CRUK", "C2", "PADS", "S", "B"]
#: FP-Growth minimum support of the peers unless the harness passes another.
DEFAULT_MIN_SUPPORT = 0.01
COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="generated data directory (with retail/)")
    parser.add_argument("--min-support", type=float, default=DEFAULT_MIN_SUPPORT)
    return parser.parse_args()


def retail_files(data: str) -> list[Path]:
    return sorted((Path(data) / "retail").glob("*.csv"))


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Print ``STEP <name> <seconds>``: the line the benchmark harness reads."""
    start = time.monotonic()
    yield
    print(f"STEP {name} {time.monotonic() - start:.3f}", flush=True)
