"""Bars for a query, from whichever source can give them exactly: the precomputed tables `market.ohlcv_1m` /
`market.ohlcv_1d` for the days they provably hold the current answer for (`k2_core.read.precomputed`), bars computed
from trades (`k2_core.model.bars`, the one definition of a bar) for the other days, and trades plus the realtime tail
for ranges reaching into the last minutes.

Bars that came from several sources carry the list in their schema metadata, so a cached answer still says where it
came from.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table

from k2_core import duck
from k2_core.duck import sql_text
from k2_core.lake import scan
from k2_core.logging import get_logger
from k2_core.model import buckets
from k2_core.model.bars import BARS_ARROW_SCHEMA, INTERVALS, PRECOMPUTED_TABLES, Interval, bars_sql, compute_bars
from k2_core.model.tables import SUMMARY_SCHEMA
from k2_core.read import precomputed
from k2_core.read.params import BarSpec, TimeRange, align_down
from k2_core.read.result import ICEBERG, PRECOMPUTED
from k2_core.read.routing import Route, Sources, Stream

logger = get_logger(__name__)

_SOURCES_KEY = b"k2.sources"


def widen(window: TimeRange, interval: Interval) -> TimeRange:
    """Round start down and end up to whole bars, so that no bar is partial."""
    width = INTERVALS[interval]
    start = align_down(window.start, interval)
    end = align_down(window.end, interval)
    if end < window.end:
        end += width
    return TimeRange(start, end)


def read_bars(
    sources: Sources, stream: Stream, interval: Interval, window: TimeRange, route: Route, *, use_precomputed: bool
) -> pa.Table:
    """Bars of one stream of trades in `window`, from the sources `route` allows, labelled with the sources that
    served."""
    if route.realtime:
        return labelled(computed(sources, stream, interval, window, route), route.sources)
    bars_table = precomputed_table(sources, interval) if use_precomputed else None
    snapshot_id = stream.choice.snapshot_id
    if bars_table is None or snapshot_id is None:
        return labelled(computed(sources, stream, interval, window, Route(window.end, False)), (ICEBERG,))
    days = precomputed.days_between(window.start, window.end)
    fresh = precomputed.fresh_days(stream.table, bars_table, days, snapshot_id)
    parts, served = [], []
    if fresh:
        assert stream.symbol is not None, "bars are of one instrument"
        parts.append(precomputed.read_days(bars_table, stream.symbol, stream.exchange, fresh, window.start, window.end))
        served.append(PRECOMPUTED)
    fresh_set = set(fresh)
    for run in runs([d for d in days if d not in fresh_set]):
        lo = max(window.start, datetime.combine(run[0], datetime.min.time(), tzinfo=UTC))
        hi = min(window.end, datetime.combine(run[-1], datetime.min.time(), tzinfo=UTC) + timedelta(days=1))
        parts.append(computed(sources, stream, interval, TimeRange(lo, hi), Route(hi, False)))
        if ICEBERG not in served:
            served.append(ICEBERG)
    logger.info(
        "bars",
        extra={"interval": interval, "days": len(days), "precomputed_days": len(fresh), "symbol": stream.symbol},
    )
    bars = pa.concat_tables(parts).sort_by("bar_start") if parts else BARS_ARROW_SCHEMA.empty_table()
    return labelled(bars, tuple(served))


def computed(sources: Sources, stream: Stream, interval: Interval, window: TimeRange, route: Route) -> pa.Table:
    """Bars computed from the trades the route reads."""
    with scan.connect() as con:
        sources.market_view(con, stream, window, route)
        return compute_bars(con.sql("SELECT * FROM market"), interval)


def day_summary(bars: pa.Table, symbol: str, exchange: str, day: date) -> pa.Table:
    """One day's single bar as a summary row; a day without trades is a row with trade_count 0, volume 0 and no
    prices, because "nothing traded" is an answer, not a missing one."""
    row: dict[str, Any] = {"symbol": symbol, "exchange": exchange, "date": day}
    if bars.num_rows:
        found = bars.to_pylist()[0]
        row |= {k: found[k] for k in ("open", "high", "low", "close", "volume", "vwap", "trade_count")}
    else:
        row |= {"open": None, "high": None, "low": None, "close": None, "vwap": None}
        row |= {"volume": pa.scalar(0, pa.decimal128(38, 8)).as_py(), "trade_count": 0}
    return pa.Table.from_pylist([row], schema=SUMMARY_SCHEMA)


def labelled(bars: pa.Table, served: tuple[str, ...]) -> pa.Table:
    return bars.replace_schema_metadata({**(bars.schema.metadata or {}), _SOURCES_KEY: ",".join(served).encode()})


def sources_of(bars: pa.Table, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = (bars.schema.metadata or {}).get(_SOURCES_KEY)
    return tuple(raw.decode().split(",")) if raw else default


def unlabelled(bars: pa.Table) -> pa.Table:
    return bars.replace_schema_metadata(None)


def precomputed_table(sources: Sources, interval: Interval) -> Table | None:
    """The precomputed bar table of `interval` (1m, 1d), if there is one and it exists."""
    name = PRECOMPUTED_TABLES.get(interval)
    if name is None:
        return None
    try:
        return sources.loader.load(name)
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def runs(days: list[date]) -> list[list[date]]:
    """Consecutive days grouped: [1, 2, 4] -> [[1, 2], [4]]."""
    runs: list[list[date]] = []
    for day in days:
        if runs and runs[-1][-1] + timedelta(days=1) == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


# --- any interval, any alignment, filled ------------------------------------------------------------------------

FILLED_BARS_SCHEMA: pa.Schema = pa.schema(
    [
        field.with_nullable(True) if field.name in ("open", "high", "low", "close", "vwap") else field
        for field in BARS_ARROW_SCHEMA
    ]
)


def segments_for(spec: BarSpec, window: TimeRange) -> pa.Table:
    assert spec.interval is not None
    return buckets.segments(spec.interval, spec.align, spec.hours, window.start, window.end)


def widen_spec(spec: BarSpec, window: TimeRange) -> TimeRange:
    """`widen` for any interval and alignment: out to whole bars (the legacy intervals exactly as `widen`)."""
    if spec.legacy is not None:
        return widen(window, spec.legacy)
    assert spec.interval is not None
    if buckets.epoch_aligned(spec.interval, spec.align):
        assert spec.interval.fixed is not None
        width = spec.interval.fixed
        start = buckets.bucket_of(window.start, width)
        end = buckets.bucket_of(window.end, width)
        return TimeRange(start, end + width if end < window.end else end)
    start, end = buckets.widen(segments_for(spec, window), window.start, window.end)
    return TimeRange(start, end)


def computed_spec(sources: Sources, stream: Stream, spec: BarSpec, window: TimeRange, route: Route) -> pa.Table:
    """Time bars of any interval and alignment computed from the trades the route reads."""
    with scan.connect() as con:
        sources.market_view(con, stream, window, route)
        return from_view(con, "market", spec, window)


def from_view(con: duckdb.DuckDBPyConnection, view: str, spec: BarSpec, window: TimeRange) -> pa.Table:
    """Time bars of every symbol in `view` (trades): each trade is assigned its bar by an ASOF join on the bar
    segments (`k2_core.model.buckets`), or by arithmetic on its time for fixed widths on the UTC epoch, then
    aggregated by `bars_sql`, the one definition of a bar. Trades in no segment (outside session hours) are in no
    bar. By symbol, then bar_start."""
    assert spec.interval is not None
    if buckets.epoch_aligned(spec.interval, spec.align):
        assert spec.interval.fixed is not None
        width = spec.interval.fixed // timedelta(microseconds=1)
        sql = bars_sql(view, bucket=f"(epoch_us(exchange_timestamp) // {width}) * {width}")
    else:
        con.register("k2_segments", segments_for(spec, window))
        con.sql(
            f"""
            CREATE OR REPLACE TEMP VIEW k2_bucketed AS
            SELECT m.*, s.bucket_us AS k2_bucket
            FROM (SELECT *, epoch_us(exchange_timestamp) AS k2_us FROM {view}) m
            ASOF JOIN k2_segments s ON m.k2_us >= s.seg_start
            WHERE m.k2_us < s.seg_end
            """
        )
        sql = bars_sql("k2_bucketed", bucket="k2_bucket")
    return con.sql(sql).to_arrow_table().cast(BARS_ARROW_SCHEMA)


def fill(bars: pa.Table, spec: BarSpec, window: TimeRange, symbol: str, exchange: str) -> pa.Table:
    """One symbol's bars filled (`fill_many`), in bar order."""
    return fill_many(bars, spec, window, [symbol], exchange)


