"""Joins on time: as-of joins with a direction and a tolerance, window joins (kdb+ `wj1`) and markouts.

Every join here pages the LEFT side, the trades of one instrument (or of several, merged as `fetch_many` merges them),
exactly as a trades listing pages them, and reads the RIGHT side (quotes, or trades of another instrument) only for
the time span the page covers, widened by the look-back/look-ahead the join needs, plus the one row in force before
that span when the join looks backward. So a page costs `limit` trades plus the right rows near them, and the cursor
(which also pins the right table's snapshot, as `with_quote` pins the quotes') walks the window page by page.

Rules, shared by all three joins:

* The right row "in force" at a time is the latest at or before it; several right rows at one timestamp: the highest
  `exchange_sequence_number` is the one in force (as `k2_core.read.joins.attach_quotes`). As-of joins in every
  direction and markouts see one right row per timestamp, that one; a window join counts every quote in the window.
* `nearest` takes the closer of the backward and forward matches; at equal distance the backward one (the quote a
  trader could have seen). A tolerance `d` keeps a match with `|right time - left time| <= d` (the boundary is
  inside); beyond it the right columns are null and the trade is kept. Without a tolerance, backward looks back
  without bound and forward/nearest look ahead at most `MAX_SPAN` (one day).
* Mid prices are exact: `(bid + ask) / 2` as decimal(19,9) (one more place than prices hold, so no rounding); a
  markout is decimal(20,9). Means (mean_mid, mean_spread) and basis points are float64: they are statistics, not
  prices.
* Window join: by default kdb+'s `wj1`, statistics of the quotes with time in `[t - before, t + after]`, both ends
  inside; the quote in force at `t - before` does not count unless it is inside the window. With `prevailing=True`,
  kdb+'s `wj`: from the quote in force at `t - before` (the last at or before it, by time then sequence; so of
  several quotes exactly at `t - before` only the last counts) through every later quote up to `t + after`. A window
  without quotes has quote_count 0 and null statistics.
* Markouts: for each horizon `h`, the mid of the quote in force at `t + h` (as-of backward, the same instrument's
  quotes) and `markout_h = (mid_h - price) * sign`, sign +1 for a `buy`, -1 for a `sell`, null for any other side (an
  aggressor that is not known has no markout); `markout_bps_h = markout_h / price * 10_000`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.compute as pc

from k2_core.exceptions import QueryError
from k2_core.lake import scan
from k2_core.model.tables import MARKET_TABLES, QUOTES, TRADES, TableDef
from k2_core.model.topics import Kind
from k2_core.read import paging
from k2_core.read.cursor import Cursor, fingerprint, micros
from k2_core.read.params import AsOf, TimeInput, TimeRange, validate_exchange, validate_symbol, validate_symbols
from k2_core.read.result import ICEBERG, REALTIME, QueryResult
from k2_core.read.routing import TIME_COLUMN, Route, Sources, Stream
from k2_core.read.snapshots import SnapshotChoice, choose_snapshot

if TYPE_CHECKING:
    from k2_core.read.engine import QueryEngine

Direction = Literal["backward", "forward", "nearest"]
DIRECTIONS: tuple[Direction, ...] = ("backward", "forward", "nearest")
SpanInput = timedelta | str
# The widest look-back, look-ahead, tolerance or horizon: a join reads the right rows of that much time per page.
MAX_SPAN = timedelta(days=1)
DEFAULT_HORIZONS = ("1s", "5s", "60s")
# How many right rows one page may read, per `max_limit` left rows: beyond it the page is refused (400), not read.
RIGHT_ROWS_PER_LEFT_ROW = 10

_SPAN = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)")
_UNITS = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_PRICE = pa.decimal128(18, 8)
_MID = pa.decimal128(19, 9)
_MARKOUT = pa.decimal128(20, 9)


# --- input rules ------------------------------------------------------------------------------------------------


def parse_span(
    value: SpanInput, parameter: str, *, allow_zero: bool = True, maximum: timedelta = MAX_SPAN
) -> timedelta:
    """A duration as `500ms`, `2s`, `1.5s`, `5m`, `1h`, `1d`, `250us` or a `timedelta`: never negative, at most
    `maximum` (a join reads that much of the right side per page). Whole microseconds, the tables' resolution."""
    if isinstance(value, timedelta):
        span = value
    elif isinstance(value, str) and (found := _SPAN.fullmatch(value.strip().lower())):
        number, unit = found.groups()
        micros_ = float(number) * _UNITS[unit]
        if micros_ > maximum / timedelta(microseconds=1):  # also keeps a long digit string from overflowing
            raise QueryError(f"{parameter} must be at most {label(maximum)}; got {value!r}")
        span = timedelta(microseconds=round(micros_))
    else:
        raise QueryError(
            f"{parameter} must be a duration such as 500ms, 2s, 5m, 1h (units us, ms, s, m, h, d); got {value!r}"
        )
    if span < timedelta(0) or (span == timedelta(0) and not allow_zero):
        raise QueryError(f"{parameter} must be {'at least' if allow_zero else 'more than'} 0; got {value!r}")
    if span > maximum:
        raise QueryError(f"{parameter} must be at most {label(maximum)}; got {value!r}")
    return span


