"""Time travel: which snapshot a read uses, and the snapshot log with the Kafka offsets each commit covered.

Every read can be pinned: `AsOf(snapshot_id=...)` reads exactly that snapshot (an id the table does not know is
bad input, not an empty result); `AsOf(timestamp=...)` reads the snapshot that was current at that time, and a
time before the table's first commit reads the table as it then was: empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
from pyiceberg.table import Table

from k2_core.exceptions import QueryError
from k2_core.lake.offsets import CLUSTER_PROPERTY, OFFSETS_PROPERTY, decode_offsets
from k2_core.model.bars import PRECOMPUTED_TABLES
from k2_core.model.tables import ALL_TABLES, INSTRUMENTS
from k2_core.read.params import AsOf

# The tables whose snapshot log can be listed.
SNAPSHOT_TABLES = (*(t.name for t in ALL_TABLES), *PRECOMPUTED_TABLES.values(), INSTRUMENTS.name)


@dataclass(frozen=True)
class SnapshotChoice:
    """The snapshot a read uses (None = no snapshot: the table was empty) and when it was committed."""

    snapshot_id: int | None
    committed_at: datetime | None


def choose_snapshot(table: Table, as_of: AsOf | None, table_name: str) -> SnapshotChoice:
    """The current snapshot, or the one `as_of` names; raises `QueryError` for an id the table never had."""
    if as_of is None:
        snapshot = table.current_snapshot()
    elif as_of.snapshot_id is not None:
        snapshot = table.snapshot_by_id(as_of.snapshot_id)
        if snapshot is None:
            raise QueryError(
                f"as_of_snapshot {as_of.snapshot_id} is not a snapshot of table {table_name} "
                f"(GET /v1/snapshots?table={table_name} lists them)"
            )
    else:
        assert as_of.timestamp is not None
        snapshot = table.snapshot_as_of_timestamp(int(as_of.timestamp.timestamp() * 1000))
    if snapshot is None:
        return SnapshotChoice(None, None)
    return SnapshotChoice(snapshot.snapshot_id, _millis(snapshot.timestamp_ms))


def _millis(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


OFFSET_TYPE = pa.list_(pa.struct([("topic", pa.string()), ("partition", pa.int32()), ("next_offset", pa.int64())]))
SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("snapshot_id", pa.int64(), nullable=False),
        pa.field("parent_id", pa.int64()),
        pa.field("sequence_number", pa.int64(), nullable=False),
        pa.field("committed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("operation", pa.string()),
        pa.field("added_records", pa.int64()),
        pa.field("deleted_records", pa.int64()),
        pa.field("total_records", pa.int64()),
        pa.field("kafka_cluster", pa.string()),
        pa.field("kafka_offsets", OFFSET_TYPE),
        pa.field("is_current", pa.bool_(), nullable=False),
        # The table schema the commit was made under: time travel to it reads these columns (a schema change, e.g.
        # columns gained from version 2 of the feeds, shows as a new id on the first commit after it).
        pa.field("schema_id", pa.int32()),
    ]
)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def snapshot_log(table: Table, *, before_sequence: int | None = None, limit: int | None = None) -> pa.Table:
    """The table's snapshots, newest first: when, what operation, how many rows it added, and the Kafka offsets
    it covered (the next offset to read per topic partition, as the ingester stored them). `before_sequence`
    continues a listing after the last row of a previous page."""
    current = table.metadata.current_snapshot_id
    snapshots = sorted(table.snapshots(), key=lambda s: s.sequence_number or 0, reverse=True)
    if before_sequence is not None:
        snapshots = [s for s in snapshots if (s.sequence_number or 0) < before_sequence]
    if limit is not None:
        snapshots = snapshots[:limit]
    rows = []
    for snapshot in snapshots:
        summary = snapshot.summary
        props = dict(summary.additional_properties) if summary is not None else {}
        offsets = decode_offsets(props.get(OFFSETS_PROPERTY))
        rows.append(
            {
                "snapshot_id": snapshot.snapshot_id,
                "parent_id": snapshot.parent_snapshot_id,
                "sequence_number": snapshot.sequence_number or 0,
                "committed_at": _millis(snapshot.timestamp_ms),
                "operation": summary.operation.value if summary is not None else None,
                "added_records": _int(props.get("added-records")),
                "deleted_records": _int(props.get("deleted-records")),
                "total_records": _int(props.get("total-records")),
                "kafka_cluster": props.get(CLUSTER_PROPERTY),
                "kafka_offsets": [
                    {"topic": topic, "partition": partition, "next_offset": offset}
                    for (topic, partition), offset in sorted(offsets.items())
                ],
                "is_current": snapshot.snapshot_id == current,
                "schema_id": snapshot.schema_id,
            }
        )
    return pa.Table.from_pylist(rows, schema=SNAPSHOT_SCHEMA)
