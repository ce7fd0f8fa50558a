"""Customer 360: retail and bank features on small hand-computed data, the one-to-one join."""
from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from crm_mining import schemas
from crm_mining.customer360 import customer_360, join_domains, one_to_one_links, retail_features

AS_OF = dt.date(2011, 3, 1)
SETTINGS = {"spend_windows_days": [30, 90], "transaction_categories": ["household", "statement_fee"],
            "fee_categories": ["statement_fee"], "penalty_categories": ["penalty_interest"],
            "card_rank": ["gold", "classic", "junior"], "order_categories": ["household", "insurance"]}


def ts(day: str, hour: int = 10) -> dt.datetime:
    return dt.datetime.fromisoformat(day) + dt.timedelta(hours=hour)


@pytest.fixture
def lines(spark):
    rows = [  # invoice, customer, ts, product, qty, price, amount, is_return
        ("1", "r1", ts("2011-01-01"), "p1", 2, 5.0, 10.0, False),
        ("1", "r1", ts("2011-01-01"), "p2", 1, 20.0, 20.0, False),
        ("2", "r1", ts("2011-01-11"), "p1", 4, 5.0, 20.0, False),
        ("C3", "r1", ts("2011-01-12"), "p1", -1, 5.0, -5.0, True),
        ("4", "r1", ts("2011-02-10"), "p3", 1, 50.0, 50.0, False),
        ("5", "r1", ts("2011-03-01", 0), "p3", 1, 99.0, 99.0, False),  # on the as-of day: unseen
        ("6", "r2", ts("2011-02-20"), "p2", 3, 10.0, 30.0, False),
        ("7", None, ts("2011-02-20"), "p2", 3, 10.0, 30.0, False),     # anonymous sale
    ]
    data = [(i, c, t, p, q, u, a, r, "UK", "b") for i, c, t, p, q, u, a, r in rows]
    return spark.createDataFrame(data, schemas.SILVER_RETAIL_LINES)


def test_retail_features_by_hand(lines):
    got = {r["customer_key"]: r for r in retail_features(lines, as_of=AS_OF, spend_windows_days=[30, 90]).collect()}
    assert set(got) == {"r1", "r2"}
    r1 = got["r1"]
    assert r1["invoices"] == 3 and r1["purchase_days"] == 3 and r1["distinct_products"] == 3
    assert r1["gross_spend"] == pytest.approx(100.0) and r1["net_spend"] == pytest.approx(95.0)
    assert r1["return_rate"] == pytest.approx(0.05)
    assert r1["avg_basket_value"] == pytest.approx(100 / 3) and r1["avg_basket_size"] == pytest.approx(8 / 3)
    assert r1["tenure_days"] == 59 and r1["recency_days"] == 19
    # gaps 10 and 30 days: mean 20, slope over order (1, 2) = 20
    assert r1["gap_days_mean"] == pytest.approx(20.0) and r1["gap_days_trend"] == pytest.approx(20.0)
    assert r1["spend_last_30d"] == pytest.approx(50.0) and r1["spend_last_90d"] == pytest.approx(95.0)
    assert got["r2"]["gap_days_mean"] is None and got["r2"]["purchase_days"] == 1


@pytest.fixture
def bank(spark):
    tx = spark.createDataFrame([
        ("t1", "a1", "b1", ts("2011-01-05"), "credit", 1000.0, 1000.0, "credit_in_cash", None),
        ("t2", "a1", "b1", ts("2011-01-20"), "debit", 200.0, 800.0, "withdrawal", "household"),
        ("t3", "a1", "b1", ts("2011-01-31", 23), "debit", 10.0, 790.0, "withdrawal", "Statement_Fee"),
        ("t4", "a2", "b1", ts("2011-02-01"), "credit", 100.0, 100.0, "credit_in_cash", None),
        ("t5", "a3", "b2", ts("2011-02-01"), "debit", 5.0, -5.0, "withdrawal", "penalty_interest"),
        ("t6", "a3", "b2", ts("2011-03-02"), "credit", 500.0, 495.0, "credit_in_cash", None),
    ], schemas.SILVER_BANK_TRANSACTIONS)
    accounts = spark.createDataFrame([("a1", "b1", "d1", "monthly", dt.date(2010, 1, 1)),
                                      ("a2", "b1", "d1", "monthly", dt.date(2010, 6, 1)),
                                      ("a3", "b2", "d2", "weekly", dt.date(2010, 6, 1))],
                                     schemas.SILVER_BANK_ACCOUNTS)
    cards = spark.createDataFrame([("c1", "a1", "b1", "classic", dt.date(2010, 2, 1)),
                                   ("c2", "a2", "b1", "gold", dt.date(2010, 3, 1)),
                                   ("c3", "a3", "b2", "gold", dt.date(2012, 3, 1))],  # after as-of
                                  schemas.SILVER_BANK_CARDS)
    loans = spark.createDataFrame([("l1", "a1", "b1", dt.date(2010, 5, 1), 5000.0, 12, 450.0, "C", "running_ok")],
                                  schemas.SILVER_BANK_LOANS)
    orders = spark.createDataFrame([("o1", "a1", "b1", 300.0, "household"), ("o2", "a1", "b1", 50.0, "insurance"),
                                    ("o3", "a3", "b2", 20.0, "household")], schemas.SILVER_BANK_ORDERS)
    return dict(bank_transactions=tx, bank_accounts=accounts, bank_cards=cards, bank_loans=loans,
                bank_orders=orders)


