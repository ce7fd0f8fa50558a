"""Refine, retail and link: one inline case per cleaning rule, the silver contract, and the step
end to end on the bad-input corpus (reconciliation, idempotence, Online Retail II by conf)."""
from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from crm_mining.pii import pseudonymize
from crm_mining.quality import ReconciliationError, reconcile
from crm_mining.refine.link import classify_links, silver_links
from crm_mining.refine.retail import (accepted, classify_lines, parse_price, parse_quantity, parse_timestamp,
                                      silver_customers_retail, silver_lines, silver_products)
from crm_mining.schemas import SILVER_CUSTOMERS, SILVER_PRODUCTS, SILVER_RETAIL_LINES

BAD_INPUT = Path(__file__).parent / "data" / "bad_input"
KEY = b"unit-test-key"
RAW = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
COLUMNS = {"invoice_id": "InvoiceNo", "product_id": "StockCode", "description": "Description",
           "quantity": "Quantity", "ts": "InvoiceDate", "unit_price": "UnitPrice",
           "customer_id": "CustomerID", "country": "Country"}
FORMATS = ["yyyy-MM-dd HH:mm:ss", "M/d/yyyy H:mm"]
GOOD = ("536365", "71053", "WHITE METAL LANTERN", "6", "2010-12-01 08:26:00", "3.39", "17850", "United Kingdom")


def bronze(spark, *rows, corrupt=None):
    """Bronze rows as ingest writes them: raw strings, then lineage (line numbers from 2)."""
    data = [(*row, (corrupt or {}).get(i), "/in/f.csv", "b1", None, i + 2) for i, row in enumerate(rows)]
    schema = ", ".join(f"{c} string" for c in RAW) + \
        ", _corrupt_record string, _source_file string, _batch_id string, _ingested_at timestamp, _line_number long"
    return spark.createDataFrame(data, schema)


def reasons(spark, *rows, corrupt=None, **settings):
    checked = classify_lines(bronze(spark, *rows, corrupt=corrupt), columns=COLUMNS,
                             timestamp_formats=FORMATS, settings=settings)
    return [r["_reason"] for r in checked.orderBy("_line_number").collect()]


def changed(**values):
    row = dict(zip(RAW, GOOD))
    row.update(values)
    return tuple(row[c] for c in RAW)


# -- parsers ---------------------------------------------------------------------------------
def test_parsers(spark):
    df = spark.createDataFrame([("6", "2.55", "2010-12-01 08:26:00"), (" -3 ", "0", "12/1/2010 8:26"),
                                ("12a", "abc", "2011-02-30 08:45:00"), ("2.0", "NaN", "x"), ("2.5", "1e2", None)],
                               "q string, p string, t string")
    got = df.select(parse_quantity(F.col("q")).alias("q"), parse_price(F.col("p")).alias("p"),
                    parse_timestamp(F.col("t"), formats=FORMATS).alias("t")).collect()
    assert [tuple(r) for r in got] == [
        (6, 2.55, dt.datetime(2010, 12, 1, 8, 26)), (-3, 0.0, dt.datetime(2010, 12, 1, 8, 26)),
        (None, None, None), (2, None, None), (None, 100.0, None)]


# -- one rule at a time ----------------------------------------------------------------------
def test_a_clean_line_is_accepted(spark):
    assert reasons(spark, GOOD) == [None]


def test_malformed_line_names_its_line(spark):
    assert reasons(spark, GOOD, changed(Country=None), corrupt={1: "536365,71053,..."}) == [
        None, "malformed_line: line 3 of f.csv"]


def test_exact_duplicate_keeps_the_first_copy(spark):
    assert reasons(spark, GOOD, GOOD, changed(Quantity="7")) == [None, "duplicate", None]
    assert reasons(spark, GOOD, GOOD, drop_duplicates=False) == [None, None]


@pytest.mark.parametrize("column,value,expected", [
    ("Quantity", "12a", "bad_quantity: Quantity='12a'"),
    ("Quantity", "1.5", "bad_quantity: Quantity='1.5'"),
    ("UnitPrice", "abc", "bad_price: UnitPrice='abc'"),
    ("InvoiceDate", "2011-02-30 08:45:00", "bad_timestamp: InvoiceDate='2011-02-30 08:45:00'"),
    ("InvoiceDate", "", "missing_value: InvoiceDate=''"),
    ("StockCode", None, "missing_value: StockCode=''"),
    ("InvoiceNo", "A563185", "adjustment_invoice: InvoiceNo='A563185'"),
    ("StockCode", "POST", "non_product_code: StockCode='POST'"),
    ("StockCode", "bank charges", "non_product_code: StockCode='bank charges'"),
    ("StockCode", "gift_0001_20", "non_product_code: StockCode='gift_0001_20'"),
    ("UnitPrice", "0.00", "non_positive_price: UnitPrice='0.00'"),
    ("UnitPrice", "-11062.06", "non_positive_price: UnitPrice='-11062.06'"),
    ("Quantity", "0", "zero_quantity: Quantity='0'"),
    ("Quantity", "-10", "stock_adjustment: Quantity='-10'"),
    ("InvoiceNo", "C536379", "positive_quantity_on_cancellation: Quantity='6'"),
])
def test_each_rule(spark, column, value, expected):
    assert reasons(spark, changed(**{column: value})) == [expected]


