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

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
from pyiceberg.expressions import And, BooleanExpression, EqualTo, GreaterThan, GreaterThanOrEqual, LessThanOrEqual
from pyiceberg.table import Table

from k2_core.exceptions import QueryError
from k2_core.model.books import ASK, BID, Book, Level, spread_mid_imbalance
from k2_core.model.buckets import bucket_of
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


def _lookback(at: datetime) -> datetime:
    """How far back a snapshot for `at` is looked for (never before year 1)."""
    try:
        return at - SNAPSHOT_LOOKBACK
    except OverflowError:
        return datetime.min.replace(tzinfo=at.tzinfo)


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
            GreaterThanOrEqual(term="exchange_timestamp", value=_lookback(at)),
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
# Time-weighted means are kept to the tables' scale, decimal(18, 8).
_SCALE = Decimal("0.00000001")


@dataclass(frozen=True)
class TopOfBook:
    """One point of a book's series: None prices where the book is unknown (`valid` False) or a side is empty.
    `bid_depth`/`ask_depth`: the size resting on the best `depth` levels of each side."""

    at: datetime
    valid: bool
    best_bid: Decimal | None = None
    bid_size: Decimal | None = None
    best_ask: Decimal | None = None
    ask_size: Decimal | None = None
    spread: Decimal | None = None
    mid: Decimal | None = None
    imbalance: Decimal | None = None
    bid_depth: Decimal | None = None
    ask_depth: Decimal | None = None


@dataclass(frozen=True)
class BookBar:
    """An instrument's book over one bar: the mid's open, high, low and close (as the book moved, update by update),
    and time-weighted means over the time the book was known (`known_seconds`; all None when it never was). The
    open is the mid in force at the bar's start, or the first one known after it."""

    start: datetime
    known_seconds: float
    updates: int
    mid_open: Decimal | None = None
    mid_high: Decimal | None = None
    mid_low: Decimal | None = None
    mid_close: Decimal | None = None
    spread_mean: Decimal | None = None
    spread_min: Decimal | None = None
    spread_max: Decimal | None = None
    imbalance_mean: Decimal | None = None
    bid_depth_mean: Decimal | None = None
    ask_depth_mean: Decimal | None = None


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


def _point(at: datetime, book: Book | None, depth: int) -> TopOfBook:
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
        sum((size for _, size in book.levels(BID, depth)), Decimal(0)),
        sum((size for _, size in book.levels(ASK, depth)), Decimal(0)),
    )


class BookWalk:
    """An instrument's book carried forward through [first, last] by the rule of `book_at`: what is stored is read
    once, the book rebuilt once and then moved update by update (not rebuilt from a snapshot at every point). Where
    the book is unknown (`at` returns None) it starts again from the next snapshot once it is known."""

    def __init__(
        self, snapshots: Table, updates: Table, validity: Table, exchange: str, symbol: str, first: datetime,
        last: datetime,
    ) -> None:  # fmt: skip
        states = validity.scan(
            row_filter=And(_instrument(exchange, symbol), LessThanOrEqual(term="at", value=last))
        ).to_arrow()
        rows = states.to_pylist()
        self.changes = sorted((r["at"], r["sequence"], r["state"] != BOOK_INVALID, r["state"]) for r in rows)
        # Every snapshot a point may start from, read once (not a scan per point: a series of an unknown book would
        # otherwise scan the table at every mark), newest at or before a mark by `newest_snapshot`'s rule.
        kept = snapshots.scan(
            row_filter=And(
                _instrument(exchange, symbol),
                And(
                    GreaterThanOrEqual(term="exchange_timestamp", value=_lookback(first)),
                    LessThanOrEqual(term="exchange_timestamp", value=last),
                ),
            )
        ).to_arrow()
        self.taken = sorted(kept.to_pylist(), key=lambda r: (r["exchange_timestamp"], r["exchange_sequence_number"]))
        self.taken_at = [r["exchange_timestamp"] for r in self.taken]
        start = self.snapshot_for(first)
        since = start["exchange_timestamp"] if start is not None else _lookback(first)
        loaded = updates.scan(
            row_filter=And(
                _instrument(exchange, symbol),
                And(
                    GreaterThanOrEqual(term="exchange_timestamp", value=since),
                    LessThanOrEqual(term="exchange_timestamp", value=last),
                ),
            )
        ).to_arrow()
        self.updates = loaded.sort_by([("exchange_sequence_number", "ascending")]).to_pylist()
        self.book: Book | None = None
        self._i = self._c = 0
        self._state: str | None = None

    def snapshot_for(self, mark: datetime) -> dict[str, Any] | None:
        """The snapshot a rebuild at `mark` starts from (`newest_snapshot`'s rule)."""
        found = bisect_right(self.taken_at, mark) - 1
        return self.taken[found] if found >= 0 and self.taken_at[found] >= _lookback(mark) else None

    def times(self, first: datetime, last: datetime) -> list[datetime]:
        """Every time in (first, last] at which the book may change (an update, a snapshot, a validity row)."""
        found = {u["exchange_timestamp"] for u in self.updates}
        found.update(self.taken_at)
        found.update(c[0] for c in self.changes)
        return sorted(t for t in found if first < t <= last)

    def at(self, mark: datetime) -> Book | None:
        """The book at `mark` (marks ascending from call to call), None where it is unknown."""
        while self._c < len(self.changes) and self.changes[self._c][0] <= mark:
            self._state = self.changes[self._c][3]
            if self._state == BOOK_INVALID:
                self.book = None  # even if healed again before this mark: the book carried so far misses updates
            self._c += 1
        if self._state == BOOK_INVALID:
            self.book = None
            return None
        if self.book is None:
            snapshot = self.snapshot_for(mark)
            if snapshot is None:
                return None
            seq = snapshot["exchange_sequence_number"]
            book = self.book = Book.from_levels(seq, snapshot["bids"], snapshot["asks"])
            ups = self.updates
            self._i = next((k for k, u in enumerate(ups) if u["exchange_sequence_number"] > book.sequence), len(ups))
        book, ups = self.book, self.updates
        while self._i < len(ups) and ups[self._i]["exchange_timestamp"] <= mark:
            u = ups[self._i]
            if u["exchange_sequence_number"] != book.sequence + 1:
                break
            book.apply(u["side"], u["price"], u["size"], u["exchange_sequence_number"])
            self._i += 1
        if self._i < len(ups) and ups[self._i]["exchange_timestamp"] <= mark:  # a number skipped before this mark
            self.book = None
        return self.book


