"""Precomputed OHLCV tables `market.ohlcv_1m` / `market.ohlcv_1d`, rebuilt one UTC day at a time.

The bar definition is `k2_core.model.bars`', the tables' `k2_core.model.tables`'; this module only stores bars. A
rebuild reads the day's trades as of one trades snapshot, computes the bars and replaces that day of the bar table in
one commit, so re-running it is idempotent and a reader never sees half a day. Each commit records the trades snapshot
it read (`bars.SOURCE_SNAPSHOT_PROPERTY`) and the day (`DAY_PROPERTY`): daily bars are computed from the very snapshot
the minute bars of that day used, and checked to roll up from them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import duckdb
import pyarrow as pa
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from k2_core.exceptions import CommitConflictError, MaintenanceError
from k2_core.lake.files import delete_uncommitted, replace_files, write_chunks
from k2_core.lake.offsets import WRITER_PROPERTY
from k2_core.lake.retry import commit_with_retries
from k2_core.logging import get_logger
from k2_core.model.bars import (
    BARS_ARROW_SCHEMA,
    DAY_PROPERTY,
    OHLCV_TABLES,
    DaySource,
    Interval,
    compute_bars,
    day_source,
)
from k2_core.model.days import day_filter, day_key

log = get_logger(__name__)

TRADE_FIELDS = ("symbol", "exchange", "exchange_timestamp", "exchange_sequence_number", "price", "volume")


@dataclass(frozen=True)
class BarsBuild:
    day: date
    interval: Interval
    bars: int
    trades: int
    source_snapshot_id: int | None
    snapshot_id: int | None


def trades_bars(trades: Table, day: date, interval: Interval, snapshot_id: int | None) -> tuple[pa.Table, int]:
    """Bars of `day` from the trades as of `snapshot_id`, streamed through DuckDB; also the trade count."""
    if snapshot_id is None:
        return BARS_ARROW_SCHEMA.empty_table(), 0
    scan = trades.scan(
        row_filter=day_filter("exchange_timestamp", day), selected_fields=TRADE_FIELDS, snapshot_id=snapshot_id
    )
    with duckdb.connect() as con:
        relation = con.from_arrow(scan.to_arrow_batch_reader())
        bars = compute_bars(relation, interval)
    return bars, sum(bars.column("trade_count").to_pylist())


def day_data_files(table: Table, column: str, day: date) -> list[DataFile]:
    """The data files of `day`'s partition in the table's current snapshot."""
    if table.metadata.current_snapshot_id is None:
        return []
    return [task.file for task in table.scan(row_filter=day_filter(column, day)).plan_files()]


def replace_day(
    bars_table: Table, day: date, bars: pa.Table, source: DaySource | None, *, retries: int, backoff: float
) -> int | None:
    """Replace `day` of a bar table with `bars` in one snapshot, recording what it was built from; returns its id."""
    props = {DAY_PROPERTY: day_key(day), WRITER_PROPERTY: "ohlcv"}
    if source is not None:
        props.update(source.properties())
    written = write_chunks(bars_table, [OHLCV_TABLES["1m"].sort(bars.cast(BARS_ARROW_SCHEMA))])

    def attempt(table: Table) -> int | None:
        return replace_files(table, day_data_files(table, "bar_start", day), written, props)

    try:
        return commit_with_retries(bars_table, attempt, retries=retries, backoff_seconds=backoff, what="ohlcv rebuild")
    except CommitConflictError:  # certainly not committed; other failures leave the files to orphan cleanup
        delete_uncommitted(bars_table, written)
        raise


def rebuild_minute_bars(trades: Table, bars_1m: Table, day: date, *, retries: int, backoff: float) -> BarsBuild:
    """Rebuild one day of `ohlcv_1m` from the current trades snapshot."""
    trades.refresh()
    source = trades.metadata.current_snapshot_id
    bars, trade_count = trades_bars(trades, day, "1m", source)
    built = DaySource.of(trades, day, source) if source is not None else None
    snapshot_id = replace_day(bars_1m, day, bars, built, retries=retries, backoff=backoff)
    log.info("ohlcv rebuilt", extra={"interval": "1m", "day": day_key(day), "bars": bars.num_rows, "source": source})
    return BarsBuild(day, "1m", bars.num_rows, trade_count, source, snapshot_id)


def rebuild_day(
    trades: Table, bars_1m: Table, bars_1d: Table, day: date, *, retries: int, backoff: float
) -> tuple[BarsBuild, BarsBuild]:
    """Rebuild one day of `ohlcv_1m` and of `ohlcv_1d` from one trades snapshot, read twice in one go. A busy
    ingester's retention may expire that snapshot from the table's metadata meanwhile; the metadata read here still
    holds it, and expiry deletes no file (orphan removal waits hours), so the daily bars always come from exactly
    what the minute bars did, however long the minute build took."""
    trades.refresh()
    source = trades.metadata.current_snapshot_id
    minute, trade_count = trades_bars(trades, day, "1m", source)
    built = DaySource.of(trades, day, source) if source is not None else None
    minute_id = replace_day(bars_1m, day, minute, built, retries=retries, backoff=backoff)
    daily, _ = trades_bars(trades, day, "1d", source)
    check_rollup(minute, daily)
    daily_id = replace_day(bars_1d, day, daily, built, retries=retries, backoff=backoff)
    log.info(
        "ohlcv rebuilt",
        extra={"day": day_key(day), "bars_1m": minute.num_rows, "bars_1d": daily.num_rows, "source": source},
    )
    return (
        BarsBuild(day, "1m", minute.num_rows, trade_count, source, minute_id),
        BarsBuild(day, "1d", daily.num_rows, trade_count, source, daily_id),
    )


def rebuild_daily_bars(
    trades: Table, bars_1m: Table, bars_1d: Table, day: date, *, retries: int, backoff: float
) -> BarsBuild:
    """Rebuild one day of `ohlcv_1d` from the trades snapshot that day's minute bars were built from, after checking
    that the daily bars roll up from the minute bars exactly."""
    bars_1m.refresh()
    built = day_source(bars_1m, day)
    source = built.snapshot_id if built is not None else None
    if source is None and bars_1m.metadata.current_snapshot_id is not None:
        raise MaintenanceError(f"ohlcv_1m has no build of {day_key(day)}: materialize ohlcv_1m for that day first")
    if source is not None and trades.metadata.snapshot_by_id(source) is None:
        trades.refresh()
        if trades.metadata.snapshot_by_id(source) is None:
            raise MaintenanceError(
                f"trades snapshot {source} behind ohlcv_1m {day_key(day)} has expired: rebuild ohlcv_1m first"
            )
    bars, trade_count = trades_bars(trades, day, "1d", source)
    minute = bars_1m.scan(row_filter=day_filter("bar_start", day)).to_arrow()
    check_rollup(minute, bars)
    snapshot_id = replace_day(bars_1d, day, bars, built, retries=retries, backoff=backoff)
    log.info("ohlcv rebuilt", extra={"interval": "1d", "day": day_key(day), "bars": bars.num_rows, "source": source})
    return BarsBuild(day, "1d", bars.num_rows, trade_count, source, snapshot_id)


_ROLLUP_SQL = """
SELECT symbol, exchange,
       arg_min(open, bar_start) AS open, max(high) AS high, min(low) AS low, arg_max(close, bar_start) AS close,
       sum(volume) AS volume, sum(trade_count) AS trade_count
FROM minute GROUP BY symbol, exchange
"""


def check_rollup(minute: pa.Table, daily: pa.Table) -> None:
    """Raise MaintenanceError unless the daily bars' open/high/low/close/volume/count equal the minute bars'."""
    with duckdb.connect() as con:
        con.register("minute", minute)
        con.register("daily", daily)
        mismatches = con.execute(
            f"""
            WITH r AS ({_ROLLUP_SQL})
            SELECT count(*) FROM r FULL OUTER JOIN daily d USING (symbol, exchange)
            WHERE r.open IS DISTINCT FROM d.open OR r.high IS DISTINCT FROM d.high OR r.low IS DISTINCT FROM d.low
               OR r.close IS DISTINCT FROM d.close OR r.volume IS DISTINCT FROM d.volume
               OR r.trade_count IS DISTINCT FROM d.trade_count
            """
        ).fetchone()
    if mismatches is not None and mismatches[0]:
        raise MaintenanceError(f"daily bars disagree with minute bars for {mismatches[0]} (symbol, exchange) pairs")
