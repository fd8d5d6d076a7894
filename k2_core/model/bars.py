"""OHLCV bars: the one definition of a bar, shared by the query layer and the Dagster assets that precompute
`market.ohlcv_1m` / `market.ohlcv_1d`.

A bar covers the trades with `bar_start <= exchange_timestamp < bar_start + interval`, where `bar_start` is
aligned to the interval on the UTC epoch (so 1m bars start on whole UTC minutes, 1d bars at UTC midnight).
Intervals without trades produce no bar: a gap in the output is a gap in the market, never a bar with zero
volume and a carried-forward price.

- open / close: the price of the first / last trade in exchange order `(exchange_timestamp,
  exchange_sequence_number)`, so out-of-order arrival never changes a bar.
- high / low: the highest / lowest price. volume: the sum of volumes. trade_count: the number of trades.
- vwap: `sum(price * volume) / sum(volume)`, computed exactly in 128-bit decimals/integers and rounded
  half-even to 8 decimal places (the stored precision). Never a float.

Writers of precomputed bar tables record which trades snapshot the bars were computed from, and a digest of that
day's trade files in it, in the Iceberg snapshot summary (`DaySource.properties()`). The query layer serves a day
from a precomputed table only when the trades of that day have not changed since; bars written without the
properties are never served (the reader cannot prove them fresh).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal, get_args

import duckdb
import pyarrow as pa
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2_core import duck
from k2_core.model.days import day_filter, day_key
from k2_core.model.tables import OHLCV_1D, OHLCV_1M, TableDef

Interval = Literal["1s", "5s", "1m", "5m", "15m", "1h", "1d"]

INTERVALS: dict[Interval, timedelta] = {
    "1s": timedelta(seconds=1),
    "5s": timedelta(seconds=5),
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
assert tuple(INTERVALS) == get_args(Interval)

# The intervals with a precomputed Iceberg table (`k2_core.model.tables` defines both).
OHLCV_TABLES: dict[Interval, TableDef] = {"1m": OHLCV_1M, "1d": OHLCV_1D}
PRECOMPUTED_TABLES: dict[Interval, str] = {interval: table.name for interval, table in OHLCV_TABLES.items()}

# Snapshot-summary key under which a bar table's writer records the trades snapshot id it read.
SOURCE_SNAPSHOT_PROPERTY = "k2.ohlcv.source-snapshot-id"
SOURCE_FILES_PROPERTY = "k2.ohlcv.source-files"  # DaySource.files
DAY_PROPERTY = "k2.ohlcv.day"  # the day a bar-table snapshot rebuilt

BARS_ARROW_SCHEMA: pa.Schema = OHLCV_1M.arrow_schema

_SCALE = 100_000_000  # 10**8: decimal(18, 8) units


def interval_micros(interval: Interval) -> int:
    """The interval's width in microseconds (DuckDB's timestamp resolution)."""
    return INTERVALS[interval] // timedelta(microseconds=1)


def bars_sql(
    source: str, interval: Interval | None = None, *, bucket: str | None = None, extra: Mapping[str, str] | None = None
) -> str:
    """The SQL computing bars from the trades in `source` (a table name, view or table function holding at least
    symbol, exchange, exchange_timestamp, exchange_sequence_number, price, volume). Callers that want a filter
    apply it inside `source`. The session's TimeZone does not matter: buckets are computed on epoch micros.

    `bucket` replaces the UTC-epoch bucketing by an expression (or column of `source`) giving each trade's bar as
    epoch microseconds (`k2_core.model.buckets` for other alignments) or any integer bar id (activity bars);
    `extra` adds aggregates (output name -> SQL aggregate) carried through to the output after `trade_count`."""
    if bucket is None:
        assert interval is not None
        width = interval_micros(interval)
        bucket = f"(epoch_us(exchange_timestamp) // {width}) * {width}"
    extra = extra or {}
    aggregates = "".join(f", {sql} AS {name}" for name, sql in extra.items())
    carried = "".join(f", {name}" for name in extra)
    # (exchange_timestamp, sequence) packed in one HUGEINT: arg_min/arg_max on it are much faster than on a
    # struct, and the order is the same (sequence numbers are positive 64-bit integers).
    order_key = "epoch_us(exchange_timestamp)::HUGEINT * 9223372036854775808 + exchange_sequence_number"
    return f"""
    WITH g AS (
        SELECT symbol, exchange, {bucket} AS bucket_us,
               arg_min(price, {order_key}) AS open, max(price) AS high, min(price) AS low,
               arg_max(price, {order_key}) AS close,
               sum(volume) AS volume, sum(CAST(price AS DECIMAL(38, 8)) * volume) AS notional,
               count(*) AS trade_count{aggregates}
        FROM {source}
        GROUP BY ALL
    ),
    units AS (  -- exact integers: notional in 1e-16, volume in 1e-8
        SELECT *,
               CAST(trunc(notional) AS HUGEINT) * 10000000000000000
                 + CAST((notional - trunc(notional)) * 10000000000000000 AS HUGEINT) AS pv,
               CAST(volume * {_SCALE} AS HUGEINT) AS vol
        FROM g
    ),
    q AS (
        SELECT *, pv // vol AS quot, pv % vol AS rem FROM units
    )
    SELECT symbol, exchange, make_timestamptz(bucket_us) AS bar_start, open, high, low, close,
           CAST(volume AS DECIMAL(38, 8)) AS volume,
           CAST(
               CAST(quot + CASE WHEN 2 * rem > vol OR (2 * rem = vol AND quot % 2 = 1) THEN 1 ELSE 0 END
                    AS DECIMAL(38, 0)) * CAST(0.00000001 AS DECIMAL(9, 8))
               AS DECIMAL(18, 8)) AS vwap,
           trade_count{carried}
    FROM q
    ORDER BY symbol, exchange, bar_start
    """


def compute_bars(trades: pa.Table | duckdb.DuckDBPyRelation, interval: Interval) -> pa.Table:
    """OHLCV bars at `interval` from trades given as an Arrow table (e.g. `get_trades(...)`, a pyiceberg
    `scan().to_arrow()`) or a DuckDB relation (evaluated on its own connection). Returns an Arrow table in
    `BARS_ARROW_SCHEMA`, ordered by symbol, exchange, bar_start; one row per non-empty interval."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(INTERVALS)}; got {interval!r}")
    if isinstance(trades, duckdb.DuckDBPyRelation):
        relation = trades.query("k2_trades", bars_sql("k2_trades", interval))
        assert relation is not None  # a SELECT always yields a relation
        result = relation.to_arrow_table()
    else:
        with duck.connect() as con:
            con.register("k2_trades", trades)
            result = con.sql(bars_sql("k2_trades", interval)).to_arrow_table()
    return result.cast(BARS_ARROW_SCHEMA)