def validate_direction(direction: str) -> Direction:
    if direction not in DIRECTIONS:
        raise QueryError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
    return direction


def validate_right_kind(kind: str) -> Kind:
    if kind not in MARKET_TABLES:
        raise QueryError(f"right_kind must be quotes or trades; got {kind!r}")
    return kind


def validate_horizons(horizons: Sequence[SpanInput] | str) -> tuple[timedelta, ...]:
    """Markout horizons (a list, or a comma list as a query string gives it): each more than 0 and at most a day,
    distinct, in increasing order (each names its columns)."""
    items = [h.strip() for h in horizons.split(",")] if isinstance(horizons, str) else list(horizons)
    if not items or len(items) > 20:
        raise QueryError(f"horizons must name 1 to 20 durations; got {horizons!r}")
    return tuple(sorted({parse_span(h, "horizons", allow_zero=False) for h in items}))


def label(span: timedelta) -> str:
    """A horizon's name in column names: whole seconds as `60s`, else milliseconds (`500ms`) or microseconds."""
    us = span // timedelta(microseconds=1)
    if us and us % 86_400_000_000 == 0:
        return f"{us // 86_400_000_000}d"
    if us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    return f"{us // 1000}ms" if us % 1000 == 0 else f"{us}us"


# --- result shapes ----------------------------------------------------------------------------------------------


def _right_fields(kind: Kind) -> list[pa.Field]:
    """The right row's columns in an as-of join, nullable (no match): quotes keep `with_quote`'s names (quote_timestamp,
    quote_sequence_number, bid_price, ...) plus quote_symbol/quote_exchange; trades are prefixed `right_`. Last, the
    time from the trade to the matched row (right minus left) in microseconds."""
    prefix = "quote_" if kind == "quotes" else "right_"
    source = MARKET_TABLES[kind].arrow_schema
    fields = [
        pa.field(f"{prefix}symbol", pa.string()),
        pa.field(f"{prefix}exchange", pa.string()),
        pa.field(f"{prefix}timestamp", source.field(TIME_COLUMN).type),
        pa.field(f"{prefix}sequence_number", pa.int64()),
    ]
    values = ("bid_price", "bid_size", "ask_price", "ask_size") if kind == "quotes" else ("price", "volume", "side")
    for name in values:
        fields.append(source.field(name).with_name(name if kind == "quotes" else f"right_{name}"))
    fields.append(pa.field(f"{prefix}time_diff_us", pa.int64()))
    return [f.with_nullable(True) for f in fields]


def asof_schema(trades: pa.Schema, kind: Kind) -> pa.Schema:
    return pa.schema([*trades, *_right_fields(kind)])


WINDOW_FIELDS = [
    pa.field("quote_count", pa.int64(), nullable=False),
    pa.field("min_bid", _PRICE),
    pa.field("max_bid", _PRICE),
    pa.field("min_ask", _PRICE),
    pa.field("max_ask", _PRICE),
    pa.field("mean_mid", pa.float64()),
    pa.field("mean_spread", pa.float64()),
    pa.field("last_bid", _PRICE),
    pa.field("last_ask", _PRICE),
    pa.field("last_mid", _MID),
]


def window_schema(trades: pa.Schema) -> pa.Schema:
    return pa.schema([*trades, *WINDOW_FIELDS])


