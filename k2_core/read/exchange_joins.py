"""As-of joins and markouts of a WHOLE EXCHANGE: every trade joined to its own instrument's quote (or trade), read in
one scan per side instead of one per symbol.

The rules are `k2_core.read.timejoins`' (the row in force at a timestamp is its highest sequence; direction,
tolerance, the one-day look-ahead; exact decimal mids and markouts). What differs is how the rows are read and
matched:

* Left: a page of the exchange's trades in `(time, symbol, sequence)` order, as `fetch_exchange` pages them (one
  scan; the cursor holds the last row's time, sequence and symbol, and pins both tables' snapshots unless the
  realtime tail served). A caller wanting everything raises `limit` (up to `Limits.max_limit`, the settings cap).
* Right, day by day: the page's trades are cut at UTC midnights (the tables' day partitions) and each day is joined
  to that day's right rows only (plus the look-ahead past its end), and to each instrument's row in force at the
  day's start: for the page's first day, found by searching day partitions newest first (`in_force_before`); for
  every later day, carried over from the rows the previous day read. So each sort stays one day small and the
  right side is read once, whatever the number of instruments.
* Matching is a numpy merge, not a SQL join: each row gets a composite int64 key `symbol code << B | time` (time in
  microseconds from the day's start, B bits), the right rows are sorted by (key, sequence), and
  `np.searchsorted(side="right") - 1` finds, for every trade at once, the last right row at or before it of the same
  instrument: the highest sequence of the latest timestamp, the row in force. Measured on bench/tsbench.py it is
  faster than DuckDB's ASOF JOIN, which sorts every right row with its full payload.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In, LessThan

from k2_core.duck import sql_text, sql_time
from k2_core.exceptions import QueryError
from k2_core.lake import scan
from k2_core.lake.scan import ScanPlan
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import Kind
from k2_core.read import paging
from k2_core.read.cursor import Cursor, fingerprint, micros
from k2_core.read.params import AsOf, TimeInput, TimeRange, validate_exchange, validate_limit, validate_time_range
from k2_core.read.result import QueryResult
from k2_core.read.routing import TIME_COLUMN, Sources, Stream
from k2_core.read.snapshots import SnapshotChoice
from k2_core.read.timejoins import (
    MAX_SPAN,
    RIGHT_ROWS_PER_LEFT_ROW,
    Direction,
    asof_schema,
    label,
    markout_columns,
    markout_schema,
    mid_sql,
    right_snapshot,
)

if TYPE_CHECKING:
    from k2_core.read.engine import QueryEngine

DAY_US = 86_400_000_000
_PRUNING_SYMBOLS = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# (time, sequence) packed in one HUGEINT, ordered as the pair is: arg_max on it picks a symbol's last row.
_ORDER_KEY = f"epoch_us({TIME_COLUMN})::HUGEINT * 9223372036854775808 + exchange_sequence_number"


def _columns(kind: Kind) -> list[str]:
    """The right columns a join carries (the rest of a right row is never output)."""
    values = ["bid_price", "bid_size", "ask_price", "ask_size"] if kind == "quotes" else ["price", "volume", "side"]
    return ["symbol", "exchange", TIME_COLUMN, "exchange_sequence_number", *values]


# --- reading the right side -----------------------------------------------------------------------------------


def in_force_before(
    sources: Sources, stream: Stream, symbols: Sequence[str], before: datetime, columns: Sequence[str] | None = None
) -> pa.Table:
    """Each of `symbols`' last committed row strictly before `before` on `stream.exchange` (one per symbol that has
    one), in `columns` (default: all `_columns(kind)`; symbol, time and sequence always). Day partitions are searched
    newest first, each older one only for the symbols still missing, so an instrument that traded the day before
    costs one day's read."""
    kind, table, table_def, exchange = stream.kind, stream.table, stream.table_def, stream.exchange
    picked_columns = list(columns if columns is not None else _columns(kind))
    schema = pa.schema([stream.schema.field(c) for c in picked_columns])
    snapshot_id = stream.choice.snapshot_id
    if snapshot_id is None or not symbols:
        return schema.empty_table()
    row_filter: BooleanExpression = And(
        EqualTo(term="exchange", value=exchange), LessThan(term=TIME_COLUMN, value=before.isoformat())
    )
    if len(symbols) <= _PRUNING_SYMBOLS:  # more would cost Iceberg more to bind than the pruning saves
        row_filter = And(row_filter, In(term="symbol", literals=tuple(symbols)))
    tasks = list(table.scan(row_filter=row_filter, snapshot_id=snapshot_id).plan_files())
    if not tasks:
        return schema.empty_table()
    whole = ScanPlan(
        table_def.name, snapshot_id, tuple(t.file.file_path for t in tasks), sum(len(t.delete_files) for t in tasks)
    )
    if whole.local_paths is None or not sources.direct_reads:
        plans = [whole]
    else:
        by_day: dict[int, list[str]] = {}
        for task in tasks:
            by_day.setdefault(int(task.file.partition[0]), []).append(task.file.file_path)
        plans = [ScanPlan(table_def.name, snapshot_id, tuple(f), 0) for _, f in sorted(by_day.items(), reverse=True)]
    found: list[pa.Table] = []
    seen: set[str] = set()
    wanted = set(symbols)
    picked = ", ".join(picked_columns)
    with scan.connect() as con:
        for plan in plans:
            missing = sorted(wanted - seen)
            if not missing:
                break
            scan.register_scan(con, "prior_src", table, table_def, plan, row_filter, direct_reads=sources.direct_reads)
            names = ", ".join(sql_text(s) for s in missing)
            rows = con.sql(
                f"SELECT arg_max_null(COLUMNS(*), {_ORDER_KEY}) FROM (SELECT {picked} FROM prior_src "
                f"WHERE exchange = {sql_text(exchange)} AND symbol IN ({names}) AND {TIME_COLUMN} < {sql_time(before)}"
                f") GROUP BY symbol"
            ).to_arrow_table()
            if rows.num_rows:
                found.append(scan.cast_to(rows, schema))
                seen.update(str(s) for s in rows.column("symbol").to_pylist())
    return pa.concat_tables(found) if found else schema.empty_table()


