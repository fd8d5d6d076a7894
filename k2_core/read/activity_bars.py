"""Tick, volume and dollar bars (de Prado, "Advances in Financial Machine Learning", 2.3.1): bars that close after a
fixed amount of activity rather than of time.

Trades are taken in exchange order `(exchange_timestamp, exchange_sequence_number)` from the first trade of the
requested window. A bar accumulates trades until its measure (1 per trade, the volume, or the notional
`price * volume`) reaches `size`: the trade that makes it `>= size` is the bar's last, and the next bar starts from
zero with the next trade. Trades are never split, so a volume or dollar bar usually overshoots `size`. The last bar of
the window may not reach `size`: it is returned with `complete = false` (every other bar has `complete = true`).

The columns are a bar's (`k2_core.model.bars`, the one definition: OHLC in exchange order, exact VWAP rounded
half-even) plus `bar_end` (its last trade's time) and `complete`; `bar_start` is its first trade's time.

The measure's running total is computed exactly by DuckDB (a window sum in decimals); where each bar ends is found by
binary search on that running total, one search per *bar* (`bisect`), never a Python step per trade.
"""

from __future__ import annotations

from bisect import bisect_left
from decimal import Decimal
from itertools import pairwise

import duckdb
import numpy as np
import pyarrow as pa

from k2_core.lake import scan
from k2_core.model.bars import BARS_ARROW_SCHEMA, bars_sql
from k2_core.read.params import BarSpec, TimeRange
from k2_core.read.routing import Route, Sources, Stream

ACTIVITY_BARS_SCHEMA: pa.Schema = pa.schema(
    [
        *[BARS_ARROW_SCHEMA.field(name) for name in ("symbol", "exchange", "bar_start")],
        pa.field("bar_end", pa.timestamp("us", tz="UTC"), nullable=False),
        *[BARS_ARROW_SCHEMA.field(name) for name in BARS_ARROW_SCHEMA.names[3:]],
        pa.field("complete", pa.bool_(), nullable=False),
    ]
)

_MEASURES = {
    "tick": "1",
    "volume": "volume",
    "dollar": "CAST(price AS DECIMAL(38, 8)) * CAST(volume AS DECIMAL(38, 8))",
}


def ends(running: list[Decimal], size: Decimal) -> list[int]:
    """Where each bar ends (exclusive row index), given the running total of the measure over trades in order: a bar
    from row `i` ends at the first row whose total reaches the total before `i` plus `size`; the last may fall short."""
    out: list[int] = []
    start, before, count = 0, Decimal(0), len(running)
    while start < count:
        stop = min(bisect_left(running, before + size, lo=start), count - 1) + 1
        out.append(stop)
        before, start = running[stop - 1], stop
    return out


def activity_bars(sources: Sources, stream: Stream, spec: BarSpec, window: TimeRange, route: Route) -> pa.Table:
    """One symbol's tick, volume or dollar bars over the trades of `window` as routed."""
    with scan.connect() as con:
        sources.market_view(con, stream, window, route)
        return from_view(con, "market", spec)


def from_view(con: duckdb.DuckDBPyConnection, view: str, spec: BarSpec) -> pa.Table:
    """Tick, volume or dollar bars of every symbol in `view` (trades of one exchange), each symbol counted on its
    own from its first trade in the view; by symbol, then bar."""
    assert spec.size is not None
    measure = _MEASURES[spec.bar_type]
    ordered = con.sql(
        f"""
        SELECT symbol, exchange, exchange_timestamp, exchange_sequence_number, price, volume,
               sum({measure}) OVER (PARTITION BY symbol ORDER BY exchange_timestamp, exchange_sequence_number
                                    ROWS UNBOUNDED PRECEDING) AS k2_running
        FROM {view}
        ORDER BY symbol, exchange_timestamp, exchange_sequence_number
        """
    ).to_arrow_table()
    running: list[Decimal] = ordered.column("k2_running").to_pylist()  # exact: Decimal (int for tick bars)
    symbols = ordered.column("symbol").to_numpy(zero_copy_only=False)
    firsts = np.flatnonzero(np.r_[True, symbols[1:] != symbols[:-1]]) if len(symbols) else np.array([], np.int64)
    ids = np.empty(len(running), np.int64)
    complete = np.empty(len(running), np.bool_)
    next_id = 0
    for lo, hi in pairwise([*firsts.tolist(), len(running)] if len(firsts) else []):
        stops = ends(running[lo:hi], spec.size)
        lengths = np.diff(np.array([0, *stops], dtype=np.int64)).astype(np.int64)
        ids[lo:hi] = np.repeat(np.arange(next_id, next_id + len(stops), dtype=np.int64), lengths)
        last_sum = running[hi - 1] - (running[lo + stops[-2] - 1] if len(stops) > 1 else 0)
        complete[lo:hi] = True
        if last_sum < spec.size:
            complete[lo + (stops[-2] if len(stops) > 1 else 0) : hi] = False
        next_id += len(stops)
    with_ids = ordered.append_column("k2_bar", pa.array(ids)).append_column("k2_complete", pa.array(complete))
    con.register("k2_ordered", with_ids)
    extra = {"k2_first": "min(exchange_timestamp)", "k2_last": "max(exchange_timestamp)"}
    extra |= {"k2_done": "bool_and(k2_complete)", "k2_id": "min(k2_bar)"}
    found = con.sql(
        f"""
        SELECT symbol, exchange, k2_first AS bar_start, k2_last AS bar_end, open, high, low, close, volume, vwap,
               trade_count, k2_done AS complete
        FROM ({bars_sql("k2_ordered", bucket="k2_bar", extra=extra)})
        ORDER BY symbol, k2_id
        """
    ).to_arrow_table()
    return found.cast(ACTIVITY_BARS_SCHEMA)
