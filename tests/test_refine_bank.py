"""Refine, bank room: Berka bronze → silver bank tables, on small inline bronze tables.

One tiny bank (2 districts, 4 clients, 4 accounts, …) with one planted fault per rule; the
expected outputs are worked out by hand in the comments.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from crm_mining.config import load_config
from crm_mining.refine.bank import (TABLES, clean_text, parse_number, parse_timestamp, refine_bank,
                                    translate)
from crm_mining.schemas import (SILVER_BANK_ACCOUNTS, SILVER_BANK_CARDS, SILVER_BANK_LOANS,
                                SILVER_BANK_ORDERS, SILVER_BANK_TRANSACTIONS, SILVER_CUSTOMERS)

KEY = b"unit-test-key"

HEADERS = {
    "district": [f"A{i}" for i in range(1, 17)],
    "client": ["client_id", "birth_number", "district_id"],
    "account": ["account_id", "district_id", "frequency", "date"],
    "disp": ["disp_id", "client_id", "account_id", "type"],
    "trans": ["trans_id", "account_id", "date", "type", "operation", "amount", "balance", "k_symbol", "bank",
              "account"],
    "card": ["card_id", "disp_id", "type", "issued"],
    "loan": ["loan_id", "account_id", "date", "amount", "duration", "payments", "status"],
    "order": ["order_id", "account_id", "bank_to", "account_to", "amount", "k_symbol"],
}

ROWS = {
    "district": [
        ("1", "Hl.m. Praha", "Prague", "1204953", "0", "0", "0", "1", "1", "100.0", "12541", "0.29", "0.43",
         "167", "85677", "99107"),
        # Berka's one district with unknown 1995 figures: '?' → null, still accepted.
        ("2", "Jesenik", "north Moravia", "42821", "4", "13", "5", "1", "5", "48.4", "8173", "?", "7.01",
         "124", "?", "1358"),
        ("3", "Bad", "nowhere", "many", "0", "0", "0", "0", "0", "1", "1", "1", "1", "1", "1", "1"),
    ],
    "client": [
        ("1", "706213", "1"),   # woman (month 62 = 12 + 50), born 1970
        ("2", "450204", "2"),   # man, born 1945
        ("3", "701340", "1"),   # month 13: no real date
        ("4", "455204", "99"),  # unknown district
    ],
    "account": [
        ("10", "1", "POPLATEK MESICNE", "930101"),
        ("20", "2", "POPLATEK TYDNE", "950315"),
        ("30", "1", "POPLATEK ROCNE", "930101"),   # unknown frequency
        ("40", "1", "POPLATEK MESICNE", "931345"),  # month 13
        ("10", "1", "POPLATEK MESICNE", "930101"),  # exact copy of the first row
        ("50", "3", "POPLATEK MESICNE", "930101"),  # district 3 is quarantined
    ],
    "disp": [
        ("100", "1", "10", "OWNER"),
        ("101", "2", "10", "DISPONENT"),
        ("102", "2", "20", "OWNER"),
        ("103", "1", "30", "OWNER"),       # account 30 is quarantined
        ("104", "1", "20", "OWNER"),       # a second owner of account 20
        ("105", "3", "10", "DISPONENT"),   # client 3 is quarantined
    ],
    "trans": [
        ("1", "10", "930105", "PRIJEM", "VKLAD", "700.00", "700.00", None, None, None),
        ("2", "10", "930110", "VYDAJ", "PREVOD NA UCET", "100.00", "600.00", "SIPO", "YZ", "87144583"),
        ("3", "20", "950401", "VYBER", "VYBER", "50.00", "-50.00", " ", None, None),
        ("4", "10", "930131", "PRIJEM", "", "2.10", "602.10", "UROK", None, None),
        ("5", "10", "x30105", "PRIJEM", "VKLAD", "1.00", "1.00", None, None, None),   # bad date
        ("6", "99", "930105", "PRIJEM", "VKLAD", "1.00", "1.00", None, None, None),   # unknown account
        ("7", "10", "930105", "PRIJEM", "VKLAD", "abc", "1.00", None, None, None),    # bad amount
        ("8", "10", "930105", "XYZ", "VKLAD", "1.00", "1.00", None, None, None),      # unknown type
        ("9", "10", "930105", "PRIJEM", "VKLAD", "1.00", "1.00", "FOO", None, None),  # unknown k_symbol
        ("1", "10", "930106", "PRIJEM", "VKLAD", "5.00", "5.00", None, None, None),   # key seen before
        ("10", "10", "930105", "PRIJEM", "VKLAD", "-1.00", "1.00", None, None, None),  # negative amount
        ("11", "10", "930105", "PRIJEM", "VKLAD", "1e3", "1.00", None, None, None),   # exponent
        ("12", "10", None, "PRIJEM", "VKLAD", "1.00", "1.00", None, None, None),      # no date
        (None, None, None, None, None, None, None, None, None, None),                 # malformed line
        ("13", "30", "930105", "PRIJEM", "VKLAD", "1.00", "1.00", None, None, None),  # account 30 rejected
    ],
    "card": [
        ("1000", "100", "classic", "931107 00:00:00"),
        ("1001", "101", "gold", "950101 00:00:00"),    # a disponent's card: the disponent's key
        ("1002", "999", "classic", "931107 00:00:00"),  # unknown disposition
        ("1003", "100", "platinum", "931107 00:00:00"),  # unknown card type
        ("1004", "100", "junior", "931107"),            # time part missing
    ],
    "loan": [
        ("5000", "10", "930705", "96396", "12", "8033.00", "B"),
        ("5001", "99", "930705", "96396", "12", "8033.00", "A"),   # unknown account
        ("5002", "20", "950705", "1000", "12", "90.00", "E"),      # unknown status
        ("5003", "20", "950705", "1000", "twelve", "90.00", "C"),  # bad duration
    ],
    "order": [
        ("29401", "10", "YZ", "87144583", "2452.00", "SIPO"),
        ("29402", "20", "ST", "89597016", "3372.70", " "),   # blank: other
        ("29403", "20", "ST", "89597016", "-5.00", "UVER"),  # negative amount
        ("29404", "20", "ST", "89597016", "10.00", "LEASING"),
    ],
}

#: (table, reason) of every planted fault.
EXPECTED_REASONS = {
    ("district", "invalid_value: A4='many'"),
    ("client", "invalid_value: birth_number='701340'"),
    ("client", "unknown_district: district_id='99'"),
    ("account", "unknown_code: frequency='POPLATEK ROCNE'"),
    ("account", "invalid_value: date='931345'"),
    ("account", "duplicate"),
    ("account", "unknown_district: district_id='3'"),
    ("disp", "unknown_account: account_id='30'"),
    ("disp", "extra_owner: type='OWNER'"),
    ("disp", "unknown_client: client_id='3'"),
    ("trans", "invalid_value: date='x30105'"),
    ("trans", "unknown_account: account_id='99'"),
    ("trans", "invalid_value: amount='abc'"),
    ("trans", "unknown_code: type='XYZ'"),
    ("trans", "unknown_code: k_symbol='FOO'"),
    ("trans", "duplicate_key: trans_id='1'"),
    ("trans", "invalid_value: amount='-1.00'"),
    ("trans", "invalid_value: amount='1e3'"),
    ("trans", "missing_value: date"),
    ("trans", "malformed_line: line 14"),
    ("trans", "unknown_account: account_id='30'"),
    ("card", "unknown_disp: disp_id='999'"),
    ("card", "unknown_code: type='platinum'"),
    ("card", "invalid_value: issued='931107'"),
    ("loan", "unknown_account: account_id='99'"),
    ("loan", "unknown_code: status='E'"),
    ("loan", "invalid_value: duration='twelve'"),
    ("order", "invalid_value: amount='-5.00'"),
}


def bronze_table(spark, table: str, rows, *, batch: str = "b1"):
    """A bronze DataFrame as ingest writes it: raw strings plus lineage (line 1 = first data row)."""
    # Raw columns are strings; the lineage types are those crm_mining.sources writes.
    schema = T.StructType([T.StructField(c, T.StringType()) for c in HEADERS[table]] + [
        T.StructField("_corrupt_record", T.StringType()), T.StructField("_source_file", T.StringType()),
        T.StructField("_batch_id", T.StringType()), T.StructField("_ingested_at", T.TimestampType()),
        T.StructField("_line_number", T.LongType())])
    data = [(*row, "broken" if all(v is None for v in row) else None, f"{table}.asc", batch,
             dt.datetime(2026, 1, 1), i) for i, row in enumerate(rows, start=1)]
    return spark.createDataFrame(data, schema)


def reconcile(bronze, out) -> dict[str, tuple[int, int, int]]:
    """(bronze rows, accepted rows, quarantined rows) per table; fails unless in = accepted + quarantined."""
    silver = {"district": "silver_districts", "client": "silver_customers_bank", "account": "silver_bank_accounts",
              "trans": "silver_bank_transactions", "card": "silver_bank_cards", "loan": "silver_bank_loans",
              "order": "silver_bank_orders"}
    counts = {}
    for table in TABLES:
        total = bronze[table].count()
        rejected = out[f"quarantine_berka_{table}"].count()
        # disp has no silver table of its own: its accepted rows are the rows not rejected.
        kept = out[silver[table]].count() if table in silver else total - rejected
        assert total == kept + rejected, f"{table}: {total} bronze rows != {kept} accepted + {rejected} quarantined"
        counts[table] = (total, kept, rejected)
    return counts


@pytest.fixture(scope="module")
def berka_settings():
    return load_config().section("sources.berka")


@pytest.fixture(scope="module")
def bronze(spark):
    return {t: bronze_table(spark, t, ROWS[t]).cache() for t in TABLES}


@pytest.fixture(scope="module")
def refined(bronze, berka_settings):
    kept = []
    out = refine_bank(bronze, key=KEY, settings=berka_settings, cache=lambda df: kept.append(df.cache()) or df)
    assert len(kept) == len(TABLES)  # every table's checked rows are offered for caching
    yield out
    for df in kept:
        df.unpersist()


def _key(spark, raw: str, namespace: str) -> str:
    """The expected keyed hash, computed with Python's hmac as an independent reference."""
    return hmac.new(KEY, f"{namespace}:{raw}".encode("utf-8"), hashlib.sha256).hexdigest()[:24]


