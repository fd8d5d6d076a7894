"""Table schema evolution: a market table gains an optional column the first time a batch carries it.

K2 creates `market.trades` and `market.quotes` with their first columns (`TableDef.schema`). The columns later
feed versions add (`TableDef.extra_columns`, defined once in k2_core.model.tables) join the table by name, as
optional columns, when a writer first has rows that carry them: rows written before read them as null, and every
snapshot keeps the schema it was written with, so time travel reads an old snapshot as it was.

Any writer may be first (two ingesters, `k2 import`, the gap backfill), at the same instant, and any may crash.
So the change is:

* one catalog commit: every missing column and the record of the change (`k2.schema.<id>` in the table properties:
  when, by whom, at which snapshot) land together or not at all, so a crash leaves the table as it was or changed;
* checked against the table as it is: the table is re-read first and after every conflict, and only the columns
  still missing are added, so a change another writer made is never made twice (the loser of a race finds the
  columns there and changes nothing);
* made before any data file is written with the columns, in a commit of its own: a data file's field ids are then
  the ones the table assigned, whoever wins.

pyiceberg's schema commit asserts the schema it started from is still current, so two concurrent changes cannot
both commit; K2 retries the loser (commit.retry.num-retries is 0 on K2 tables) after re-reading. That one assertion
suffices because K2 only ever adds columns: a schema id, once current, never becomes current again (pyiceberg does
not also assert the last assigned field id, which a drop-and-re-add would need).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import NestedField

from k2_core.exceptions import SchemaEvolutionError, WriteError
from k2_core.lake.catalog import CATALOG_FAILURES
from k2_core.lake.retry import commit_with_retries
from k2_core.logging import get_logger
from k2_core.model.tables import ALL_TABLES, TableDef

log = get_logger(__name__)

SCHEMA_PROPERTY_PREFIX = "k2.schema."  # + schema id: the record of the change that made that schema


def definition_of(table: Table) -> TableDef | None:
    """K2's definition of a catalog table, by its name (None for a table K2 does not define)."""
    name = table.name()[-1]
    return next((t for t in ALL_TABLES if t.name == name), None)


def arrow_schema(table: Table) -> pa.Schema:
    """The Arrow schema of the table's current columns: what a writer's rows must be in (built once per schema)."""
    key = (str(table.metadata.table_uuid), table.metadata.current_schema_id)
    schema = _ARROW_SCHEMAS.get(key)
    if schema is None:
        schema = _ARROW_SCHEMAS[key] = schema_to_pyarrow(table.schema(), include_field_ids=False)
    return schema


_ARROW_SCHEMAS: dict[tuple[str, int], pa.Schema] = {}  # (table uuid, schema id): a schema id never changes meaning


def missing_columns(table: Table, table_def: TableDef, names: Iterable[str]) -> tuple[NestedField, ...]:
    """The extra columns among `names` the table's current schema lacks. A name K2 does not define, or a column the
    table holds with another type than K2's, raises `SchemaEvolutionError`."""
    names = list(names)
    unknown = sorted(set(names) - set(table_def.column_names))
    if unknown:
        raise SchemaEvolutionError(f"{table_def.name} has no column {', '.join(unknown)} in K2's definition")
    have = {f.name: f for f in table.schema().fields}
    missing = []
    for column in table_def.extras_in(names):
        present = have.get(column.name)
        if present is None:
            missing.append(column)
        elif not _same_type(present, column):
            raise SchemaEvolutionError(
                f"{table_def.name}.{column.name} is {present.field_type} in the table, K2 defines {column.field_type}"
            )
    return tuple(missing)


def _same_type(have: NestedField, want: NestedField) -> bool:
    """Types equal apart from field ids (a list's element id is the table's own)."""
    return str(have.field_type) == str(want.field_type)


