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

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pyiceberg.expressions import And, EqualTo, GreaterThan, LessThanOrEqual
from pyiceberg.table import Table

from k2_core.lake.retry import commit_with_retries
from k2_core.model.tables import BOOK_SNAPSHOTS, SOURCE_K2
from k2_core.read.book import MAX_DEPTH, book_at

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
    """The K2 snapshots to write at `marks`, and how many marks found the book unknown."""
    rows: list[dict[str, Any]] = []
    unknown = 0
    for mark in marks:
        answer = book_at(snapshots, updates, validity, exchange, symbol, mark, MAX_DEPTH)
        if not answer.valid:
            unknown += 1
            continue
        if answer.updates_applied == 0:
            continue  # a snapshot at or after the last update is there already
        rows.append(
            {
                "symbol": symbol,
                "exchange": exchange,
                "exchange_timestamp": mark,
                "exchange_sequence_number": answer.sequence,
                "bids": [{"price": p, "size": s} for p, s in answer.bids],
                "asks": [{"price": p, "size": s} for p, s in answer.asks],
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
