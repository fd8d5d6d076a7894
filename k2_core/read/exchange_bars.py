"""Bars of every symbol of an exchange in one DuckDB pass: one scan of the exchange's trades in the window (the
stream of every symbol, `Stream.symbol` None: one plan and one read instead of one per symbol, the realtime tail
merged as for one symbol), grouped by symbol by the same bar SQL as one symbol's bars (`k2_core.read.bars.from_view`,
`k2_core.read.activity_bars.from_view`). The precomputed 1m / 1d tables are not consulted here: they hold the same
bars by construction, per symbol."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pyarrow as pa

from k2_core.lake import scan
from k2_core.model.bars import BARS_ARROW_SCHEMA
from k2_core.read import activity_bars, bars
from k2_core.read.params import BarSpec, TimeRange
from k2_core.read.routing import Route, Sources, Stream


def compute(sources: Sources, stream: Stream, spec: BarSpec, window: TimeRange, route: Route) -> pa.Table:
    """Bars of `spec` of every symbol with trades on `stream.exchange` in `window` as routed, by symbol then bar."""
    assert stream.symbol is None, "the stream of the whole exchange"
    with scan.connect() as con:
        sources.market_view(con, stream, window, route)
        if spec.bar_type != "time":
            return activity_bars.from_view(con, "market", spec)
        return bars.from_view(con, "market", spec, window)


def by_symbol(table: pa.Table) -> dict[str, pa.Table]:
    """A table sorted by symbol, cut into each symbol's rows (zero-copy slices)."""
    if table.num_rows == 0:
        return {}
    symbols = table.column("symbol").to_numpy(zero_copy_only=False)
    firsts = np.flatnonzero(np.r_[True, symbols[1:] != symbols[:-1]])
    bounds = [*firsts.tolist(), len(symbols)]
    return {str(symbols[lo]): table.slice(lo, hi - lo) for lo, hi in pairwise(bounds)}


def empty(spec: BarSpec) -> pa.Table:
    """No bars, in the schema of `spec`'s bars."""
    return (activity_bars.ACTIVITY_BARS_SCHEMA if spec.bar_type != "time" else BARS_ARROW_SCHEMA).empty_table()