def evolve(
    table: Table,
    table_def: TableDef,
    names: Iterable[str],
    *,
    writer: str,
    retries: int = 8,
    backoff_seconds: float = 0.02,
) -> int | None:
    """Make sure `table` has every extra column among `names`. Returns the id of the schema this call made, or None
    when there was nothing to add (the table had them, or another writer added them meanwhile). Raises
    `CommitConflictError` if commits kept conflicting, `WriteError` if the catalog failed."""
    names = list(names)
    if not missing_columns(table, table_def, names):  # the common case: no catalog round trip
        return None
    try:
        table.refresh()  # the local view may be stale: another writer may have added them already
    except CATALOG_FAILURES as exc:
        raise WriteError(f"cannot refresh {table.name()}: {exc}") from exc

    def attempt(current: Table) -> int | None:
        missing = missing_columns(current, table_def, names)  # re-checked on every (re-read) attempt
        if not missing:
            return None
        before = current.metadata.current_schema_id
        snapshot = current.metadata.current_snapshot_id
        with current.transaction() as txn:
            with txn.update_schema() as update:
                update.union_by_name(Schema(*missing))
            schema_id = txn.table_metadata.current_schema_id
            record = {
                "at": datetime.now(UTC).isoformat(timespec="microseconds"),
                "by": writer,
                "from_schema": before,
                "snapshot": snapshot,
                "added": [f.name for f in missing],
            }
            txn.set_properties({f"{SCHEMA_PROPERTY_PREFIX}{schema_id}": json.dumps(record, separators=(",", ":"))})
        log.info(
            "table schema evolved",
            extra={"table": table_def.name, "schema_id": schema_id, "added": record["added"], "writer": writer},
        )
        return schema_id

    return commit_with_retries(
        table, attempt, retries=retries, backoff_seconds=backoff_seconds, what="schema evolution", full_jitter=True
    )


@dataclass(frozen=True)
class SchemaChange:
    """One schema of a table's history, and how it came about."""

    schema_id: int
    columns: tuple[str, ...]
    added: tuple[str, ...]  # against the schema before it (all of them for the first)
    removed: tuple[str, ...]
    current: bool
    at: datetime | None  # when the change committed (K2's record; else the first snapshot written with it)
    by: str | None  # the writer that made it (K2's record)
    after_snapshot: int | None  # the table's current snapshot when the change was made
    first_snapshot: int | None  # the first snapshot written with this schema
    snapshots: int  # snapshots still in the table written with it


def schema_history(table: Table) -> list[SchemaChange]:
    """Every schema the table has had, oldest first: what each added, when, by whom, at which snapshot."""
    metadata = table.metadata
    snapshots = sorted(metadata.snapshots, key=lambda s: s.timestamp_ms)
    history: list[SchemaChange] = []
    previous: set[str] = set()
    for schema in sorted(metadata.schemas, key=lambda s: s.schema_id):
        names = tuple(f.name for f in schema.fields)
        record = _record(metadata.properties.get(f"{SCHEMA_PROPERTY_PREFIX}{schema.schema_id}"))
        written = [s for s in snapshots if s.schema_id == schema.schema_id]
        at = _time(record.get("at")) if record else None
        if at is None and written:
            at = datetime.fromtimestamp(written[0].timestamp_ms / 1000, UTC)
        history.append(
            SchemaChange(
                schema_id=schema.schema_id,
                columns=names,
                added=tuple(n for n in names if n not in previous),
                removed=tuple(sorted(previous - set(names))),
                current=schema.schema_id == metadata.current_schema_id,
                at=at,
                by=str(record["by"]) if "by" in record else None,
                after_snapshot=_int(record.get("snapshot")),
                first_snapshot=written[0].snapshot_id if written else None,
                snapshots=len(written),
            )
        )
        previous = set(names)
    return history


def table_history(catalog: Catalog, namespace: str, table_def: TableDef) -> list[SchemaChange] | None:
    """The schema history of one of K2's tables as the catalog has it; None if the table does not exist (nothing is
    created to find out)."""
    try:
        table = catalog.load_table((namespace, table_def.name))
    except (NoSuchTableError, NoSuchNamespaceError):
        return None
    return schema_history(table)


def _record(text: str | None) -> dict[str, object]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
