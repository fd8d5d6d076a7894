"""What a reader of historical level-2 book files hands on: K2 `BookSnapshot` and `BookUpdate` records
(k2_core.model.books) in file order, each with the line (or record number) it came from, cut into chunks by the
file's data rows; and the per-symbol numbering that stands in for a sequence number the files do not have.

A book file is not a table of rows that each become one record, as trades and quotes are: several rows make one
snapshot (Tardis's `is_snapshot` runs), one record makes several updates (a Databento MBP-10 record changes some of
its ten levels) or a snapshot. So a book reader hands on records, not Arrow columns, and they are checked and
decided one by one, as the live book ingester decides what it consumes (k2_core.ingest.book_sequence).

Chunks are cut at fixed counts of the file's data rows, as trade files are (k2_core.ingest.formats.base): `end` says
how many of them precede the next chunk, so a resumed import skips the chunks it has committed. A record belongs to
the chunk whose rows complete it (a snapshot run cut by a chunk's end goes with the next chunk).

Sequence numbers (`BookNumbers`): K2's updates are numbered per symbol without holes, and a snapshot carries the
number of the last update it includes. Files that hold no such number per symbol (Tardis has none; Databento's
`sequence` numbers a venue's whole channel) are numbered here, per symbol, in file order, from 1 for each file: a
file is a session of its own (its numbers restart, later in time; k2_core.ingest.book_sequence), which opens with a
snapshot. A row that cannot be read, or a record the rules refuse, still takes its number: the hole is a gap, and
the book is unknown from there until the next snapshot, rather than rebuilt without the row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from k2_core.ingest.formats.base import BadRow, ReadOptions
from k2_core.ingest.formats.fields import EPOCH
from k2_core.model.topics import BookRecord


@dataclass(frozen=True)
class BookRow:
    """One record read, and the file line (or record number) it starts on, for a refusal."""

    record_type: BookRecord
    record: dict[str, Any]
    line: int


@dataclass
class BookChunk:
    """Records in file order, the rows of the same stretch of the file that could not be read, and the file's data
    rows read through this chunk (good and bad)."""

    rows: list[BookRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    end: int = 0


BookReader = Callable[[Path, ReadOptions], Iterator[BookChunk]]


@dataclass(frozen=True)
class BookFileFormat:
    """A named book format: `k2 import --format NAME` writes it into `book_snapshots` and `book_updates`."""

    name: str
    read: BookReader
    description: str  # one line: the source and its columns, for `--help` and the docs


def micros_time(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


class BookNumbers:
    """The numbers of one file's updates, per symbol: 1, 2, 3, ... in file order (the module's rule)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def last(self, symbol: str) -> int:
        """The last number given (or skipped) for `symbol`; 0 before its first: a snapshot's number."""
        return self._last.get(symbol, 0)

    def next(self, symbol: str) -> int:
        number = self._last.get(symbol, 0) + 1
        self._last[symbol] = number
        return number

    def symbols(self) -> list[str]:
        return list(self._last)


class BookChunker:
    """Collects one file's records and bad rows, and cuts them into chunks of `size` data rows. A chunk is cut when
    the row after its last is begun (or the file ends), so that records the end of the file completes go with the
    last rows, and no two chunks end at the same row."""

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._chunk = BookChunk()
        self._rows = 0

    def begin_row(self) -> BookChunk | None:
        """Count one more data row (good or bad); the chunk before it, once that holds `size` rows."""
        cut = self._cut() if self._rows and self._rows % self._size == 0 else None
        self._rows += 1
        return cut

    def add(self, row: BookRow) -> None:
        self._chunk.rows.append(row)

    def refuse(self, bad: BadRow) -> None:
        self._chunk.bad.append(bad)

    def finish(self) -> BookChunk | None:
        """The last chunk, with the records the end of the file completed; None for a file without rows."""
        return self._cut() if self._rows or self._chunk.rows or self._chunk.bad else None

    def _cut(self) -> BookChunk:
        chunk, self._chunk = self._chunk, BookChunk()
        chunk.end = self._rows
        return chunk