# -- column rules --------------------------------------------------------------------------
def test_column_rules(spark):
    df = spark.createDataFrame([(" 930101 ",), ("931345",), ("1e3",), ("NaN",), ("-2.50",), ("?",), (" ",)], "v string")
    got = df.select(
        clean_text(F.col("v"), missing_markers=["?"]).alias("text"),
        parse_number(clean_text(F.col("v")), dtype="double").alias("num"),
        parse_timestamp(clean_text(F.col("v")), fmt="yyMMdd", century="19").alias("ts"),
        translate(F.col("v"), {"-2.50": "minus"}).alias("code")).collect()
    assert [r.text for r in got] == ["930101", "931345", "1e3", "NaN", "-2.50", None, None]
    assert [r.num for r in got] == [930101.0, 931345.0, None, None, -2.5, None, None]
    assert got[0].ts == dt.datetime(1993, 1, 1) and got[1].ts is None
    assert [r.code for r in got] == [None, None, None, None, "minus", None, None]


# -- the whole source ----------------------------------------------------------------------
def test_every_row_is_accepted_or_quarantined(bronze, refined):
    counts = reconcile(bronze, refined)
    assert counts["trans"] == (15, 4, 11)
    assert counts["account"] == (6, 2, 4)
    assert counts["disp"] == (6, 3, 3)