def markout_schema(trades: pa.Schema, horizons: Sequence[timedelta]) -> pa.Schema:
    fields: list[pa.Field] = []
    for h in horizons:
        name = label(h)
        fields += [
            pa.field(f"mid_{name}", _MID),
            pa.field(f"markout_{name}", _MARKOUT),
            pa.field(f"markout_bps_{name}", pa.float64()),
        ]
    return pa.schema([*trades, *fields])


# --- paging the left side, reading the right ------------------------------------------------------------------


@dataclass(frozen=True)
class Right:
    """What one page's join reads on the right for a page of trades spanning `[first, last]`: rows in
    `[first - before, last + after]` (closed), plus the one in force before that when `prior`."""

    kind: Kind
    symbol: str | None  # None: each left symbol's own
    exchange: str | None
    before: timedelta
    after: timedelta
    prior: bool


def right_snapshot(
    sources: Sources, table_def: TableDef, left: SnapshotChoice, as_of: AsOf | None, position: Cursor | None
) -> SnapshotChoice:
    """The right table's snapshot, as `joins.quote_snapshot` chooses the quotes': the one a cursor pinned; for time
    travel the one current at that moment (for a trades snapshot id: the trades snapshot itself, or the quotes one
    current at its commit); else the current one."""
    table = sources.load(table_def)
    if position is not None and position.quote_snapshot_id is not None:
        return sources.pinned(table, table_def, position.quote_snapshot_id)
    if as_of is not None and as_of.timestamp is not None:
        return choose_snapshot(table, as_of, table_def.name)
    if as_of is not None:
        if table_def is TRADES:
            return left
        if left.committed_at is None:
            return SnapshotChoice(None, None)
        return choose_snapshot(table, AsOf(timestamp=left.committed_at), table_def.name)
    return choose_snapshot(table, None, table_def.name)


def read_right(
    sources: Sources,
    right: Right,
    symbol: str,
    exchange: str,
    choice: SnapshotChoice,
    first: datetime,
    last: datetime,
    *,
    realtime: bool,
    max_rows: int,
) -> pa.Table:
    """The right rows a page needs (see `Right`), in the right table's snapshot columns, unioned by name."""
    table_def = MARKET_TABLES[right.kind]
    stream = Stream(right.kind, sources.load(table_def), symbol, exchange, choice)
    span = TimeRange(first - right.before, last + right.after + timedelta(microseconds=1))
    route = sources.route(right.kind, exchange, span, pinned=not realtime)
    parts: list[pa.Table] = []
    if right.prior:
        prior = sources.latest_committed(stream, span.start)
        if realtime and sources.realtime is not None:
            recent = sources.realtime.rows(right.kind, symbol, exchange, datetime.min.replace(tzinfo=UTC), span.start)
            prior = pa.concat_tables([prior, recent], promote_options="permissive")
        parts.append(prior)
    with scan.connect() as con:
        sources.market_view(con, stream, span, route, name="r")
        (count,) = con.sql("SELECT count(*) FROM r").fetchall()[0]
        if count > max_rows:
            raise QueryError(
                f"limit: the page's trades need {count} {right.kind} rows of {symbol}@{exchange}, more than "
                f"{max_rows}: lower limit or the look-back/look-ahead (tolerance, before/after, horizons)"
            )
        parts.append(con.sql("SELECT * FROM r").to_arrow_table())
    return pa.concat_tables(parts, promote_options="permissive")