def test_policy_switches(spark):
    assert reasons(spark, changed(StockCode="POST"), non_product_action="keep") == [None]
    assert reasons(spark, changed(UnitPrice="0"), reject_non_positive_price=False) == [None]
    assert reasons(spark, changed(StockCode="XMAS"), non_product_codes=["xmas"]) == ["non_product_code: StockCode='XMAS'"]
    with pytest.raises(ValueError, match="non_product_action"):
        reasons(spark, GOOD, non_product_action="drop")


def test_mapping_must_name_existing_columns(spark):
    with pytest.raises(ValueError, match="Qty"):
        classify_lines(bronze(spark, GOOD), columns={**COLUMNS, "quantity": "Qty"}, timestamp_formats=FORMATS)


# -- silver tables ---------------------------------------------------------------------------
def test_silver_lines_returns_and_anonymous_sales(spark):
    rows = [GOOD, changed(InvoiceNo="C536379", Quantity="-2", CustomerID="17850.0", InvoiceDate="12/1/2010 9:41"),
            changed(CustomerID="  ", StockCode="22633", Description=" HAND WARMER ")]
    ok = accepted(classify_lines(bronze(spark, *rows), columns=COLUMNS, timestamp_formats=FORMATS))
    lines = silver_lines(ok, key=KEY, source="shop")
    assert lines.schema.fields[:len(SILVER_RETAIL_LINES.fields)] == SILVER_RETAIL_LINES.fields
    customer = spark.range(1).select(pseudonymize(F.lit("17850"), KEY, namespace="retail")).first()[0]
    expected = spark.createDataFrame([
        ("536365", customer, dt.datetime(2010, 12, 1, 8, 26), "71053", 6, 3.39, 6 * 3.39, False, "United Kingdom"),
        ("C536379", customer, dt.datetime(2010, 12, 1, 9, 41), "71053", -2, 3.39, -2 * 3.39, True, "United Kingdom"),
        ("536365", None, dt.datetime(2010, 12, 1, 8, 26), "22633", 6, 3.39, 6 * 3.39, False, "United Kingdom"),
    ], SILVER_RETAIL_LINES.fieldNames()[:-1])
    assertDataFrameEqual(lines.select(*SILVER_RETAIL_LINES.fieldNames()[:-1]), expected)
    products = silver_products(ok)
    assert products.schema == SILVER_PRODUCTS
    assert dict(products.select("product_id", "description").collect()) == {
        "71053": "WHITE METAL LANTERN", "22633": "HAND WARMER"}
    customers = silver_customers_retail(lines)
    assert customers.schema.fieldNames() == SILVER_CUSTOMERS.fieldNames()
    assert [tuple(r) for r in customers.select("customer_key", "domain", "country", "first_activity",
                                                "last_activity").collect()] == [
        (customer, "retail", "United Kingdom", dt.datetime(2010, 12, 1, 8, 26), dt.datetime(2010, 12, 1, 9, 41))]


def test_links_rules_and_namespaces(spark):
    data = [("17850", "1"), ("13047", "2"), ("13047", "2"), ("12583", ""), ("15311", "3"), ("15311", "4"),
            ("13047.0", "2")]
    df = spark.createDataFrame(
        [(a, b, None, "/in/l.csv", "b1", None, i + 2) for i, (a, b) in enumerate(data)],
        "CustomerID string, client_id string, _corrupt_record string, _source_file string, _batch_id string, "
        "_ingested_at timestamp, _line_number long")
    checked = classify_links(df, columns={"retail_customer_id": "CustomerID", "bank_client_id": "client_id"})
    got = [r["_reason"] for r in checked.orderBy("_line_number").collect()]
    assert got == [None, None, "duplicate", "missing_value: client_id=''", None,
                   "conflicting_link: CustomerID='15311'", "duplicate"]
    links = silver_links(checked.filter("_reason is null"), key=KEY)
    pairs = spark.createDataFrame([("17850", "1"), ("13047", "2"), ("15311", "3")], "r string, b string")
    expected = pairs.select(pseudonymize(F.col("r"), KEY, namespace="retail").alias("retail_customer_key"),
                            pseudonymize(F.col("b"), KEY, namespace="bank").alias("bank_customer_key"))
    assertDataFrameEqual(links, expected)


