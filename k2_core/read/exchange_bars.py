"""Bars of every symbol of an exchange in one DuckDB pass: one scan of the exchange's trades in the window (the
stream of every symbol, `Stream.symbol` None: one plan and one read instead of one per symbol, the realtime tail
merged as for one symbol), grouped by symbol by the same bar SQL as one symbol's bars (`k2_core.read.bars.from_view`,
`k2_core.read.activity_bars.from_view`).

K2's original intervals with precomputed tables (1m, 1d: UTC time bars, no fill) are read as one symbol's are
(`k2_core.read.bars.read_bars`): the days the precomputed table provably holds the current answer for
(`k2_core.read.precomputed.fresh_days`) from that table, in one scan for the whole exchange; the other days computed
from trades, one scan per run of consecutive days; labelled with the sources that served."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2_core.lake import scan
from k2_core.logging import get_logger
from k2_core.model.bars import BARS_ARROW_SCHEMA, OHLCV_TABLES
from k2_core.read import activity_bars, bars, precomputed
from k2_core.read.params import BarSpec, TimeRange
from k2_core.read.result import ICEBERG, PRECOMPUTED
from k2_core.read.routing import Route, Sources, Stream

logger = get_logger(__name__)


def compute(sources: Sources, stream: Stream, spec: BarSpec, window: TimeRange, route: Route) -> pa.Table:
    """Bars of `spec` of every symbol with trades on `stream.exchange` in `window` as routed, by symbol then bar."""
    assert stream.symbol is None, "the stream of the whole exchange"
    with scan.connect() as con:
        sources.market_view(con, stream, window, route)
        if spec.bar_type != "time":
            return activity_bars.from_view(con, "market", spec)
        return bars.from_view(con, "market", spec, window)


def read(
    sources: Sources, stream: Stream, spec: BarSpec, window: TimeRange, route: Route, *, use_precomputed: bool
) -> pa.Table:
    """Bars of `spec` of every symbol of `stream.exchange` in `window` (time bars in no particular order, activity
    bars by symbol then bar), labelled with the sources that served (`bars.labelled`). Precomputed days serve when
    `spec` is a precomputed interval, nothing is read from the realtime tail and `use_precomputed` (not for a pinned
    read: a past snapshot's bars are computed, as `read_bars` does); otherwise `compute`."""
    interval = spec.legacy
    bars_table = bars.precomputed_table(sources, interval) if interval is not None and use_precomputed else None
    snapshot_id = stream.choice.snapshot_id
    if route.realtime or spec.fill != "none" or bars_table is None or snapshot_id is None:
        return bars.labelled(compute(sources, stream, spec, window, route), route.sources)
    assert interval is not None
    days = precomputed.days_between(window.start, window.end)
    fresh = precomputed.fresh_days(stream.table, bars_table, days, snapshot_id)
    parts: list[pa.Table] = []
    served: list[str] = []
    if fresh:
        table_def = OHLCV_TABLES[interval]
        parts.append(
            precomputed.read_exchange_days(
                bars_table, table_def, stream.exchange, fresh, window.start, window.end, plans=sources.plans
            )
        )
        served.append(PRECOMPUTED)
    fresh_set = set(fresh)
    for run in bars.runs([d for d in days if d not in fresh_set]):
        lo = max(window.start, datetime.combine(run[0], datetime.min.time(), tzinfo=UTC))
        hi = min(window.end, datetime.combine(run[-1], datetime.min.time(), tzinfo=UTC) + timedelta(days=1))
        parts.append(compute(sources, stream, spec, TimeRange(lo, hi), Route(hi, False)))
        if ICEBERG not in served:
            served.append(ICEBERG)
    logger.info(
        "exchange bars",
        extra={"interval": interval, "days": len(days), "precomputed_days": len(fresh), "exchange": stream.exchange},
    )
    found = pa.concat_tables(parts) if parts else BARS_ARROW_SCHEMA.empty_table()
    return bars.labelled(found, tuple(served))


LISTING_ORDER = [("bar_start", "ascending"), ("k2_place", "ascending"), ("k2_ord", "ascending")]


def placed(table: pa.Table, spec: BarSpec, wanted: Sequence[str]) -> pa.Table:
    """`read`'s bars in the order a several-symbol listing pages by (`LISTING_ORDER`), with each row's `k2_place`
    (its symbol's place in `wanted`; rows of a symbol not in it are left out) and `k2_ord` (its place among its
    symbol's bars of that start: always 0 for time bars, whose starts differ; activity bars of one symbol may
    share a start). Computed for the whole table at once."""
    column = table.column("symbol")
    place = pc.index_in(column, value_set=pa.array(wanted, column.type)).cast(pa.int64())
    count = table.num_rows
    if spec.bar_type == "time":
        ordinal = pa.array(np.zeros(count, np.int64))
    else:  # by symbol then bar, as computed
        symbols = column.to_numpy(zero_copy_only=False)
        firsts = np.r_[True, symbols[1:] != symbols[:-1]] if count else np.zeros(0, np.bool_)
        starts = np.maximum.accumulate(np.where(firsts, np.arange(count), 0)) if count else np.zeros(0, np.int64)
        ordinal = pa.array(np.arange(count) - starts, pa.int64())
    out = table.append_column("k2_place", place).append_column("k2_ord", ordinal).filter(pc.is_valid(place))
    return out.sort_by(LISTING_ORDER)
