"""`k2 import` of level-2 book files (Tardis incremental_book_L2 and book_snapshot_25, Databento mbp-10) into
`book_snapshots` and `book_updates`, by the live book ingester's rules and through its code, no Kafka on the way.

A file is read in chunks of records (k2_core.ingest.formats.book_files). Each chunk goes through what a book
ingester's micro-batch goes through: the record rules (`check_book_record`), the per-symbol decisions of
k2_core.ingest.book_sequence against what the tables hold (re-delivered numbers dropped, gaps found, validity
changed, gaps healed by snapshots), then the crash-safe store of k2_core.ingest.book_tables. A row that breaks the
rules is reported with its line and never stored; its number is missing, so its book is unknown until the next
snapshot. A refused snapshot (crossed, say) leaves no number out, so its symbol's later numbers in the file are moved
up by one: the hole is a gap all the same, rather than a book carried on from before a reset it missed.

Files go in date order per instrument: each file is a session numbered from its own start
(k2_core.ingest.formats.book_files), so a file timed before what is stored for an instrument would be taken for a
re-delivery and dropped. The first record of each instrument in a file is therefore looked up: timed at or before
the newest stored row of its book and not stored itself, the import stops with a `BookOrderError` saying so.

Progress rides in the updates table's snapshots, as the trade importer's does in the trades table's
(k2_core.ingest.importer: the same file id, the same rows-read and complete marks): a crash mid-file resumes after
the last committed chunk, and a file already complete is skipped without being read. The records of the chunks
before are read again (a snapshot run or an instrument's last levels may start there) but not decided.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from k2_core.exceptions import BookOrderError, ValidationError
from k2_core.ingest.book_sequence import BookStreams
from k2_core.ingest.book_tables import BookTables
from k2_core.ingest.formats import BadRow, BookFileFormat, ReadOptions
from k2_core.ingest.formats.book_files import BookChunk
from k2_core.ingest.gaps import event_gap_id
from k2_core.ingest.importer import (
    IMPORT_CLUSTER,
    IMPORT_FILE_PROPERTY,
    ROWS,
    FileReport,
    Progress,
    ReadAhead,
    chunk_progress,
    file_id,
    with_last,
)
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.logging import get_logger
from k2_core.model.books import check_book_record
from k2_core.model.records import SYMBOL_RE
from k2_core.settings import Settings

log = get_logger(__name__)

# A book file's chunk is held as Python records (a dict each, with its decimals and times) while it is decided and
# stored, and the next one is read meanwhile: a smaller chunk than a trade file's Arrow chunk keeps that to a few
# hundred megabytes.
BOOK_CHUNK_ROWS = 1 << 17


class BookImporter:
    """Imports book files into the catalog's book tables; one per process (its writer id fences it from others)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writer_id = f"import-{uuid.uuid4().hex[:12]}"
        tables = ensure_tables(open_catalog(settings), settings.catalog.namespace)
        # Other writers' appends are never trusted to hold none of this file's rows: the tracker is reloaded for
        # every file, and the updates table's progress fences two imports of one file.
        self.books = BookTables(tables, self.writer_id, IMPORT_CLUSTER, settings.ingest, trusts_peers=False)
        self.streams = BookStreams(event_gap_id)
        self.state = self.books.tracker(self.streams)

    def import_file(
        self,
        path: Path,
        fmt: BookFileFormat,
        options: ReadOptions,
        progress: Callable[[Progress], None] | None = None,
    ) -> FileReport:
        began = time.monotonic()
        report = FileReport(path, "books")
        with ReadAhead(fmt.read(path, options)) as chunks:
            source = file_id(path)
            position = report.resume(self.books.committed_offsets(), source)
            if position is None:
                return report
            self.state.reset()  # what the tables hold now, whoever wrote it, filled per instrument as met
            read_to = 0
            checked = Checked(options.exchange)
            in_order = position == 0  # a resumed file was found in order when it began
            first_seen: set[str] = set()
            span: list[datetime] = []
            for chunk, last in with_last(iter(chunks)):
                chunk_start, read_to = read_to, chunk.end
                records, refused = checked(chunk)
                if chunk.end <= position:
                    continue  # committed by an earlier run
                times = [record["exchange_timestamp"] for _, record in records]
                span = [min([*span, *times]), max([*span, *times])] if times else span
                report.rows_read += chunk.end - chunk_start
                report.bad.extend([*chunk.bad, *refused])
                offsets = chunk_progress(source, chunk.end, last)
                self.state.ensure({(record["exchange"], record["symbol"]) for _, record in records})
                if in_order:
                    self._in_order(records, first_seen, path)
                self._commit(records, offsets, {(source, ROWS): position}, path, report)
                position = chunk.end
                if progress is not None:
                    progress(Progress(path, chunk.end, report))
            report.span = (span[0], span[1]) if span else None
        report.bad.sort(key=lambda bad: bad.line)
        report.seconds = time.monotonic() - began
        report.log_done(fmt.name)
        return report

    def _in_order(self, records: list[tuple[str, dict[str, Any]]], first_seen: set[str], path: Path) -> None:
        """The module's order check, on each instrument's first record of the file."""
        for record_type, record in records:
            symbol = record["symbol"]
            if symbol in first_seen:
                continue
            first_seen.add(symbol)
            stream = self.streams.streams.get((record["exchange"], symbol))
            at = record["exchange_timestamp"]
            if stream is None or stream.last_at is None or at > stream.last_at or self.books.holds(record_type, record):
                continue
            raise BookOrderError(
                f"{path.name}: {symbol} opens at {at.isoformat()}, but its book is stored up to "
                f"{stream.last_at.isoformat()} from other files: import an instrument's book files in date order "
                "(each file is a session of its own; an earlier one after a later one would be taken for "
                "re-delivered rows)"
            )

    def _commit(
        self,
        records: list[tuple[str, dict[str, Any]]],
        offsets: dict[tuple[str, int], int],
        positions: dict[tuple[str, int], int],
        path: Path,
        report: FileReport,
    ) -> None:
        """One chunk, as the book ingester commits a batch: the decisions, the store. The tracker moves as it
        decides: if the store fails, the import stops, and the next file reloads it from the tables."""
        now = datetime.now(UTC)
        decisions = self.streams.decide(records, now)
        self.books.store(decisions, offsets, positions, now, {IMPORT_FILE_PROPERTY: path.name[:200]})
        report.commits += 1
        report.written += len(decisions.updates) + len(decisions.snapshots)
        report.duplicates += decisions.duplicates
        report.gaps += len(decisions.gaps)
        if decisions.gaps:
            log.warning("book gaps detected", extra={"gaps": len(decisions.gaps), "healed": len(decisions.healed)})


