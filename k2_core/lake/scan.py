"""Iceberg plans which files to read; DuckDB reads them.

pyiceberg alone would decode every planned file into Arrow before filtering, sorting and limiting in Python;
DuckDB pushes the same WHERE/ORDER BY/LIMIT into the Parquet reader. Iceberg still does the planning because
only it knows which files belong to a snapshot and can prune them by day partition and column stats. When
DuckDB cannot read the planned files faithfully (delete files to apply, or a non-local warehouse this process
has no DuckDB credentials for) the rows come from pyiceberg's own reader and DuckDB only filters and sorts.

`TableLoader` keeps loaded tables keyed by their metadata file: on a SQL catalog one indexed lookup tells
whether the table changed, which saves re-reading metadata JSON that grows with every commit.

It belongs to the lake layer, below the read path, the ingester and the upkeep jobs, so that every table read, the
query API's and the ingester's alike, goes through one planner and one reader (`k2_core.lake.gaps` is one).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from k2_core import duck
from k2_core.logging import get_logger
from k2_core.model.tables import TableDef

logger = get_logger(__name__)

ReadPath = Literal["duckdb", "pyiceberg", "empty"]


@dataclass(frozen=True)
class ScanPlan:
    """What Iceberg decided to read for one query; exposed so tests and operators can see the pruning."""

    table: str
    snapshot_id: int | None
    data_files: tuple[str, ...]
    delete_files: int

    @property
    def local_paths(self) -> list[str] | None:
        """The data files as paths DuckDB can open, or None when DuckDB must not read them directly."""
        if self.delete_files:
            return None
        paths = [local_path(uri) for uri in self.data_files]
        return None if any(p is None for p in paths) else [p for p in paths if p is not None]


def plan_scan(table: Table, table_def: TableDef, row_filter: BooleanExpression, snapshot_id: int | None) -> ScanPlan:
    """The data files of `snapshot_id` that can hold rows matching `row_filter`; none when there is no
    snapshot (a table created but never written, or a time before its first commit)."""
    if snapshot_id is None:
        return ScanPlan(table_def.name, None, (), 0)
    tasks = list(table.scan(row_filter=row_filter, snapshot_id=snapshot_id).plan_files())
    return ScanPlan(
        table=table_def.name,
        snapshot_id=snapshot_id,
        data_files=tuple(task.file.file_path for task in tasks),
        delete_files=sum(len(task.delete_files) for task in tasks),
    )


class PlanCache:
    """Scan plans by (table, snapshot, filter), least recently used first out. A snapshot never changes, so a plan
    never goes stale; planning re-reads the snapshot's manifest list and manifests, which costs more than reading
    one instrument's rows from a compacted day. Thread-safe."""

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._plans: OrderedDict[tuple[str, int, str], ScanPlan] = OrderedDict()
        self._lock = threading.Lock()

    def plan(
        self, table: Table, table_def: TableDef, row_filter: BooleanExpression, snapshot_id: int | None
    ) -> ScanPlan:
        if snapshot_id is None:
            return plan_scan(table, table_def, row_filter, snapshot_id)
        key = (str(table.metadata.table_uuid), snapshot_id, repr(row_filter))
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = plan_scan(table, table_def, row_filter, snapshot_id)
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > self.max_entries:
                self._plans.popitem(last=False)
        return plan


def local_path(uri: str) -> str | None:
    """A file:// URI or bare path -> a path DuckDB opens; anything remote -> None. No unquoting: pyiceberg's
    local FileIO writes the URI's path verbatim, percent signs included."""
    parsed = urlparse(uri)
    if parsed.scheme == "":
        return uri
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return parsed.path
    return None


def register_scan(
    con: duckdb.DuckDBPyConnection,
    name: str,
    table: Table,
    table_def: TableDef,
    plan: ScanPlan,
    row_filter: BooleanExpression,
    *,
    direct_reads: bool = True,
) -> ReadPath:
    """Make `name` a view (or registered Arrow table) on `con` holding the planned files' rows in the table's
    columns. Queries on `name` must repeat the filter in SQL: Iceberg's pruning is per file, so a planned file
    still holds other symbols' and days' rows."""
    columns = ", ".join(f'"{column}"' for column in table_def.arrow_schema.names)
    paths = plan.local_paths if direct_reads else None
    if not plan.data_files:
        con.register(name, table_def.arrow_schema.empty_table())
        return "empty"
    if paths is not None:
        files = ", ".join(duck.sql_text(p) for p in paths)
        con.sql(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {columns} FROM read_parquet([{files}])")
        return "duckdb"
    # Delete files or remote storage: pyiceberg applies the deletes and has the storage credentials.
    scanned = table.scan(row_filter=row_filter, snapshot_id=plan.snapshot_id).to_arrow()
    con.register(name, scanned)
    return "pyiceberg"


def register(
    con: duckdb.DuckDBPyConnection,
    name: str,
    table: Table,
    table_def: TableDef,
    row_filter: BooleanExpression,
    snapshot_id: int | None,
    filters: Mapping[str, object],
    *,
    plans: PlanCache | None = None,
    direct_reads: bool = True,
) -> ScanPlan:
    """Plan and register a scan as `register_scan` does, and log it: one `query` line per table read, saying
    what was asked (`filters`), how many files Iceberg planned and which path read them, so an operator can see
    the pruning of every read, whichever component made it."""
    began = time.perf_counter()
    plan = (plans.plan if plans is not None else plan_scan)(table, table_def, row_filter, snapshot_id)
    read_path = register_scan(con, name, table, table_def, plan, row_filter, direct_reads=direct_reads)
    logger.info(
        "query",
        extra={
            "table": table_def.name,
            "snapshot_id": plan.snapshot_id,
            "filters": {k: str(v) for k, v in filters.items()},
            "planned_files": len(plan.data_files),
            "delete_files": plan.delete_files,
            "read_path": read_path,
            "plan_ms": round((time.perf_counter() - began) * 1000, 2),
        },
    )
    return plan


def connect() -> duckdb.DuckDBPyConnection:
    """A DuckDB cursor for one query (`k2_core.duck`); timestamptz values come back labelled UTC."""
    return duck.connect()


def cast_to(result: pa.Table, schema: pa.Schema) -> pa.Table:
    """DuckDB's Arrow types differ cosmetically (string vs large_string, nullability); one schema for every path."""
    return result.select(schema.names).cast(schema)


class TableLoader:
    """Loads tables through the catalog, reusing the loaded `Table` while its metadata file is unchanged.
    Thread-safe; a table is always at its latest commit as of the call."""

    def __init__(self, catalog: Catalog, namespace: str) -> None:
        self.catalog = catalog
        self.namespace = namespace
        self._tables: dict[str, Table] = {}
        self._lock = threading.Lock()

    def load(self, name: str) -> Table:
        location = self._metadata_location(name)
        if location is not None:
            with self._lock:
                cached = self._tables.get(name)
            if cached is not None and cached.metadata_location == location:
                return cached
        table = self.catalog.load_table((self.namespace, name))
        with self._lock:
            self._tables[name] = table
        return table

    def _metadata_location(self, name: str) -> str | None:
        """The table's current metadata file, read with one query on SQL catalogs; None elsewhere (load)."""
        if not isinstance(self.catalog, SqlCatalog):
            return None
        with Session(self.catalog.engine) as session:
            return session.execute(
                select(IcebergTables.metadata_location).where(
                    IcebergTables.catalog_name == self.catalog.name,
                    IcebergTables.table_namespace == self.namespace,
                    IcebergTables.table_name == name,
                )
            ).scalar_one_or_none()
