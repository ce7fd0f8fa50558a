"""Step ``refine``: bronze → silver (typed, valid, deduplicated, pseudonymised) and quarantine.

This module does the I/O; the rules live in the pure functions of :mod:`.retail` (retail line
items), :mod:`.link` (customer links) and :mod:`.bank` (Berka tables, when installed).

Silver is rebuilt from the whole of bronze on every run and written with
:meth:`crm_mining.lake.Lake.overwrite`: deduplication must see every batch at once (a copy in
a later file is still a copy), and with a deterministic order (file, line, batch) the same
bronze always gives the same silver rows, so a rerun changes no table contents. Silver tables
of the contract that no enabled source produces are written empty, so no stale rows of an
earlier configuration survive.

Every run checks, for each bronze table, rows in = rows accepted + rows quarantined (the
accepted and quarantined rows as the commits of the written tables record them) and fails when
they differ; the quarantine counts by reason are logged and returned as metrics
``quarantine.<source>.<reason>``.
"""
from __future__ import annotations

import logging
from functools import reduce
from typing import Mapping

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from crm_mining import tracking
from crm_mining.pii import resolve_key
from crm_mining.pipeline import StepContext, StepResult
from crm_mining.quality import ReconciliationError, reason_counts, reconcile
from crm_mining.schemas import SILVER_SCHEMAS
from crm_mining.sources import bronze_tables

from .link import classify_links, silver_links
from .retail import (accepted, classify_lines, quarantined, silver_customers_retail, silver_lines,
                     silver_products)

log = logging.getLogger("crm_mining.refine")

#: Berka table → the silver table holding its accepted rows (``disp`` has none of its own).
BANK_ACCEPTED = {"trans": "silver_bank_transactions", "account": "silver_bank_accounts",
                 "card": "silver_bank_cards", "loan": "silver_bank_loans", "order": "silver_bank_orders",
                 "district": "silver_districts"}


