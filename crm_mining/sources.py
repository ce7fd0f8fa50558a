"""Sources: format adapters driven by ``conf/sources/*.yaml`` — which files, how to read their lines.

A source definition names its files (``path``: a file, a directory or a glob; per table a
``file`` pattern under the directory), its read options (``sep``, ``header``, ``encoding``,
``quote``, ``escape``) and, per table, the mapping of canonical column names to the columns of
the file. Nothing here is specific to one shop or bank: a new source of the same shape is a new
YAML file.

Reading a delimited file
------------------------
Every file is read as text lines (``spark.read.text``) and each line is split by Spark's own CSV
parser (``from_csv``, mode PERMISSIVE) into string columns, so that

- every physical line becomes one bronze row: a line that does not split into the header's
  number of fields keeps its text in ``_corrupt_record`` instead of being dropped (blank lines
  and the header line are the only lines left out);
- line numbers are exact *and* the file is still read in parallel. Spark splits a file at
  multiples of the split size; for this read the split size is pinned (``maxPartitionBytes`` =
  ``openCostInBytes`` = the split size), so each scan partition holds exactly one split, and the
  line number of a row is the number of the split's first line plus the row's position in the
  partition (from ``monotonically_increasing_id``). The driver learns the first line of every
  split while it streams the file once for its SHA-256 (the batch id), counting newlines.
  Trade-off: line numbers assume ``\\n`` or ``\\r\\n`` line ends (a file ending lines with a
  lone ``\\r`` gets wrong numbers after the first split) and, for a compressed file, are only
  known when the file is not split (gzip: always);
- a non-UTF-8 encoding is decoded from the raw bytes of each line (``decode(cast(value as
  binary), encoding)``), not guessed.

Delta does not allow spaces and some punctuation in column names, so a raw column such as
``Customer ID`` is stored in bronze as ``Customer_ID`` (:func:`bronze_column`); refine applies
the same function to the mapping.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import hashlib
import io
import math
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

#: Lineage columns added to every bronze row, in this order after the raw columns.
LINEAGE_COLUMNS = ("_corrupt_record", "_source_file", "_batch_id", "_ingested_at", "_line_number")

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".snappy", ".deflate", ".zip")
_DELTA_FORBIDDEN = re.compile(r"[ ,;{}()\n\t=]")
_PARTITION_OFFSET_BITS = 33  # monotonically_increasing_id = partition << 33 | row in partition


class SourceError(ValueError):
    """A source cannot be read as configured; the message names the source, file and column."""


@dataclasses.dataclass(frozen=True)
class TableSource:
    """One input table of a source: where its files are and how to read them.

    Attributes
    ----------
    source : the source name (``online_retail``).
    table : the table name within the source (``lines``, ``trans``).
    bronze_table : the bronze Delta table (``bronze_<source>`` or ``bronze_<source>_<table>``).
    files : the input files, sorted.
    read : read options (``sep``, ``header``, ``encoding``, ``quote``, ``escape``).
    columns : canonical name → column name in the file (may be empty: keep all columns).
    spec : the table's own settings (``timestamp_formats``...).
    domain : ``retail``, ``banking`` or ``link``.
    """

    source: str
    table: str
    bronze_table: str
    files: tuple[Path, ...]
    read: Mapping[str, Any]
    columns: Mapping[str, str]
    spec: Mapping[str, Any]
    domain: str


def bronze_column(raw: str) -> str:
    """The bronze name of a raw column: characters Delta rejects become ``_``.

    Examples
    --------
    >>> bronze_column("Customer ID")
    'Customer_ID'
    """
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"a column name must be a non-empty string, got {raw!r}")
    return _DELTA_FORBIDDEN.sub("_", raw)


def bronze_table_name(source: str, table: str, *, single: bool) -> str:
    """``bronze_<source>`` for a single-table source, else ``bronze_<source>_<table>``."""
    return f"bronze_{source}" if single else f"bronze_{source}_{table}"


def _expand(pattern: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file() and not Path(p).name.startswith((".", "_")))


def _table_files(source: str, table: str, path: str, spec: Mapping[str, Any]) -> list[Path]:
    pattern = spec.get("file")
    if any(ch in path for ch in "*?["):
        files = _expand(path)
        where = f"sources.{source}.path = {path}"
    elif Path(path).is_dir():
        files = _expand(str(Path(path) / (pattern or "*.csv")))
        where = f"{Path(path) / (pattern or '*.csv')} (sources.{source}.tables.{table})"
    elif Path(path).is_file() and not pattern:
        return [Path(path)]
    elif Path(path).is_file():
        raise SourceError(f"source '{source}': table '{table}' names file '{pattern}' but "
                          f"sources.{source}.path = {path} is a file, not a directory")
    else:
        raise SourceError(f"source '{source}': path not found: {path} (sources.{source}.path)")
    if not files:
        raise SourceError(f"source '{source}', table '{table}': no file matches {where}")
    return files


def source_tables(name: str, spec: Mapping[str, Any]) -> list[TableSource]:
    """The input tables of one source definition, with their files resolved.

    Raises
    ------
    SourceError
        when the path or a table's file is missing, or the format is not supported.

    Examples
    --------
    >>> [t.bronze_table for t in source_tables("berka", cfg.section("sources.berka"))]  # doctest: +SKIP
    ['bronze_berka_account', 'bronze_berka_client', ...]
    """
    if (spec.get("format") or "csv") != "csv":
        raise SourceError(f"source '{name}': format '{spec.get('format')}' is not supported (use csv)")
    path = spec.get("path")
    if not path:
        raise SourceError(f"source '{name}': sources.{name}.path is not set")
    tables = spec.get("tables") or {"data": {}}
    read = {"sep": ",", "header": True, "encoding": "UTF-8", "quote": '"', "escape": '"', **(spec.get("read") or {})}
    out = []
    for table, table_spec in tables.items():
        table_spec = dict(table_spec or {})
        files = _table_files(name, table, str(path), table_spec)
        out.append(TableSource(
            source=name, table=table, bronze_table=bronze_table_name(name, table, single=len(tables) == 1),
            files=tuple(files), read=read, columns=dict(table_spec.get("columns") or {}),
            spec=table_spec, domain=str(spec.get("domain") or ""),
        ))
    return out


# -- header ----------------------------------------------------------------------------------
def read_header(path: Path, read: Mapping[str, Any]) -> list[str]:
    """The raw column names of a delimited file (``_c0``, ``_c1``... without a header line)."""
    encoding = str(read.get("encoding") or "UTF-8")
    if encoding.lower().replace("-", "") == "utf8":
        encoding = "utf-8-sig"  # a byte-order mark is not part of the first column's name
    with open(path, "rb") as fh:
        first = fh.readline()
    text = first.decode(encoding, errors="replace").rstrip("\r\n")
    quote = read.get("quote") or '"'
    fields = next(csv.reader(io.StringIO(text), delimiter=str(read.get("sep") or ","), quotechar=quote), [])
    if not read.get("header", True):
        return [f"_c{i}" for i in range(len(fields))]
    return [f.strip() for f in fields]


def check_header(table: TableSource, path: Path, header: list[str]) -> None:
    """Fail with the source, file and column named when the mapping or header is wrong."""
    if path.stat().st_size == 0:
        raise SourceError(f"source '{table.source}', file {path}: the file is empty (0 bytes, no header line)")
    if not header or not any(header):
        raise SourceError(f"source '{table.source}', file {path}: empty header line")
    for canonical, column in table.columns.items():
        if column not in header:
            raise SourceError(
                f"source '{table.source}', file {path}: column '{column}' (mapped to '{canonical}' in "
                f"sources.{table.source}.tables.{table.table}.columns) is not in the file's header {header}")
    names = [bronze_column(c) for c in header]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SourceError(f"source '{table.source}', file {path}: repeated column names {repeated}")


# -- fingerprint and split line numbers ------------------------------------------------------
def split_size(file_bytes: int, *, parallelism: int, min_bytes: int, max_bytes: int) -> int:
    """Split size that gives every core a piece of the file, within ``[min_bytes, max_bytes]``."""
    wanted = math.ceil(max(file_bytes, 1) / max(parallelism, 1))
    return int(min(max_bytes, max(min_bytes, wanted)))


def fingerprint(path: Path, *, split_bytes: int, chunk_bytes: int = 8 << 20) -> tuple[str, dict[int, int]]:
    """SHA-256 of the file and the line number of the first line of every split.

    A split starting at byte ``s > 0`` begins with the line after the first ``\\n`` at or after
    ``s`` (Hadoop's line reader skips the partial line); the split at 0 begins with line 1.
    The file is read once, in chunks, on the driver.
    """
    digest = hashlib.sha256()
    compressed = path.name.lower().endswith(_COMPRESSED)
    first_lines: dict[int, int] = {0: 1}
    newlines, position, next_boundary, waiting = 0, 0, split_bytes, []
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(chunk_bytes)
            if not chunk:
                break
            digest.update(chunk)
            if not compressed:
                end = position + len(chunk)
                while next_boundary < end:
                    waiting.append(next_boundary)
                    next_boundary += split_bytes
                while waiting:
                    hit = chunk.find(b"\n", max(waiting[0] - position, 0))
                    if hit < 0:
                        break
                    line = newlines + chunk.count(b"\n", 0, hit + 1) + 1
                    while waiting and waiting[0] <= position + hit:
                        first_lines[waiting.pop(0)] = line
                newlines += chunk.count(b"\n")
                position = end
    return digest.hexdigest(), first_lines


@contextlib.contextmanager
def pinned_splits(spark: SparkSession, split_bytes: int) -> Iterator[None]:
    """Within the block, file scans split at multiples of ``split_bytes``, one split per task."""
    keys = ("spark.sql.files.maxPartitionBytes", "spark.sql.files.openCostInBytes")
    saved = {k: spark.conf.get(k, None) for k in keys}
    for key in keys:
        spark.conf.set(key, str(int(split_bytes)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


# -- reading ---------------------------------------------------------------------------------
def _ddl(columns: list[str]) -> str:
    return ", ".join(f"`{c.replace('`', '``')}` STRING" for c in [*columns, "_corrupt_record"])


def _line_number(first_lines: Mapping[int, int]) -> Column:
    starts = F.create_map(*[F.lit(v) for pair in sorted(first_lines.items()) for v in pair])
    in_split = F.monotonically_increasing_id().bitwiseAND(F.lit((1 << _PARTITION_OFFSET_BITS) - 1))
    return (F.element_at(starts, F.col("_metadata.file_block_start")) + in_split).cast("long")


def read_delimited(
    spark: SparkSession,
    path: Path,
    *,
    header: list[str],
    read: Mapping[str, Any],
    first_lines: Mapping[int, int],
    batch_id: str,
    ingested_at: Any,
) -> DataFrame:
    """One file as bronze rows: raw string columns plus lineage, one row per non-blank line.

    Run the write of the result inside :func:`pinned_splits` with the split size that
    ``first_lines`` was computed for, or line numbers past the first split are wrong.

    Examples
    --------
    >>> sha, firsts = fingerprint(path, split_bytes=32 << 20)                # doctest: +SKIP
    >>> df = read_delimited(spark, path, header=read_header(path, opts), read=opts,
    ...                     first_lines=firsts, batch_id=sha, ingested_at=now)  # doctest: +SKIP
    """
    encoding = str(read.get("encoding") or "UTF-8")
    lines = spark.read.text(str(path)).select(
        F.col("value"), _line_number(first_lines).alias("_line_number"))
    if encoding.lower().replace("-", "") != "utf8":
        lines = lines.withColumn("value", F.decode(F.col("value").cast("binary"), encoding))
    if read.get("header", True):
        lines = lines.filter(F.col("_line_number").isNull() | (F.col("_line_number") > 1))
    lines = lines.filter(F.length(F.trim(F.col("value"))) > 0)
    options = {
        "sep": str(read.get("sep") or ","), "quote": str(read.get("quote") or '"'),
        "escape": str(read.get("escape") or "\\"), "mode": "PERMISSIVE",
        "columnNameOfCorruptRecord": "_corrupt_record",
    }
    parsed = F.from_csv(F.col("value"), _ddl(header), options).alias("r")
    fields = [F.col(f"r.`{c.replace('`', '``')}`").alias(bronze_column(c)) for c in header]
    return lines.select(parsed, "_line_number").select(
        *fields,
        F.col("r._corrupt_record").alias("_corrupt_record"),
        F.lit(str(path.resolve())).alias("_source_file"),
        F.lit(batch_id).alias("_batch_id"),
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
        F.col("_line_number"),
    )


def bronze_tables(name: str, spec: Mapping[str, Any]) -> dict[str, str]:
    """Table name → bronze table name of one source definition (no file is looked at).

    Examples
    --------
    >>> bronze_tables("online_retail", {"tables": {"lines": {}}})
    {'lines': 'bronze_online_retail'}
    """
    tables = spec.get("tables") or {"data": {}}
    return {t: bronze_table_name(name, t, single=len(tables) == 1) for t in tables}