def test_quarantine_reasons(refined):
    got = set()
    for table in TABLES:
        for row in refined[f"quarantine_berka_{table}"].select("_reason").collect():
            got.add((table, row._reason))
    assert got == EXPECTED_REASONS


def test_quarantine_keeps_the_raw_row(bronze, refined):
    q = refined["quarantine_berka_trans"]
    assert q.columns == bronze["trans"].columns + ["_reason"]
    row = q.filter(F.col("_reason").startswith("malformed")).first()
    assert row._corrupt_record == "broken" and row._batch_id == "b1" and row._line_number == 14


def test_output_columns_follow_the_contract(refined):
    from crm_mining.schemas import BANK_OUTPUT_SCHEMAS, schema_mismatches

    assert schema_mismatches(refined, BANK_OUTPUT_SCHEMAS) == {}


def test_gender_birth_year_and_activity(spark, refined):
    expected = spark.createDataFrame([
        (_key(spark, "1", "bank"), "banking", None, "1", "F", 1970, dt.datetime(1993, 1, 1), dt.datetime(1995, 4, 1)),
        (_key(spark, "2", "bank"), "banking", None, "2", "M", 1945, dt.datetime(1993, 1, 1), dt.datetime(1995, 4, 1)),
    ], SILVER_CUSTOMERS)
    # client 1 owns account 10 (opened 1993-01-01, last trans 1993-01-31) and, after the
    # rejected second owner, has no other account; client 2 uses 10 (disponent) and 20.
    expected = expected.withColumn(
        "last_activity", F.when(F.col("gender") == "F", F.lit(dt.datetime(1993, 1, 31))).otherwise(
            F.col("last_activity")))
    assertDataFrameEqual(refined["silver_customers_bank"], expected)