def test_bank_features_by_hand(spark, bank):
    rows = customer_360(as_of=AS_OF, settings=SETTINGS, **bank)
    got = {r["customer_key"]: r for r in rows.collect()}
    b1, b2 = got["b1"], got["b2"]
    assert b1["domain"] == "banking" and b1["retail_customer_key"] is None
    assert b1["accounts"] == 2 and b1["card_type"] == "gold" and b2["card_type"] is None
    assert b1["avg_balance"] == pytest.approx((1000 + 800 + 790) / 3 + 100)
    assert b1["min_balance"] == pytest.approx(790 + 100)
    assert b1["latest_balance"] == pytest.approx(790 + 100)
    assert b2["latest_balance"] == pytest.approx(-5.0)  # the 2 March credit is after the as-of date
    # first transaction 5 Jan: months_between(1 Mar, 5 Jan) = 1.87...
    months = 1 + 27 / 31
    assert b1["monthly_credit"] == pytest.approx(1100 / months, rel=1e-3)
    assert b1["monthly_debit"] == pytest.approx(210 / months, rel=1e-3)
    assert b1["txn_count_household"] == 1 and b1["txn_count_statement_fee"] == 1
    assert b1["fees"] == pytest.approx(10.0) and b2["penalty_interest"] == pytest.approx(5.0)
    assert b1["loan_amount"] == pytest.approx(5000.0) and b1["loan_status"] == "running_ok"
    assert b1["order_amount_household"] == pytest.approx(300.0) and b1["order_amount_insurance"] == pytest.approx(50.0)


def test_link_join_never_duplicates(spark, lines, bank):
    # r1 is linked to two bank keys and b1 to two retail keys; b9 has no activity at all.
    link = spark.createDataFrame([("r1", "b1"), ("r1", "b2"), ("r2", "b1"), ("r3", "b9")],
                                 schemas.SILVER_CUSTOMER_LINK)
    assert sorted(map(tuple, one_to_one_links(link).select("retail_customer_key", "bank_customer_key")
                      .collect())) == [("r1", "b1"), ("r3", "b9")]
    rows = customer_360(as_of=AS_OF, settings=SETTINGS, retail_lines=lines, customer_link=link, **bank)
    keys = rows.select("customer_key", "retail_customer_key", "bank_customer_key", "domain")
    assert rows.count() == rows.select("customer_key").distinct().count() == 3
    assert sorted(map(tuple, keys.collect())) == [("b2", None, "b2", "banking"), ("r1", "r1", "b1", "linked"),
                                                   ("r2", "r2", None, "retail")]
    r1 = rows.filter("customer_key = 'r1'").first()
    assert r1["net_spend"] == pytest.approx(95.0) and r1["accounts"] == 2


def test_join_needs_one_side():
    with pytest.raises(ValueError, match="retail or bank"):
        join_domains(None, None, None)


def test_as_of_must_be_a_date(lines):
    with pytest.raises(TypeError, match="as_of"):
        retail_features(lines, as_of="2011-03-01")


def test_customer360_step_writes_gold(spark, make_config, lines, bank):
    from crm_mining.lake import Lake
    from crm_mining.pipeline import run_pipeline

    cfg = make_config("run.as_of=2011-03-01")
    lake = Lake(spark, root=cfg.get_path("lake.root"), database="crm_c360_step")
    lake.overwrite(lines, "silver_retail_lines")
    for name, df in bank.items():
        lake.overwrite(df, f"silver_{name}")
    try:
        cfg["lake"]["database"] = "crm_c360_step"
        run_pipeline(spark, cfg, steps=["customer360"])
        gold = lake.read("gold_customer_360")
        assert gold.count() == 4
        assert gold.filter(F.col("as_of_date") == F.lit(AS_OF)).select("run_id").distinct().count() == 1
        assert {"tenure_days", "avg_balance", "spend_last_365d", "txn_count_statement_fee"} <= set(gold.columns)
    finally:
        spark.sql("DROP DATABASE IF EXISTS crm_c360_step CASCADE")
