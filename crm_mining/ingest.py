"""Step ``ingest``: source files → bronze Delta tables, every input row kept as read.

For every enabled source and each of its tables (:func:`crm_mining.sources.source_tables`),
each file is one batch: its batch id is the SHA-256 of its bytes, so ingesting the same file
again adds nothing (:meth:`crm_mining.lake.Lake.append_batch`; a file whose batch is already
committed is not parsed or written again). A missing file, or a column mapping that names a
column absent from a file's header, stops the step before anything is written, with the
source, file and column named.

Bronze tables: ``bronze_<source>`` for a single-table source, ``bronze_<source>_<table>``
otherwise; columns: the raw columns as strings (names made Delta-safe by
:func:`crm_mining.sources.bronze_column`), then ``_corrupt_record``, ``_source_file``,
``_batch_id``, ``_ingested_at``, ``_line_number``.
"""
from __future__ import annotations

import datetime as dt
import logging

from . import tracking
from .pipeline import StepContext, StepResult
from .sources import (TableSource, check_header, fingerprint, pinned_splits, read_delimited, read_header,
                      source_tables, split_size, bronze_column, SourceError)

log = logging.getLogger("crm_mining.ingest")


def plan(config) -> list[TableSource]:
    """Every input table of the enabled sources, files resolved and headers checked.

    Raises
    ------
    SourceError
        naming the source and file (and column) that cannot be read as configured.
    """
    tables = []
    for name, spec in sorted(config.enabled_sources().items()):
        for table in source_tables(name, spec):
            for path in table.files:
                check_header(table, path, read_header(path, table.read))
            tables.append(table)
    return tables


def ingest_table(ctx: StepContext, table: TableSource, *, ingested_at: dt.datetime,
                 split_bytes: int | None = None) -> dict[str, int]:
    """Append each file of ``table`` as one batch; returns counts (files, skipped, rows)."""
    settings = ctx.config.section("ingest")
    lake, spark = ctx.lake, ctx.spark
    counts = {"files": 0, "files_skipped": 0, "rows": 0}
    columns: list[str] | None = None
    if lake.exists(table.bronze_table):
        columns = lake.read(table.bronze_table).columns
    for path in table.files:
        size = path.stat().st_size
        split = split_bytes or split_size(
            size, parallelism=spark.sparkContext.defaultParallelism,
            min_bytes=int(settings["split_min_mb"] * (1 << 20)), max_bytes=int(settings["split_max_mb"] * (1 << 20)))
        batch_id, first_lines = fingerprint(path, split_bytes=split)
        counts["files"] += 1
        header = read_header(path, table.read)
        df = read_delimited(spark, path, header=header, read=table.read, first_lines=first_lines,
                            batch_id=batch_id, ingested_at=ingested_at)  # lazy: nothing read yet
        if columns is not None and df.columns != columns:
            raise SourceError(f"source '{table.source}', file {path}: columns {df.columns} differ from "
                              f"those of {table.bronze_table} {columns}")
        with pinned_splits(spark, split):
            written = lake.append_batch(df, table.bronze_table, batch_id=batch_id)
        if written is None:  # append_batch found the batch committed and wrote nothing
            log.info("[ingest] %s: %s already ingested (batch %s), skipped", table.bronze_table, path, batch_id[:12])
            counts["files_skipped"] += 1
            continue
        columns = df.columns
        rows = lake.rows_written(table.bronze_table)  # from the commit append_batch just made
        counts["rows"] += rows
        log.info("[ingest] %s: %s → %d rows (batch %s)", table.bronze_table, path.name, rows, batch_id[:12])
    return counts


def run(ctx: StepContext) -> StepResult:
    """Ingest every enabled source into its bronze tables (idempotent per file)."""
    tables = plan(ctx.config)
    if not tables:
        log.warning("[ingest] no source is enabled: nothing to ingest")
    ingested_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    result = StepResult()
    for table in tables:
        counts = ingest_table(ctx, table, ingested_at=ingested_at)
        result.rows_in += counts["rows"]
        result.rows_out += counts["rows"]
        for key, value in counts.items():
            result.metrics[f"ingest.{table.bronze_table}.{key}"] = value
        result.outputs[table.bronze_table] = ctx.lake.version(table.bronze_table)
    tracking.log_metrics(result.metrics)
    return result


__all__ = ["run", "plan", "ingest_table", "bronze_column"]
