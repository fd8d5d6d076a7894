"""Iceberg plans which files to read; DuckDB reads them.

pyiceberg alone would decode every planned file into Arrow before filtering, sorting and limiting in Python;
DuckDB pushes the same WHERE/ORDER BY/LIMIT into the Parquet reader. Iceberg still does the planning because
only it knows which files belong to a snapshot and can prune them by day partition and column stats. When
DuckDB cannot read the planned files faithfully (delete files to apply, or a non-local warehouse this process
has no DuckDB credentials for) the rows come from pyiceberg's own reader and DuckDB only filters and sorts.

`TableLoader` keeps loaded tables keyed by their metadata file: on a SQL catalog one indexed lookup tells
whether the table changed, which saves re-reading metadata JSON that grows with every commit.

Schema changes: a read answers in the schema of the snapshot it reads (`read_schema`), as Iceberg's own time travel
does, so an answer is a function of its snapshot id alone (the result caches key on it) and a snapshot from before a
column was added reads without it. The planned files may have been written under different schemas (an old day's
files lack a column added since): DuckDB reads each group of files alike by the Iceberg field ids in their Parquet
footers, and a column a file lacks is null, as pyiceberg's reader would make it.

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
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
from pyiceberg.expressions import BooleanExpression
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from k2_core import duck
from k2_core.logging import get_logger
from k2_core.model.tables import TableDef, arrow_schema_of

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
        self._days: OrderedDict[tuple[str, int, str], tuple[ScanPlan, dict[int, tuple[str, ...]]]] = OrderedDict()
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

    def by_day(
        self, table: Table, table_def: TableDef, row_filter: BooleanExpression, snapshot_id: int
    ) -> tuple[ScanPlan, dict[int, tuple[str, ...]]]:
        """The plan and its data files grouped by day partition (the first partition field, days since the epoch):
        what a newest-day-first search reads (`k2_core.read.routing.latest_of_many`). Cached as `plan` is."""
        key = (str(table.metadata.table_uuid), snapshot_id, "by_day:" + repr(row_filter))
        with self._lock:
            found = self._days.get(key)
            if found is not None:
                self._days.move_to_end(key)
                return found
        tasks = list(table.scan(row_filter=row_filter, snapshot_id=snapshot_id).plan_files())
        plan = ScanPlan(
            table_def.name,
            snapshot_id,
            tuple(t.file.file_path for t in tasks),
            sum(len(t.delete_files) for t in tasks),
        )
        days: dict[int, list[str]] = {}
        for task in tasks:
            days.setdefault(int(task.file.partition[0]), []).append(task.file.file_path)
        found = (plan, {day: tuple(files) for day, files in days.items()})
        with self._lock:
            self._days[key] = found
            while len(self._days) > self.max_entries:
                self._days.popitem(last=False)
        return found


def local_path(uri: str) -> str | None:
    """A file:// URI or bare path -> a path DuckDB opens; anything remote -> None. No unquoting: pyiceberg's
    local FileIO writes the URI's path verbatim, percent signs included."""
    parsed = urlparse(uri)
    if parsed.scheme == "":
        return uri
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return parsed.path
    return None


# --- the schema a read answers in ---------------------------------------------------------------------------------


def read_schema(table: Table, snapshot_id: int | None) -> Schema:
    """The Iceberg schema a read of `snapshot_id` answers in: the one the snapshot was committed under (a snapshot from
    before a column was added has no such column), or the table's current one when there is no snapshot to read."""
    snapshot = table.metadata.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
    if snapshot is not None and snapshot.schema_id is not None:
        for schema in table.metadata.schemas:
            if schema.schema_id == snapshot.schema_id:
                return schema
    return table.metadata.schema()


_ARROW_SCHEMAS: dict[tuple[str, int], pa.Schema] = {}
_ARROW_LOCK = threading.Lock()


def read_arrow_schema(table: Table, snapshot_id: int | None) -> pa.Schema:
    """`read_schema` as Arrow (`k2_core.model.tables.arrow_schema_of`); kept per (table, schema id), which never
    changes meaning, because every read asks."""
    schema = read_schema(table, snapshot_id)
    key = (str(table.metadata.table_uuid), schema.schema_id)
    with _ARROW_LOCK:
        found = _ARROW_SCHEMAS.get(key)
    if found is None:
        found = arrow_schema_of(schema)
        with _ARROW_LOCK:
            if len(_ARROW_SCHEMAS) > 4096:
                _ARROW_SCHEMAS.clear()
            _ARROW_SCHEMAS[key] = found
    return found


