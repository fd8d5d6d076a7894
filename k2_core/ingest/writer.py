"""Fenced micro-batch appends: rows and the Kafka offsets they cover land in one Iceberg snapshot.

A writer must still own every partition it commits. Ownership is checked against the offsets already in the
table: if another writer has committed a partition past where this batch started, this writer lost it in a
rebalance and must not commit (`FencedError`). Commits are optimistic: a concurrent commit makes ours fail
(the table property disables pyiceberg's blind retry), so we refresh, re-check ownership and commit the same
data files again: the batch's Parquet is written once however many writers race for the table.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
from pyiceberg.table import Table
from sqlalchemy.exc import SQLAlchemyError

from k2_core.exceptions import CommitConflictError, FencedError, WriteError
from k2_core.ingest.dedup import STORED_KEY, key_mask, keys_in_files
from k2_core.lake.files import append_files, delete_uncommitted, write_files
from k2_core.lake.lineage import files_added_since
from k2_core.lake.offsets import (
    CLUSTER_PROPERTY,
    OFFSETS_PROPERTY,
    TOPIC_IDS_PROPERTY,
    WRITER_PROPERTY,
    OffsetIndex,
    TopicPartition,
    encode_offsets,
    encode_topic_ids,
)
from k2_core.lake.retry import commit_with_retries
from k2_core.logging import get_logger

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
    ) -> None:
        self.table = table
        self.writer_id = writer_id
        self.cluster_id = cluster_id
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.index = OffsetIndex(cluster_id, topic_ids)

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """Re-read the table and return the newest committed offset of every partition it covers."""
        try:
            self.table.refresh()
        except (OSError, SQLAlchemyError) as exc:
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
    ) -> int | None:
        """Append `data` with `offsets` (next offset per partition) in its summary. `positions` are where this
        batch started per partition. `fills` are the rows of `data` that fill recorded gaps, found not stored as of
        snapshot `checked_at`: another writer (the gap backfill) may store them before this commit, so each attempt
        re-checks them against the files committed since, and drops what it finds. Returns the new snapshot id."""
        props = {
            OFFSETS_PROPERTY: encode_offsets(offsets),
            CLUSTER_PROPERTY: self.cluster_id,
            WRITER_PROPERTY: self.writer_id,
        }
        ids = {topic: self.index.topic_ids[topic] for topic, _ in offsets if topic in self.index.topic_ids}
        if ids:
            props[TOPIC_IDS_PROPERTY] = encode_topic_ids(ids)
        try:
            self._check_owner(positions)
            files = write_files(self.table, data)
        except OSError as exc:
            raise WriteError(f"writing data files for {self.table.name()} failed: {exc}") from exc

        def attempt(table: Table) -> int | None:
            nonlocal data, files, fills, checked_at
            self.index.refresh(table)  # walks only the snapshots committed since it last looked
            self._check_owner(positions)
            if fills is not None and fills.num_rows:
                added = files_added_since(table, checked_at)
                if added is None:  # what was checked is no longer on the chain: check every file
                    added = [task.file for task in table.scan().plan_files()]
                stored = keys_in_files(table, added, fills, STORED_KEY)
                checked_at = table.metadata.current_snapshot_id
                if stored.any():
                    log.info("late numbers stored meanwhile by another writer", extra={"rows": int(stored.sum())})
                    data = _without(data, fills.filter(pa.array(stored)))
                    fills = fills.filter(pa.array(~stored))
                    delete_uncommitted(table, files)
                    files = write_files(table, data)
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


def _without(data: pa.Table, rows: pa.Table) -> pa.Table:
    """`data` less the rows whose `STORED_KEY` values are those of `rows`."""
    return data.filter(pa.array(~key_mask(data, rows)))
