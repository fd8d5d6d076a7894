"""An instrument's level-2 book at any time T, rebuilt from what is stored.

The rule: the newest snapshot at or before T (the feed's or K2's own, k2_core.upkeep.book_snapshots), then every
stored update numbered after it and timed at or before T, applied in number order (k2_core.model.books). The answer
is VALID only if nothing says otherwise:

- the book's newest `book_validity` row at or before T says INVALID (a gap in its updates, not yet healed by a
  snapshot): the book is unknown, not rebuilt;
- no snapshot at or before T: nothing to start from;
- the stored updates after the snapshot skip a number: something between is missing.

An invalid answer carries no levels and says why; a wrong book is never returned.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
from pyiceberg.expressions import And, BooleanExpression, EqualTo, GreaterThan, GreaterThanOrEqual, LessThanOrEqual
from pyiceberg.table import Table

from k2_core.exceptions import QueryError
from k2_core.model.books import ASK, BID, Book, Level, spread_mid_imbalance
from k2_core.model.tables import BOOK_INVALID

DEFAULT_DEPTH = 10
MAX_DEPTH = 1000
# How far back a snapshot is looked for: K2 writes its own every minute (k2_dagster/defs/books.py), the feed's come
# every few hundred updates; a book with no snapshot in a week is unknown rather than a scan of its whole history.
SNAPSHOT_LOOKBACK = timedelta(days=7)


@dataclass(frozen=True)
class BookAnswer:
    symbol: str
    exchange: str
    at: datetime
    depth: int
    valid: bool
    reason: str | None = None
    snapshot_at: datetime | None = None
    snapshot_source: str | None = None
    snapshot_sequence: int | None = None
    sequence: int | None = None  # the last update applied
    updates_applied: int = 0
    bids: list[Level] = field(default_factory=list)
    asks: list[Level] = field(default_factory=list)
    spread: Decimal | None = None
    mid: Decimal | None = None
    imbalance: Decimal | None = None


def validate_depth(depth: int | None) -> int:
    if depth is None:
        return DEFAULT_DEPTH
    if not 1 <= depth <= MAX_DEPTH:
        raise QueryError(f"depth must be between 1 and {MAX_DEPTH}, got {depth}")
    return depth


def _instrument(exchange: str, symbol: str) -> BooleanExpression:
    return And(EqualTo(term="exchange", value=exchange), EqualTo(term="symbol", value=symbol))


def invalid_since(validity: Table, exchange: str, symbol: str, at: datetime) -> dict[str, Any] | None:
    """The INVALID row in force at `at` (the newest row at or before it, when it says invalid), else None."""
    rows = validity.scan(row_filter=And(_instrument(exchange, symbol), LessThanOrEqual(term="at", value=at))).to_arrow()
    if rows.num_rows == 0:
        return None
    newest = max(rows.to_pylist(), key=lambda r: (r["at"], r["sequence"], r["state"] != BOOK_INVALID))
    return newest if newest["state"] == BOOK_INVALID else None


def newest_snapshot(snapshots: Table, exchange: str, symbol: str, at: datetime) -> dict[str, Any] | None:
    """The latest snapshot at or before `at` (of whichever source; at one time, the highest update number)."""
    row_filter = And(
        _instrument(exchange, symbol),
        And(
            LessThanOrEqual(term="exchange_timestamp", value=at),
            GreaterThanOrEqual(term="exchange_timestamp", value=at - SNAPSHOT_LOOKBACK),
        ),
    )
    rows = snapshots.scan(row_filter=row_filter).to_arrow()
    if rows.num_rows == 0:
        return None
    # The newest by time: a feed that restarts its numbers (a new session) numbers its new books from 0 again.
    return max(rows.to_pylist(), key=lambda r: (r["exchange_timestamp"], r["exchange_sequence_number"]))


def updates_after(updates: Table, exchange: str, symbol: str, snapshot: dict[str, Any], at: datetime) -> pa.Table:
    """Stored updates numbered after the snapshot and timed from it to `at`, in number order."""
    row_filter = And(
        _instrument(exchange, symbol),
        And(
            GreaterThan(term="exchange_sequence_number", value=snapshot["exchange_sequence_number"]),
            And(
                GreaterThanOrEqual(term="exchange_timestamp", value=snapshot["exchange_timestamp"]),
                LessThanOrEqual(term="exchange_timestamp", value=at),
            ),
        ),
    )
    rows = updates.scan(row_filter=row_filter).to_arrow()
    return rows.sort_by([("exchange_sequence_number", "ascending")])


def rebuild(snapshot: dict[str, Any], updates: pa.Table) -> tuple[Book, str | None]:
    """The snapshot's book with `updates` applied; the reason it cannot be trusted if a number is skipped."""
    book = Book.from_levels(snapshot["exchange_sequence_number"], snapshot["bids"], snapshot["asks"])
    for u in updates.to_pylist():
        seq = u["exchange_sequence_number"]
        if seq != book.sequence + 1:
            return book, f"updates {book.sequence + 1} to {seq - 1} are not stored"
        book.apply(u["side"], u["price"], u["size"], seq)
    return book, None