def _read_span(
    sources: Sources,
    stream: Stream,
    span: TimeRange,
    *,
    columns: Sequence[str],
    realtime: bool,
    max_rows: int,
    schema: pa.Schema,
) -> pa.Table:
    """The right rows of every instrument of the exchange in `span`, from Iceberg and (unless pinned) the tail."""
    route = sources.route(stream.kind, stream.exchange, span, pinned=not realtime)
    picked = ", ".join(columns)
    with scan.connect() as con:
        sources.market_view(con, stream, span, route, name="r")
        rows = con.sql(f"SELECT {picked} FROM r").to_arrow_table()
    if rows.num_rows > max_rows:
        raise QueryError(
            f"limit: the page's trades need {rows.num_rows} {stream.kind} rows of {stream.exchange}, more than "
            f"{max_rows}: lower limit or the look-ahead (tolerance, horizons)"
        )
    return scan.cast_to(rows, schema)


def _tail_before(sources: Sources, stream: Stream, before: datetime, schema: pa.Schema) -> pa.Table:
    """The tail's rows of the exchange before `before` (not committed yet, so `in_force_before` cannot see them)."""
    assert sources.realtime is not None
    rows = sources.realtime.rows(stream.kind, None, stream.exchange, datetime.min.replace(tzinfo=UTC), before)
    return scan.cast_to(rows.select(schema.names), schema) if rows.num_rows else schema.empty_table()


# --- the numpy merge ------------------------------------------------------------------------------------------