def day_files(trades: Table, day: date, snapshot_id: int) -> set[tuple[str, frozenset[str]]]:
    """The files that may hold rows of `day` at `snapshot_id` (data files, each with the delete files applying to
    it): files being immutable, the same set means the same rows."""
    tasks = trades.scan(row_filter=day_filter("exchange_timestamp", day), snapshot_id=snapshot_id).plan_files()
    return {(t.file.file_path, frozenset(d.file_path for d in t.delete_files)) for t in tasks}


def files_digest(files: set[tuple[str, frozenset[str]]]) -> str:
    lines = sorted(f"{path}\t{','.join(sorted(deletes))}" for path, deletes in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class DaySource:
    """What a build of one day of a bar table read: the trades snapshot, and a digest of that day's files in it
    (`day_files`). The digest outlives the snapshot: the ingesters' retention expires a trades snapshot within
    minutes, and the day's bars stay provably fresh while its files are the same (None: a build made before
    digests were recorded)."""

    snapshot_id: int
    files: str | None = None

    @classmethod
    def of(cls, trades: Table, day: date, snapshot_id: int) -> DaySource:
        return cls(snapshot_id, files_digest(day_files(trades, day, snapshot_id)))

    def properties(self) -> dict[str, str]:
        """The snapshot-summary properties a bar-table writer records it in."""
        props = {SOURCE_SNAPSHOT_PROPERTY: str(self.snapshot_id)}
        if self.files is not None:
            props[SOURCE_FILES_PROPERTY] = self.files
        return props


def day_source(bars: Table, day: date) -> DaySource | None:
    """What the newest build of `day` in this bar table read, or None if the day was never built."""
    key = day_key(day)

    def built(snapshot: Snapshot) -> DaySource | None:
        props = snapshot.summary.additional_properties if snapshot.summary else {}
        if props.get(DAY_PROPERTY) == key and SOURCE_SNAPSHOT_PROPERTY in props:
            return DaySource(int(props[SOURCE_SNAPSHOT_PROPERTY]), props.get(SOURCE_FILES_PROPERTY))
        return None

    snapshot_id = bars.metadata.current_snapshot_id
    while snapshot_id is not None:
        snapshot = bars.metadata.snapshot_by_id(snapshot_id)
        if snapshot is None:
            break
        if (source := built(snapshot)) is not None:
            return source
        snapshot_id = snapshot.parent_snapshot_id
    # Not in the chain expiry left (it cuts the chain, clearing the parent of what it keeps), but expiry keeps each
    # day's newest build (k2_core.upkeep.expiry.day_builds): bar tables have one line of history, so it is that.
    kept = [s for s in bars.metadata.snapshots if built(s) is not None]
    return built(max(kept, key=lambda s: s.sequence_number or 0)) if kept else None
