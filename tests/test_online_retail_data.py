"""Ingest and refine on the real UCI Online Retail file, checked against the data README and an
independent pandas implementation of the cleaning policy."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import shared_path


def expected_reasons(raw: pd.DataFrame, codes: list[str], patterns: list[str]) -> dict[str, int]:
    """The cleaning policy re-implemented in pandas: quarantine counts by reason."""
    quantity = pd.to_numeric(raw["Quantity"], errors="coerce")
    price = pd.to_numeric(raw["UnitPrice"], errors="coerce")
    invoice, code = raw["InvoiceNo"].str.strip(), raw["StockCode"].str.strip().str.upper()
    non_product = code.isin([c.upper() for c in codes]) | code.str.match("|".join(patterns))
    cancellation = invoice.str.startswith("C")
    rules = [
        ("duplicate", raw.duplicated(keep="first")),
        ("adjustment_invoice", invoice.str.startswith("A")),
        ("non_product_code", non_product),
        ("non_positive_price", price <= 0),
        ("zero_quantity", quantity == 0),
        ("stock_adjustment", (quantity < 0) & ~cancellation),
        ("positive_quantity_on_cancellation", (quantity > 0) & cancellation),
    ]
    left, counts = pd.Series(True, index=raw.index), {}
    for kind, hit in rules:
        taken = left & hit
        if taken.sum():
            counts[kind] = int(taken.sum())
        left &= ~taken
    counts["_accepted"] = int(left.sum())
    counts["_customers"] = int(raw.loc[left & (raw["CustomerID"].str.strip() != ""), "CustomerID"].nunique())
    return counts


@pytest.mark.slow
@pytest.mark.real_data
def test_uci_online_retail_ingest_and_refine(spark, make_config):
    from crm_mining.lake import Lake
    from crm_mining.pipeline import run_pipeline

    path = shared_path("online_retail", "online_retail.csv")
    cfg = make_config("run.demo=false", f"sources.online_retail.path={path}", "sources.berka.enabled=false",
                      "sources.customer_link.enabled=false")
    run_pipeline(spark, cfg, steps=["ingest", "refine"])
    lake = Lake(spark, root=cfg.get_path("lake.root"), database=cfg.get_path("lake.database"))

    bronze, silver = lake.read("bronze_online_retail"), lake.read("silver_retail_lines")
    quarantine = lake.read("quarantine_online_retail")
    assert bronze.count() == 541_909  # data README
    assert bronze.filter("_corrupt_record is not null").count() == 0
    assert silver.count() + quarantine.count() == 541_909

    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert int(raw.duplicated().sum()) == 5_268  # data README: exact duplicate rows
    retail = cfg.section("refine")["retail"]
    expected = expected_reasons(raw, retail["non_product_codes"], retail["non_product_patterns"])
    ops = lake.read("ops_pipeline_runs").filter("step = 'refine'").first()
    got = {k.split(".")[-1]: int(v) for k, v in ops["metrics"].items() if k.startswith("quarantine.online_retail.")}
    print("UCI quarantine by reason:", got)
    assert got == {k: v for k, v in expected.items() if not k.startswith("_")}
    assert got["duplicate"] == 5_268 and got["adjustment_invoice"] == 3
    assert silver.count() == expected["_accepted"]
    assert (ops["rows_in"], ops["rows_out"], ops["rows_quarantined"]) == (541_909, expected["_accepted"],
                                                                          541_909 - expected["_accepted"])

    # README facts that survive cleaning: returns are exactly the C-invoice lines left.
    assert silver.filter("is_return").count() == silver.filter("invoice_id like 'C%'").count() > 0
    assert silver.filter("customer_key is null").count() > 100_000  # anonymous sales kept for baskets
    customers = lake.read("silver_customers").filter("domain = 'retail'")
    assert customers.count() == expected["_customers"]
    assert silver.agg({"ts": "min"}).first()[0].isoformat() == "2010-12-01T08:26:00"
    assert all(re.fullmatch(r"[0-9a-f]{24}", r[0]) for r in customers.select("customer_key").limit(50).collect())

    # A second run on the same file changes nothing.
    counts = {n: lake.read(n).count() for n in ("bronze_online_retail", "silver_retail_lines", "quarantine_online_retail")}
    bronze_version = lake.version("bronze_online_retail")
    silver_sum = silver.agg({"amount": "sum"}).first()[0]
    run_pipeline(spark, cfg, steps=["ingest", "refine"])
    assert lake.version("bronze_online_retail") == bronze_version
    assert {n: lake.read(n).count() for n in counts} == counts
    assert lake.read("silver_retail_lines").agg({"amount": "sum"}).first()[0] == pytest.approx(silver_sum, rel=1e-12)
