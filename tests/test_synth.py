"""Tests of the synthetic data generator (crm_mining.synth): formats, determinism, and that
the truth file states exactly what the written files hold. No Spark needed."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crm_mining.synth import generate
from crm_mining.synth.__main__ import main

CUSTOMERS = 600
RETAIL_HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID",
                 "Country"]
NON_PRODUCT_CODES = {"POST", "D", "M", "DOT", "BANK CHARGES"}
# Headers of the real PKDD'99 files, byte for byte.
BERKA_HEADERS = {
    "account.asc": '"account_id";"district_id";"frequency";"date"',
    "client.asc": '"client_id";"birth_number";"district_id"',
    "disp.asc": '"disp_id";"client_id";"account_id";"type"',
    "card.asc": '"card_id";"disp_id";"type";"issued"',
    "loan.asc": '"loan_id";"account_id";"date";"amount";"duration";"payments";"status"',
    "order.asc": '"order_id";"account_id";"bank_to";"account_to";"amount";"k_symbol"',
    "trans.asc": '"trans_id";"account_id";"date";"type";"operation";"amount";"balance";"k_symbol";"bank";"account"',
    "district.asc": "A1;A2;A3;A4;A5;A6;A7;A8;A9;A10;A11;A12;A13;A14;A15;A16",
}
CLIENT_INITIATED_OPERATIONS = {"VKLAD", "VYBER KARTOU"}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth")
    generate(path, customers=CUSTOMERS, seed=11, chunk_customers=250, workers=1)
    return path


@pytest.fixture(scope="module")
def truth(out) -> dict:
    return json.loads((out / "truth" / "truth.json").read_text())


@pytest.fixture(scope="module")
def raw_retail(out) -> list[list[str]]:
    """Every retail data row as parsed by the csv module (malformed ones included)."""
    rows = []
    for part in sorted((out / "retail").glob("part-*.csv")):
        with open(part, newline="") as handle:
            reader = csv.reader(handle)
            assert next(reader) == RETAIL_HEADER
            rows.extend(reader)
    return rows


@pytest.fixture(scope="module")
def retail(raw_retail) -> pd.DataFrame:
    """Well-formed retail rows, typed; malformed rows (the planted ones) dropped."""
    frame = pd.DataFrame([r for r in raw_retail if len(r) == 8], columns=RETAIL_HEADER)
    frame["qty"] = pd.to_numeric(frame["Quantity"], errors="coerce")
    frame["ts"] = pd.to_datetime(frame["InvoiceDate"], format="%Y-%m-%d %H:%M:%S", errors="coerce")
    frame["price"] = frame["UnitPrice"].astype(float)
    return frame[frame["qty"].notna() & frame["ts"].notna()].copy()


def clean_lines(retail: pd.DataFrame) -> pd.DataFrame:
    """Clean lines as the truth file defines them."""
    keep = (~retail["InvoiceNo"].str.startswith("C") & (retail["qty"] > 0) & (retail["price"] > 0)
            & (retail["CustomerID"] != "") & ~retail["StockCode"].isin(NON_PRODUCT_CODES))
    return retail[keep].drop_duplicates(subset=RETAIL_HEADER)


def read_berka(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / "berka" / name, sep=";", dtype=str, keep_default_na=False)


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_files_whatever_the_workers(tmp_path):
    generate(tmp_path / "a", customers=300, seed=5, chunk_customers=100, workers=1)
    generate(tmp_path / "b", customers=300, seed=5, chunk_customers=100, workers=2)
    first, second = file_digests(tmp_path / "a"), file_digests(tmp_path / "b")
    assert len(first) == 3 + 8 + 1 + 3
    assert first == second


def test_different_seed_gives_different_files(tmp_path, out):
    generate(tmp_path, customers=CUSTOMERS, seed=12, chunk_customers=250, workers=1)
    other, ours = file_digests(tmp_path), file_digests(out)
    for name in ("retail/part-00000.csv", "berka/trans.asc", "berka/client.asc", "link/customer_link.csv"):
        assert other[name] != ours[name], name


def test_rerun_into_same_directory_removes_stale_parts(tmp_path):
    generate(tmp_path, customers=120, seed=1, chunk_customers=40, workers=1)
    generate(tmp_path, customers=120, seed=1, chunk_customers=120, workers=1)
    assert [p.name for p in sorted((tmp_path / "retail").glob("*.csv"))] == ["part-00000.csv"]
    assert not list((tmp_path / "berka").glob(".trans-part-*"))


# --------------------------------------------------------------------------- retail format

def test_retail_parts_one_per_chunk_with_uci_header(out):
    parts = sorted((out / "retail").glob("part-*.csv"))
    assert [p.name for p in parts] == ["part-00000.csv", "part-00001.csv", "part-00002.csv"]
    for part in parts:
        frame = pd.read_csv(part, dtype=str, keep_default_na=False, on_bad_lines="skip")
        assert list(frame.columns) == RETAIL_HEADER


def test_retail_field_formats(retail):
    assert retail["InvoiceNo"].str.fullmatch(r"C?\d{6,}").all()
    assert retail["InvoiceDate"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
    assert retail["UnitPrice"].str.fullmatch(r"\d+\.\d\d").all()
    assert retail["CustomerID"].str.fullmatch(r"(\d+)?").all()
    assert retail["qty"].eq(retail["qty"].round()).all()


def test_descriptions_with_commas_are_quoted(out):
    text = (out / "retail" / "part-00000.csv").read_text()
    with_comma = [line for line in text.splitlines()[1:] if line.count(",") > 7]
    assert with_comma, "the catalogue should exercise CSV quoting"
    assert all(len(next(csv.reader([line]))) in (8, 5) for line in with_comma)


def test_invoice_numbers_unique_across_chunks(retail):
    per_invoice = retail.groupby("InvoiceNo").agg(customers=("CustomerID", "nunique"), times=("ts", "nunique"))
    assert (per_invoice["customers"] == 1).all()
    assert (per_invoice["times"] == 1).all()


def test_dates_within_documented_window(retail, truth):
    window = truth["retail_window"]
    assert retail["ts"].min() >= pd.Timestamp(window["start"])
    assert retail["ts"].max() < pd.Timestamp(window["end"]) + pd.Timedelta(days=1)


# --------------------------------------------------------------------------- truth matches the files

def test_file_row_counts_match_truth(out, truth):
    for name, rows in truth["files"].items():
        lines = (out / name).read_bytes().count(b"\n")
        assert lines - 1 == rows, name
    assert truth["counts"]["retail_lines"] == sum(v for k, v in truth["files"].items() if k.startswith("retail/"))
    assert truth["counts"]["bank_transactions"] == truth["files"]["berka/trans.asc"]


def test_malformed_counts_match_files(raw_retail, truth):
    malformed = truth["dirt"]["malformed_lines"]
    assert sum(len(r) != 8 for r in raw_retail) == malformed["too_few_fields"]
    full = [r for r in raw_retail if len(r) == 8]
    assert sum(not re.fullmatch(r"-?\d+", r[3]) for r in full) == malformed["non_numeric_quantity"]
    dates = pd.to_datetime(pd.Series([r[4] for r in full]), format="%Y-%m-%d %H:%M:%S", errors="coerce")
    assert int(dates.isna().sum()) == malformed["impossible_date"]
    assert min(malformed.values()) >= 1


def test_dirt_counts_match_files(retail, truth):
    dirt = truth["dirt"]
    cancelled = retail["InvoiceNo"].str.startswith("C")
    assert int(cancelled.sum()) == dirt["cancellation_lines"]
    assert retail.loc[cancelled, "InvoiceNo"].nunique() == dirt["cancellation_invoices"]
    assert int((retail["CustomerID"] == "").sum()) == dirt["missing_customer_id_lines"]
    assert int(retail.duplicated(subset=RETAIL_HEADER).sum()) == dirt["duplicate_lines"]
    assert int((retail["price"] == 0).sum()) == dirt["zero_price_lines"]
    codes = retail.loc[retail["StockCode"].isin(NON_PRODUCT_CODES), "StockCode"].value_counts()
    assert int(codes.sum()) == dirt["non_product_lines"]
    assert {c: int(codes.get(c, 0)) for c in NON_PRODUCT_CODES} == dirt["non_product_lines_by_code"]
    for kind in ("cancellation_lines", "missing_customer_id_lines", "duplicate_lines", "zero_price_lines"):
        assert dirt[kind] > 0, kind


def test_cancellations_take_back_earlier_purchases(retail):
    cancels = retail[retail["InvoiceNo"].str.startswith("C")]
    assert (cancels["qty"] < 0).all()
    purchases = retail[~retail["InvoiceNo"].str.startswith("C") & (retail["qty"] > 0)]
    matched = cancels.merge(purchases, on=["CustomerID", "StockCode"], suffixes=("", "_bought"))
    matched = matched[(matched["ts_bought"] < matched["ts"]) & (matched["qty_bought"] >= -matched["qty"])]
    assert matched.drop_duplicates(subset=["InvoiceNo", "StockCode"]).shape[0] == len(cancels)


def basket_measures(baskets: pd.Series, antecedent: list[str], consequent: list[str]) -> dict:
    has_all = lambda items: baskets.apply(lambda b: set(items) <= b)  # noqa: E731
    n_ante, n_cons, n_both = has_all(antecedent).sum(), has_all(consequent).sum(), has_all(antecedent + consequent).sum()
    n = len(baskets)
    return {"antecedent_count": int(n_ante), "consequent_count": int(n_cons), "itemset_count": int(n_both),
            "baskets": n, "support": n_both / n, "confidence": n_both / n_ante, "lift": (n_both / n_ante) / (n_cons / n)}


def test_planted_rules_are_exact_on_clean_baskets(retail, truth):
    baskets = clean_lines(retail).groupby("InvoiceNo")["StockCode"].apply(set)
    assert len(baskets) == truth["counts"]["clean_baskets"]
    rules = truth["association_rules"]
    assert len(rules) >= 3 and any(len(r["antecedent"]) >= 2 for r in rules)
    for rule in rules + truth["noise_pairs"]:
        expected = basket_measures(baskets, rule["antecedent"], rule["consequent"])
        for key in ("antecedent_count", "consequent_count", "itemset_count", "baskets"):
            assert rule[key] == expected[key], (rule["antecedent"], key)
        for key in ("support", "confidence", "lift"):
            assert rule[key] == pytest.approx(expected[key], rel=1e-12), (rule["antecedent"], key)


def test_planted_rules_stand_out_from_noise_pairs(truth):
    planted_lift = min(r["lift"] for r in truth["association_rules"])
    noise_lift = max(p["lift"] for p in truth["noise_pairs"])
    assert planted_lift > 5 and planted_lift > 2 * noise_lift
    assert min(r["confidence"] for r in truth["association_rules"]) > 0.4
    assert len(truth["noise_pairs"]) == len(list(combinations(range(5), 2)))


def test_customer_truth_matches_retail(out, retail, truth):
    customers = pd.read_csv(out / "truth" / "customers.csv", dtype={"CustomerID": str})
    assert len(customers) == CUSTOMERS == truth["counts"]["retail_customers"]
    clean = clean_lines(retail)
    invoices = clean.groupby("CustomerID")["InvoiceNo"].nunique()
    assert invoices.reindex(customers["CustomerID"]).fillna(0).astype(int).tolist() == customers["clean_invoices"].tolist()
    assert set(customers["segment"]) == set(truth["segments"])
    assert customers["segment"].value_counts().to_dict() == {k: v["customers"] for k, v in truth["segments"].items()}


def test_default_size_is_about_100_clean_lines_per_customer(truth):
    per_customer = truth["counts"]["clean_lines"] / truth["counts"]["retail_customers"]
    assert 85 <= per_customer <= 115
    assert truth["counts"]["retail_lines"] > truth["counts"]["clean_lines"]


def test_churners_stop_buying_and_fade_first(out, retail):
    customers = pd.read_csv(out / "truth" / "customers.csv", dtype={"CustomerID": str})
    clean = clean_lines(retail)
    last = clean.groupby("CustomerID")["ts"].max()
    churned = customers[customers["is_churner"]].set_index("CustomerID")
    after = last.reindex(churned.index) >= pd.to_datetime(churned["churn_date"]) + pd.Timedelta(days=1)
    assert not after.any()
    # Planted lapsers buy less often in the 90 days before lapsing than before that.
    lapsers = churned[churned["churn_cause"] == "lapse"]
    visits = clean.drop_duplicates("InvoiceNo").merge(lapsers[["churn_date"]], left_on="CustomerID", right_index=True)
    days_before = (pd.to_datetime(visits["churn_date"]) - visits["ts"]).dt.days
    first = clean.groupby("CustomerID")["ts"].min().reindex(lapsers.index)
    early_exposure = ((pd.to_datetime(lapsers["churn_date"]) - first).dt.days - 90).clip(lower=0).sum()
    late_rate = (days_before < 90).sum() / (90 * len(lapsers))
    early_rate = (days_before >= 90).sum() / early_exposure
    assert late_rate < 0.8 * early_rate


def test_value_is_skewed_about_80_20(retail):
    customer_lines = retail[(retail["CustomerID"] != "") & ~retail["StockCode"].isin(NON_PRODUCT_CODES)]
    net = (customer_lines["qty"] * customer_lines["price"]).groupby(customer_lines["CustomerID"]).sum()
    net = np.sort(net.clip(lower=0).to_numpy())[::-1]
    top = net[: len(net) // 5].sum() / net.sum()
    assert 0.65 <= top <= 0.92


def test_segments_differ_in_behaviour(out, retail):
    customers = pd.read_csv(out / "truth" / "customers.csv", dtype={"CustomerID": str}).set_index("CustomerID")
    clean = clean_lines(retail)
    features = pd.DataFrame({
        "frequency": clean.groupby("CustomerID")["InvoiceNo"].nunique(),
        "lines_per_invoice": clean.groupby("CustomerID").size() / clean.groupby("CustomerID")["InvoiceNo"].nunique(),
        "first": clean.groupby("CustomerID")["ts"].min(),
        "last": clean.groupby("CustomerID")["ts"].max(),
    }).join(customers["segment"])
    median = features.groupby("segment").median()
    assert median.loc["champion", "frequency"] > 2 * median.drop("champion")["frequency"].max()
    assert median.loc["wholesaler", "lines_per_invoice"] > 1.3 * median.drop("wholesaler")["lines_per_invoice"].max()
    assert median.loc["new", "first"] > median.drop("new")["first"].max()
    assert median.loc["lapsed", "last"] < median.drop("lapsed")["last"].min()


def test_segments_are_recoverable_by_clustering_rfm(tmp_path):
    """On the demo size (2,000 customers), k-means on log-standardised R, F, M finds the segments."""
    cluster = pytest.importorskip("sklearn.cluster")
    metrics = pytest.importorskip("sklearn.metrics")
    generate(tmp_path, customers=2000, seed=42, bank_share=0.0, link_share=0.0, workers=1)
    rows = pd.read_csv(tmp_path / "retail" / "part-00000.csv", dtype=str, keep_default_na=False,
                       on_bad_lines="skip")
    rows["qty"] = pd.to_numeric(rows["Quantity"], errors="coerce")
    rows["ts"] = pd.to_datetime(rows["InvoiceDate"], format="%Y-%m-%d %H:%M:%S", errors="coerce")
    rows["price"] = pd.to_numeric(rows["UnitPrice"], errors="coerce")
    clean = clean_lines(rows[rows["qty"].notna() & rows["ts"].notna() & rows["price"].notna()]).assign(amount=lambda d: d["qty"] * d["price"])
    as_of = clean["ts"].max() + pd.Timedelta(days=1)
    by_customer = clean.groupby("CustomerID")
    rfm = pd.DataFrame({"recency": (as_of - by_customer["ts"].max()).dt.days,
                        "frequency": by_customer["InvoiceNo"].nunique(),
                        "monetary": by_customer["amount"].sum()})
    features = np.log1p(rfm)
    features = (features - features.mean()) / features.std()
    labels = cluster.KMeans(5, n_init=10, random_state=0).fit_predict(features)
    customers = pd.read_csv(tmp_path / "truth" / "customers.csv", dtype={"CustomerID": str}).set_index("CustomerID")
    assert metrics.adjusted_rand_score(customers.loc[rfm.index, "segment"], labels) >= 0.8


# --------------------------------------------------------------------------- bank format

def test_berka_files_have_real_headers_and_crlf(out):
    for name, header in BERKA_HEADERS.items():
        data = (out / "berka" / name).read_bytes()
        assert data.startswith((header + "\r\n").encode()), name
        assert data.count(b"\n") == data.count(b"\r\n") and data.endswith(b"\r\n"), name
        frame = read_berka(out, name)
        assert len(frame) > 0, name


def test_berka_values(out):
    trans = read_berka(out, "trans.asc")
    assert set(trans["type"]) <= {"PRIJEM", "VYDAJ", "VYBER"}
    assert set(trans["operation"]) <= {"VYBER KARTOU", "VKLAD", "PREVOD Z UCTU", "VYBER", "PREVOD NA UCET", ""}
    assert set(trans["k_symbol"]) <= {"POJISTNE", "SIPO", "LEASING", "UVER", "SLUZBY", "UROK", "SANKC. UROK",
                                      "DUCHOD", "", " "}
    assert {"UROK", "SLUZBY", "SIPO", "DUCHOD"} <= set(trans["k_symbol"])
    assert trans["amount"].str.fullmatch(r"\d+\.\d\d").all()
    assert trans["balance"].str.fullmatch(r"-?\d+\.\d\d").all()
    for name, column in (("trans.asc", "date"), ("account.asc", "date"), ("loan.asc", "date")):
        dates = pd.to_datetime(read_berka(out, name)[column], format="%y%m%d", errors="coerce")
        assert dates.notna().all() and dates.between("1993-01-01", "1998-12-31").all(), name
    births = read_berka(out, "client.asc")["birth_number"]
    month = births.str[2:4].astype(int)
    assert (month.between(1, 12) | month.between(51, 62)).all() and (month > 50).any()
    cards = read_berka(out, "card.asc")
    assert cards["issued"].str.fullmatch(r"\d{6} 00:00:00").all()
    assert set(cards["type"]) <= {"classic", "junior", "gold"}
    assert set(read_berka(out, "loan.asc")["status"]) <= set("ABCD")
    assert set(read_berka(out, "disp.asc")["type"]) == {"OWNER", "DISPONENT"}
    assert set(read_berka(out, "account.asc")["frequency"]) <= {"POPLATEK MESICNE", "POPLATEK TYDNE",
                                                                 "POPLATEK PO OBRATU"}
    assert len(read_berka(out, "district.asc")) == 77


def test_berka_references_are_consistent(out):
    accounts = set(read_berka(out, "account.asc")["account_id"])
    clients = set(read_berka(out, "client.asc")["client_id"])
    disp = read_berka(out, "disp.asc")
    assert set(disp["account_id"]) == accounts and set(disp["client_id"]) == clients
    assert (disp[disp["type"] == "OWNER"]["account_id"].value_counts() == 1).all()
    assert set(read_berka(out, "card.asc")["disp_id"]) <= set(disp["disp_id"])
    for name in ("trans.asc", "loan.asc", "order.asc"):
        assert set(read_berka(out, name)["account_id"]) <= accounts, name
    districts = set(read_berka(out, "district.asc")["A1"])
    assert set(read_berka(out, "account.asc")["district_id"]) <= districts


def test_running_balances_are_consistent(out):
    trans = read_berka(out, "trans.asc")
    for column in ("trans_id", "account_id", "date"):
        trans[column] = trans[column].astype(int)
    cents = lambda s: (s.astype(float) * 100).round().astype(np.int64)  # noqa: E731
    trans["amount_c"], trans["balance_c"] = cents(trans["amount"]), cents(trans["balance"])
    trans = trans.sort_values(["account_id", "date", "trans_id"])
    signed = np.where(trans["type"] == "PRIJEM", trans["amount_c"], -trans["amount_c"])
    previous = trans.groupby("account_id")["balance_c"].shift(1).fillna(0).astype(np.int64)
    assert (previous + signed == trans["balance_c"]).all()
    assert trans["trans_id"].is_unique


def test_dormant_clients_stop_client_initiated_transactions(out):
    clients = pd.read_csv(out / "truth" / "bank_clients.csv", dtype={"account_id": str})
    dormant = clients[clients["is_dormant"]].drop_duplicates("account_id")
    assert 0 < len(dormant) < len(clients)
    trans = read_berka(out, "trans.asc")
    trans["day"] = pd.to_datetime(trans["date"], format="%y%m%d")
    joined = trans.merge(dormant[["account_id", "dormant_since"]], on="account_id")
    after = joined[joined["day"] >= pd.to_datetime(joined["dormant_since"])]
    assert len(after) > 0
    assert set(after["k_symbol"]) <= {"SLUZBY", "UROK", "SANKC. UROK", "UVER"}
    assert not (set(after["operation"]) & CLIENT_INITIATED_OPERATIONS)


# --------------------------------------------------------------------------- link

def test_link_ids_exist_in_retail_and_bank(out, retail, truth):
    link = pd.read_csv(out / "link" / "customer_link.csv", dtype=str)
    assert list(link.columns) == ["CustomerID", "client_id"]
    assert len(link) == round(0.4 * CUSTOMERS) == truth["counts"]["linked_customers"]
    assert link["CustomerID"].is_unique and link["client_id"].is_unique
    assert set(link["CustomerID"]) <= set(retail["CustomerID"])
    assert set(link["client_id"]) <= set(read_berka(out, "client.asc")["client_id"])
    clients = pd.read_csv(out / "truth" / "bank_clients.csv", dtype=str, keep_default_na=False)
    assert len(clients) == round(0.6 * CUSTOMERS) == truth["counts"]["bank_clients"]
    linked = clients[clients["CustomerID"] != ""]
    assert dict(zip(linked["client_id"], linked["CustomerID"])) == dict(zip(link["client_id"], link["CustomerID"]))
    customers = pd.read_csv(out / "truth" / "customers.csv", dtype=str, keep_default_na=False)
    linked = customers[customers["client_id"] != ""]
    assert dict(zip(linked["CustomerID"], linked["client_id"])) == dict(zip(link["CustomerID"], link["client_id"]))


# --------------------------------------------------------------------------- entry points

def test_module_command_line(tmp_path, capsys):
    assert main(["--customers", "50", "--seed", "3", "--out", str(tmp_path), "--lines-per-customer", "20"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["retail_customers"] == 50
    truth = json.loads((tmp_path / "truth" / "truth.json").read_text())
    assert truth["parameters"]["lines_per_customer"] == 20
    assert 10 * 50 < truth["counts"]["clean_lines"] < 40 * 50


def test_rejects_more_links_than_bank_clients(tmp_path):
    with pytest.raises(ValueError, match="link_share"):
        generate(tmp_path, customers=10, bank_share=0.2, link_share=0.5)
