"""Ingest: files → bronze with lineage, exact line numbers across splits, idempotent batches,
malformed lines kept, and clear errors for a missing file or an unknown mapped column."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from crm_mining.sources import (SourceError, bronze_column, bronze_tables, check_header, fingerprint,
                                pinned_splits, read_delimited, read_header, source_tables, split_size)

BAD_INPUT = Path(__file__).parent / "data" / "bad_input"
OPTS = {"sep": ",", "header": True, "encoding": "UTF-8", "quote": '"', "escape": '"'}


def _read(spark, path, *, split_bytes, read=OPTS):
    batch, firsts = fingerprint(path, split_bytes=split_bytes)
    df = read_delimited(spark, path, header=read_header(path, read), read=read, first_lines=firsts,
                        batch_id=batch, ingested_at=None)
    with pinned_splits(spark, split_bytes):
        rows = df.collect()
        partitions = df.rdd.getNumPartitions()
    return rows, partitions, batch


def test_line_numbers_are_exact_across_many_splits(spark, tmp_path):
    # CRLF endings, a blank line, a quoted separator, and lines of uneven length.
    lines = ["id,name,qty"] + [f'{i},"n,{"x" * (i % 7)}",{i * 3}' for i in range(1, 200)]
    lines.insert(50, "")
    path = tmp_path / "many.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    rows, partitions, batch = _read(spark, path, split_bytes=97)
    assert partitions > 20  # really read in parallel pieces
    assert batch == hashlib.sha256(path.read_bytes()).hexdigest()
    expected = {i + 1: text for i, text in enumerate(lines) if i > 0 and text}
    got = {r["_line_number"]: f'{r["id"]},"{r["name"]}",{r["qty"]}' for r in rows}
    assert got == expected
    assert all(r["_corrupt_record"] is None for r in rows)


def test_malformed_line_is_kept_with_its_line_number(spark):
    path = BAD_INPUT / "online_retail_bad.csv"
    rows, _, _ = _read(spark, path, split_bytes=256)
    assert len(rows) == 16  # 18 lines: the header and one blank line are not rows
    bad = [r for r in rows if r["_corrupt_record"] is not None]
    assert [(r["_line_number"], r["InvoiceNo"]) for r in bad] == [(8, "536369")]
    assert rows[0]["_source_file"] == str(path.resolve())


def test_non_utf8_encoding_is_decoded(spark, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("a;b\n1;caf\u00e9 \u00a3\n".encode("latin-1"))
    read = {**OPTS, "sep": ";", "encoding": "ISO-8859-1"}
    rows, _, _ = _read(spark, path, split_bytes=1 << 20, read=read)
    assert [(r["a"], r["b"], r["_line_number"]) for r in rows] == [("1", "caf\u00e9 \u00a3", 2)]


def test_column_names_are_made_delta_safe(spark):
    assert bronze_column("Customer ID") == "Customer_ID"
    header = read_header(BAD_INPUT / "online_retail_ii_sample.csv", OPTS)
    assert header[6] == "Customer ID"


def test_split_size_gives_each_core_a_piece():
    assert split_size(1 << 30, parallelism=2, min_bytes=8 << 20, max_bytes=128 << 20) == 128 << 20
    assert split_size(48 << 20, parallelism=2, min_bytes=8 << 20, max_bytes=128 << 20) == 24 << 20
    assert split_size(1000, parallelism=2, min_bytes=8 << 20, max_bytes=128 << 20) == 8 << 20


def test_tables_and_bronze_names_of_a_multi_table_source(tmp_path):
    (tmp_path / "account.asc").write_text('"account_id";"date"\n1;930101\n')
    (tmp_path / "trans_1.asc").write_text('"trans_id";"amount"\n1;2.0\n')
    (tmp_path / "trans_2.asc").write_text('"trans_id";"amount"\n2;3.0\n')
    spec = {"format": "csv", "domain": "banking", "path": str(tmp_path), "read": {"sep": ";"},
            "tables": {"account": {"file": "account.asc"}, "trans": {"file": "trans*.asc"}}}
    tables = {t.table: t for t in source_tables("bank", spec)}
    assert tables["account"].bronze_table == "bronze_bank_account"
    assert [p.name for p in tables["trans"].files] == ["trans_1.asc", "trans_2.asc"]
    assert read_header(tables["account"].files[0], tables["account"].read) == ["account_id", "date"]
    assert bronze_tables("bank", spec) == {"account": "bronze_bank_account", "trans": "bronze_bank_trans"}
    assert bronze_tables("shop", {"tables": {"lines": {}}}) == {"lines": "bronze_shop"}


def test_missing_file_is_named(tmp_path):
    spec = {"format": "csv", "domain": "banking", "path": str(tmp_path), "tables": {"loan": {"file": "loan.asc"}}}
    with pytest.raises(SourceError, match=r"source 'bank'.*table 'loan'.*loan\.asc"):
        source_tables("bank", spec)
    with pytest.raises(SourceError, match=r"source 'shop'.*nope\.csv"):
        source_tables("shop", {"format": "csv", "path": str(tmp_path / "nope.csv")})


def test_unknown_mapped_column_is_named():
    spec = {"format": "csv", "domain": "retail", "path": str(BAD_INPUT / "online_retail_ii_sample.csv"),
            "tables": {"lines": {"columns": {"invoice_id": "InvoiceNo", "quantity": "Quantity"}}}}
    (table,) = source_tables("shop_ii", spec)
    path = table.files[0]
    with pytest.raises(SourceError, match=r"source 'shop_ii'.*online_retail_ii_sample\.csv.*'InvoiceNo'"):
        check_header(table, path, read_header(path, table.read))


# -- the step ------------------------------------------------------------------------------
def _config(make_config, retail_path, *extra):
    return make_config("run.demo=false", f"sources.online_retail.path={retail_path}",
                       "sources.berka.enabled=false", "sources.customer_link.enabled=false", *extra)


def test_step_ingests_each_file_once(spark, make_config, tmp_path):
    from crm_mining.pipeline import run_pipeline
    from crm_mining.lake import Lake

    folder = tmp_path / "retail"
    folder.mkdir()
    shutil.copy(BAD_INPUT / "online_retail_bad.csv", folder / "part-00000.csv")
    cfg = _config(make_config, folder)
    run_pipeline(spark, cfg, steps=["ingest"])
    lake = Lake(spark, root=cfg.get_path("lake.root"), database=cfg.get_path("lake.database"))
    first = lake.read("bronze_online_retail")
    assert first.count() == 16
    assert set(first.columns[-5:]) == {"_corrupt_record", "_source_file", "_batch_id", "_ingested_at", "_line_number"}
    version = lake.version("bronze_online_retail")
    run_pipeline(spark, cfg, steps=["ingest"])  # the same file again: nothing added
    assert lake.version("bronze_online_retail") == version
    # A second file joins as a second batch; its rows keep their own line numbers.
    (folder / "part-00001.csv").write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "600000,22086,PAPER CHAIN KIT,1,2011-01-02 10:00:00,2.55,15311,United Kingdom\n")
    run_pipeline(spark, cfg, steps=["ingest"])
    bronze = lake.read("bronze_online_retail")
    assert bronze.count() == 17
    assert bronze.select("_batch_id").distinct().count() == 2
    assert bronze.filter("InvoiceNo = '600000'").first()["_line_number"] == 2


def test_step_stops_on_missing_file_and_unknown_column(spark, make_config, tmp_path):
    from crm_mining.pipeline import StepFailed, run_pipeline

    cfg = _config(make_config, tmp_path / "absent.csv")
    with pytest.raises(StepFailed, match=r"online_retail.*absent\.csv"):
        run_pipeline(spark, cfg, steps=["ingest"])
    cfg = _config(make_config, BAD_INPUT / "online_retail_bad.csv", "sources.online_retail.tables.lines.columns.quantity=Qty")
    with pytest.raises(StepFailed, match=r"online_retail.*online_retail_bad\.csv.*'Qty'"):
        run_pipeline(spark, cfg, steps=["ingest"])
