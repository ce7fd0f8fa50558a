"""The bad-input corpus (``tests/data/bad_input``): every row read is accepted or quarantined with
a reason, and a file-level problem stops the run naming the file, with nothing committed lost.

``corpus/`` holds row-level faults, one kind per file: short and long rows, broken quotes,
non-numeric numbers, impossible dates, a Latin-1 file read as UTF-8, extreme values, future
dates, a header-only file and the same file delivered twice under another name. ``file_level/``
holds files no row of which can be read as configured: an empty file, a missing and a renamed
column.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from crm_mining.lake import Lake
from crm_mining.pipeline import StepFailed, run_pipeline

BAD_INPUT = Path(__file__).parent / "data" / "bad_input"
CORPUS = BAD_INPUT / "corpus"

#: What a reader of each corpus line expects: (file, line) → reason (None: accepted).
EXPECTED = {
    ("short_and_long_rows.csv", 2): None,
    ("short_and_long_rows.csv", 3): "malformed_line: line 3 of short_and_long_rows.csv",
    ("short_and_long_rows.csv", 4): "malformed_line: line 4 of short_and_long_rows.csv",
    ("short_and_long_rows.csv", 5): "malformed_line: line 5 of short_and_long_rows.csv",
    ("broken_quotes.csv", 2): "malformed_line: line 2 of broken_quotes.csv",  # the quote never closes
    ("broken_quotes.csv", 3): None,  # doubled quotes inside a quoted field are legal CSV
    ("broken_quotes.csv", 4): None,  # a quote inside an unquoted field is kept as text
    ("non_numeric_numbers.csv", 2): "bad_quantity: Quantity='twelve'",
    ("non_numeric_numbers.csv", 3): "bad_quantity: Quantity='1.5'",
    ("non_numeric_numbers.csv", 4): "bad_price: UnitPrice='2;95'",
    ("non_numeric_numbers.csv", 5): "bad_price: UnitPrice='NaN'",
    ("non_numeric_numbers.csv", 6): None,
    ("impossible_dates.csv", 2): "bad_timestamp: InvoiceDate='2011-02-30 12:00:00'",
    ("impossible_dates.csv", 3): "bad_timestamp: InvoiceDate='13/45/2011 25:61'",
    ("impossible_dates.csv", 4): "missing_value: InvoiceDate=''",
    ("impossible_dates.csv", 5): None,
    ("latin1_not_utf8.csv", 2): None,  # undecodable bytes become U+FFFD; the row itself is sound
    ("extreme_values.csv", 2): None,  # the largest real UCI order line: large, not wrong
    ("extreme_values.csv", 3): "bad_quantity: Quantity='99999999999999999999'",  # beyond a 64-bit integer
    ("extreme_values.csv", 4): "bad_price: UnitPrice='1e400'",  # overflows to infinity
    ("extreme_values.csv", 5): None,
    ("future_dates.csv", 2): "future_timestamp: InvoiceDate='2099-01-01 10:00:00'",
    ("future_dates.csv", 3): None,
}
#: The copy delivered a second time under another name is a batch already committed: skipped.
SKIPPED_FILES = {"non_numeric_numbers_copy.csv"}


def _retail_only(retail: Path) -> list[str]:
    """Settings for a real (non-demo) run on the retail files in ``retail`` alone."""
    return ["run.demo=false", f"sources.online_retail.path={retail}",
            "sources.berka.enabled=false", "sources.customer_link.enabled=false"]


def _config(make_config, retail: Path):
    return make_config(*_retail_only(retail))


def _lake(spark, cfg) -> Lake:
    return Lake(spark, root=cfg.get_path("lake.root"), database=cfg.get_path("lake.database"))


def _ingest_and_refine(spark, work: Path, retail: Path):
    """Ingest and refine the retail files in ``retail`` into a lake under ``work``."""
    from crm_mining.config import load_config

    cfg = load_config(overrides=[f"run.workdir={work}", f"lake.root={work / 'lake'}", f"report.out={work / 'r'}",
                                 *_retail_only(retail)])
    run_pipeline(spark, cfg, steps=["ingest", "refine"])
    return cfg


@pytest.fixture(scope="module")
def refined(spark, tmp_path_factory):
    return _lake(spark, _ingest_and_refine(spark, tmp_path_factory.mktemp("bad_input"), CORPUS))


def test_every_row_read_is_accepted_or_quarantined_with_its_reason(refined):
    bronze = refined.read("bronze_online_retail")
    silver = refined.read("silver_retail_lines")
    quarantine = refined.read("quarantine_online_retail")
    assert bronze.count() == silver.count() + quarantine.count()
    assert quarantine.filter(F.col("_reason").isNull() | (F.trim("_reason") == "")).count() == 0

    files = bronze.select("_batch_id", "_source_file").distinct()

    def where(df):
        if "_source_file" not in df.columns:  # silver keeps the batch id; bronze knows its file
            df = df.join(files, "_batch_id")
        return {(Path(r["_source_file"]).name, r["_line_number"]) for r in df.select("_source_file", "_line_number").collect()}

    got = {(Path(r["_source_file"]).name, r["_line_number"]): r["_reason"]
           for r in quarantine.select("_source_file", "_line_number", "_reason").collect()}
    got.update({key: None for key in where(silver)})
    assert got == EXPECTED
    assert where(bronze) == set(EXPECTED)  # the header-only file adds no row; the copy is not read twice


def test_text_survives_quotes_and_a_wrong_encoding(refined):
    lines = {r["product_id"]: r["description"] for r in refined.read("silver_products").collect()}
    assert lines["22115"] == 'METAL SIGN "EMPIRE" TEA'
    assert lines["22116"] == 'METAL SIGN "HOME"'
    assert lines["22126"].startswith("CAF\ufffd CR\ufffdME")
    assert lines["23843"] == "PAPER CRAFT , LITTLE BIRDIE"


def test_the_same_file_twice_is_ingested_once(refined):
    ops = refined.read("ops_pipeline_runs").filter("step = 'ingest'").first()
    assert ops["metrics"]["ingest.bronze_online_retail.files_skipped"] == len(SKIPPED_FILES)
    files = {Path(r[0]).name for r in refined.read("bronze_online_retail").select("_source_file").distinct().collect()}
    assert not files & SKIPPED_FILES


@pytest.fixture(scope="module")
def committed(spark, tmp_path_factory) -> Path:
    """A working directory whose lake holds one good file, ingested and refined."""
    work = tmp_path_factory.mktemp("committed")
    (work / "retail").mkdir()
    shutil.copy(CORPUS / "non_numeric_numbers.csv", work / "retail" / "part-00000.csv")
    _ingest_and_refine(spark, work, work / "retail")
    return work


@pytest.mark.parametrize("bad_file, message", [
    ("empty.csv", r"empty\.csv: the file is empty"),
    ("missing_column.csv", r"missing_column\.csv: column 'UnitPrice'"),
    ("renamed_column.csv", r"renamed_column\.csv: column 'UnitPrice'"),
])
def test_a_file_level_problem_stops_the_run_and_loses_nothing(spark, make_config, tmp_path, committed,
                                                               bad_file, message):
    # each case gets its own copy of the committed lake (Delta tables hold relative paths)
    retail = tmp_path / "retail"
    shutil.copytree(committed / "retail", retail)
    shutil.copytree(committed / "lake", tmp_path / "lake")
    cfg = _config(make_config, retail)
    lake = _lake(spark, cfg)
    tables = ["bronze_online_retail", "silver_retail_lines", "quarantine_online_retail"]

    def state():
        return {t: (lake.version(t), sorted(map(repr, lake.read(t).drop("_ingested_at").collect()))) for t in tables}

    before = state()

    shutil.copy(BAD_INPUT / "file_level" / bad_file, retail / f"part-00001-{bad_file}")
    with pytest.raises(StepFailed, match=r"online_retail.*" + message):
        run_pipeline(spark, cfg, steps=["ingest", "refine"])
    assert state() == before
