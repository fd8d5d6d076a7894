"""Bars of every symbol of an exchange in one DuckDB pass: one Iceberg scan of the exchange's trades in the window
(no per-symbol filter, so one plan and one read instead of one per symbol), grouped by symbol by the same bar SQL
as one symbol's bars (`k2_core.read.bars.from_view`, `k2_core.read.activity_bars.from_view`).

Used for committed data only: a window reaching into the realtime tail is answered symbol by symbol, as the tail is
merged per symbol. Precomputed 1m / 1d tables are not consulted here; they hold the same bars by construction."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pyarrow as pa
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan

from k2_core.duck import sql_text, sql_time
from k2_core.lake import scan
from k2_core.model.bars import BARS_ARROW_SCHEMA
from k2_core.read import activity_bars, bars
from k2_core.read.params import BarSpec, TimeRange
from k2_core.read.routing import TIME_COLUMN, Sources, Stream


def compute(sources: Sources, stream: Stream, spec: BarSpec, window: TimeRange) -> pa.Table:
    """Bars of `spec` of every symbol with trades on `stream.exchange` in `window`, at the stream's snapshot, by
    symbol then bar."""
    exchange = stream.exchange
    row_filter = And(
        And(
            GreaterThanOrEqual(term=TIME_COLUMN, value=window.start.isoformat()),
            LessThan(term=TIME_COLUMN, value=window.end.isoformat()),
        ),
        EqualTo(term="exchange", value=exchange),
    )
    with scan.connect() as con:
        scan.register(
            con,
            "market_ice",
            stream.table,
            stream.table_def,
            row_filter,
            stream.choice.snapshot_id,
            {"exchange": exchange, "start": window.start, "end": window.end},
            plans=sources.plans,
            direct_reads=sources.direct_reads,
        )
        con.sql(
            f"CREATE OR REPLACE TEMP VIEW market AS SELECT * FROM market_ice WHERE exchange = {sql_text(exchange)} "
            f"AND {TIME_COLUMN} >= {sql_time(window.start)} AND {TIME_COLUMN} < {sql_time(window.end)}"
        )
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
