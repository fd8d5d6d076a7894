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

import pyarrow as pa
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table

from k2_core.lake import scan
from k2_core.logging import get_logger
from k2_core.model.bars import BARS_ARROW_SCHEMA, INTERVALS, PRECOMPUTED_TABLES, Interval, compute_bars
from k2_core.model.tables import SUMMARY_SCHEMA
from k2_core.read import precomputed
from k2_core.read.params import TimeRange, align_down
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
    bars_table = _precomputed_table(sources, interval) if use_precomputed else None
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
    for run in _runs([d for d in days if d not in fresh_set]):
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


def _precomputed_table(sources: Sources, interval: Interval) -> Table | None:
    name = PRECOMPUTED_TABLES.get(interval)
    if name is None:
        return None
    try:
        return sources.loader.load(name)
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def _runs(days: list[date]) -> list[list[date]]:
    """Consecutive days grouped: [1, 2, 4] -> [[1, 2], [4]]."""
    runs: list[list[date]] = []
    for day in days:
        if runs and runs[-1][-1] + timedelta(days=1) == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs
