"""Refine, bank room, on the real PKDD'99 Berka files: every table reaches silver, typed, with the
published counts, checked against an independent pandas read of the same files."""
from __future__ import annotations

import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crm_mining.config import load_config
from crm_mining.refine.bank import TABLES, refine_bank

from conftest import shared_path
from test_refine_bank import reconcile

pytestmark = [pytest.mark.slow, pytest.mark.real_data]
KEY = b"berka-test-key"


def _files(directory, pattern):
    found = sorted(directory.glob(pattern))
    assert found, f"no {pattern} in {directory}"
    return found


@pytest.fixture(scope="module")
def berka():
    directory = shared_path("berka")
    settings = load_config().section("sources.berka")
    return directory, settings


@pytest.fixture(scope="module")
def bronze(spark, berka):
    directory, settings = berka
    out = {}
    for table in TABLES:
        paths = [str(p) for p in _files(directory, settings["tables"][table]["file"])]
        df = spark.read.csv(paths, sep=";", header=True, inferSchema=False)
        out[table] = df.select(
            *df.columns, F.lit(paths[0]).alias("_source_file"), F.lit("berka-test").alias("_batch_id"),
            F.lit("2026-01-01T00:00:00").alias("_ingested_at"), F.lit(None).cast("string").alias("_line_number"),
            F.lit(None).cast("string").alias("_corrupt_record")).cache()
    return out


@pytest.fixture(scope="module")
def refined(bronze, berka):
    _, settings = berka
    kept = []
    out = refine_bank(bronze, key=KEY, settings=settings, cache=lambda df: kept.append(df.cache()) or df)
    yield out
    for df in kept:
        df.unpersist()


@pytest.fixture(scope="module")
def pandas_tables(berka):
    directory, settings = berka
    return {t: pd.concat([pd.read_csv(p, sep=";", dtype=str, keep_default_na=False)
                          for p in _files(directory, settings["tables"][t]["file"])]) for t in TABLES}


def test_every_table_reconciles_and_nothing_is_rejected(bronze, refined, pandas_tables):
    counts = reconcile(bronze, refined)
    for table, (total, kept, rejected) in counts.items():
        assert total == len(pandas_tables[table]), table
        # The public files are clean: the only oddities (district '?') are nulls, not rejections.
        assert rejected == 0, refined[f"quarantine_berka_{table}"].select("_reason").limit(5).collect()
    assert counts["trans"][0] == 49_102


def test_published_counts(refined):
    assert refined["silver_bank_accounts"].count() == 4_500
    assert refined["silver_bank_accounts"].filter(F.col("customer_key").isNull()).count() == 0
    assert refined["silver_districts"].count() == 77
    assert refined["silver_bank_orders"].count() == 6_471
    customers = refined["silver_customers_bank"]
    assert customers.count() == 5_369
    assert dict(customers.groupBy("gender").count().collect()) == {"F": 2_645, "M": 2_724}
    cards = refined["silver_bank_cards"]
    assert dict(cards.groupBy("card_type").count().collect()) == {"classic": 659, "junior": 145, "gold": 88}


def test_loans_by_status_match_pandas(refined, pandas_tables):
    loans = refined["silver_bank_loans"]
    names = {"A": "finished_ok", "B": "finished_default", "C": "running_ok", "D": "running_in_debt"}
    expected = pandas_tables["loan"]["status"].value_counts()
    got = {(r.status, r.status_desc): r["count"] for r in loans.groupBy("status", "status_desc").count().collect()}
    assert got == {(s, names[s]): int(n) for s, n in expected.items()}
    assert sum(got.values()) == 682


def test_transactions_match_pandas(refined, pandas_tables):
    raw = pandas_tables["trans"]
    trans = refined["silver_bank_transactions"]
    direction = dict(trans.groupBy("direction").count().collect())
    assert direction == {"credit": int((raw["type"] == "PRIJEM").sum()),
                         "debit": int(raw["type"].isin(["VYDAJ", "VYBER"]).sum())}
    symbols = raw["k_symbol"].str.strip().replace("", None).value_counts()
    categories = {r.category: r["count"] for r in trans.groupBy("category").count().collect()}
    assert categories.pop(None) == int((raw["k_symbol"].str.strip() == "").sum())
    assert categories == {names: int(symbols[code]) for code, names in [
        ("UROK", "interest"), ("SLUZBY", "statement_fee"), ("SIPO", "household"), ("DUCHOD", "pension"),
        ("POJISTNE", "insurance"), ("UVER", "loan_payment"), ("SANKC. UROK", "penalty_interest")]}
    total = trans.agg(F.sum("amount"), F.min("ts"), F.max("ts"), F.countDistinct("account_id")).first()
    assert total[0] == pytest.approx(raw["amount"].astype(float).sum())
    assert (str(total[1].date()), str(total[2].date())) == ("1993-01-01", "1994-03-31")
    assert total[3] == raw["account_id"].nunique()
    assert trans.filter(F.col("customer_key").isNull()).count() == 0


def test_types_follow_the_contract(refined):
    from crm_mining.schemas import BANK_OUTPUT_SCHEMAS, schema_mismatches

    assert schema_mismatches(refined, BANK_OUTPUT_SCHEMAS) == {}
    assert isinstance(refined["silver_bank_transactions"].schema["ts"].dataType, T.TimestampType)


def test_district_unknowns_are_null(refined, pandas_tables):
    raw = pandas_tables["district"]
    unknown = raw[(raw["A12"] == "?") | (raw["A15"] == "?")]["A1"].tolist()
    assert unknown == ["69"]  # Jesenik: one '?' in A12 and one in A15
    districts = refined["silver_districts"]
    nulls = districts.filter(F.col("unemployment_rate_95").isNull() | F.col("crimes_95").isNull())
    assert [r.district_id for r in nulls.collect()] == unknown
    assert districts.filter("district_id = '1'").first().inhabitants == 1_204_953


def test_birth_years_match_pandas(refined, pandas_tables):
    years = (1900 + pandas_tables["client"]["birth_number"].str[:2].astype(int)).value_counts()
    got = dict(refined["silver_customers_bank"].groupBy("birth_year").count().collect())
    assert got == {int(y): int(n) for y, n in years.items()}