def book_at(
    snapshots: Table, updates: Table, validity: Table, exchange: str, symbol: str, at: datetime, depth: int
) -> BookAnswer:
    """The book of (exchange, symbol) at `at`, `depth` levels a side (see the module's rule)."""
    invalid = invalid_since(validity, exchange, symbol, at)
    if invalid is not None:
        reason = (
            f"a gap in the updates after number {invalid['sequence']} makes the book unknown from "
            f"{invalid['at'].isoformat()} until the next snapshot (gap {invalid['gap_id']})"
        )
        return BookAnswer(symbol, exchange, at, depth, valid=False, reason=reason)
    snapshot = newest_snapshot(snapshots, exchange, symbol, at)
    if snapshot is None:
        reason = f"no snapshot of the book in the {SNAPSHOT_LOOKBACK.days} days up to {at.isoformat()}"
        return BookAnswer(symbol, exchange, at, depth, valid=False, reason=reason)
    applied = updates_after(updates, exchange, symbol, snapshot, at)
    book, broken = rebuild(snapshot, applied)
    common: dict[str, Any] = {
        "snapshot_at": snapshot["exchange_timestamp"],
        "snapshot_source": snapshot["source"],
        "snapshot_sequence": snapshot["exchange_sequence_number"],
    }
    if broken is not None:
        return BookAnswer(symbol, exchange, at, depth, valid=False, reason=broken, **common)
    spread, mid, imbalance = spread_mid_imbalance(book)
    return BookAnswer(
        symbol,
        exchange,
        at,
        depth,
        valid=True,
        sequence=book.sequence,
        updates_applied=applied.num_rows,
        bids=book.levels(BID, depth),
        asks=book.levels(ASK, depth),
        spread=spread,
        mid=mid,
        imbalance=imbalance,
        **common,
    )


MAX_SERIES_POINTS = 100_000


@dataclass(frozen=True)
class TopOfBook:
    """One point of a book's top-of-book series: None prices where the book is unknown (`valid` False) or a side
    is empty."""

    at: datetime
    valid: bool
    best_bid: Decimal | None = None
    bid_size: Decimal | None = None
    best_ask: Decimal | None = None
    ask_size: Decimal | None = None
    spread: Decimal | None = None
    mid: Decimal | None = None
    imbalance: Decimal | None = None


def series_marks(start: datetime, end: datetime, every: timedelta) -> list[datetime]:
    """start, start + every, ... up to end inclusive; a QueryError past `MAX_SERIES_POINTS` or for a bad step."""
    if every <= timedelta(0):
        raise QueryError(f"every must be a positive interval, got {every}")
    if end < start:
        raise QueryError(f"end {end.isoformat()} is before start {start.isoformat()}")
    count = (end - start) // every + 1
    if count > MAX_SERIES_POINTS:
        raise QueryError(f"every: {count:,} points from start to end; at most {MAX_SERIES_POINTS:,}")
    return [start + i * every for i in range(count)]