def paged_join(
    engine: QueryEngine,
    name: str,
    symbols: Collection[str] | str | None,
    exchange: str,
    start: TimeInput,
    end: TimeInput,
    limit: int | None,
    cursor: str | None,
    as_of: AsOf | None,
    right: Right,
    key: tuple[object, ...],
    join: Callable[[pa.Table, pa.Table], pa.Table],
) -> QueryResult:
    """One page of trades of `symbols` (None: every symbol of the exchange) in `(time, symbol, sequence)` order, as
    `fetch_many` pages them, each symbol's rows joined by `join(trades, right rows)`. The cursor pins the trades
    snapshot and the right table's (unless the realtime tail served)."""
    from k2_core.read.engine import _symbol_position  # the several-symbol keyset rule, written once there

    sources = engine.sources
    exchange = validate_exchange(exchange, engine.exchanges)
    if symbols is None:
        engine.symbol_index.refresh(
            [(sources.load(TRADES), TRADES), (sources.load(QUOTES), QUOTES)], direct_reads=sources.direct_reads
        )
        every = engine.symbol_index.symbols(exchange)
        if not every:
            raise QueryError(f"exchange {exchange} has no symbols yet")
        symbols = every
    wanted = validate_symbols(symbols)
    assert wanted is not None
    first_query = engine.market_query(wanted[0], exchange, start, end, limit)
    window = first_query.window
    if right.symbol is not None and engine.check_symbols:  # a typo is an error, not a column of nulls
        engine.symbol_index.require(right.exchange or exchange, right.symbol, sources)
    print_ = fingerprint(name, wanted, exchange, window.start, window.end, as_of, *key)
    position = engine._position(cursor, print_, 3, window)
    pages: list[tuple[str, pa.Table, Stream, bool]] = []
    served: set[str] = set()
    pinned_all = True
    left_choice: SnapshotChoice | None = None
    for place, symbol in enumerate(wanted):
        stream, pinned = engine._open("trades", exchange, symbol, as_of, position)
        left_choice = stream.choice
        route: Route = sources.route("trades", exchange, window, pinned=pinned)
        served.update(route.sources)
        pinned_all = pinned_all and not route.realtime
        rows = paging.page(sources, stream, window, first_query.limit, route, _symbol_position(position, place))
        pages.append((symbol, rows, stream, route.realtime))
    assert left_choice is not None
    right_def = MARKET_TABLES[right.kind]
    right_choice = right_snapshot(sources, right_def, left_choice, as_of, position)
    merged = pa.concat_tables([p[1] for p in pages], promote_options="permissive").sort_by(
        [(TIME_COLUMN, "ascending"), ("symbol", "ascending"), ("exchange_sequence_number", "ascending")]
    )
    kept, last = paging.cut(merged, first_query.limit)
    joined: list[pa.Table] = []
    max_rows = int(RIGHT_ROWS_PER_LEFT_ROW * engine.limits.max_limit)
    for symbol, _, _, realtime in pages:
        mine = kept.filter(pc.equal(kept.column("symbol"), symbol))
        if mine.num_rows == 0:
            continue
        times = mine.column(TIME_COLUMN)
        right_rows = read_right(
            sources,
            right,
            right.symbol or symbol,
            right.exchange or exchange,
            right_choice,
            times[0].as_py(),
            times[mine.num_rows - 1].as_py(),
            realtime=realtime,
            max_rows=max_rows,
        )
        joined.append(join(mine, right_rows))
    empty = join(kept.slice(0, 0), MARKET_TABLES[right.kind].arrow_schema.empty_table())
    rows = (
        pa.concat_tables([empty, *joined], promote_options="permissive").sort_by(
            [(TIME_COLUMN, "ascending"), ("symbol", "ascending"), ("exchange_sequence_number", "ascending")]
        )
        if joined
        else empty
    )
    next_cursor = None
    if last is not None:
        next_cursor = engine.cursors.encode(
            Cursor(
                after=(micros(last[TIME_COLUMN]), wanted.index(last["symbol"]), last["exchange_sequence_number"]),
                snapshot_id=left_choice.snapshot_id if pinned_all else None,
                fingerprint=print_,
                quote_snapshot_id=right_choice.snapshot_id if pinned_all else None,
            )
        )
    sources_used = tuple(s for s in (ICEBERG, REALTIME) if s in served)
    return QueryResult(rows, sources_used, left_choice.snapshot_id, next_cursor, window=window, limit=first_query.limit)


# --- the joins, in DuckDB over Arrow -------------------------------------------------------------------------------

# One right row per timestamp: the highest sequence number there is the one in force.
_IN_FORCE = f"""
    SELECT * FROM right_rows
    QUALIFY row_number() OVER (PARTITION BY {TIME_COLUMN} ORDER BY exchange_sequence_number DESC) = 1
"""


def _numbered(trades: pa.Table) -> pa.Table:
    return trades.append_column("__i", pa.array(range(trades.num_rows), pa.int64()))


