"""Storing and reading `market.instruments`, the reference data (k2_core.model.instruments says what a row is).

A load replaces the table's rows in one `overwrite` snapshot (exactly the files it read out, its own file in; not
pyiceberg's `overwrite`, which commits a delete snapshot and then an append), so each snapshot holds every
instrument as K2 knew them then, and time travel (`as_of_snapshot`, `as_of`) answers "what did we know at that
time". The snapshot records a digest of its rows (`k2.instruments.fingerprint`): a load whose rows equal the current
snapshot's commits nothing, so loading at every start, from the CLI and from Dagster all at once is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, ValidationException
from pyiceberg.table import Table

from k2_core.exceptions import CommitConflictError
from k2_core.lake.catalog import ensure_table, open_catalog
from k2_core.lake.files import delete_uncommitted, replace_files, write_chunks
from k2_core.logging import get_logger
from k2_core.model.instruments import Instrument, fingerprint, parse_dir, to_arrow
from k2_core.model.tables import INSTRUMENTS, arrow_schema_of
from k2_core.settings import Settings

log = get_logger(__name__)

FINGERPRINT_PROPERTY = "k2.instruments.fingerprint"
_COMMIT_ATTEMPTS = 5
_ARROW = arrow_schema_of(INSTRUMENTS.schema)


@dataclass(frozen=True)
class LoadResult:
    """What a load did: `changed` is False when the rows equalled the current snapshot's (nothing committed)."""

    snapshot_id: int | None
    changed: bool
    rows: int


def current_fingerprint(table: Table) -> str | None:
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return None
    return snapshot.summary.additional_properties.get(FINGERPRINT_PROPERTY)


def store_instruments(catalog: Catalog, namespace: str, instruments: Sequence[Instrument]) -> LoadResult:
    """Replace the table's rows with `instruments` in one snapshot, unless they are the rows it holds already."""
    table = ensure_table(catalog, namespace, INSTRUMENTS)
    digest = fingerprint(instruments)
    for _ in range(_COMMIT_ATTEMPTS):
        snapshot = table.current_snapshot()
        if current_fingerprint(table) == digest or (snapshot is None and not instruments):
            return LoadResult(snapshot.snapshot_id if snapshot else None, False, len(instruments))
        current = [task.file for task in table.scan().plan_files()] if snapshot is not None else []
        added = write_chunks(table, [to_arrow(instruments)])
        try:
            replace_files(table, current, added, {FINGERPRINT_PROPERTY: digest})
        except (CommitFailedException, ValidationException):  # another loader committed first: see what it stored
            delete_uncommitted(table, added)
            table.refresh()
            continue
        snapshot = table.current_snapshot()
        assert snapshot is not None  # just committed
        log.info(
            "reference data stored",
            extra={"table": INSTRUMENTS.name, "rows": len(instruments), "snapshot_id": snapshot.snapshot_id},
        )
        return LoadResult(snapshot.snapshot_id, True, len(instruments))
    raise CommitConflictError(f"could not store {INSTRUMENTS.name}: commits kept conflicting")


def read_instruments(
    table: Table | None, snapshot_id: int | None, *, exchange: str | None = None, symbol: str | None = None
) -> pa.Table:
    """The rows of `snapshot_id` (None: the table had none then, or does not exist, so no rows), by exchange and
    symbol. The table is small (one row per instrument): it is read whole and narrowed in Arrow."""
    schema = _ARROW
    if table is None or snapshot_id is None:
        return schema.empty_table()
    rows = table.scan(snapshot_id=snapshot_id).to_arrow()
    if exchange is not None:
        rows = rows.filter(pc.equal(rows.column("exchange"), exchange))
    if symbol is not None:
        rows = rows.filter(pc.equal(rows.column("symbol"), symbol))
    rows = rows.sort_by([("exchange", "ascending"), ("symbol", "ascending")])
    return rows.select(schema.names).cast(schema)


def load_table(catalog: Catalog, namespace: str) -> Table | None:
    """The table, or None when no load has created it yet."""
    try:
        return catalog.load_table((namespace, INSTRUMENTS.name))
    except NoSuchTableError:
        return None


def load_reference_files(settings: Settings) -> LoadResult:
    """Parse every file of `K2_INSTRUMENTS_DIR` and store them: a bad file raises `ConfigError` before the table is
    touched, so what is stored never changes because of it."""
    instruments = parse_dir(settings.instruments.dir)
    catalog = open_catalog(settings)
    try:
        return store_instruments(catalog, settings.catalog.namespace, instruments)
    finally:
        catalog.close()