class Checked:
    """One file's records through the rules, in file order: the good ones, renumbered past every refused snapshot
    of their symbol (the module's rule), and the refused ones as bad rows."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.shift: dict[str, int] = {}

    def __call__(self, chunk: BookChunk) -> tuple[list[tuple[str, dict[str, Any]]], list[BadRow]]:
        records: list[tuple[str, dict[str, Any]]] = []
        refused: list[BadRow] = []
        for row in chunk.rows:
            record, symbol = row.record, row.record["symbol"]
            try:
                _check(row.record_type, record, self.exchange)
            except ValidationError as exc:
                refused.append(BadRow(row.line, f"{row.record_type[5:-1]}: {exc}"))
                if row.record_type == "book_snapshots":
                    self.shift[symbol] = self.shift.get(symbol, 0) + 1
                continue
            shift = self.shift.get(symbol, 0)
            if shift:
                record = {**record, "exchange_sequence_number": record["exchange_sequence_number"] + shift}
            records.append((row.record_type, record))
        return records, refused


def _check(record_type: str, record: dict[str, Any], exchange: str) -> None:
    """The live book ingester's rule for every record, and the symbol rule every stored row meets."""
    if not SYMBOL_RE.match(record["symbol"]):
        raise ValidationError(f"symbol {record['symbol']!r} is not a K2 symbol ({SYMBOL_RE.pattern})")
    check_book_record(record_type, record, exchange)
