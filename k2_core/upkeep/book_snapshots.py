"""K2's own book snapshots: the book of every active instrument at each minute mark, rebuilt from what is stored
(k2_core.read.book) and stored beside the feed's with `source` k2, so a later rebuild starts at most a minute back.

Only marks the stored stream has passed are written (an update of the instrument is stored with a later time): the
ingester stores a partition's records in order, so every update up to such a mark is stored, and a mark the
ingester has not reached yet waits for a later run rather than being written from part of its updates.

Idempotent: at a mark that already has a snapshot (K2's from an earlier run, or the feed's) the rebuild applies no
update and nothing is written; where the book is unknown (a gap, no snapshot yet) nothing is written either, so K2
never stores a book it could not rebuild exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pyiceberg.expressions import And, EqualTo, GreaterThan, LessThanOrEqual
from pyiceberg.table import Table

from k2_core.ingest.book_importer import BookImporter
from k2_core.ingest.formats import BookFileFormat, ReadOptions
from k2_core.ingest.importer import FileReport, Progress
from k2_core.lake.retry import commit_with_retries
from k2_core.logging import get_logger
from k2_core.model.books import ASK, BID
from k2_core.model.tables import BOOK_SNAPSHOTS, SOURCE_K2
from k2_core.read.book import MAX_DEPTH, BookWalk

log = get_logger(__name__)

MARK = timedelta(minutes=1)


@dataclass(frozen=True)
class SnapshotReport:
    instruments: int
    marks: int
    written: int
    unknown: int  # marks where the book was unknown (nothing written)


def minute_marks(start: datetime, end: datetime) -> list[datetime]:
    """Whole minutes m with start < m <= end."""
    first = start.replace(second=0, microsecond=0) + MARK
    marks = []
    while first <= end:
        marks.append(first)
        first += MARK
    return marks


def active_instruments(updates: Table, start: datetime, end: datetime) -> dict[tuple[str, str], datetime]:
    """(exchange, symbol) -> the time of its latest stored update, of every instrument with updates in (start, end]
    (the latest may be after `end`: it says how far the stored stream has got)."""
    rows = updates.scan(
        row_filter=GreaterThan(term="exchange_timestamp", value=start),
        selected_fields=("exchange", "symbol", "exchange_timestamp"),
    ).to_arrow()
    active = {(r["exchange"], r["symbol"]) for r in rows.to_pylist() if r["exchange_timestamp"] <= end}
    latest: dict[tuple[str, str], datetime] = {}
    for r in rows.to_pylist():
        key = (r["exchange"], r["symbol"])
        if key in active:
            latest[key] = max(latest.get(key, r["exchange_timestamp"]), r["exchange_timestamp"])
    return dict(sorted(latest.items()))


def written_marks(snapshots: Table, start: datetime, end: datetime) -> set[tuple[str, str, datetime]]:
    """(exchange, symbol, mark) of K2's snapshots already stored in (start, end]: an earlier run's, not rebuilt
    again (a run every minute looking back ten would otherwise rebuild each mark ten times)."""
    rows = snapshots.scan(
        row_filter=And(
            EqualTo(term="source", value=SOURCE_K2),
            And(
                GreaterThan(term="exchange_timestamp", value=start),
                LessThanOrEqual(term="exchange_timestamp", value=end),
            ),
        ),
        selected_fields=("exchange", "symbol", "exchange_timestamp"),
    ).to_arrow()
    return {(r["exchange"], r["symbol"], r["exchange_timestamp"]) for r in rows.to_pylist()}


def snapshot_rows(
    snapshots: Table, updates: Table, validity: Table, exchange: str, symbol: str, marks: list[datetime], now: datetime
) -> tuple[list[dict[str, Any]], int]:
    """The K2 snapshots to write at `marks` (ascending), and how many marks found the book unknown. The book is
    followed through the marks (`BookWalk`: one read, not a rebuild per mark)."""
    rows: list[dict[str, Any]] = []
    unknown = 0
    if not marks:
        return rows, unknown
    walk = BookWalk(snapshots, updates, validity, exchange, symbol, marks[0], marks[-1])
    for mark in marks:
        book = walk.at(mark)
        if book is None:
            unknown += 1
            continue
        newest = walk.snapshot_for(mark)
        if newest is not None and newest["exchange_sequence_number"] == book.sequence:
            continue  # no update since the newest snapshot: it is the book at this mark already
        rows.append(
            {
                "symbol": symbol,
                "exchange": exchange,
                "exchange_timestamp": mark,
                "exchange_sequence_number": book.sequence,
                "bids": [{"price": p, "size": s} for p, s in book.levels(BID, MAX_DEPTH)],
                "asks": [{"price": p, "size": s} for p, s in book.levels(ASK, MAX_DEPTH)],
                "source": SOURCE_K2,
                "ingestion_timestamp": now,
            }
        )
    return rows, unknown


def write_k2_snapshots(
    snapshots: Table,
    updates: Table,
    validity: Table,
    start: datetime,
    end: datetime,
    now: datetime,
    *,
    retries: int = 5,
    backoff_seconds: float = 0.1,
) -> SnapshotReport:
    """K2 snapshots at every minute mark in (start, end] of every instrument with updates then; one append."""
    for table in (snapshots, updates, validity):
        table.refresh()
    marks = minute_marks(start, end)
    instruments = active_instruments(updates, start, end) if marks else {}
    rows: list[dict[str, Any]] = []
    unknown = 0
    done = written_marks(snapshots, start, end) if instruments else set()
    for (exchange, symbol), latest in instruments.items():
        passed = [m for m in marks if m < latest and (exchange, symbol, m) not in done]
        found, missed = snapshot_rows(snapshots, updates, validity, exchange, symbol, passed, now)
        rows += found
        unknown += missed
    if rows:
        data = BOOK_SNAPSHOTS.to_arrow(rows)
        commit_with_retries(
            snapshots,
            lambda table: table.append(data),
            retries=retries,
            backoff_seconds=backoff_seconds,
            what="k2 book snapshots",
        )
    return SnapshotReport(len(instruments), len(marks), len(rows), unknown)


def import_book_file(
    importer: BookImporter,
    path: Path,
    fmt: BookFileFormat,
    options: ReadOptions,
    progress: Callable[[Progress], None] | None = None,
) -> FileReport:
    """`BookImporter.import_file`, then K2's snapshots at every minute mark the file's rows span: the Dagster asset
    looks back minutes, never at history, and without them a rebuild inside imported history would replay every
    update since the file's own snapshot. Written after the file's rows: an import stopped in between leaves those
    minutes without them (rebuilds there start from the feed's snapshots, as exact, only slower)."""
    report = importer.import_file(path, fmt, options, progress)
    if report.span is None:
        return report
    m = importer.settings.maintenance
    tables = importer.books
    written = write_k2_snapshots(
        tables.snapshots, tables.updates, tables.validity, *report.span, datetime.now(UTC),
        retries=m.commit_retries, backoff_seconds=m.retry_backoff_seconds,
    )  # fmt: skip
    log.info(
        "k2 book snapshots of an import",
        extra={"path": str(path), "instruments": written.instruments, "marks": written.marks,
               "written": written.written, "unknown": written.unknown},
    )  # fmt: skip
    return report
