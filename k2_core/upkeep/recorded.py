"""Recorded files as a gap backfill's recovery source: any file `k2 import` reads (k2_core.ingest.formats), re-read
for the sequence numbers a feed never delivered.

A file is read once per backfill pass, whole (the rows of one stream fill a gap only inside their own day and
session, which the backfill decides), and kept as one Arrow table that each `fetch` filters by stream and range.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from k2_core.ingest.formats import ReadOptions, file_format
from k2_core.ingest.formats.base import empty
from k2_core.ingest.formats.sources import expand
from k2_core.logging import get_logger
from k2_core.model.topics import Kind
from k2_core.settings import RecordedFile

log = get_logger(__name__)


class RecordedFileSource:
    """One configured recorded file (or folder or glob of them) of one exchange, re-read for requested ranges."""

    def __init__(self, recorded: RecordedFile) -> None:
        self.recorded = recorded
        self.spec = file_format(recorded.format)
        self._rows: pa.Table | None = None

    @property
    def name(self) -> str:
        return f"file:{self.recorded.path.name}"

    def serves(self, exchange: str, symbol: str) -> bool:
        """Whether this file may hold the stream: its exchange, and its symbol when it names one."""
        return self.recorded.exchange == exchange and self.recorded.symbol in (None, symbol)

    def fetch(self, kind: Kind, symbol: str, first: int, last: int) -> list[dict[str, Any]]:
        if kind != self.spec.kind:
            return []
        rows = self._read()
        sequence = rows.column("exchange_sequence_number")
        wanted = pc.and_(
            pc.equal(rows.column("symbol"), symbol),
            pc.and_(pc.greater_equal(sequence, first), pc.less_equal(sequence, last)),
        )
        found = rows.filter(wanted).to_pylist()
        log.info("recorded file read for recovery", extra={"source": self.name, "first": first, "found": len(found)})
        return found

    def _read(self) -> pa.Table:
        if self._rows is None:
            options = ReadOptions(
                exchange=self.recorded.exchange,
                symbol=self.recorded.symbol,
                received=datetime.now(UTC),
                mapping=self.recorded.mapping,
                time_unit=self.recorded.time_unit,
                time_zone=self.recorded.time_zone,
            )
            tables = [
                chunk.table
                for path in expand(str(self.recorded.path))
                for chunk in self.spec.read(path, options)
                if chunk.table.num_rows
            ]
            self._rows = pa.concat_tables(tables) if tables else empty(self.spec.kind)
        return self._rows