class _Run:
    """Bookkeeping of one refine run: versions read and written, counts, cached frames."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx, self.lake = ctx, ctx.lake
        self.result = StepResult()
        self.counts: dict[str, tuple[int, int, int]] = {}
        self.cached: list[DataFrame] = []

    def bronze(self, name: str, source: str) -> DataFrame:
        if not self.lake.exists(name):
            raise FileNotFoundError(f"refine: bronze table {self.lake.qualified(name)} of source '{source}' "
                                    f"does not exist (run the ingest step first)")
        self.result.inputs[name] = self.lake.version(name)
        return self.lake.read(name)

    def write(self, df: DataFrame, name: str) -> None:
        self.result.outputs[name] = self.lake.overwrite(df, name)

    def cache(self, df: DataFrame) -> DataFrame:
        self.cached.append(df.persist())
        return df

    def quarantine(self, df: DataFrame, name: str) -> int:
        # Counted by reason on the rows to write (cached upstream), then checked against the
        # rows the commit recorded: the same figures as a re-read, without one.
        label = name[len("quarantine_"):]
        counts = reason_counts(df)
        self.write(df, name)
        committed = self.lake.rows_written(name)
        if committed != sum(counts.values()):
            raise ReconciliationError(f"{self.lake.qualified(name)}: {committed} rows committed, "
                                      f"{sum(counts.values())} counted by reason")
        for kind, count in counts.items():
            self.result.metrics[f"quarantine.{label}.{kind}"] = count
            log.info("[refine] quarantine %-28s %-34s %9d", label, kind, count)
        return sum(counts.values())


def _retail(run: _Run, name: str, spec: Mapping, settings: Mapping) -> list[tuple[DataFrame, str]]:
    parts = []
    tables = bronze_tables(name, spec)
    for table, bronze_name in tables.items():
        bronze = run.bronze(bronze_name, name)
        table_spec = (spec.get("tables") or {}).get(table) or {}
        formats = table_spec.get("timestamp_formats") or settings.get("timestamp_formats")
        checked = run.cache(classify_lines(bronze, columns=table_spec.get("columns") or {},
                                           timestamp_formats=formats, settings=settings))
        label = bronze_name[len("bronze_"):]
        quarantined_rows = run.quarantine(quarantined(checked, bronze_cols=bronze.columns), f"quarantine_{label}")
        run.counts[bronze_name] = (bronze.count(), -1, quarantined_rows)
        parts.append((checked, label))
    return parts


def _write_retail(run: _Run, parts: list[tuple[DataFrame, str]], key: bytes) -> DataFrame | None:
    if not parts:
        return None
    lines = reduce(DataFrame.unionByName, [silver_lines(accepted(c), key=key, source=label) for c, label in parts])
    run.write(lines, "silver_retail_lines")
    products = reduce(DataFrame.unionByName, [accepted(c) for c, _ in parts])
    run.write(silver_products(products), "silver_products")
    written = run.lake.read("silver_retail_lines")
    per_source = dict(written.groupBy("source").count().collect())
    for bronze_name, (rows_in, _, q) in list(run.counts.items()):
        label = bronze_name[len("bronze_"):]
        if label in {lbl for _, lbl in parts}:
            run.counts[bronze_name] = (rows_in, int(per_source.get(label, 0)), q)
    return silver_customers_retail(written)


def _bank(run: _Run, name: str, spec: Mapping, key: bytes) -> DataFrame | None:
    try:
        from .bank import refine_bank
    except ImportError as exc:
        log.warning("[refine] banking source '%s' skipped: crm_mining.refine.bank is not available (%s)", name, exc)
        return None
    tables = bronze_tables(name, spec)
    bronze = {table: run.bronze(bronze_name, name) for table, bronze_name in tables.items()}
    # The cache hook persists the checked tables once instead of once per output.
    out = refine_bank(bronze, key=key, settings=dict(spec), cache=run.cache)
    customers = out.pop("silver_customers_bank", None)
    quarantined_rows = {}
    for table_name, df in out.items():
        if table_name.startswith("quarantine_"):
            quarantined_rows[table_name[len(f"quarantine_{name}_"):]] = run.quarantine(df, table_name)
        else:
            run.write(df, table_name)
    for table, bronze_name in tables.items():
        rows_in, q = bronze[table].count(), quarantined_rows.get(table, 0)
        if table in BANK_ACCEPTED:
            run.counts[bronze_name] = (rows_in, run.lake.rows_written(BANK_ACCEPTED[table]), q)
        elif table == "client" and customers is not None:
            run.counts[bronze_name] = (rows_in, -2, q)  # counted once silver_customers is written
        else:
            log.info("[refine] %s: %d rows in, %d quarantined (accepted rows have no table of their own)",
                     bronze_name, rows_in, q)
    return customers


def _link(run: _Run, name: str, spec: Mapping, key: bytes) -> DataFrame:
    parts = []
    for table, bronze_name in bronze_tables(name, spec).items():
        bronze = run.bronze(bronze_name, name)
        columns = ((spec.get("tables") or {}).get(table) or {}).get("columns") or {}
        checked = run.cache(classify_links(bronze, columns=columns))
        label = bronze_name[len("bronze_"):]
        q = run.quarantine(checked.filter(F.col("_reason").isNotNull()).select(*bronze.columns, "_reason"),
                           f"quarantine_{label}")
        run.counts[bronze_name] = (bronze.count(), -1, q)
        parts.append((bronze_name, checked))
    links = reduce(DataFrame.unionByName, [silver_links(c.filter(F.col("_reason").isNull()), key=key)
                                          for _, c in parts])
    run.write(links, "silver_customer_link")
    accepted_rows = run.lake.rows_written("silver_customer_link")
    if len(parts) == 1:
        rows_in, _, q = run.counts[parts[0][0]]
        run.counts[parts[0][0]] = (rows_in, accepted_rows, q)
    return links


def run(ctx: StepContext) -> StepResult:
    """Refine every enabled source's bronze tables into silver and quarantine, and reconcile."""
    config = ctx.config
    settings = config.section("refine")
    key = resolve_key(key_env=config.get_path("pii.key_env"), demo=bool(config.get_path("run.demo")))
    state = _Run(ctx)
    customers: list[DataFrame] = []
    retail_parts: list[tuple[DataFrame, str]] = []
    try:
        for name, spec in sorted(config.enabled_sources().items()):
            domain = spec.get("domain")
            if domain == "retail":
                retail_parts += _retail(state, name, spec, settings.get("retail") or {})
            elif domain == "banking":
                bank_customers = _bank(state, name, spec, key)
                if bank_customers is not None:
                    customers.append(bank_customers)
            elif domain == "link":
                _link(state, name, spec, key)
            else:
                raise ValueError(f"source '{name}': unknown domain {domain!r} (sources.{name}.domain: "
                                 f"retail, banking or link)")
        retail_customers = _write_retail(state, retail_parts, key)
        if retail_customers is not None:
            customers.insert(0, retail_customers)
        if customers:
            state.write(reduce(DataFrame.unionByName, customers), "silver_customers")
            bank_rows = state.lake.read("silver_customers").filter(F.col("domain") != "retail").count()
            for bronze_name, (rows_in, acc, q) in list(state.counts.items()):
                if acc == -2:
                    state.counts[bronze_name] = (rows_in, bank_rows, q)
        _write_empty(state)
        metrics = reconcile(state.counts)
    finally:
        for df in state.cached:
            df.unpersist()
    result = state.result
    result.metrics.update(metrics)
    result.rows_in = sum(c[0] for c in state.counts.values())
    result.rows_out = sum(c[1] for c in state.counts.values())
    result.rows_quarantined = sum(c[2] for c in state.counts.values())
    tracking.log_metrics(result.metrics)
    return result


def _write_empty(state: _Run) -> None:
    """Write the contract's silver tables no source produced this run, empty."""
    for name, schema in SILVER_SCHEMAS.items():
        if name not in state.result.outputs:
            state.write(state.ctx.spark.createDataFrame([], schema), name)


__all__ = ["run"]
