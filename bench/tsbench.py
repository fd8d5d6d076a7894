"""A finance benchmark in the style of shakti's b.k and KX's TAQ benchmark (issue 17 item 5): the same synthetic trades
and quotes queried by K2, plain DuckDB over Parquet, chdb (ClickHouse in-process, over the same Parquet) and polars,
side by side, with every engine's answer checked against the others'.

    .venv/bin/python -m bench.tsbench                       # 2,000 symbols x 3 exchanges, 3 days (a few minutes)
    .venv/bin/python -m bench.tsbench --scale 4 --reps 5    # 4x the rows
    .venv/bin/pip install -e '.[bench]'                     # chdb

Data (numpy, seeded, so a run is reproducible): `--symbols` instruments, each listed on every exchange of K2's default
topic layout (asx, nyse, binance), trading only in its exchange's session (`Settings().market_hours`: asx 10:00-16:00
Sydney, nyse 09:30-16:00 New York, binance around the clock) on `--days` weekdays from Monday 2024-03-04. Activity is
Zipf-like across symbols (weight 1/rank^0.8; every exchange's volume also differs). Quotes are SIX times as many as
trades; each (symbol, exchange) stream's mid is a random walk on a 0.01 tick with a 1-3 tick spread, each trade prints
at the bid or ask in force. Timestamps are whole milliseconds, so ties (several quotes, or a trade and a quote, at one
time) happen as in real feeds; sequence numbers rise per (symbol, exchange) stream. Prices and sizes are decimal(18,8).

K2 holds the rows as it lays data out (`bench.query.lay_out`: the ingester's micro-batches, then each day compacted and
its minute bars precomputed as the Dagster jobs do); the others read `trades.parquet` and `quotes.parquet`, the same
rows in time order. Each engine re-reads its files on every run (no engine keeps a result or a loaded table;
DuckDB keeps one connection and K2 its SQL worker's database, as users of each would).

Queries (median of --reps runs after one warm-up):
  max_price     max trade price by symbol and exchange, over all days                   (K2: run_sql *)
  hourly_volume traded volume by UTC hour, all symbols and exchanges                     (K2: run_sql *)
  last_bid      the latest quote (bid) of every symbol on every exchange, "latest on"   (K2: get_latest_on of every
                exchange at once, kinds="quotes": the quotes table alone; K2's result cache is off, as everywhere here)
  asof_join     every trade joined to the quote of its stream in force at or before it (K2: asof_join of each
                whole exchange; --k2-asof sql: run_sql's ASOF JOIN; --k2-asof with_quote: the with-quote listing,
                per symbol, ~300x slower: minutes at the default scale)
  bars_1m       1-minute OHLCV + VWAP of every nyse symbol over one day                 (K2: ohlcv_many of the whole
                exchange, symbols left out: the day's precomputed ohlcv_1m bars in one scan when fresh)
  markouts      the mid at +1 s, +5 s, +60 s after each nyse trade of one day            (K2: markouts, whole exchange)
* over `market.ohlcv_1m` instead (max(high), hourly sums of volume: the same answers) only when that table is provably
fresh for every day of the trades (`bars_cover`, checked once before the timing); the output says which path answered.
"In force" everywhere: the latest quote of the stream at or before the moment; several at one timestamp -> the highest
sequence number.

Checking: each engine's answer is canonicalised (rows sorted; decimals exact, as strings at 8 places; floats (VWAP)
equal to 1e-9 relative or 1e-8 absolute; timestamps as epoch microseconds) and compared with the first engine's. The
two big answers (asof_join: one row per trade; markouts: one per trade of the day) are compared by row count and exact
checksums computed outside the timing from each engine's full answer: matched rows, sum of bid, sum of the quote
sequence numbers (asof_join); nulls and sum of each horizon's mid, in exact thousandths (markouts). A mismatch is
printed loudly and makes the exit status 1 (unless --no-check).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.query import decimals, lay_out
from k2_core.model.days import EPOCH_DAY as EPOCH
from k2_core.model.tables import QUOTES, TRADES
from k2_core.read.bars import precomputed_table
from k2_core.read.engine import QueryEngine
from k2_core.read.functions import get_latest_on
from k2_core.read.precomputed import fresh_days
from k2_core.read.sql import SqlLimits, run_sql
from k2_core.settings import CatalogSettings, Settings

FIRST_DAY = date(2024, 3, 4)  # a Monday
EXCHANGES = ("asx", "nyse", "binance")
QUOTES_PER_TRADE = 6
TICK = 1_000_000  # 0.01 in decimal(18, 8) units
MARKOUT_SECONDS = (1, 5, 60)
QUERIES = ("max_price", "hourly_volume", "last_bid", "asof_join", "bars_1m", "markouts")
# Issue 17's goals: K2 within 1.5x of the fastest engine everywhere, and the fastest on these.
GOAL_RATIO = 1.5
MUST_LEAD = ("last_bid", "asof_join")


# --- data ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    symbols: int = 2_000
    days: int = 3
    trades_per_day: int = 300_000  # over all symbols and exchanges
    seed: int = 17

    @property
    def names(self) -> np.ndarray:
        return np.array([f"S{i:05d}" for i in range(self.symbols)])

    def trading_days(self) -> list[date]:
        days: list[date] = []
        when = FIRST_DAY
        while len(days) < self.days:
            if when.weekday() < 5:
                days.append(when)
            when += timedelta(days=1)
        return days


def sessions(shape: Shape, settings: Settings) -> dict[str, list[tuple[int, int]]]:
    """Each exchange's sessions as [start, end) epoch microseconds, one per trading day, from K2's market hours."""
    out: dict[str, list[tuple[int, int]]] = {}
    for exchange in EXCHANGES:
        hours = settings.maintenance.market_hours[exchange]
        zone = ZoneInfo(hours.timezone)
        spans = []
        for day in shape.trading_days():
            opens = datetime.combine(day, hours.open, zone)
            closes = datetime.combine(day, hours.close, zone)
            if closes <= opens:
                closes += timedelta(days=1)
            spans.append((_us(opens), _us(closes)))
        out[exchange] = spans
    return out


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


def generate(shape: Shape, settings: Settings) -> tuple[pa.Table, pa.Table]:
    """(trades, quotes), each in time order: see the module docstring."""
    rng = np.random.default_rng(shape.seed)
    n_ex = len(EXCHANGES)
    streams = shape.symbols * n_ex  # stream id = symbol * n_ex + exchange
    zipf = 1.0 / np.arange(1, shape.symbols + 1) ** 0.8
    share = np.array([0.3, 0.5, 0.2])  # asx, nyse, binance
    weights = (zipf[:, None] * share[None, :]).ravel()
    weights /= weights.sum()
    spans = sessions(shape, settings)

    def events(count_per_day: int) -> tuple[np.ndarray, np.ndarray]:
        """(stream, epoch micros) of `count_per_day` events a day, each in its exchange's session, by time."""
        stream_parts, time_parts = [], []
        for d in range(shape.days):
            stream = rng.choice(streams, count_per_day, p=weights)
            exchange = stream % n_ex
            starts = np.array([spans[e][d][0] for e in EXCHANGES])[exchange]
            lengths = np.array([spans[e][d][1] - spans[e][d][0] for e in EXCHANGES])[exchange]
            offset_ms = (rng.random(count_per_day) * (lengths // 1000)).astype(np.int64)
            stream_parts.append(stream)
            time_parts.append(starts + offset_ms * 1000)
        stream, micros = np.concatenate(stream_parts), np.concatenate(time_parts)
        order = np.lexsort((stream, micros))
        return stream[order], micros[order]

    def per_stream_sequence(stream: np.ndarray) -> np.ndarray:
        """1, 2, 3 ... within each stream, in the rows' (time) order."""
        order = np.argsort(stream, kind="stable")
        sorted_streams = stream[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_streams)) + 1]
        runs = np.diff(np.r_[starts, len(stream)])
        ranks = np.arange(len(stream)) - np.repeat(starts, runs)
        seq = np.empty(len(stream), dtype=np.int64)
        seq[order] = ranks + 1
        return seq

    # Quotes: per-stream random walk of the mid (ticks), spread 1-3 ticks.
    q_stream, q_time = events(shape.trades_per_day * QUOTES_PER_TRADE)
    q_seq = per_stream_sequence(q_stream)
    base_ticks = (rng.lognormal(np.log(40), 1.0, shape.symbols) * 100).astype(np.int64) + 100  # >= 1.00
    order = np.lexsort((q_seq, q_stream))
    steps = rng.integers(-1, 2, len(q_stream))[order]
    sorted_streams = q_stream[order]
    walk = np.cumsum(steps)
    first = np.r_[True, np.diff(sorted_streams) != 0]
    walk -= np.maximum.accumulate(np.where(first, walk - steps, np.iinfo(np.int64).min))
    mid_sorted = np.maximum(base_ticks[sorted_streams // n_ex] + walk, 10)
    mid = np.empty_like(mid_sorted)
    mid[order] = mid_sorted
    half = rng.integers(1, 4, len(q_stream))
    bid, ask = (mid - half // 2) * 2, (mid + (half + 1) // 2) * 2  # in half ticks, so both stay on the tick
    bid_units, ask_units = bid * TICK // 2, ask * TICK // 2

    # Trades: at the bid or ask in force (the quote of the stream at or before, last by sequence), else the base.
    t_stream, t_time = events(shape.trades_per_day)
    t_seq = per_stream_sequence(t_stream)
    q_key = q_stream.astype(np.int64) * 2**45 + (q_time - q_time.min())
    key_order = np.lexsort((q_seq, q_key))
    t_key = t_stream.astype(np.int64) * 2**45 + (t_time - q_time.min())
    at = np.searchsorted(q_key[key_order], t_key, side="right") - 1
    found = (at >= 0) & (q_stream[key_order][np.maximum(at, 0)] == t_stream)
    buy = rng.integers(0, 2, len(t_stream)) == 1
    quoted = np.where(buy, ask_units[key_order][np.maximum(at, 0)], bid_units[key_order][np.maximum(at, 0)])
    price = np.where(found, quoted, base_ticks[t_stream // n_ex] * TICK)

    names = shape.names
    exchanges = np.array(EXCHANGES)

    def stamp(micros: np.ndarray) -> pa.Array:
        return pa.array(micros, pa.timestamp("us", tz="UTC"))

    def sizes(count: int) -> pa.Array:
        return decimals(rng.integers(1, 5_000, count) * 100_000_000)

    trades = pa.table(
        {
            "symbol": pa.array(names[t_stream // n_ex]),
            "exchange": pa.array(exchanges[t_stream % n_ex]),
            "exchange_timestamp": stamp(t_time),
            "exchange_sequence_number": pa.array(t_seq),
            "price": decimals(price),
            "volume": sizes(len(t_stream)),
            "side": pa.array(np.where(buy, "buy", "sell")),
            "trade_id": pa.array(np.char.add("t", np.arange(len(t_stream)).astype(str))),
            "ingestion_timestamp": stamp(t_time + 1000),
        }
    ).cast(TRADES.arrow_schema)
    quotes = pa.table(
        {
            "symbol": pa.array(names[q_stream // n_ex]),
            "exchange": pa.array(exchanges[q_stream % n_ex]),
            "exchange_timestamp": stamp(q_time),
            "exchange_sequence_number": pa.array(q_seq),
            "bid_price": decimals(bid_units),
            "bid_size": sizes(len(q_stream)),
            "ask_price": decimals(ask_units),
            "ask_size": sizes(len(q_stream)),
            "ingestion_timestamp": stamp(q_time + 1000),
        }
    ).cast(QUOTES.arrow_schema)
    return trades, quotes


def utc_days(shape: Shape, settings: Settings) -> list[date]:
    """The UTC days the sessions touch (asx's session starts the UTC day before its local one)."""
    found = set()
    for spans in sessions(shape, settings).values():
        for start, end in spans:
            found |= {
                datetime.fromtimestamp(start / 1e6, UTC).date(),
                datetime.fromtimestamp((end - 1) / 1e6, UTC).date(),
            }
    return sorted(found)


# --- the queries' parameters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What every engine is asked: one exchange and one UTC day for the per-day queries."""

    exchange: str
    day: date
    symbols: tuple[str, ...]

    @property
    def start(self) -> datetime:
        return datetime.combine(self.day, datetime.min.time(), UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=1)

    @property
    def horizon(self) -> datetime:
        """The end of the quotes the markouts read: the last trade's furthest horizon."""
        return self.end + timedelta(seconds=max(MARKOUT_SECONDS))

    def window_sql(self) -> str:
        return f"TIMESTAMPTZ '{self.start.isoformat()}' AND exchange_timestamp < TIMESTAMPTZ '{self.end.isoformat()}'"


Engine = dict[str, Callable[[], pa.Table]]
SQL_LIMITS = SqlLimits(timeout_seconds=3600, memory_limit="8GB", threads=os.cpu_count() or 2, max_rows=100_000_000)
# Which K2 path answered each query (filled in as K2's queries run; printed with the results).
K2_PATHS: dict[str, str] = {}


# --- DuckDB-dialect SQL, shared by K2's run_sql and plain DuckDB ------------------------------------------------

MAX_PRICE = "SELECT symbol, exchange, max(price) AS max_price FROM trades GROUP BY symbol, exchange"
# Buckets on epoch microseconds, as K2's own bars are: DuckDB's time_bucket / date_trunc on a TIMESTAMPTZ go through
# the time zone machinery and cost ~8x more here (measured: 99 ms vs 13 ms on 900k rows).
HOURLY_VOLUME = """
    SELECT make_timestamptz(any_value(h) * 3600000000) AS hour, sum(volume) AS volume
    FROM (SELECT epoch_us(exchange_timestamp) // 3600000000 AS h, volume FROM trades) GROUP BY h
"""

# The same two answers from the precomputed minute bars (`market.ohlcv_1m`): a minute's high is the max of its trades'
# prices and its volume their sum, and a minute lies inside one UTC hour, so these equal MAX_PRICE / HOURLY_VOLUME
# exactly when the bar table holds, for every day of the trades, the bars of exactly those trades (`bars_cover`).
MAX_PRICE_BARS = "SELECT symbol, exchange, max(high) AS max_price FROM ohlcv_1m GROUP BY symbol, exchange"
HOURLY_VOLUME_BARS = """
    SELECT make_timestamptz(any_value(h) * 3600000000) AS hour, sum(volume) AS volume
    FROM (SELECT epoch_us(bar_start) // 3600000000 AS h, volume FROM ohlcv_1m) GROUP BY h
"""


def markouts_sql(plan: Plan) -> str:
    """The mid in force 1 s, 5 s and 60 s after each trade of the plan's exchange and day: one ASOF JOIN per horizon
    against the quotes, deduplicated to one per (stream, timestamp) (the highest sequence)."""
    joins, columns = [], []
    for i, seconds in enumerate(MARKOUT_SECONDS):
        joins.append(
            f"ASOF LEFT JOIN mids m{i} ON t.symbol = m{i}.symbol "
            f"AND t.exchange_timestamp + INTERVAL {seconds} SECOND >= m{i}.exchange_timestamp"
        )
        columns.append(f"m{i}.mid AS mid_{seconds}s")
    return f"""
    WITH t AS (
        SELECT symbol, exchange_timestamp, exchange_sequence_number, price FROM trades
        WHERE exchange = '{plan.exchange}' AND exchange_timestamp >= {plan.window_sql()}
    ),
    mids AS (
        SELECT symbol, exchange_timestamp, (bid_price + ask_price) / 2 AS mid FROM quotes
        WHERE exchange = '{plan.exchange}' AND exchange_timestamp < TIMESTAMPTZ '{plan.horizon.isoformat()}'
        QUALIFY row_number() OVER (PARTITION BY symbol, exchange_timestamp ORDER BY exchange_sequence_number DESC) = 1
    )
    SELECT t.symbol, t.exchange_timestamp, t.exchange_sequence_number, t.price, {", ".join(columns)}
    FROM t {" ".join(joins)}
    """


ASOF_JOIN = """
    WITH q AS (
        SELECT symbol, exchange, exchange_timestamp, exchange_sequence_number, bid_price, ask_price FROM quotes
        QUALIFY row_number() OVER (
            PARTITION BY symbol, exchange, exchange_timestamp ORDER BY exchange_sequence_number DESC) = 1
    )
    SELECT t.symbol, t.exchange, t.exchange_timestamp, t.exchange_sequence_number, t.price,
           q.exchange_timestamp AS quote_timestamp, q.exchange_sequence_number AS quote_sequence_number,
           q.bid_price, q.ask_price
    FROM trades t ASOF LEFT JOIN q
      ON t.symbol = q.symbol AND t.exchange = q.exchange AND t.exchange_timestamp >= q.exchange_timestamp
"""

# (time, sequence) packed in one HUGEINT, as K2's own bars SQL does: DuckDB's arg_max on it is much faster than on a
# struct (sequence numbers are positive 64-bit integers, so the order is the same).
ORDER_KEY = "epoch_us(exchange_timestamp)::HUGEINT * 9223372036854775808 + exchange_sequence_number"
LAST_BID = f"""
    SELECT symbol, exchange, max(exchange_timestamp) AS quote_timestamp, arg_max(bid_price, {ORDER_KEY}) AS bid_price
    FROM quotes GROUP BY symbol, exchange
"""


def bars_sql(plan: Plan) -> str:
    """1-minute bars with float VWAP (what a researcher writes); K2's VWAP is exact, compared to 1e-9."""
    return f"""
    SELECT symbol, make_timestamptz(epoch_us(exchange_timestamp) // 60000000 * 60000000) AS bar_start,
           arg_min(price, {ORDER_KEY}) AS open, max(price) AS high, min(price) AS low,
           arg_max(price, {ORDER_KEY}) AS close,
           sum(volume) AS volume, sum(price::DOUBLE * volume::DOUBLE) / sum(volume::DOUBLE) AS vwap,
           count(*) AS trade_count
    FROM trades WHERE exchange = '{plan.exchange}' AND exchange_timestamp >= {plan.window_sql()}
    GROUP BY ALL
    """


# --- K2 ----------------------------------------------------------------------------------------------------------


def k2_markouts(engine: QueryEngine, plan: Plan) -> pa.Table:
    """K2's markouts of a whole exchange: `QueryEngine.markouts(None, ...)`, one scan per side, the quotes in force
    matched in numpy (`k2_core.read.exchange_joins`); one page holds the day (the bench lifts `max_limit`)."""
    horizons = [f"{s}s" for s in MARKOUT_SECONDS]
    result = engine.markouts(None, plan.exchange, plan.start, plan.end, engine.limits.max_limit, horizons=horizons)
    assert result.next_cursor is None
    return result.table


def k2_bars(engine: QueryEngine, plan: Plan) -> pa.Table:
    """Every symbol's bars of the day on one exchange: `ohlcv_many` with the symbols left out (the whole exchange),
    page after page. It reads the day's precomputed `ohlcv_1m` bars in one scan of that table when they are fresh
    against the trades snapshot (they are here: `lay_out` closes every day), else computes them from trades in one
    scan; `K2_PATHS` records which."""
    parts, cursor = [], None
    while True:
        result = engine.ohlcv_many(None, plan.exchange, "1m", plan.start, plan.end, cursor=cursor)
        parts.append(result.table)
        K2_PATHS["bars_1m"] = "ohlcv_many(whole exchange) from " + "+".join(result.sources)
        cursor = result.next_cursor
        if cursor is None:
            return pa.concat_tables(parts)


def bars_cover(engine: QueryEngine) -> list[date] | None:
    """Whether `ohlcv_1m` provably answers a whole-table aggregate of trades exactly: every day partition of the
    current trades snapshot is fresh in it (`k2_core.read.precomputed.fresh_days`: its bars were built from trades that
    no later commit touched) and it holds no other day. Returns the days that are not (empty: it does), None when there
    is no bar table. `lay_out` closes every day it loads, the last one included; a day still open (or one a later
    commit may have touched, as the freshness rule judges it) is in the list, and run_sql over trades answers."""
    trades = engine.load(TRADES)
    snapshot_id = trades.metadata.current_snapshot_id
    bar_table = precomputed_table(engine.sources, "1m")
    if bar_table is None or snapshot_id is None or bar_table.metadata.current_snapshot_id is None:
        return None

    def days(table: Any, snapshot: int) -> set[date]:
        files = table.scan(snapshot_id=snapshot).plan_files()
        return {EPOCH + timedelta(days=int(task.file.partition[0])) for task in files}

    trade_days = days(trades, snapshot_id)
    bar_days = days(bar_table, bar_table.metadata.current_snapshot_id)
    fresh = set(fresh_days(trades, bar_table, sorted(trade_days), snapshot_id))
    return sorted((trade_days - fresh) | (bar_days - trade_days))


def k2_aggregates(engine: QueryEngine, limits: SqlLimits) -> dict[str, Callable[[], pa.Table]]:
    """max_price / hourly_volume as a K2 user answers them: from the minute bars when `bars_cover` proves them
    identical, else run_sql over trades. Checked once, before the timing (nothing commits during a run); `K2_PATHS`
    records which path, why, and what the check cost."""
    began = time.perf_counter()
    stale = bars_cover(engine)
    check_ms = (time.perf_counter() - began) * 1000
    from_bars = stale == []
    if from_bars:
        path = "run_sql over ohlcv_1m (fresh for every day of trades)"
    else:
        why = "no ohlcv_1m table" if stale is None else "not provably fresh: " + ", ".join(map(str, stale))
        path = f"run_sql over trades (ohlcv_1m {why})"
    path += f"; freshness checked once, {check_ms:.0f} ms"
    out: dict[str, Callable[[], pa.Table]] = {}
    for query, sql in (
        ("max_price", (MAX_PRICE, MAX_PRICE_BARS)),
        ("hourly_volume", (HOURLY_VOLUME, HOURLY_VOLUME_BARS)),
    ):
        K2_PATHS[query] = path
        out[query] = partial(_sql_table, engine, sql[from_bars], limits)
    return out


def _sql_table(engine: QueryEngine, sql: str, limits: SqlLimits) -> pa.Table:
    return run_sql(engine, sql, limits=limits).table


def run_sql_overhead(engine: QueryEngine, limits: SqlLimits, reps: int = 15) -> dict[str, float]:
    """run_sql's fixed cost, median ms: a query naming no table (validation, its sandboxed DuckDB opened and locked),
    and one reading no row of trades (plus pinning and registering the table)."""

    def query(sql: str) -> Callable[[], pa.Table]:
        return lambda: run_sql(engine, sql, limits=limits).table

    out = {}
    for label, sql in (("no table", "SELECT 1 AS one"), ("trades, no rows", "SELECT * FROM trades LIMIT 0")):
        out[label], _ = timed(query(sql), reps)
    return out


def k2_asof(engine: QueryEngine, days: list[date]) -> pa.Table:
    """Every trade with its instrument's quote in force: `QueryEngine.asof_join(None, exchange, ...)`, the native
    whole-exchange join (one scan per side, day by day, numpy merge), one call per exchange over every day."""
    start = datetime.combine(days[0], datetime.min.time(), UTC)
    end = datetime.combine(days[-1], datetime.min.time(), UTC) + timedelta(days=1)
    parts = []
    for exchange in EXCHANGES:
        result = engine.asof_join(None, exchange, start, end, engine.limits.max_limit)
        assert result.next_cursor is None
        parts.append(result.table)
    return pa.concat_tables(parts)


def k2_with_quote(engine: QueryEngine, plan: Plan, days: list[date]) -> pa.Table:
    """Every trade with the quote in force: `fetch_many(with_quote=True)` per exchange and UTC day, all symbols,
    page after page (its page limit is per symbol). The public with-quote listing, ~300x slower."""
    parts = []
    for exchange in EXCHANGES:
        for day in days:
            start = datetime.combine(day, datetime.min.time(), UTC)
            cursor = None
            while True:
                result = engine.fetch_many(
                    "trades",
                    list(plan.symbols),
                    exchange,
                    start,
                    start + timedelta(days=1),
                    engine.limits.max_limit,
                    cursor=cursor,
                    with_quote=True,
                )
                parts.append(result.table)
                cursor = result.next_cursor
                if cursor is None:
                    break
    return pa.concat_tables(parts, promote_options="permissive")


def k2_engine(settings: Settings, plan: Plan, days: list[date], *, asof: str) -> tuple[Engine, QueryEngine]:
    engine = QueryEngine.from_settings(settings, cache=False)
    engine.limits.max_limit = 10_000_000
    engine.limits.max_bars = 10_000_000
    engine.limits.max_window = None
    limits = SQL_LIMITS

    def last_bid() -> pa.Table:
        # Only the quotes half: the trades table is not read. The result cache is off (`cache=False` above), else a
        # repeated call would be a cache hit.
        table = get_latest_on(engine, list(EXCHANGES), kinds="quotes")
        K2_PATHS["last_bid"] = "get_latest_on(every exchange, kinds=quotes): one read, result cache off"
        return table.select(["symbol", "exchange", "quote_timestamp", "bid_price"]).filter(
            pc.is_valid(table.column("bid_price"))
        )

    def asof_join() -> pa.Table:
        if asof == "sql":
            return run_sql(engine, ASOF_JOIN, limits=limits).table
        if asof == "with_quote":
            return k2_with_quote(engine, plan, days)
        return k2_asof(engine, days)

    queries: Engine = {
        **k2_aggregates(engine, limits),
        "last_bid": last_bid,
        "asof_join": asof_join,
        "bars_1m": lambda: k2_bars(engine, plan),
        "markouts": lambda: k2_markouts(engine, plan),
    }
    return queries, engine


# --- the other engines -------------------------------------------------------------------------------------------


def duckdb_engine(trades: Path, quotes: Path, plan: Plan) -> Engine:
    # One connection for the run, as a DuckDB user keeps one (K2's SQL worker keeps its database too); the views
    # re-read the files on every query.
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW trades AS SELECT * FROM read_parquet('{trades}')")
    con.execute(f"CREATE VIEW quotes AS SELECT * FROM read_parquet('{quotes}')")

    def run(sql: str) -> Callable[[], pa.Table]:
        return lambda: con.sql(sql).to_arrow_table()

    return {
        "max_price": run(MAX_PRICE),
        "hourly_volume": run(HOURLY_VOLUME),
        "last_bid": run(LAST_BID),
        "asof_join": run(ASOF_JOIN),
        "bars_1m": run(bars_sql(plan)),
        "markouts": run(markouts_sql(plan)),
    }


def chdb_engine(trades: Path, quotes: Path, plan: Plan) -> Engine:
    import chdb

    t, q = f"file('{trades}', Parquet)", f"file('{quotes}', Parquet)"
    lo = f"toDateTime64('{plan.start:%Y-%m-%d %H:%M:%S}', 6, 'UTC')"
    hi = f"toDateTime64('{plan.end:%Y-%m-%d %H:%M:%S}', 6, 'UTC')"
    horizon = f"toDateTime64('{plan.end + timedelta(seconds=max(MARKOUT_SECONDS)):%Y-%m-%d %H:%M:%S}', 6, 'UTC')"
    order = "toInt128(toUnixTimestamp64Micro(exchange_timestamp)) * 9223372036854775808 + exchange_sequence_number"
    in_force = f"""
        SELECT symbol, exchange, exchange_timestamp, argMax(bid_price, exchange_sequence_number) AS bid_price,
               argMax(ask_price, exchange_sequence_number) AS ask_price,
               max(exchange_sequence_number) AS quote_seq
        FROM {q} {{where}} GROUP BY symbol, exchange, exchange_timestamp
    """
    markout_joins, markout_cols = [], []
    for i, seconds in enumerate(MARKOUT_SECONDS):
        markout_joins.append(
            f"ASOF LEFT JOIN mids AS m{i} ON t.symbol = m{i}.symbol "
            f"AND addSeconds(t.exchange_timestamp, {seconds}) >= m{i}.exchange_timestamp"
        )
        markout_cols.append(f"m{i}.mid AS mid_{seconds}s")
    where_q = f"WHERE exchange = '{plan.exchange}' AND exchange_timestamp < {horizon}"
    sql = {
        "max_price": f"SELECT symbol, exchange, max(price) AS max_price FROM {t} GROUP BY symbol, exchange",
        "hourly_volume": f"SELECT toDateTime64(toStartOfHour(exchange_timestamp), 6, 'UTC') AS hour, "
        f"sum(volume) AS volume FROM {t} GROUP BY hour",
        "last_bid": f"SELECT symbol, exchange, max(exchange_timestamp) AS quote_timestamp, "
        f"argMax(bid_price, {order}) AS bid_price FROM {q} GROUP BY symbol, exchange",
        "asof_join": f"""
            SELECT t.symbol, t.exchange, t.exchange_timestamp, t.exchange_sequence_number, t.price,
                   q.exchange_timestamp AS quote_timestamp, q.quote_seq AS quote_sequence_number,
                   q.bid_price AS bid_price, q.ask_price AS ask_price
            FROM {t} AS t ASOF LEFT JOIN ({in_force.format(where="")}) AS q
              ON t.symbol = q.symbol AND t.exchange = q.exchange AND t.exchange_timestamp >= q.exchange_timestamp
        """,
        "bars_1m": f"""
            SELECT symbol, toDateTime64(toStartOfMinute(exchange_timestamp), 6, 'UTC') AS bar_start,
                   argMin(price, {order}) AS open, max(price) AS high, min(price) AS low,
                   argMax(price, {order}) AS close, sum(volume) AS volume,
                   sum(toFloat64(price) * toFloat64(volume)) / sum(toFloat64(volume)) AS vwap, count() AS trade_count
            FROM {t} WHERE exchange = '{plan.exchange}' AND exchange_timestamp >= {lo} AND exchange_timestamp < {hi}
            GROUP BY symbol, bar_start
        """,
        "markouts": f"""
            WITH mids AS (
                SELECT symbol, exchange_timestamp, toDecimal128(bid_price + ask_price, 8) / 2 AS mid
                FROM ({in_force.format(where=where_q)})
            )
            SELECT t.symbol, t.exchange_timestamp, t.exchange_sequence_number, t.price, {", ".join(markout_cols)}
            FROM (SELECT * FROM {t} WHERE exchange = '{plan.exchange}' AND exchange_timestamp >= {lo}
                  AND exchange_timestamp < {hi}) AS t
            {" ".join(markout_joins)}
        """,
    }

    def run(text: str) -> Callable[[], pa.Table]:
        return lambda: chdb.query(text + " SETTINGS join_use_nulls = 1, prefer_column_name_to_alias = 1", "ArrowTable")

    return {name: run(text) for name, text in sql.items()}


def polars_engine(trades: Path, quotes: Path, plan: Plan) -> Engine:
    import polars as pl

    order = ["exchange_timestamp", "exchange_sequence_number"]
    lo, hi = plan.start, plan.end

    def t() -> Any:
        return pl.scan_parquet(trades)

    def q() -> Any:
        return pl.scan_parquet(quotes)

    def in_force(frame: Any) -> Any:
        """One quote per (stream, timestamp): the highest sequence."""
        return frame.sort([*order]).unique(["symbol", "exchange", "exchange_timestamp"], keep="last")

    def max_price() -> pa.Table:
        return t().group_by("symbol", "exchange").agg(pl.col("price").max().alias("max_price")).collect().to_arrow()

    def hourly_volume() -> pa.Table:
        out = t().group_by(pl.col("exchange_timestamp").dt.truncate("1h").alias("hour")).agg(pl.col("volume").sum())
        return out.collect().to_arrow()

    def last_bid() -> pa.Table:
        out = (
            q()
            .group_by("symbol", "exchange")
            .agg(
                pl.col("exchange_timestamp").max().alias("quote_timestamp"),
                pl.col("bid_price").sort_by(order).last(),
            )
        )
        return out.collect().to_arrow()

    def asof_join() -> pa.Table:
        quotes_ = in_force(q().select("symbol", "exchange", *order, "bid_price", "ask_price")).rename(
            {"exchange_timestamp": "quote_timestamp", "exchange_sequence_number": "quote_sequence_number"}
        )
        trades_ = t().select("symbol", "exchange", *order, "price").sort("exchange_timestamp")
        out = trades_.join_asof(
            quotes_.sort("quote_timestamp"),
            left_on="exchange_timestamp",
            right_on="quote_timestamp",
            by=["symbol", "exchange"],
            strategy="backward",
            check_sortedness=False,
        )
        return out.collect().to_arrow()

    def bars_1m() -> pa.Table:
        day = t().filter(
            (pl.col("exchange") == plan.exchange)
            & (pl.col("exchange_timestamp") >= lo)
            & (pl.col("exchange_timestamp") < hi)
        )
        out = (
            day.sort(order)
            .group_by("symbol", pl.col("exchange_timestamp").dt.truncate("1m").alias("bar_start"))
            .agg(
                pl.col("price").first().alias("open"),
                pl.col("price").max().alias("high"),
                pl.col("price").min().alias("low"),
                pl.col("price").last().alias("close"),
                pl.col("volume").sum().alias("volume"),
                (
                    (pl.col("price").cast(pl.Float64) * pl.col("volume").cast(pl.Float64)).sum()
                    / pl.col("volume").cast(pl.Float64).sum()
                ).alias("vwap"),
                pl.len().alias("trade_count"),
            )
        )
        return out.collect().to_arrow()

    def markouts() -> pa.Table:
        horizon = hi + timedelta(seconds=max(MARKOUT_SECONDS))
        mids = (
            in_force(q().filter((pl.col("exchange") == plan.exchange) & (pl.col("exchange_timestamp") < horizon)))
            .select("symbol", "exchange_timestamp", ((pl.col("bid_price") + pl.col("ask_price")) / 2).alias("mid"))
            .sort("exchange_timestamp")
            .collect()
            .lazy()
        )
        out = (
            t()
            .filter(
                (pl.col("exchange") == plan.exchange)
                & (pl.col("exchange_timestamp") >= lo)
                & (pl.col("exchange_timestamp") < hi)
            )
            .select("symbol", *order, "price")
            .sort("exchange_timestamp")
        )
        for seconds in MARKOUT_SECONDS:
            out = out.with_columns((pl.col("exchange_timestamp") + timedelta(seconds=seconds)).alias("_at")).join_asof(
                mids.rename({"exchange_timestamp": "_q", "mid": f"mid_{seconds}s"}),
                left_on="_at",
                right_on="_q",
                by="symbol",
                strategy="backward",
                check_sortedness=False,
            )
            out = out.drop("_at", "_q")
        return out.collect().to_arrow()

    return {
        "max_price": max_price,
        "hourly_volume": hourly_volume,
        "last_bid": last_bid,
        "asof_join": asof_join,
        "bars_1m": bars_1m,
        "markouts": markouts,
    }


# --- checking ----------------------------------------------------------------------------------------------------

# The columns each query's answer is compared on (engines may name or add others).
COMPARED = {
    "max_price": ("symbol", "exchange", "max_price"),
    "hourly_volume": ("hour", "volume"),
    "last_bid": ("symbol", "exchange", "quote_timestamp", "bid_price"),
    "bars_1m": ("symbol", "bar_start", "open", "high", "low", "close", "volume", "vwap", "trade_count"),
}


# Compared as floats, to 1e-9 relative or 1e-8 absolute: K2's VWAP is exact, rounded half-even to the stored 8 places
# (so up to 5e-9 off the float, 5e-9 relative on a price near 1.00); the others' is a float.
FLOATS = frozenset({"vwap"})


def _value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value:.8f}"
    if isinstance(value, datetime):
        return round(value.timestamp() * 1_000_000)
    return value


def _decimal_sum(column: pa.ChunkedArray) -> str:
    total = sum((v for v in column.to_pylist() if v is not None), Decimal(0))
    return f"{Decimal(total):.8f}"


def canonical(query: str, table: pa.Table) -> Any:
    """What two engines' answers to `query` must agree on (see the module docstring)."""
    if query == "asof_join":
        matched = table.filter(pc.is_valid(table.column("bid_price")))
        return {
            "rows": table.num_rows,
            "matched": matched.num_rows,
            "sum_bid": _decimal_sum(matched.column("bid_price")),
            "sum_quote_sequence": int(pc.sum(matched.column("quote_sequence_number").cast(pa.int64())).as_py() or 0),
        }
    if query == "markouts":
        # A mid is a multiple of 0.005 (half a tick), so in thousandths it is an exact integer whatever the engine's
        # type for it (DuckDB's decimal / 2 is a DOUBLE, chdb's and polars' stay decimal).
        out: dict[str, Any] = {"rows": table.num_rows}
        for seconds in MARKOUT_SECONDS:
            column = table.column(f"mid_{seconds}s")
            milli = pc.round(pc.multiply(column.cast(pa.float64()), 1000.0)).cast(pa.int64())
            out[f"{seconds}s"] = (column.null_count, int(pc.sum(milli).as_py() or 0))
        return out
    columns = COMPARED[query]
    rows = [
        tuple(float(v) if k in FLOATS and v is not None else _value(v) for k, v in row.items())
        for row in table.select(list(columns)).to_pylist()
    ]
    return sorted(rows, key=lambda row: tuple(v for v in row if not isinstance(v, float)))


def same(a: Any, b: Any) -> bool:
    """Canonical answers equal: exactly, but floats to 1e-9 relative."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-8)
    return bool(a == b)


# --- timing and reporting ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    times_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # query -> engine -> median ms
    rows: dict[str, int] = field(default_factory=dict)
    agree: dict[str, bool] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)


def timed(fn: Callable[[], pa.Table], reps: int) -> tuple[float, pa.Table]:
    # The harness's own garbage (earlier answers, canonicalised) is collected before each engine's reps, so no
    # engine pays for a collection of the benchmark's objects in the middle of its timing.
    gc.collect()
    result = fn()  # warm-up
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), result


def run_all(engines: dict[str, Engine], reps: int, queries: tuple[str, ...] = QUERIES) -> Outcome:
    outcome = Outcome()
    for query in queries:
        answers: dict[str, Any] = {}
        outcome.times_ms[query] = {}
        for name, engine in engines.items():
            ms, table = timed(engine[query], reps)
            outcome.times_ms[query][name] = ms
            outcome.rows.setdefault(query, table.num_rows)
            answers[name] = canonical(query, table)
            print(f"  {query:<14} {name:<8} {ms:>10.1f} ms  {table.num_rows:>10,} rows", file=sys.stderr)
        first_name, first = next(iter(answers.items()))
        agree = True
        for name, answer in answers.items():
            if not same(first, answer):
                agree = False
                outcome.mismatches.append(f"{query}: {name} differs from {first_name}: {_diff(first, answer)}")
        outcome.agree[query] = agree
    return outcome


def _diff(a: Any, b: Any) -> str:
    if isinstance(a, list) and isinstance(b, list):
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if not same(x, y)), min(len(a), len(b)))
        pair = f"{a[first : first + 1]} / {b[first : first + 1]}"
        return f"{len(a)} vs {len(b)} rows; first difference, row {first}: {pair}"
    return f"{a} vs {b}"


def report(outcome: Outcome) -> None:
    names = list(next(iter(outcome.times_ms.values())))
    header = f"{'query':<14} {'rows':>10} " + " ".join(f"{n + ' ms':>12}" for n in names)
    header += f" {'fastest':>8} {'k2/fastest':>10} {'goal':>6} {'checked':>8}"
    print(header)
    print("-" * len(header))
    for query, times in outcome.times_ms.items():
        fastest = min(times, key=lambda n: times[n])
        ratio = times["k2"] / times[fastest] if "k2" in times else float("nan")
        goal = "lead" if query in MUST_LEAD else f"<={GOAL_RATIO}x"
        met = (fastest == "k2") if query in MUST_LEAD else ratio <= GOAL_RATIO
        print(
            f"{query:<14} {outcome.rows.get(query, 0):>10,} "
            + " ".join(f"{times[n]:>12.1f}" for n in names)
            + f" {fastest:>8} {ratio:>9.2f}x {goal + (' ok' if met else ' MISS'):>6} "
            + f"{'equal' if outcome.agree[query] else 'MISMATCH':>8}"
        )


def conditions(counts: dict[str, int]) -> dict[str, Any]:
    import chdb
    import polars
    import pyiceberg

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "chdb": chdb.__version__,
        "polars": polars.__version__,
        "pyiceberg": pyiceberg.__version__,
        **counts,
    }


# --- main --------------------------------------------------------------------------------------------------------


def prepare(shape: Shape, workdir: Path, *, reuse: bool = False) -> tuple[Settings, Path, Path, Plan, dict[str, int]]:
    """Generate the rows, lay them out for K2 and write the Parquet files the other engines read; with `reuse`, keep
    what an earlier run of the same shape left in `workdir`. Returns the row counts too."""
    settings = Settings(home=workdir / "k2home", catalog=CatalogSettings(name="tsbench"))
    settings.query.tail_enabled = False
    trades_path, quotes_path = workdir / "trades.parquet", workdir / "quotes.parquet"
    if not (reuse and trades_path.exists() and quotes_path.exists() and settings.home.exists()):
        trades, quotes = generate(shape, settings)
        pq.write_table(trades, trades_path)
        pq.write_table(quotes, quotes_path)
        lay_out(settings, [(TRADES, trades), (QUOTES, quotes)], utc_days(shape, settings))
    counts = {
        "trades": pq.ParquetFile(trades_path).metadata.num_rows,
        "quotes": pq.ParquetFile(quotes_path).metadata.num_rows,
    }
    # The per-day queries: nyse (its session sits inside one UTC day) on the second trading day.
    day = shape.trading_days()[min(1, shape.days - 1)]
    plan = Plan("nyse", day, tuple(shape.names.tolist()))
    return settings, trades_path, quotes_path, plan, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=Shape.symbols)
    parser.add_argument("--days", type=int, default=Shape.days)
    parser.add_argument("--trades-per-day", type=int, default=Shape.trades_per_day, help="all symbols and exchanges")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies --trades-per-day")
    parser.add_argument("--seed", type=int, default=Shape.seed)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--engines", default="k2,duckdb,chdb,polars", help="comma-separated; k2 first is the reference")
    parser.add_argument("--queries", default=",".join(QUERIES))
    parser.add_argument(
        "--k2-asof",
        choices=("engine", "sql", "with_quote"),
        default="engine",
        help="K2's as-of join: asof_join of each whole exchange (native), run_sql's ASOF JOIN, or the with-quote "
        "listing (fetch_many, per symbol: slow)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary directory")
    parser.add_argument("--reuse", action="store_true", help="keep the rows an earlier run left in --workdir")
    parser.add_argument("--no-check", action="store_true", help="exit 0 even if the engines' answers differ")
    args = parser.parse_args(argv)

    shape = Shape(args.symbols, args.days, int(args.trades_per_day * args.scale), args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="k2-tsbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    settings, trades_path, quotes_path, plan, counts = prepare(shape, workdir, reuse=args.reuse)
    facts = conditions(counts)
    print(
        f"# tsbench {facts['date']}: {counts['trades']:,} trades, {counts['quotes']:,} quotes, {shape.symbols} symbols "
        f"x {len(EXCHANGES)} exchanges, {shape.days} days; {facts['cores']} cores (load {facts['load_avg'][0]:.1f}), "
        f"python {facts['python']}, duckdb {facts['duckdb']}, chdb {facts['chdb']}, polars {facts['polars']}, "
        f"pyiceberg {facts['pyiceberg']}; generated and loaded in {time.perf_counter() - began:.0f} s; workdir "
        f"{workdir}"
    )
    wanted = [e for e in args.engines.split(",") if e]
    engines: dict[str, Engine] = {}
    k2_handle: QueryEngine | None = None
    for name in wanted:
        if name == "k2":
            engines["k2"], k2_handle = k2_engine(settings, plan, utc_days(shape, settings), asof=args.k2_asof)
        elif name == "duckdb":
            engines["duckdb"] = duckdb_engine(trades_path, quotes_path, plan)
        elif name == "chdb":
            engines["chdb"] = chdb_engine(trades_path, quotes_path, plan)
        elif name == "polars":
            engines["polars"] = polars_engine(trades_path, quotes_path, plan)
        else:
            parser.error(f"unknown engine {name!r}")
    queries = tuple(q for q in args.queries.split(",") if q)
    overhead: dict[str, float] = {}
    try:
        outcome = run_all(engines, args.reps, queries)
        if k2_handle is not None:
            overhead = run_sql_overhead(k2_handle, SQL_LIMITS)
    finally:
        if k2_handle is not None:
            k2_handle.close()
    report(outcome)
    for query, path in K2_PATHS.items():
        print(f"K2 path, {query}: {path}")
    if overhead:
        print("run_sql fixed cost (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in overhead.items()))
    for line in outcome.mismatches:
        print(f"!!! MISMATCH {line}")
    print(
        json.dumps(
            {"tsbench": facts | {"symbols": shape.symbols, "days": shape.days, "reps": args.reps}}
            | {"median_ms": outcome.times_ms, "rows": outcome.rows, "agree": outcome.agree}
            | {"k2_paths": K2_PATHS, "run_sql_overhead_ms": overhead}
        )
    )
    return 1 if outcome.mismatches and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