def top_of_book_series(
    snapshots: Table, updates: Table, validity: Table, exchange: str, symbol: str, marks: list[datetime],
    depth: int = DEFAULT_DEPTH,
) -> list[TopOfBook]:  # fmt: skip
    """Spread, mid, imbalance and depth of the book at each of `marks` (ascending), by the rule of `book_at`."""
    if not marks:
        return []
    walk = BookWalk(snapshots, updates, validity, exchange, symbol, marks[0], marks[-1])
    return [_point(mark, walk.at(mark), depth) for mark in marks]


def bar_starts(start: datetime, end: datetime, width: timedelta) -> list[datetime]:
    """The UTC-aligned bars of `width` that cover [start, end): from the one holding `start` (a QueryError past
    `MAX_SERIES_POINTS`)."""
    if end <= start:
        raise QueryError(f"end {end.isoformat()} is not after start {start.isoformat()}")
    try:
        first = bucket_of(start, width)
        count = -(-(end - first) // width)
        if count > MAX_SERIES_POINTS:
            raise QueryError(f"{count:,} bars from start to end; at most {MAX_SERIES_POINTS:,}")
        starts = [first + i * width for i in range(count)]
        starts[-1] + width  # the last bar's end must be a time too
    except OverflowError:
        raise QueryError(
            f"{width} bars from {start.isoformat()} to {end.isoformat()} reach past the years 1-9999"
        ) from None
    return starts


def book_bars(
    snapshots: Table, updates: Table, validity: Table, exchange: str, symbol: str, starts: list[datetime],
    width: timedelta, end: datetime, depth: int = DEFAULT_DEPTH,
) -> list[BookBar]:  # fmt: skip
    """Bars of `width` at `starts` (`bar_starts`), each measured up to its end or `end`, whichever is first: the book
    is followed through every change (`BookWalk`), and each state weighs as long as it held."""
    if not starts:
        return []
    last = min(starts[-1] + width, end)
    walk = BookWalk(snapshots, updates, validity, exchange, symbol, starts[0], last)
    counted = sorted(u["exchange_timestamp"] for u in walk.updates)
    marks = sorted({*starts, *walk.times(starts[0], last)} - {last})
    bars: list[BookBar] = []
    m = 0
    for start in starts:
        stop = min(start + width, last)
        held: list[tuple[TopOfBook, int]] = []  # each state in the bar and its microseconds
        while m < len(marks) and marks[m] < stop:
            following = marks[m + 1] if m + 1 < len(marks) and marks[m + 1] < stop else stop
            point = _point(marks[m], walk.at(marks[m]), depth)
            if point.valid:
                held.append((point, (following - marks[m]) // timedelta(microseconds=1)))
            m += 1
        updates_in = bisect_left(counted, stop) - bisect_left(counted, start)
        bars.append(_bar(start, held, updates_in))
    return bars


def _bar(start: datetime, held: list[tuple[TopOfBook, int]], updates: int) -> BookBar:
    known = sum(us for _, us in held)
    if not known:
        return BookBar(start, 0.0, updates)

    def mean(name: str) -> Decimal | None:
        weighted = [(getattr(p, name), us) for p, us in held if getattr(p, name) is not None]
        total = sum(us for _, us in weighted)
        if not total:
            return None
        return (sum(v * us for v, us in weighted) / total).quantize(_SCALE)

    mids = [p.mid for p, _ in held if p.mid is not None]
    spreads = [p.spread for p, _ in held if p.spread is not None]
    return BookBar(
        start,
        known / 1e6,
        updates,
        mids[0] if mids else None,
        max(mids, default=None),
        min(mids, default=None),
        mids[-1] if mids else None,
        mean("spread"),
        min(spreads, default=None),
        max(spreads, default=None),
        mean("imbalance"),
        mean("bid_depth"),
        mean("ask_depth"),
    )