def fill_many(bars: pa.Table, spec: BarSpec, window: TimeRange, symbols: list[str], exchange: str) -> pa.Table:
    """The bars of `symbols` (rows of other symbols left out) with a row for every interval of `window` for each
    (every bar start of the alignment's segments in the window: for sessions, session intervals of trading days
    only), by symbol then bar, in one query for them all. An interval without trades is a row with volume 0 and
    trade_count 0 (how a filled row is told from a real one) and prices by `spec.fill`:

    - `null`: no prices, no vwap.
    - `previous`: open = high = low = close = the previous bar's close (null before the window's first trade); vwap
      null, because nothing traded.
    - `linear`: open = high = low = close interpolated linearly, by interval count, between the closes of the bars
      before and after, exactly and rounded half-even to 8 places; null where either neighbour is missing; vwap null.
    """
    if spec.fill == "none":
        return bars
    assert spec.interval is not None
    if buckets.epoch_aligned(spec.interval, spec.align):
        assert spec.interval.fixed is not None
        step = spec.interval.fixed // timedelta(microseconds=1)
        first = _micros(buckets.bucket_of(window.start, spec.interval.fixed))
        starts = np.arange(first, _micros(window.end), step, dtype=np.int64)
    else:
        starts = buckets.bar_starts(segments_for(spec, window), window.start, window.end)
    grid = pa.table({"bucket_us": pa.array(starts, pa.int64())})
    if spec.fill == "previous":
        price = (
            "last_value(b.close IGNORE NULLS) OVER (PARTITION BY g.symbol ORDER BY g.bucket_us "
            "ROWS UNBOUNDED PRECEDING)"
        )
    elif spec.fill == "null":
        price = "NULL"
    else:
        price = "k2_interpolated"
    with duck.connect() as con:
        con.register("g0", grid)
        con.register("k2_symbols", pa.table({"symbol": pa.array(symbols, pa.string())}))
        con.register("b", bars)
        con.sql(
            """
            CREATE TEMP VIEW g AS
            SELECT s.symbol, g0.bucket_us, row_number() OVER (PARTITION BY s.symbol ORDER BY g0.bucket_us) AS idx
            FROM k2_symbols s CROSS JOIN g0
            """
        )
        con.sql(f"CREATE TEMP VIEW k2_interp AS {_INTERPOLATED}")
        filled = con.sql(
            f"""
            SELECT g.symbol, {sql_text(exchange)} AS exchange,
                   make_timestamptz(g.bucket_us) AS bar_start,
                   coalesce(b.open, {price}) AS open, coalesce(b.high, {price}) AS high,
                   coalesce(b.low, {price}) AS low, coalesce(b.close, {price}) AS close,
                   coalesce(b.volume, 0) AS volume, b.vwap, coalesce(b.trade_count, 0) AS trade_count
            FROM g
            LEFT JOIN b ON b.symbol = g.symbol AND epoch_us(b.bar_start) = g.bucket_us
            LEFT JOIN k2_interp i ON i.symbol = g.symbol AND i.bucket_us = g.bucket_us
            ORDER BY g.symbol, g.bucket_us
            """
        ).to_arrow_table()
    return filled.cast(FILLED_BARS_SCHEMA).replace_schema_metadata(bars.schema.metadata)


