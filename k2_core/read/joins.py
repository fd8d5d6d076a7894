"""Trades with the quote in force: each trade joined to the latest quote of its stream at or before it.

A researcher asks "what was the spread when this traded"; answering it outside K2 means reading both streams whole and
getting the tie rules wrong. Here the quotes are read for the page's time span only, plus the one quote in force when
the page starts; the quotes snapshot is chosen to match the trades' (a cursor pins both, time travel reads both as of
the same moment), so a listing never joins trades of one moment to quotes of another.

The trades keep every column they were read with (`k2_core.read.routing`: the snapshot's, plus the tail's when it
served); the quote's columns are fixed (`k2_core.model.tables.trades_with_quote_schema`). The quotes read may mix
snapshot files, the one quote in force before the page and tail rows of different columns: they are unioned by name.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from k2_core.lake import scan
from k2_core.model.tables import QUOTES, trades_with_quote_schema
from k2_core.read.cursor import Cursor
from k2_core.read.params import AsOf, MarketQuery, TimeRange
from k2_core.read.routing import TIME_COLUMN, Sources, Stream
from k2_core.read.snapshots import SnapshotChoice, choose_snapshot


def quote_snapshot(
    sources: Sources, trades: SnapshotChoice, as_of: AsOf | None, position: Cursor | None
) -> SnapshotChoice:
    """The quotes snapshot to join: the one a cursor pinned; for time travel, the one current at the
    requested time (for a trades snapshot id: at that snapshot's commit); else the current one."""
    quotes = sources.load(QUOTES)
    if position is not None and position.quote_snapshot_id is not None:
        return sources.pinned(quotes, QUOTES, position.quote_snapshot_id)
    if as_of is not None and as_of.timestamp is not None:
        return choose_snapshot(quotes, as_of, QUOTES.name)
    if as_of is not None:
        if trades.committed_at is None:
            return SnapshotChoice(None, None)
        return choose_snapshot(quotes, AsOf(timestamp=trades.committed_at), QUOTES.name)
    return choose_snapshot(quotes, None, QUOTES.name)


def attach_quotes(
    sources: Sources, trades: pa.Table, query: MarketQuery, quote_choice: SnapshotChoice, *, realtime: bool
) -> pa.Table:
    """ASOF-join each trade to the latest quote of its stream at or before it. Several quotes at one timestamp: the
    highest sequence number is the one in force. With `realtime`, the tail's quotes count too. The trades keep their
    own columns, whichever they are."""
    schema = trades_with_quote_schema(trades.schema)
    if trades.num_rows == 0:
        return schema.empty_table()
    times = trades.column(TIME_COLUMN)
    first, last = times[0].as_py(), times[trades.num_rows - 1].as_py()
    span = TimeRange(first, last + timedelta(microseconds=1))
    quotes = Stream("quotes", sources.load(QUOTES), query.symbol, query.exchange, quote_choice)
    route = sources.route("quotes", query.exchange, span, pinned=not realtime)
    prior = sources.latest_committed(quotes, first)
    if realtime and sources.realtime is not None:
        recent = sources.realtime.rows("quotes", query.symbol, query.exchange, datetime.min.replace(tzinfo=UTC), first)
        prior = pa.concat_tables([prior, recent], promote_options="permissive")
    with scan.connect() as con:
        sources.market_view(con, quotes, span, route, name="q")
        con.register("prior", prior)
        con.register("page", trades)
        result = con.sql(
            f"""
            WITH quotes AS (
                SELECT * FROM q UNION ALL BY NAME SELECT * FROM prior
            ),
            in_force AS (
                SELECT * FROM quotes
                QUALIFY row_number() OVER (
                    PARTITION BY {TIME_COLUMN} ORDER BY exchange_sequence_number DESC) = 1
            )
            SELECT t.*, f.{TIME_COLUMN} AS quote_timestamp,
                   f.exchange_sequence_number AS quote_sequence_number,
                   f.bid_price, f.bid_size, f.ask_price, f.ask_size
            FROM page t ASOF LEFT JOIN in_force f ON t.{TIME_COLUMN} >= f.{TIME_COLUMN}
            ORDER BY t.{TIME_COLUMN}, t.exchange_sequence_number
            """
        ).to_arrow_table()
    return scan.cast_to(result, schema)
