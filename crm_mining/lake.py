"""The lake: Delta tables under one root, registered by name in the catalog database.

Every write here is one Delta transaction, so a killed job leaves either the old or the new
table version, never half of one, and a rerun converges to the same contents:

- :meth:`Lake.replace_partition` replaces one as-of date of a gold or result table;
- :meth:`Lake.append_batch` adds an input batch once (a rerun of a committed batch adds nothing);
- :meth:`Lake.merge` upserts on keys with the ``DeltaTable`` merge builder;
- :meth:`Lake.overwrite` replaces a whole derived table.

Two runs writing the same table at once meet Delta's optimistic concurrency: one commit wins
and the other gets a conflict. Because every write above is idempotent, the loser retries it
(a few times, with a pause) against the new version; if conflicts persist it stops with a
:class:`LakeConflictError` naming the table. Either way the table holds one consistent version.

Tables live at ``<root>/<name>`` and are registered as ``<database>.<name>`` in the session
catalog when written, and again for every existing table when a session opens the lake
(:meth:`Lake.register_all`), so a new session reads them by name.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from delta import exceptions as delta_errors
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

#: Delta's conflict errors: another transaction committed first; an idempotent write may retry.
_CONFLICTS = (delta_errors.ConcurrentWriteException, delta_errors.MetadataChangedException,
              delta_errors.ProtocolChangedException, delta_errors.ConcurrentAppendException,
              delta_errors.ConcurrentDeleteReadException, delta_errors.ConcurrentDeleteDeleteException,
              delta_errors.ConcurrentTransactionException)
#: Retries of a write after a conflict, and the first pause between them (doubling).
CONFLICT_RETRIES = 4
CONFLICT_PAUSE_S = 0.5


class LakeConflictError(RuntimeError):
    """A write kept meeting concurrent commits to the same table; the table is unchanged by it."""


def _is_conflict(exc: Exception) -> bool:
    text = str(exc)
    return isinstance(exc, _CONFLICTS) or "DELTA_CONCURRENT_" in text or "DELTA_PROTOCOL_CHANGED" in text \
        or "DELTA_METADATA_CHANGED" in text


#: (session, catalog name) → location registered by this process, to skip repeat checks.
_REGISTERED: dict[tuple[int, str], str] = {}


def _same_location(a: str, b: str) -> bool:
    def norm(p: str) -> str:
        return p.replace("file:///", "/").replace("file:/", "/").rstrip("/")

    return norm(a) == norm(b)


def _has_commit(table_dir: Path) -> bool:
    """Whether a table directory holds a committed Delta version.

    A job killed during a table's first write leaves data files and an empty ``_delta_log``:
    no table yet, and registering it would fail. The next write creates version 0 and ignores
    the orphaned files.
    """
    log_dir = table_dir / "_delta_log"
    return log_dir.is_dir() and any(p.suffix in (".json", ".parquet") and p.name[:1].isdigit()
                                    for p in log_dir.iterdir())


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"table name must be lower_snake_case, got {name!r}")
    return name


class Lake:
    """A thin, typed facade over the Delta tables of one lake root.

    Parameters
    ----------
    spark : the session.
    root : directory or URI of the lake (``./lake``, ``s3a://bucket/crm``).
    database : catalog database the tables are registered in.

    Examples
    --------
    >>> lake = Lake(spark, root="/tmp/lake")
    >>> lake.overwrite(spark.range(3), "example")
    0
    >>> spark.table("crm.example").count()
    3
    """

    def __init__(self, spark: SparkSession, *, root: str, database: str = "crm") -> None:
        if not isinstance(spark, SparkSession):
            raise TypeError("spark must be a SparkSession")
        if not root:
            raise ValueError("lake root must be set (lake.root)")
        self.spark = spark
        self.root = root if "://" in str(root) else os.path.abspath(str(root))
        self.database = _check_name(database)
        #: table name → (version, operation metrics) of the last commit made through this object.
        self._last_commit: dict[str, tuple[int, dict[str, str]]] = {}

    # -- locations and catalog ---------------------------------------------------------
    def path(self, name: str) -> str:
        """Storage location of table ``name``."""
        return f"{self.root.rstrip('/')}/{_check_name(name)}"

    def qualified(self, name: str) -> str:
        """Catalog name of table ``name`` (``crm.name``)."""
        return f"{self.database}.{_check_name(name)}"

    def exists(self, name: str) -> bool:
        """Whether table ``name`` has been written."""
        return DeltaTable.isDeltaTable(self.spark, self.path(name))

    def _ensure_database(self) -> None:
        # Checked every time: a test or an analyst may have dropped the database meanwhile.
        if not self.spark.catalog.databaseExists(self.database):
            self.spark.sql(f"CREATE DATABASE IF NOT EXISTS {self.database}")

    def register(self, name: str) -> None:
        """Register table ``name`` in the catalog, pointing at this lake (idempotent).

        A name registered earlier at another location (another lake root in the same
        session) is re-pointed: the entry is external, so dropping it drops no data.
        """
        qualified = self.qualified(name)
        key = (id(self.spark), qualified)
        self._ensure_database()
        exists = self.spark.catalog.tableExists(qualified)
        if exists and _REGISTERED.get(key) == self.path(name):
            return
        if exists:
            current = self.spark.sql(f"DESCRIBE DETAIL {qualified}").first()["location"]
            if _same_location(current, self.path(name)):
                _REGISTERED[key] = self.path(name)
                return
            self.spark.sql(f"DROP TABLE {qualified}")
        location = self.path(name).replace("'", "\\'")
        self.spark.sql(f"CREATE TABLE IF NOT EXISTS {qualified} USING DELTA LOCATION '{location}'")
        _REGISTERED[key] = self.path(name)

    def tables(self) -> list[str]:
        """Names of the Delta tables under the root (local and mounted file systems)."""
        if "://" in self.root and not self.root.startswith("file:"):
            return []
        root = Path(self.root.replace("file:", ""))
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if _NAME.match(p.name) and _has_commit(p))

    def register_all(self) -> list[str]:
        """Register every table found under the root; returns their names."""
        names = self.tables()
        for name in names:
            self.register(name)
        return names

    # -- reads ---------------------------------------------------------------------------
    def read(self, name: str, *, version: int | None = None) -> DataFrame:
        """Read table ``name``, at a Delta ``version`` (time travel) when given."""
        if not self.exists(name):
            raise FileNotFoundError(f"table {self.qualified(name)} does not exist at {self.path(name)}")
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", int(version))
        return reader.load(self.path(name))

    def version(self, name: str) -> int | None:
        """The latest Delta version of ``name``, or ``None`` if it does not exist."""
        if not self.exists(name):
            return None
        row = self._latest_commit(name)
        return int(row["version"]) if row else None

    def _latest_commit(self, name: str):
        """The newest row of ``name``'s Delta history: its version and operation metrics."""
        return DeltaTable.forPath(self.spark, self.path(name)).history(1).select("version", "operationMetrics").first()

    def versions(self, names: Iterable[str]) -> dict[str, int | None]:
        """Latest versions of several tables, for lineage records."""
        return {name: self.version(name) for name in names}

    # -- writes ----------------------------------------------------------------------------
    def _writer(self, df: DataFrame, mode: str, partition_by: Sequence[str] = ()):
        writer = df.write.format("delta").mode(mode)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        return writer

    def _finish(self, name: str) -> int:
        self.register(name)
        # One history(1) call gives the new version and the commit's own row counts, so callers
        # need not read a version they have just written (each read of a new version makes Delta
        # rebuild its state, several Spark jobs even for a small table).
        row = self._latest_commit(name)
        self._last_commit[name] = (int(row["version"]), dict(row["operationMetrics"] or {}))
        return int(row["version"])

    def rows_written(self, name: str) -> int:
        """Rows that the last write to ``name`` through this lake committed, from the commit's
        metrics (no scan of the table).

        For :meth:`overwrite`, :meth:`replace_partition`, :meth:`append` and
        :meth:`append_batch` that is the number of rows given; a :meth:`merge` counts the
        unchanged rows it rewrote as well.

        Raises
        ------
        LookupError
            if no write to ``name`` has been committed through this object, or the commit
            recorded no row count.

        Examples
        --------
        >>> lake.overwrite(spark.range(3), "example")
        0
        >>> lake.rows_written("example")
        3
        """
        if name not in self._last_commit:
            raise LookupError(f"no write to table {self.qualified(name)} has been committed through this lake")
        version, metrics = self._last_commit[name]
        if "numOutputRows" not in metrics:
            raise LookupError(f"the commit of version {version} of {self.qualified(name)} recorded no row count "
                              f"(spark.databricks.delta.history.metricsEnabled off?)")
        return int(metrics["numOutputRows"])

    def _commit(self, name: str, write: Callable[[], None]) -> int:
        """Run one idempotent write, retrying it when a concurrent commit to ``name`` wins."""
        pause = CONFLICT_PAUSE_S
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                write()
                return self._finish(name)
            except Exception as exc:  # noqa: BLE001 - only Delta conflicts are retried
                if not _is_conflict(exc):
                    raise
                first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                if attempt == CONFLICT_RETRIES:
                    raise LakeConflictError(
                        f"table {name} ({self.path(name)}): another run kept committing to it at the same "
                        f"time; gave up after {attempt + 1} attempts ({first_line}). The table holds the "
                        f"other run's version; run this step again once it is done.") from exc
                log.warning("%s: concurrent commit by another run (%s); retrying in %.1f s", name, first_line, pause)
                time.sleep(pause)
                pause *= 2
        raise AssertionError("unreachable")

    def overwrite(self, df: DataFrame, name: str, *, partition_by: Sequence[str] = ()) -> int:
        """Replace the whole table (schema included) in one transaction; returns the version."""
        return self._commit(name, lambda: self._writer(df, "overwrite", partition_by)
                            .option("overwriteSchema", "true").save(self.path(name)))

    def append(self, df: DataFrame, name: str) -> int:
        """Add rows: a blind append, one cheap commit that concurrent appends do not conflict
        with. Returns the version."""
        return self._commit(name, lambda: self._writer(df, "append").save(self.path(name)))

    def replace_partition(
        self, df: DataFrame, name: str, *, as_of_date: dt.date | str, column: str = "as_of_date"
    ) -> int:
        """Replace the rows of one as-of date; other dates stay. Returns the new version.

        The table is partitioned by ``column``; ``df`` must hold only rows of that date.
        """
        as_of = as_of_date if isinstance(as_of_date, str) else as_of_date.isoformat()
        dt.date.fromisoformat(as_of)  # a clear ValueError for a malformed date
        if column not in df.columns:
            raise ValueError(f"{name}: the rows to write have no '{column}' column")

        def write() -> None:
            if not self.exists(name):
                self._writer(df, "overwrite", [column]).save(self.path(name))
            else:
                self._writer(df, "overwrite").option("replaceWhere", f"{column} = DATE'{as_of}'").save(self.path(name))

        return self._commit(name, write)

    def append_batch(self, df: DataFrame, name: str, *, batch_id: str, column: str = "_batch_id") -> int | None:
        """Add the rows of one input batch exactly once.

        A batch already in the table is left alone (returns ``None``); otherwise its rows are
        written with ``replaceWhere`` on the batch id, so even a retried write that raced a
        commit replaces rather than duplicates.
        """
        if not batch_id:
            raise ValueError("batch_id must be a non-empty string")
        committed_elsewhere = False

        def write() -> None:
            nonlocal committed_elsewhere
            if self.has_batch(name, batch_id, column=column):
                committed_elsewhere = True
            elif not self.exists(name):
                self._writer(df, "append").save(self.path(name))
            else:
                safe = batch_id.replace("'", "''")
                self._writer(df, "overwrite").option("replaceWhere", f"{column} = '{safe}'").save(self.path(name))

        version = self._commit(name, write)
        if committed_elsewhere:
            self._last_commit.pop(name, None)  # the latest commit is not this write's
            log.info("%s: batch %s already committed, nothing added", name, batch_id)
            return None
        return version

    def has_batch(self, name: str, batch_id: str, *, column: str = "_batch_id") -> bool:
        """Whether rows of ``batch_id`` are committed in table ``name``."""
        if not self.exists(name):
            return False
        return self.read(name).filter(F.col(column) == batch_id).limit(1).count() > 0

    def merge(self, df: DataFrame, name: str, *, keys: Sequence[str], delete_missing: Column | None = None) -> int:
        """Upsert ``df`` into ``name`` on ``keys`` (update matched, insert new); returns the version.

        Parameters
        ----------
        delete_missing : optional condition on target rows (``t.<col>``) that are absent from
            ``df`` and should be deleted (for example rows of the same as-of date).
        """
        if not keys:
            raise ValueError("merge needs at least one key column")
        missing = [k for k in keys if k not in df.columns]
        if missing:
            raise ValueError(f"{name}: merge keys {missing} are not columns of the new rows")
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)

        def write() -> None:
            if not self.exists(name):
                self._writer(df, "append").save(self.path(name))
                return
            builder = (
                DeltaTable.forPath(self.spark, self.path(name)).alias("t")
                .merge(df.alias("s"), condition)
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
            )
            if delete_missing is not None:
                builder = builder.whenNotMatchedBySourceDelete(condition=delete_missing)
            builder.execute()

        return self._commit(name, write)

    def history(self, name: str, limit: int | None = None) -> DataFrame:
        """The Delta history of ``name`` (newest first)."""
        table = DeltaTable.forPath(self.spark, self.path(name))
        return table.history(limit) if limit else table.history()