def _point(at: datetime, book: Book | None) -> TopOfBook:
    if book is None:
        return TopOfBook(at, valid=False)
    bid, ask = book.best(BID), book.best(ASK)
    spread, mid, imbalance = spread_mid_imbalance(book)
    return TopOfBook(
        at,
        True,
        bid[0] if bid else None,
        bid[1] if bid else None,
        ask[0] if ask else None,
        ask[1] if ask else None,
        spread,
        mid,
        imbalance,
    )


def top_of_book_series(
    snapshots: Table, updates: Table, validity: Table, exchange: str, symbol: str, marks: list[datetime]
) -> list[TopOfBook]:
    """Spread, mid and imbalance of the book at each of `marks` (ascending), by the rule of `book_at`, rebuilt once
    and carried forward update by update rather than from a snapshot per point. Where the book is unknown the point
    says so, and the book starts again from the next snapshot once it is known."""
    if not marks:
        return []
    states = validity.scan(
        row_filter=And(_instrument(exchange, symbol), LessThanOrEqual(term="at", value=marks[-1]))
    ).to_arrow()
    changes = sorted((r["at"], r["sequence"], r["state"] != BOOK_INVALID, r["state"]) for r in states.to_pylist())
    # Every snapshot a point may start from, read once (not a scan per point: a series of an unknown book would
    # otherwise scan the table at every mark), newest at or before a mark by `newest_snapshot`'s rule.
    kept = snapshots.scan(
        row_filter=And(
            _instrument(exchange, symbol),
            And(
                GreaterThanOrEqual(term="exchange_timestamp", value=marks[0] - SNAPSHOT_LOOKBACK),
                LessThanOrEqual(term="exchange_timestamp", value=marks[-1]),
            ),
        )
    ).to_arrow()
    taken = sorted(kept.to_pylist(), key=lambda r: (r["exchange_timestamp"], r["exchange_sequence_number"]))
    taken_at = [r["exchange_timestamp"] for r in taken]

    def newest(mark: datetime) -> dict[str, Any] | None:
        found = bisect_right(taken_at, mark) - 1
        return taken[found] if found >= 0 and taken_at[found] >= mark - SNAPSHOT_LOOKBACK else None

    first = newest(marks[0])
    since = first["exchange_timestamp"] if first is not None else marks[0] - SNAPSHOT_LOOKBACK
    loaded = updates.scan(
        row_filter=And(
            _instrument(exchange, symbol),
            And(
                GreaterThanOrEqual(term="exchange_timestamp", value=since),
                LessThanOrEqual(term="exchange_timestamp", value=marks[-1]),
            ),
        )
    ).to_arrow()
    ups = loaded.sort_by([("exchange_sequence_number", "ascending")]).to_pylist()
    out: list[TopOfBook] = []
    book: Book | None = None
    i = c = 0
    state = None
    for mark in marks:
        while c < len(changes) and changes[c][0] <= mark:
            state = changes[c][3]
            if state == BOOK_INVALID:
                book = None  # even if healed again before this mark: the book carried so far misses updates
            c += 1
        if state == BOOK_INVALID:
            book = None
            out.append(TopOfBook(mark, valid=False))
            continue
        if book is None:
            snapshot = first if first is not None and not out else newest(mark)
            if snapshot is None:
                out.append(TopOfBook(mark, valid=False))
                continue
            book = Book.from_levels(snapshot["exchange_sequence_number"], snapshot["bids"], snapshot["asks"])
            i = next((k for k, u in enumerate(ups) if u["exchange_sequence_number"] > book.sequence), len(ups))
        while i < len(ups) and ups[i]["exchange_timestamp"] <= mark:
            u = ups[i]
            if u["exchange_sequence_number"] != book.sequence + 1:
                break
            book.apply(u["side"], u["price"], u["size"], u["exchange_sequence_number"])
            i += 1
        if i < len(ups) and ups[i]["exchange_timestamp"] <= mark:  # a number skipped before this mark
            book = None
        out.append(_point(mark, book))
    return out