def _us(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


@dataclass
class Sorted:
    """One day's right rows sorted for matching: `order` maps sorted places to rows of `rows`; `key` the composite
    keys in sorted order, `us` the times in sorted order."""

    rows: pa.Table
    order: np.ndarray
    key: np.ndarray
    us: np.ndarray
    bits: int
    base: int
    # The day's trades in key order (by instrument; they come in time order), when set: see `_search`.
    trade_order: np.ndarray | None = None

    @classmethod
    def of(cls, rows: pa.Table, codes: np.ndarray, base: int, bits: int) -> Sorted:
        """`codes` per row (-1: an instrument no trade needs, dropped); times before `base` are clamped to it (the
        rows in force at the day's start: one per instrument, so the clamp cannot reorder them)."""
        us = _us(rows.column(TIME_COLUMN))
        seq = np.asarray(rows.column("exchange_sequence_number").to_numpy(), dtype=np.int64)
        keep = np.flatnonzero(codes >= 0)
        key = (codes[keep] << bits) | np.maximum(us[keep] - base, 0)
        step = np.argsort(key, kind="stable")
        k, s = key[step], seq[keep][step]
        ties = k[1:] == k[:-1]
        if (ties & (s[1:] < s[:-1])).any():  # rows at one time not in sequence order: sort by sequence too
            step = np.lexsort((seq[keep], key))
            k = key[step]
        order = keep[step]
        return cls(rows, order, k, us[order], bits, base)

    def _search(self, code: np.ndarray, at_us: np.ndarray, side: Literal["left", "right"]) -> np.ndarray:
        """`np.searchsorted` of the keys of (`code`, `at_us`), with the needles in key order when `trade_order`
        gives it (numpy's binary search is several times faster on sorted needles: each starts from the last)."""
        needles = (code << self.bits) | (at_us - self.base)
        if self.trade_order is None or len(self.trade_order) != len(needles):
            return np.searchsorted(self.key, needles, side=side)
        place = np.empty(len(needles), dtype=np.int64)
        place[self.trade_order] = np.searchsorted(self.key, needles[self.trade_order], side=side)
        return place

    def backward(self, code: np.ndarray, at_us: np.ndarray) -> np.ndarray:
        """The sorted place of the row in force at each `at_us` of instrument `code` (the highest sequence of the
        latest time at or before it), -1 where none."""
        place = self._search(code, at_us, "right") - 1
        found = place >= 0
        found[found] = (self.key[place[found]] >> self.bits) == code[found]
        return np.where(found, place, -1)

    def forward(self, code: np.ndarray, at_us: np.ndarray) -> np.ndarray:
        """The sorted place of the first row at or after each `at_us` of instrument `code` (of several at that time,
        the highest sequence), -1 where none."""
        place = self._search(code, at_us, "left")
        found = place < len(self.key)
        found[found] = (self.key[place[found]] >> self.bits) == code[found]
        last = np.searchsorted(self.key, self.key[place[found]], side="right") - 1
        out = np.full(len(code), -1, dtype=np.int64)
        out[found] = last
        return out

    def take(self, places: np.ndarray) -> pa.Table:
        """The rows at sorted `places`, null rows where -1."""
        if not len(self.order):
            return pa.table({f.name: pa.nulls(len(places), f.type) for f in self.rows.schema})
        rows = np.where(places >= 0, self.order[np.maximum(places, 0)], 0)
        return self.rows.take(pa.array(rows, mask=places < 0))

    def time_at(self, places: np.ndarray) -> np.ndarray:
        """The times (microseconds) at sorted `places`, 0 where -1."""
        if not len(self.us):
            return np.zeros(len(places), dtype=np.int64)
        return np.where(places >= 0, self.us[np.maximum(places, 0)], 0)

    def last_per_code(self, before_us: int) -> np.ndarray:
        """Row numbers (of `rows`) of each instrument's last row before `before_us`: what is in force at it."""
        inside = self.us < before_us
        key, order = self.key[inside], self.order[inside]
        if not len(key):
            return order
        code = key >> self.bits
        ends = np.flatnonzero(np.append(code[1:] != code[:-1], True))
        return order[ends]


def _bits(span_us: int, codes: int) -> int:
    bits = max(int(span_us).bit_length(), 1)
    if max(codes, 1).bit_length() + bits > 62:
        raise QueryError(f"too many instruments ({codes}) to join in one day's span")
    return bits


# --- the two joins --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """How far a day's join reads right rows past its last trade (`after`), whether it needs the row in force at its
    start (`prior`), and the matcher turning a day's trades and right rows into output rows."""

    kind: Kind
    after: timedelta
    prior: bool
    match: Callable[[pa.Table, np.ndarray, np.ndarray, Sorted], pa.Table]
    schema: Callable[[pa.Schema], pa.Schema]
    columns: tuple[str, ...]  # the right columns read: symbol, time and sequence, and those output


def asof_reach(kind: Kind, direction: Direction, tolerance: timedelta | None) -> Reach:
    """An as-of join in `direction` within `tolerance` (see `k2_core.read.timejoins`' rules)."""
    ahead = tolerance if tolerance is not None else MAX_SPAN
    tol_us = None if tolerance is None else tolerance // timedelta(microseconds=1)
    ahead_us = ahead // timedelta(microseconds=1)
    prefix = "quote_" if kind == "quotes" else "right_"
    renamed = [
        f"{prefix}symbol",
        f"{prefix}exchange",
        f"{prefix}timestamp",
        f"{prefix}sequence_number",
        *(["bid_price", "bid_size", "ask_price", "ask_size"] if kind == "quotes" else []),
        *(["right_price", "right_volume", "right_side"] if kind == "trades" else []),
    ]

    def match(trades: pa.Table, code: np.ndarray, us: np.ndarray, right: Sorted) -> pa.Table:
        place = np.full(len(code), -1, dtype=np.int64)
        gap = np.zeros(len(code), dtype=np.int64)  # |right time - trade time| of the match so far
        if direction in ("backward", "nearest"):
            back = right.backward(code, us)
            ok = back >= 0
            dist = np.where(ok, us - right.time_at(back), 0)
            if tol_us is not None:
                ok &= dist <= tol_us
            place, gap = np.where(ok, back, -1), dist
        if direction in ("forward", "nearest"):
            fwd = right.forward(code, us)
            ok = fwd >= 0
            dist = np.where(ok, right.time_at(fwd) - us, 0)
            ok &= dist <= ahead_us
            better = ok & ((place < 0) | (dist < gap))  # equal distance: the backward one stays
            place, gap = np.where(better, fwd, place), np.where(better, dist, gap)
        matched = right.take(place)
        diff = np.where(place >= 0, right.time_at(place) - us, 0)
        out = trades
        for name, column in zip(renamed, matched.columns, strict=True):
            out = out.append_column(name, column)
        return out.append_column(f"{prefix}time_diff_us", pa.array(diff, pa.int64(), mask=place < 0))

    return Reach(
        kind,
        after=ahead if direction != "backward" else timedelta(0),
        prior=direction != "forward",
        match=match,
        schema=lambda trades: asof_schema(trades, kind),
        columns=tuple(_columns(kind)),
    )


def markouts_reach(horizons: Sequence[timedelta]) -> Reach:
    """Markouts at `horizons` (see `k2_core.read.timejoins`' rules): per horizon the mid in force at `t + h`."""

    def match(trades: pa.Table, code: np.ndarray, us: np.ndarray, right: Sorted) -> pa.Table:
        # numpy finds the quotes; DuckDB does the arithmetic, with the per-symbol join's `markout_columns`, so the
        # float basis points are bit for bit the per-symbol join's.
        quoted = trades.select(["price", "side"])
        columns: list[str] = []
        for n, h in enumerate(horizons):
            quote = right.take(right.backward(code, us + h // timedelta(microseconds=1)))
            quoted = quoted.append_column(f"b{n}", quote.column("bid_price")).append_column(
                f"a{n}", quote.column("ask_price")
            )
            columns += markout_columns(mid_sql(f"b{n}", f"a{n}"), "price", "side", label(h))
        with scan.connect() as con:
            con.register("quoted", quoted)
            marks = con.sql(f"SELECT {', '.join(columns)} FROM quoted").to_arrow_table()
        out = trades
        for field in marks.schema:
            out = out.append_column(field.name, marks.column(field.name))
        return out

    return Reach(
        "quotes",
        after=max(horizons),
        prior=True,
        match=match,
        schema=lambda trades: markout_schema(trades, horizons),
        columns=("symbol", TIME_COLUMN, "exchange_sequence_number", "bid_price", "ask_price"),
    )


def exchange_join(
    engine: QueryEngine,
    name: str,
    exchange: str,
    start: TimeInput,
    end: TimeInput,
    limit: int | None,
    cursor: str | None,
    as_of: AsOf | None,
    reach: Reach,
    key: tuple[object, ...],
    right_exchange: str | None = None,
) -> QueryResult:
    """One page of every trade of `exchange` in `(time, symbol, sequence)` order, each joined by `reach` to its own
    instrument's right rows (on `right_exchange`, default the same exchange), day by day (see the module docstring)."""
    sources = engine.sources
    exchange = validate_exchange(exchange, engine.exchanges)
    window = validate_time_range(start, end, now=sources.clock(), max_window=engine.limits.max_window)
    limit = validate_limit(limit, default=engine.limits.default_limit, maximum=engine.limits.max_limit)
    print_ = fingerprint(name, "*", exchange, window.start, window.end, as_of, *key)
    position = engine._position(cursor, print_, 2, window)
    if position is not None and position.symbol is None:
        raise QueryError("cursor is malformed (pass next_cursor from a previous page unchanged)")
    stream, pinned = sources.stream("trades", None, exchange, as_of, position)
    route = sources.route("trades", exchange, window, pinned=pinned)
    trades, last = paging.cut(paging.page(sources, stream, window, limit, route, position), limit)
    right_def = MARKET_TABLES[reach.kind]
    right_choice: SnapshotChoice = right_snapshot(sources, right_def, stream.choice, as_of, position)
    right_stream = Stream(reach.kind, sources.load(right_def), None, right_exchange or exchange, right_choice)
    schema = reach.schema(trades.schema)
    rows = _join_days(
        sources,
        trades,
        right_stream,
        reach,
        realtime=route.realtime,
        max_rows=int(RIGHT_ROWS_PER_LEFT_ROW * engine.limits.max_limit),
    )
    next_cursor = None
    if last is not None:
        next_cursor = engine.cursors.encode(
            Cursor(
                after=(micros(last[TIME_COLUMN]), last["exchange_sequence_number"]),
                snapshot_id=None if route.realtime else stream.choice.snapshot_id,
                fingerprint=print_,
                quote_snapshot_id=None if route.realtime else right_choice.snapshot_id,
                symbol=last["symbol"],
            )
        )
    return QueryResult(
        scan.cast_to(rows, schema) if rows.num_rows else schema.empty_table(),
        route.sources,
        stream.choice.snapshot_id,
        next_cursor,
        window=window,
        limit=limit,
    )


def _join_days(
    sources: Sources, trades: pa.Table, right: Stream, reach: Reach, *, realtime: bool, max_rows: int
) -> pa.Table:
    """`trades` (in time order) cut at UTC midnights, each day joined to its right rows (see the module docstring).
    The next day's right rows are read (by DuckDB, which releases the GIL) while this day's are matched."""
    if trades.num_rows == 0:
        return reach.match(trades, np.zeros(0, np.int64), np.zeros(0, np.int64), _empty_sorted(right, reach))
    us = _us(trades.column(TIME_COLUMN))
    # Codes in symbol order, the order compaction clusters a day's files in: their rows arrive nearly sorted by key,
    # which the stable sort below then merely checks.
    distinct = pc.unique(trades.column("symbol"))
    symbols = distinct.take(pc.array_sort_indices(distinct))
    codes = np.asarray(pc.index_in(trades.column("symbol"), value_set=symbols).to_numpy(), dtype=np.int64)
    schema = pa.schema([right.schema.field(c) for c in reach.columns])
    after_us = reach.after // timedelta(microseconds=1)
    days = us // DAY_US
    cuts = np.flatnonzero(np.diff(days)) + 1
    bounds = [0, *cuts.tolist(), len(us)]
    # Each day's right span: from the page's first trade (then from the day before's end, so that the spans are
    # contiguous and what is in force at a day's start is carried from the day before) to the day's end, or for the
    # page's last day its last trade, plus the look-ahead.
    days_: list[tuple[int, int, int, int]] = []  # (lo, hi, span start, span end) in row numbers and microseconds
    for lo, hi in itertools.pairwise(bounds):
        day_end_us = (int(days[lo]) + 1) * DAY_US
        span_start_us = int(us[0]) if lo == 0 else days_[-1][3] - after_us
        span_end_us = (day_end_us if hi < len(us) else min(day_end_us, int(us[hi - 1]) + 1)) + after_us
        days_.append((lo, hi, span_start_us, span_end_us))

    def read(place: int) -> pa.Table:
        _, _, first, last = days_[place]
        span = TimeRange(_from_us(first), _from_us(last))
        return _read_span(
            sources, right, span, columns=reach.columns, realtime=realtime, max_rows=max_rows, schema=schema
        )

    carried: pa.Table | None = None
    out: list[pa.Table] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future[pa.Table] = pool.submit(read, 0)
        for place, (lo, hi, span_start_us, span_end_us) in enumerate(days_):
            parts: list[pa.Table] = []
            if reach.prior:
                if carried is None:
                    before = _from_us(span_start_us)
                    names = [str(s) for s in symbols.to_pylist()]
                    parts.append(in_force_before(sources, right, names, before, reach.columns))
                    if realtime and sources.realtime is not None:
                        parts.append(_tail_before(sources, right, before, schema))
                else:
                    parts.append(carried)
            parts.append(pending.result())
            if place + 1 < len(days_):
                pending = pool.submit(read, place + 1)
            rows = pa.concat_tables(parts)
            right_codes = np.asarray(
                pc.fill_null(pc.index_in(rows.column("symbol"), value_set=symbols), -1).to_numpy(), dtype=np.int64
            )
            base = span_start_us - 1
            bits = _bits(span_end_us - base + 1, len(symbols))
            # Prior rows: one per instrument, clamped to `base`; the tail may add several before the span, so keep
            # the last of each first (they are not in the sort's time order once clamped).
            if reach.prior and carried is None and realtime and sources.realtime is not None:
                rows, right_codes = _last_before(rows, right_codes, span_start_us)
            ordered = Sorted.of(rows, right_codes, base, bits)
            day_codes = codes[lo:hi]
            # A stable sort of small integers is a radix sort: the trades, in time order, end up in key order.
            ordered.trade_order = np.argsort(
                day_codes.astype(np.int16 if len(symbols) < 2**15 else np.int64), kind="stable"
            )
            out.append(reach.match(trades.slice(lo, hi - lo), day_codes, us[lo:hi], ordered))
            if hi < len(us):  # what is in force at the next day's start: each instrument's last row before it
                next_start = days_[place + 1][2]
                carried = rows.take(pa.array(ordered.last_per_code(next_start))) if reach.prior else rows.slice(0, 0)
    return pa.concat_tables(out)


def _last_before(rows: pa.Table, codes: np.ndarray, before_us: int) -> tuple[pa.Table, np.ndarray]:
    """`rows` with, of those before `before_us`, only each instrument's last (by time, then sequence)."""
    us = _us(rows.column(TIME_COLUMN))
    seq = np.asarray(rows.column("exchange_sequence_number").to_numpy(), dtype=np.int64)
    early = np.flatnonzero((us < before_us) & (codes >= 0))
    order = early[np.lexsort((seq[early], us[early], codes[early]))]
    c = codes[order]
    lasts = order[np.append(c[1:] != c[:-1], True)] if len(order) else order
    keep = np.sort(np.concatenate([lasts, np.flatnonzero(us >= before_us)]))
    return rows.take(pa.array(keep)), codes[keep]


def _empty_sorted(right: Stream, reach: Reach) -> Sorted:
    schema = pa.schema([right.schema.field(c) for c in reach.columns])
    empty = np.zeros(0, np.int64)
    return Sorted(schema.empty_table(), empty, empty, empty, 1, 0)


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


__all__ = ["asof_reach", "exchange_join", "in_force_before", "markouts_reach"]