def asof(
    trades: pa.Table, right_rows: pa.Table, kind: Kind, direction: Direction, tolerance: timedelta | None
) -> pa.Table:
    """Each trade with the right row matched in `direction` (see the module's rules)."""
    schema = asof_schema(trades.schema, kind)
    prefix = "quote_" if kind == "quotes" else "right_"
    values = (
        ["bid_price", "bid_size", "ask_price", "ask_size"]
        if kind == "quotes"
        else ["price AS right_price", "volume AS right_volume", "side AS right_side"]
    )
    carried = ", ".join(
        [
            f"symbol AS {prefix}symbol",
            f"exchange AS {prefix}exchange",
            f"{TIME_COLUMN} AS {prefix}timestamp",
            f"exchange_sequence_number AS {prefix}sequence_number",
            *values,
        ]
    )
    names = [f.name for f in _right_fields(kind)[:-1]]
    sides: list[str] = []
    if direction in ("backward", "nearest"):
        sides.append(f"SELECT t.__i, 0 AS side_order, f.* FROM page t ASOF JOIN f ON t.{TIME_COLUMN} >= f.at")
    if direction in ("forward", "nearest"):
        sides.append(f"SELECT t.__i, 1 AS side_order, f.* FROM page t ASOF JOIN f ON t.{TIME_COLUMN} <= f.at")
    within = "" if tolerance is None else f"WHERE abs(c.diff) <= {tolerance // timedelta(microseconds=1)}"
    picked = ", ".join(f"b.{n}" for n in names)
    with scan.connect() as con:
        con.register("page", _numbered(trades))
        con.register("right_rows", right_rows)
        result = con.sql(
            f"""
            WITH f AS (SELECT {TIME_COLUMN} AS at, {carried} FROM ({_IN_FORCE})),
            c AS (
                SELECT m.*, epoch_us(m.at) - epoch_us(t.{TIME_COLUMN}) AS diff
                FROM ({" UNION ALL ".join(sides)}) m JOIN page t USING (__i)
            ),
            b AS (
                SELECT * FROM c {within}
                QUALIFY row_number() OVER (PARTITION BY __i ORDER BY abs(diff), side_order) = 1
            )
            SELECT t.*, {picked}, b.diff AS {prefix}time_diff_us
            FROM page t LEFT JOIN b USING (__i)
            ORDER BY t.__i
            """
        ).to_arrow_table()
    return scan.cast_to(result, schema)


def window(
    trades: pa.Table, quotes: pa.Table, before: timedelta, after: timedelta, *, prevailing: bool = False
) -> pa.Table:
    """Each trade with statistics of the quotes in `[t - before, t + after]`; with `prevailing`, of the quote in force
    at `t - before` and those after it up to `t + after` (see the module's rules)."""
    schema = window_schema(trades.schema)
    lo, hi = before // timedelta(microseconds=1), after // timedelta(microseconds=1)
    start = f"epoch_us(t.{TIME_COLUMN}) - {lo}"
    if prevailing:  # from the last quote at or before the window's start (by time, then sequence) on
        entry = f"ASOF LEFT JOIN (SELECT us, max(o) AS first_o FROM q GROUP BY us) p ON {start} >= p.us"
        inside = f"(q.o >= p.first_o OR (p.first_o IS NULL AND q.us > {start}))"
    else:
        entry, inside = "", f"q.us >= {start}"
    with scan.connect() as con:
        con.register("page", _numbered(trades))
        con.register("right_rows", quotes)
        result = con.sql(
            f"""
            WITH q AS (
                SELECT epoch_us({TIME_COLUMN}) AS us, bid_price, ask_price,
                       row_number() OVER (ORDER BY {TIME_COLUMN}, exchange_sequence_number) AS o
                FROM right_rows
            ),
            s AS (
                SELECT t.__i, count(q.us) AS quote_count,
                       min(q.bid_price) AS min_bid, max(q.bid_price) AS max_bid,
                       min(q.ask_price) AS min_ask, max(q.ask_price) AS max_ask,
                       avg(q.bid_price + q.ask_price)::DOUBLE / 2 AS mean_mid,
                       avg(q.ask_price - q.bid_price)::DOUBLE AS mean_spread,
                       arg_max(q.bid_price, q.o) AS last_bid, arg_max(q.ask_price, q.o) AS last_ask
                FROM page t {entry}
                LEFT JOIN q ON {inside} AND q.us <= epoch_us(t.{TIME_COLUMN}) + {hi}
                GROUP BY t.__i
            )
            SELECT t.*, s.quote_count, s.min_bid, s.max_bid, s.min_ask, s.max_ask, s.mean_mid, s.mean_spread,
                   s.last_bid, s.last_ask,
                   {mid_sql("s.last_bid", "s.last_ask")} AS last_mid
            FROM page t JOIN s USING (__i)
            ORDER BY t.__i
            """
        ).to_arrow_table()
    return scan.cast_to(result, schema)


