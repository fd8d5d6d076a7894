"""Fenced micro-batch appends: rows and the Kafka offsets they cover land in one Iceberg snapshot.

A writer must still own every partition it commits. Ownership is checked against the offsets already in the
table: if another writer has committed a partition past where this batch started, this writer lost it in a
rebalance and must not commit (`FencedError`). Commits are optimistic: a concurrent commit makes ours fail
(the table property disables pyiceberg's blind retry), so we refresh, re-check ownership and commit the same
data files again: the batch's Parquet is written once however many writers race for the table.

Rows are planned against the sequence state as of one snapshot (`planned_at`). Writers of another kind (`k2 import`,
the gap backfill) may store any row, including ones this batch holds, after it: before each attempt the rows are
re-checked against exactly the files those writers added since, and the ones found are dropped. Peer ingesters of
the same Kafka cluster own other partitions, hence other streams, so their files are not read (`trusts_peers`).

Rows may carry columns the table has not got yet (a feed's new schema version): the table gains them first, in a
commit of its own (k2_core.lake.evolution), and every batch is written in the table's current columns, the ones a
batch lacks as nulls. A batch whose files were written before another writer changed the schema is written again
in the new schema before it commits, so every file committed after a change has the changed columns.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2_core.exceptions import CommitConflictError, FencedError, SchemaEvolutionError, WriteError
from k2_core.ingest.dedup import STORED_KEY, key_mask, keys_in_files
from k2_core.lake.catalog import CATALOG_FAILURES
from k2_core.lake.evolution import arrow_schema, definition_of, evolve
from k2_core.lake.files import append_files, delete_uncommitted, write_files
from k2_core.lake.lineage import files_to_recheck
from k2_core.lake.offsets import (
    WRITER_PROPERTY,
    OffsetIndex,
    TopicPartition,
    by_ingester_of,
    summary_properties,
)
from k2_core.lake.retry import commit_with_retries
from k2_core.logging import get_logger
from k2_core.model.tables import TableDef, conform

log = get_logger(__name__)


class TableWriter:
    def __init__(
        self,
        table: Table,
        writer_id: str,
        cluster_id: str,
        retries: int = 8,
        backoff_seconds: float = 0.02,
        topic_ids: Mapping[str, str] | None = None,
        trusts_peers: bool = True,
        pieces: int = 1,
        table_def: TableDef | None = None,
    ) -> None:
        """`pieces`: files written at once per day of a batch (`k2 import`'s large chunks use every core).
        `table_def`: K2's definition of the table (default: found by the table's name), which says what columns
        it may gain."""
        self.table = table
        self.table_def = table_def or definition_of(table)
        self.trusts_peers = trusts_peers
        self.pieces = pieces
        self.writer_id = writer_id
        self.cluster_id = cluster_id
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.index = OffsetIndex(cluster_id, topic_ids)

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """Re-read the table and return the newest committed offset of every partition it covers."""
        try:
            self.table.refresh()
        except CATALOG_FAILURES as exc:
            raise WriteError(f"cannot refresh {self.table.name()}: {exc}") from exc
        return dict(self.index.refresh(self.table))

    def _check_owner(self, positions: Mapping[TopicPartition, int]) -> None:
        for tp, start in positions.items():
            stored = self.index.offsets.get(tp)
            if stored is not None and stored > start:
                raise FencedError(
                    f"{tp[0]}[{tp[1]}] was committed up to {stored} by another writer; this batch started at {start}"
                )

    def append(
        self,
        data: pa.Table,
        offsets: Mapping[TopicPartition, int],
        positions: Mapping[TopicPartition, int],
        fills: pa.Table | None = None,
        checked_at: int | None = None,
        planned_at: int | None = None,
        recheck: bool = False,
        properties: Mapping[str, str] | None = None,
    ) -> int | None:
        """Append `data` with `offsets` (next offset per partition) in its summary. `positions` are where this
        batch started per partition. `fills` are the rows of `data` that fill recorded gaps, found not stored as of
        snapshot `checked_at`: another writer (the gap backfill) may store them before this commit, so each attempt
        re-checks them against the files committed since, and drops what it finds. With `recheck`, every row is
        re-checked against the files other kinds of writers added after `planned_at`, the snapshot the rows were
        planned against (None: an empty table). `properties` go into the snapshot summary too. Returns the new
        snapshot id."""
        ids = {topic: self.index.topic_ids[topic] for topic, _ in offsets if topic in self.index.topic_ids}
        props = {**(properties or {}), **summary_properties(offsets, self.cluster_id, self.writer_id, ids)}
        try:
            self._check_owner(positions)
            data = self.fit(data)
            files = write_files(self.table, data, self.pieces)
        except OSError as exc:
            raise WriteError(f"writing data files for {self.table.name()} failed: {exc}") from exc
        written_in = self.table.metadata.current_schema_id

        def attempt(table: Table) -> int | None:
            nonlocal data, files, fills, checked_at, planned_at, written_in
            self.index.refresh(table)  # walks only the snapshots committed since it last looked
            self._check_owner(positions)
            if table.metadata.current_schema_id != written_in:  # another writer changed the schema meanwhile
                data = conform(data, arrow_schema(table))
                delete_uncommitted(table, files)
                files = write_files(table, data, self.pieces)
                written_in = table.metadata.current_schema_id
            if recheck and table.metadata.current_snapshot_id != planned_at:
                foreign = files_to_recheck(table, planned_at, appends_only=True, where=self.foreign)
                stored = keys_in_files(table, foreign, data, STORED_KEY)
                planned_at = table.metadata.current_snapshot_id
                if stored.any():
                    log.info("rows stored meanwhile by another writer", extra={"rows": int(stored.sum())})
                    data = data.filter(pa.array(~stored))
                    delete_uncommitted(table, files)
                    files = write_files(table, data, self.pieces)  # none at all still commits the offsets
            if fills is not None and fills.num_rows:
                added = files_to_recheck(table, checked_at)
                stored = keys_in_files(table, added, fills, STORED_KEY)
                checked_at = table.metadata.current_snapshot_id
                if stored.any():
                    log.info("late numbers stored meanwhile by another writer", extra={"rows": int(stored.sum())})
                    data = _without(data, fills.filter(pa.array(stored)))
                    fills = fills.filter(pa.array(~stored))
                    delete_uncommitted(table, files)
                    files = write_files(table, data, self.pieces)
            return append_files(table, files, props)

        try:
            snapshot_id = commit_with_retries(
                self.table,
                attempt,
                retries=self.retries,
                backoff_seconds=self.backoff_seconds,
                what="append",
                full_jitter=True,
            )
        except (FencedError, CommitConflictError):
            delete_uncommitted(self.table, files)  # certainly not committed
            raise
        # After any other failure the commit may have landed: the files are left for orphan cleanup.
        if snapshot_id is not None:
            self.index.advance(snapshot_id, offsets)
        return snapshot_id

    def fit(self, data: pa.Table) -> pa.Table:
        """`data` in the table's current columns: the table first gains the extra columns `data` carries and it
        lacks (k2_core.lake.evolution); a column `data` lacks is null."""
        have = {f.name for f in self.table.schema().fields}
        new = [name for name in data.column_names if name not in have]
        if new:
            if self.table_def is None:
                raise SchemaEvolutionError(f"{self.table.name()} has no column {', '.join(new)}")
            evolve(
                self.table,
                self.table_def,
                new,
                writer=self.writer_id,
                retries=self.retries,
                backoff_seconds=self.backoff_seconds,
            )
        return conform(data, arrow_schema(self.table))

    def foreign(self, snapshot: Snapshot) -> bool:
        """Whether a snapshot may hold rows of this writer's streams: not this writer's own, nor (when trusted) a peer
        ingester's of the same Kafka cluster."""
        props = snapshot.summary.additional_properties if snapshot.summary else {}
        if props.get(WRITER_PROPERTY) == self.writer_id:
            return False
        return not (self.trusts_peers and by_ingester_of(snapshot, self.cluster_id))


def _without(data: pa.Table, rows: pa.Table) -> pa.Table:
    """`data` less the rows whose `STORED_KEY` values are those of `rows`."""
    return data.filter(pa.array(~key_mask(data, rows)))