def test_transactions_codes_dates_and_owner(spark, refined):
    owner_10, owner_20 = _key(spark, "1", "bank"), _key(spark, "2", "bank")
    acc_10, acc_20 = _key(spark, "10", "account"), _key(spark, "20", "account")
    expected = spark.createDataFrame([
        (_key(spark, "1", "trans"), acc_10, owner_10, dt.datetime(1993, 1, 5), "credit", 700.0, 700.0,
         "cash_credit", None),
        (_key(spark, "2", "trans"), acc_10, owner_10, dt.datetime(1993, 1, 10), "debit", 100.0, 600.0,
         "remittance_to_bank", "household"),
        (_key(spark, "3", "trans"), acc_20, owner_20, dt.datetime(1995, 4, 1), "debit", 50.0, -50.0,
         "cash_withdrawal", None),
        (_key(spark, "4", "trans"), acc_10, owner_10, dt.datetime(1993, 1, 31), "credit", 2.1, 602.1,
         None, "interest"),
    ], SILVER_BANK_TRANSACTIONS)
    assertDataFrameEqual(refined["silver_bank_transactions"].drop("_batch_id"), expected)


def test_accounts_cards_loans_orders(spark, refined):
    owner_1, client_2 = _key(spark, "1", "bank"), _key(spark, "2", "bank")
    acc_10, acc_20 = _key(spark, "10", "account"), _key(spark, "20", "account")
    assertDataFrameEqual(refined["silver_bank_accounts"].drop("_batch_id"), spark.createDataFrame([
        (acc_10, owner_1, "1", "monthly", dt.date(1993, 1, 1)),
        (acc_20, client_2, "2", "weekly", dt.date(1995, 3, 15))], SILVER_BANK_ACCOUNTS))
    assertDataFrameEqual(refined["silver_bank_cards"].drop("_batch_id"), spark.createDataFrame([
        (_key(spark, "1000", "card"), acc_10, owner_1, "classic", dt.date(1993, 11, 7)),
        (_key(spark, "1001", "card"), acc_10, client_2, "gold", dt.date(1995, 1, 1))], SILVER_BANK_CARDS))
    assertDataFrameEqual(refined["silver_bank_loans"].drop("_batch_id"), spark.createDataFrame([
        (_key(spark, "5000", "loan"), acc_10, owner_1, dt.date(1993, 7, 5), 96396.0, 12, 8033.0, "B",
         "finished_default")], SILVER_BANK_LOANS))
    assertDataFrameEqual(refined["silver_bank_orders"].drop("_batch_id"), spark.createDataFrame([
        (_key(spark, "29401", "order"), acc_10, owner_1, 2452.0, "household"),
        (_key(spark, "29402", "order"), acc_20, client_2, 3372.7, "other"),
        (_key(spark, "29404", "order"), acc_20, client_2, 10.0, "leasing")], SILVER_BANK_ORDERS))


def test_district_question_marks_are_null(spark, refined):
    jesenik = refined["silver_districts"].filter("district_id = '2'").first()
    assert jesenik.unemployment_rate_95 is None and jesenik.crimes_95 is None
    assert jesenik.unemployment_rate_96 == 7.01 and jesenik.crimes_96 == 1358 and jesenik.inhabitants == 42821
    praha = refined["silver_districts"].filter("district_id = '1'").first()
    assert (praha.district_name, praha.region, praha.urban_ratio, praha.crimes_95) == ("Hl.m. Praha", "Prague",
                                                                                       100.0, 85677)


def test_no_raw_ids_or_account_numbers_in_silver(refined):
    raw = {"87144583", "89597016", "706213", "450204", "10", "20", "100", "1000", "29401", "5000"}
    for name, df in refined.items():
        if name.startswith("silver_") and name != "silver_districts":
            for row in df.collect():
                leaked = raw & {str(v) for v in row if v is not None}
                assert not leaked, f"{name} holds raw values {leaked}"


def test_arguments_are_checked(bronze, berka_settings):
    with pytest.raises(ValueError, match=r"\['loan'\]"):
        refine_bank({t: df for t, df in bronze.items() if t != "loan"}, key=KEY, settings=berka_settings)
    with pytest.raises(TypeError, match="key"):
        refine_bank(bronze, key="text", settings=berka_settings)
    broken = {**berka_settings, "tables": {**berka_settings["tables"], "trans": {"columns": {"txn_id": "trans_id"}}}}
    with pytest.raises(ValueError, match="tables.trans.columns lacks"):
        refine_bank(bronze, key=KEY, settings=broken)
    renamed = {**bronze, "order": bronze["order"].withColumnRenamed("amount", "value")}
    with pytest.raises(ValueError, match=r"berka/order has no column\(s\) \['amount'\]"):
        refine_bank(renamed, key=KEY, settings=berka_settings)