def mid_sql(bid: str, ask: str) -> str:
    """The exact mid of a quote, `(bid + ask) / 2` in one more decimal place than prices hold: never rounded."""
    return f"(({bid} + {ask}) * 0.5::DECIMAL(2, 1))::DECIMAL(19, 9)"


def markout_columns(mid: str, price: str, side: str, name: str) -> list[str]:
    """One horizon's columns, `mid_<name>`, `markout_<name>` and `markout_bps_<name>`, from SQL expressions of the mid
    in force at `t + h`, the trade's price and its side: the one definition of a markout (see the module's rules),
    shared by the per-symbol and the whole-exchange joins so that their answers agree to the bit."""
    markout = f"(CASE {side} WHEN 'buy' THEN 1 WHEN 'sell' THEN -1 END) * ({mid} - {price})::DECIMAL(20, 9)"
    return [
        f"{mid} AS mid_{name}",
        f"({markout})::DECIMAL(20, 9) AS markout_{name}",
        f"({markout})::DOUBLE / {price}::DOUBLE * 10000 AS markout_bps_{name}",
    ]


def markouts(trades: pa.Table, quotes: pa.Table, horizons: Sequence[timedelta]) -> pa.Table:
    """Each trade with, per horizon, the mid in force at `t + h` and the signed markout (see the module's rules)."""
    schema = markout_schema(trades.schema, horizons)
    joins: list[str] = []
    columns: list[str] = []
    for n, h in enumerate(horizons):
        name, us = label(h), h // timedelta(microseconds=1)
        joins.append(f"ASOF LEFT JOIN mids m{n} ON epoch_us(t.{TIME_COLUMN}) + {us} >= m{n}.us")
        columns += markout_columns(f"m{n}.mid", "t.price", "t.side", name)
    with scan.connect() as con:
        con.register("page", _numbered(trades))
        con.register("right_rows", quotes)
        result = con.sql(
            f"""
            WITH mids AS (
                SELECT epoch_us({TIME_COLUMN}) AS us,
                       {mid_sql("bid_price", "ask_price")} AS mid
                FROM ({_IN_FORCE})
            )
            SELECT t.*, {", ".join(columns)}
            FROM page t {" ".join(joins)}
            ORDER BY t.__i
            """
        ).to_arrow_table()
    return scan.cast_to(result, schema)


def not_yet_known(marks: pa.Table, horizons: Sequence[timedelta], known_until: datetime) -> pa.Table:
    """Markouts whose moment `t + h` lies after `known_until` (now, for a live read; the moment read as of, for time
    travel) set to null: the quote in force then is not known yet, and the latest one known is not it."""
    if marks.num_rows == 0:
        return marks
    times = marks.column(TIME_COLUMN)
    for h in horizons:
        later = pc.greater(pc.add(times, pa.scalar(h, pa.duration("us"))), pa.scalar(known_until, times.type))
        if not pc.any(later).as_py():
            continue
        for prefix in ("mid_", "markout_", "markout_bps_"):
            name = f"{prefix}{label(h)}"
            column = marks.column(name)
            masked = pc.if_else(later, pa.scalar(None, column.type), column)
            marks = marks.set_column(marks.schema.get_field_index(name), name, masked)
    return marks


def right_side(
    right_symbol: str | None, right_exchange: str | None, exchanges: Collection[str] | None
) -> tuple[str | None, str | None]:
    """The right instrument: `right_symbol` on `right_exchange`; either left out means the left's own."""
    symbol = validate_symbol(right_symbol, "right_symbol") if right_symbol is not None else None
    exchange = validate_exchange(right_exchange, exchanges, "right_exchange") if right_exchange is not None else None
    return symbol, exchange


__all__ = [
    "DEFAULT_HORIZONS",
    "DIRECTIONS",
    "MAX_SPAN",
    "Direction",
    "Right",
    "asof",
    "label",
    "markout_columns",
    "markouts",
    "mid_sql",
    "not_yet_known",
    "paged_join",
    "parse_span",
    "right_side",
    "validate_direction",
    "validate_horizons",
    "validate_right_kind",
    "window",
]
