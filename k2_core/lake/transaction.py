"""A pyiceberg transaction that works out its metadata once per change instead of once per read.

pyiceberg 0.12's `Transaction.table_metadata` replays the staged updates over the table's metadata and deep-copies
the result on every read, and one append reads it 19 times: 19 copies of every snapshot, schema and log entry the
table holds, so an append's CPU grew with the table's history (28 ms at 20 snapshots, 60-90 ms at 60-100, most of
an ingester's commit, under the GIL). The result depends only on the table's metadata object and the tuple of
staged updates, both replaced (never mutated) on every change, so it is kept until either is another object
(apache/iceberg-python#3302 and #3784 propose the same cache upstream).
"""

from __future__ import annotations

from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import TableUpdate


class CachedTransaction(Transaction):
    """`Transaction` whose `table_metadata` is computed once per (table metadata, staged updates)."""

    _cached: tuple[TableMetadata, tuple[TableUpdate, ...], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates = self._table.metadata, self._updates
        cached = self._cached
        if cached is not None and cached[0] is base and cached[1] is updates:
            return cached[2]
        metadata = super().table_metadata
        self._cached = (base, updates, metadata)
        return metadata


def transaction(table: Table) -> Transaction:
    """`table.transaction()`, with the metadata cache: use for every commit on a hot path."""
    return CachedTransaction(table)