def test_reconcile_fails_on_a_mismatch():
    assert reconcile({"bronze_x": (10, 7, 3)})["reconcile.bronze_x.rows_in"] == 10.0
    with pytest.raises(ReconciliationError, match="bronze_x: 10 rows in != 7 accepted \\+ 2 quarantined"):
        reconcile({"bronze_x": (10, 7, 2)})


# -- the step on the bad-input corpus -------------------------------------------------------
def _contents(lake, names):
    return {n: sorted(map(tuple, lake.read(n).drop("_ingested_at").collect()), key=repr) for n in names}


def test_step_end_to_end_is_reconciled_and_idempotent(spark, make_config, tmp_path):
    from crm_mining.lake import Lake
    from crm_mining.pipeline import run_pipeline

    retail = tmp_path / "retail"
    retail.mkdir()
    shutil.copy(BAD_INPUT / "online_retail_bad.csv", retail / "part-00000.csv")
    cfg = make_config("run.demo=false", f"sources.online_retail.path={retail}", "sources.berka.enabled=false",
                      f"sources.customer_link.path={BAD_INPUT / 'customer_link.csv'}")
    run_pipeline(spark, cfg, steps=["ingest", "refine"])
    lake = Lake(spark, root=cfg.get_path("lake.root"), database=cfg.get_path("lake.database"))
    quarantine = {r["_line_number"]: r["_reason"] for r in lake.read("quarantine_online_retail").collect()}
    assert quarantine == {
        4: "duplicate", 8: "malformed_line: line 8 of part-00000.csv", 9: "bad_quantity: Quantity='12a'",
        10: "bad_timestamp: InvoiceDate='2011-02-30 08:45:00'", 11: "bad_price: UnitPrice='abc'",
        13: "non_product_code: StockCode='POST'", 15: "adjustment_invoice: InvoiceNo='A563185'",
        16: "non_positive_price: UnitPrice='0.00'", 17: "stock_adjustment: Quantity='-10'"}
    assert sorted(r["_line_number"] for r in lake.read("silver_retail_lines").collect()) == [2, 3, 5, 6, 7, 14, 18]
    assert lake.read("quarantine_online_retail").columns[-1] == "_reason"
    assert lake.read("silver_customer_link").count() == 3
    assert lake.read("silver_customers").count() == 4  # 17850, 13047, 12583, 15311
    assert lake.read("silver_bank_transactions").count() == 0  # banking off: written empty
    ops = lake.read("ops_pipeline_runs").filter("step = 'refine'").first()
    assert (ops["rows_in"], ops["rows_out"], ops["rows_quarantined"]) == (22, 10, 12)
    assert ops["metrics"]["quarantine.online_retail.duplicate"] == 1
    assert ops["metrics"]["quarantine.customer_link.conflicting_link"] == 1

    tables = ["bronze_online_retail", "silver_retail_lines", "silver_products", "silver_customers",
              "silver_customer_link", "quarantine_online_retail", "quarantine_customer_link"]
    before = _contents(lake, tables)
    run_pipeline(spark, cfg, steps=["ingest", "refine"])
    assert _contents(lake, tables) == before


def test_online_retail_ii_by_configuration_only(spark, make_config):
    from crm_mining.lake import Lake
    from crm_mining.pipeline import run_pipeline

    cfg = make_config("run.demo=false", "sources.online_retail.enabled=false", "sources.berka.enabled=false",
                      "sources.customer_link.enabled=false", "sources.online_retail_ii.enabled=true",
                      f"sources.online_retail_ii.path={BAD_INPUT / 'online_retail_ii_sample.csv'}")
    run_pipeline(spark, cfg, steps=["ingest", "refine"])
    lake = Lake(spark, root=cfg.get_path("lake.root"), database=cfg.get_path("lake.database"))
    assert "Customer_ID" in lake.read("bronze_online_retail_ii").columns
    lines = lake.read("silver_retail_lines").orderBy("_line_number").collect()
    assert [(r["invoice_id"], r["quantity"], r["is_return"], r["ts"]) for r in lines] == [
        ("489434", 12, False, dt.datetime(2009, 12, 1, 7, 45)), ("489434", 12, False, dt.datetime(2009, 12, 1, 7, 45)),
        ("C489449", -12, True, dt.datetime(2009, 12, 1, 10, 33))]
    assert all(r["customer_key"] and len(r["customer_key"]) == 24 for r in lines)
    assert lake.read("quarantine_online_retail_ii").count() == 0
