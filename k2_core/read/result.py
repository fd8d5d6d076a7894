"""What a read hands back: the rows, and how they were obtained, because a caller deciding whether to trust, cache or
page an answer needs to know which sources served it and which snapshot it reflects. The front doors turn these into
response headers (`k2_api`) or a provenance line (`k2_cli`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from k2_core.read.cache import Tier
from k2_core.read.params import TimeRange

# The sources a response names (`k2_core.read.routing` decides which serve a read).
ICEBERG, REALTIME, PRECOMPUTED = "iceberg", "realtime", "precomputed"


@dataclass(frozen=True)
class QueryResult:
    """Rows plus how they were obtained: the sources that served them, the Iceberg snapshot read (None when
    the table had none), the cursor for the next page (None on the last), and the cache tier that answered."""

    table: pa.Table
    sources: tuple[str, ...]
    snapshot_id: int | None
    next_cursor: str | None = None
    cached: Tier | None = None
    window: TimeRange | None = None
    limit: int | None = None


@dataclass(frozen=True)
class CatalogHealth:
    """Whether the catalog answers, and each table's current snapshot (None = created but never written)."""

    reachable: bool
    snapshots: dict[str, int | None]
    error: str | None = None


@dataclass
class Replay:
    """A day of one stream in exchange order, as Arrow record batches read lazily: iterate once. `sources`,
    `snapshot_id` and the batches' `schema` are known before the first batch, so a server can announce them in
    headers and an exporter can write its header even for a day without rows."""

    sources: tuple[str, ...]
    snapshot_id: int | None
    _batches: Iterator[pa.RecordBatch] = field(repr=False)
    schema: pa.Schema
    total: int | None = None  # the row count, when asked for (a progress bar's target)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self._batches

    def rows(self) -> Iterator[dict[str, Any]]:
        for batch in self._batches:
            yield from batch.to_pylist()

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()