# Linear interpolation of closes in exact integers (1e-8 units), rounded half-even, by interval index (per symbol).
_INTERPOLATED = """
WITH j AS (
    SELECT g.symbol, g.bucket_us, g.idx,
           CAST(CAST(b.close AS DECIMAL(38, 8)) * 100000000 AS HUGEINT) AS c,
           CASE WHEN b.close IS NOT NULL THEN g.idx END AS ci
    FROM g LEFT JOIN b ON b.symbol = g.symbol AND epoch_us(b.bar_start) = g.bucket_us
),
n AS (
    SELECT *,
           last_value(c IGNORE NULLS) OVER w_before AS pc,
           last_value(ci IGNORE NULLS) OVER w_before AS pi,
           first_value(c IGNORE NULLS) OVER w_after AS nc,
           first_value(ci IGNORE NULLS) OVER w_after AS ni
    FROM j
    WINDOW w_before AS (PARTITION BY symbol ORDER BY idx ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
           w_after AS (PARTITION BY symbol ORDER BY idx ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)
),
d AS (
    SELECT symbol, bucket_us, pc, (nc - pc) * (idx - pi) AS num, CAST(ni - pi AS HUGEINT) AS den FROM n
    WHERE c IS NULL AND pc IS NOT NULL AND nc IS NOT NULL
),
r AS (
    SELECT symbol, bucket_us, pc, sign(num) AS s, abs(num) // den AS q, abs(num) % den AS rem, den FROM d
)
SELECT symbol, bucket_us,
       CAST(CAST(pc + s * (q + CASE WHEN 2 * rem > den OR (2 * rem = den AND q % 2 = 1) THEN 1 ELSE 0 END)
                 AS DECIMAL(38, 0)) * CAST(0.00000001 AS DECIMAL(9, 8)) AS DECIMAL(18, 8)) AS k2_interpolated
FROM r
"""


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
