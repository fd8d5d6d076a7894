"""Data-quality rules for stored market data, as pandera schemas, evaluated one day partition at a time.

The ingester refuses bad records before they are stored; these rules check what is actually in the tables, so they
also catch what another writer (a backfill, a replay, an operator's fix, a bug) put there. A day is read file by
file, without Iceberg's row filtering, so a row sitting in the wrong day's partition is seen rather than filtered
out. Each rule reports how many rows break it and a few of them.

A day may hold files written under different table schemas (columns gained from version 2 of the feeds): each file
is read by Iceberg field id in the table's current schema, and a column a file (or the table) lacks is null, which the
rules on optional columns accept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import pandas as pd
import pandera.pandas as pdr
import pyarrow as pa
import pyarrow.compute as pc
from pandera.errors import SchemaErrors
from pyiceberg.expressions import AlwaysTrue, GreaterThanOrEqual
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import FileScanTask, Table

from k2_core.lake.lineage import partition_data_files
from k2_core.model import calendars
from k2_core.model.days import from_partition_value
from k2_core.model.tables import DEDUP_KEY, conform, feed_schema
from k2_core.model.topics import Kind
from k2_core.settings import MarketHours

SAMPLE_SIZE = 5
PARTITION_DAY = "partition_day"
_COMMON = ("exchange", "symbol", "exchange_sequence_number", "exchange_timestamp")
COLUMNS: dict[Kind, tuple[str, ...]] = {
    "trades": (*_COMMON, "price", "volume"),
    # bid_count and ask_count: optional columns from version 2 of the feeds, null where a row has none.
    "quotes": (*_COMMON, "bid_price", "bid_size", "ask_price", "ask_size", "bid_count", "ask_count"),
}


@dataclass(frozen=True)
class Rule:
    name: str
    description: str


RULES: dict[Kind, tuple[Rule, ...]] = {
    "trades": (
        Rule("price_positive", "price > 0"),
        Rule("volume_non_negative", "volume >= 0"),
        Rule("unique_sequence", "(exchange, symbol, exchange_sequence_number) unique within the day"),
        Rule("timestamp_in_partition", "exchange_timestamp falls on its partition's day"),
        Rule("timestamp_not_future", "exchange_timestamp not in the future"),
    ),
    "quotes": (
        Rule("prices_positive", "bid_price > 0 and ask_price > 0"),
        Rule("sizes_non_negative", "bid_size >= 0 and ask_size >= 0"),
        Rule("bid_not_above_ask", "bid_price <= ask_price"),
        Rule("counts_non_negative", "bid_count >= 0 and ask_count >= 0 where the feed sent them"),
        Rule("unique_sequence", "(exchange, symbol, exchange_sequence_number) unique within the day"),
        Rule("timestamp_in_partition", "exchange_timestamp falls on its partition's day"),
        Rule("timestamp_not_future", "exchange_timestamp not in the future"),
    ),
}


@dataclass
class Finding:
    rule: str
    description: str
    rows_checked: int
    offending: int = 0
    sample: list[dict[str, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.offending == 0


def schema(kind: Kind, now: datetime, future_tolerance: timedelta) -> pdr.DataFrameSchema:
    """The pandera schema of one day of `kind`, as read by `read_day` (with its partition_day column)."""
    latest = pd.Timestamp(now + future_tolerance)

    def in_partition(df: pd.DataFrame) -> pd.Series:
        return df["exchange_timestamp"].dt.date == df[PARTITION_DAY]

    def unique(df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(subset=list(DEDUP_KEY), keep=False)

    time_checks = pdr.Column(checks=pdr.Check(lambda s: s <= latest, name="timestamp_not_future"))
    frame_checks = [
        pdr.Check(unique, name="unique_sequence"),
        pdr.Check(in_partition, name="timestamp_in_partition"),
    ]
    if kind == "trades":
        return pdr.DataFrameSchema(
            {
                "price": pdr.Column(checks=pdr.Check(lambda s: s > 0, name="price_positive")),
                "volume": pdr.Column(checks=pdr.Check(lambda s: s >= 0, name="volume_non_negative")),
                "exchange_timestamp": time_checks,
            },
            checks=frame_checks,
        )
    # Optional columns: null (a row stored before the column, or a feed without it) passes.
    counts = pdr.Column(checks=pdr.Check(lambda s: s >= 0, name="counts_non_negative"), nullable=True)
    return pdr.DataFrameSchema(
        {
            "bid_price": pdr.Column(checks=pdr.Check(lambda s: s > 0, name="prices_positive")),
            "ask_price": pdr.Column(checks=pdr.Check(lambda s: s > 0, name="prices_positive")),
            "bid_size": pdr.Column(checks=pdr.Check(lambda s: s >= 0, name="sizes_non_negative")),
            "ask_size": pdr.Column(checks=pdr.Check(lambda s: s >= 0, name="sizes_non_negative")),
            "bid_count": counts,
            "ask_count": counts,
            "exchange_timestamp": time_checks,
        },
        checks=[*frame_checks, pdr.Check(lambda df: df["bid_price"] <= df["ask_price"], name="bid_not_above_ask")],
    )


def read_day(table: Table, kind: Kind, day: date) -> pd.DataFrame:
    """Every row of the day's partition files, each with the partition day of the file it is in. Columns are read by
    field id (pyiceberg's projection, no row filter), so files of every table schema read alike; a column the table
    has not gained yet is null."""
    parts = []
    if table.metadata.current_snapshot_id is not None:
        current = table.schema()
        has = {f.name for f in current.fields}
        wanted = pa.schema([feed_schema(kind).field(name) for name in COLUMNS[kind]])
        reader = ArrowScan(
            table.metadata, table.io, current.select(*(n for n in COLUMNS[kind] if n in has)), AlwaysTrue()
        )
        for data_file in partition_data_files(table, day):
            data = conform(reader.to_table([FileScanTask(data_file)]), wanted)
            part_day = from_partition_value(data_file.partition[0])
            parts.append(data.append_column(PARTITION_DAY, pa.array([part_day] * data.num_rows, pa.date32())))
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in (*COLUMNS[kind], PARTITION_DAY)})
    return pa.concat_tables(parts).to_pandas(types_mapper=pd.ArrowDtype)


def evaluate(
    kind: Kind, df: pd.DataFrame, now: datetime, future_tolerance: timedelta, sample_size: int = SAMPLE_SIZE
) -> dict[str, Finding]:
    """Every rule of `kind` on the rows of `df`: offending row count and a sample of offending rows."""
    findings = {r.name: Finding(r.name, r.description, len(df)) for r in RULES[kind]}
    if df.empty:
        return findings
    try:
        schema(kind, now, future_tolerance).validate(df, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
        for rule, group in cases.groupby("check"):
            finding = findings.get(str(rule))
            if finding is None:
                continue
            index = sorted({int(i) for i in group["index"].dropna()})
            finding.offending = len(index)
            finding.sample = [
                {k: str(v) for k, v in row.items()} for row in df.loc[index[:sample_size]].to_dict("records")
            ]
    return findings


def check_day(table: Table, kind: Kind, day: date, now: datetime, future_tolerance: timedelta) -> dict[str, Finding]:
    return evaluate(kind, read_day(table, kind, day), now, future_tolerance)


# ---- freshness --------------------------------------------------------------------------------------------------


def market_open(hours: MarketHours, now: datetime) -> bool:
    """Whether the market trades at `now`: inside one of its sessions (`k2_core.model.calendars`: its trading
    calendar, so a holiday, a weekend or the time after an early close is closed; or its weekly hours)."""
    return calendars.is_open(hours, now)


@dataclass(frozen=True)
class Freshness:
    exchange: str
    market_open: bool
    newest: datetime | None
    passed: bool

    def lag_seconds(self, now: datetime) -> float | None:
        return None if self.newest is None else (now - self.newest).total_seconds()


def newest_trades(table: Table, since: datetime) -> dict[str, datetime]:
    """The newest trade exchange time per exchange, among trades at or after `since`."""
    if table.metadata.current_snapshot_id is None:
        return {}
    recent = table.scan(
        row_filter=GreaterThanOrEqual(term="exchange_timestamp", value=since.isoformat()),
        selected_fields=("exchange", "exchange_timestamp"),
    ).to_arrow()
    if recent.num_rows == 0:
        return {}
    grouped = recent.group_by("exchange").aggregate([("exchange_timestamp", "max")])
    return dict(
        zip(
            grouped.column("exchange").to_pylist(),
            pc.cast(
                grouped.column("exchange_timestamp_max"), recent.schema.field("exchange_timestamp").type
            ).to_pylist(),
            strict=True,
        )
    )


def freshness(table: Table, hours: Mapping[str, MarketHours], now: datetime, max_lag: timedelta) -> list[Freshness]:
    """Per exchange with market hours: stale means in a session now (holidays and early closes per its calendar) and
    no trade within `max_lag`."""
    newest = newest_trades(table, now - max_lag)
    out = []
    for exchange, h in sorted(hours.items()):
        is_open = market_open(h, now)
        latest = newest.get(exchange)
        out.append(Freshness(exchange, is_open, latest, passed=not is_open or latest is not None))
    return out