# --- reading files written under different schemas -----------------------------------------------------------------

_FIELD_ID = b"PARQUET:field_id"


class FileColumns:
    """Each data file's top-level columns by Iceberg field id (name in the file), read from its Parquet footer once:
    data files never change, so neither does the answer. Thread-safe; the oldest entries go first."""

    def __init__(self, max_entries: int = 65_536) -> None:
        self.max_entries = max_entries
        self._files: OrderedDict[str, dict[int, str] | None] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, path: str) -> dict[int, str] | None:
        """Field id -> column name in the file at `path`; None when a column has no field id (a file not written
        by an Iceberg writer: only pyiceberg's name mapping can read it)."""
        with self._lock:
            if path in self._files:
                self._files.move_to_end(path)
                return self._files[path]
        found: dict[int, str] = {}
        for field in pq.read_schema(path):
            raw = (field.metadata or {}).get(_FIELD_ID)
            if raw is None:
                found = {}
                break
            found[int(raw)] = field.name
        columns = found or None
        with self._lock:
            self._files[path] = columns
            while len(self._files) > self.max_entries:
                self._files.popitem(last=False)
        return columns


FILE_COLUMNS = FileColumns()


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_DUCK_TYPES: dict[type[IcebergType], str] = {
    BooleanType: "BOOLEAN",
    IntegerType: "INTEGER",
    LongType: "BIGINT",
    FloatType: "FLOAT",
    DoubleType: "DOUBLE",
    DateType: "DATE",
    TimeType: "TIME",
    TimestampType: "TIMESTAMP",
    TimestamptzType: "TIMESTAMPTZ",
    StringType: "VARCHAR",
    UUIDType: "UUID",
    BinaryType: "BLOB",
    FixedType: "BLOB",
}


def duck_type(kind: IcebergType) -> str:
    """The DuckDB type of an Iceberg type: what a column some files lack is null as."""
    if isinstance(kind, DecimalType):
        return f"DECIMAL({kind.precision}, {kind.scale})"
    if isinstance(kind, ListType):
        return f"{duck_type(kind.element_type)}[]"
    if isinstance(kind, MapType):
        return f"MAP({duck_type(kind.key_type)}, {duck_type(kind.value_type)})"
    if isinstance(kind, StructType):
        return "STRUCT(" + ", ".join(f"{_quoted(f.name)} {duck_type(f.field_type)}" for f in kind.fields) + ")"
    return _DUCK_TYPES[type(kind)]


def projection_sql(schema: Schema, paths: list[str], files: FileColumns = FILE_COLUMNS) -> str | None:
    """A SELECT reading `paths` in `schema`'s columns, matched by field id: files alike are read by one
    `read_parquet` (all of them, usually), a column a file lacks is a typed null, a column renamed since is read by
    its name in the file. None when a file has no field ids, or a column some file lacks has a type K2 does not map
    to DuckDB's: pyiceberg reads those."""
    groups: dict[tuple[str | None, ...], list[str]] = {}
    for path in paths:
        columns = files.of(path)
        if columns is None:
            return None
        groups.setdefault(tuple(columns.get(f.field_id) for f in schema.fields), []).append(path)
    selects = []
    for names, group in groups.items():
        try:
            picked = ", ".join(
                (_quoted(name) if name == f.name else f"{_quoted(name)} AS {_quoted(f.name)}")
                if name is not None
                else f"NULL::{duck_type(f.field_type)} AS {_quoted(f.name)}"
                for f, name in zip(schema.fields, names, strict=True)
            )
        except KeyError:
            return None
        listed = ", ".join(duck.sql_text(p) for p in group)
        selects.append(f"SELECT {picked} FROM read_parquet([{listed}])")
    return " UNION ALL ".join(selects)


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
    """Make `name` a view (or registered Arrow table) on `con` holding the planned files' rows in the columns of the
    snapshot read (`read_schema`). Queries on `name` must repeat the filter in SQL: Iceberg's pruning is per file,
    so a planned file still holds other symbols' and days' rows."""
    schema = read_schema(table, plan.snapshot_id)
    paths = plan.local_paths if direct_reads else None
    if not plan.data_files:
        con.register(name, read_arrow_schema(table, plan.snapshot_id).empty_table())
        return "empty"
    select = projection_sql(schema, paths) if paths is not None else None
    if select is not None:
        con.sql(f"CREATE OR REPLACE TEMP VIEW {name} AS {select}")
        return "duckdb"
    # Delete files, remote storage or files without field ids: pyiceberg applies the deletes, has the storage
    # credentials and the name mapping, and reads in the snapshot's schema too.
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
