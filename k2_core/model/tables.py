"""Iceberg table definitions: the one place that says what `market.trades`, `market.quotes`, `market.sequence_gaps`,
the bar tables `market.ohlcv_1m` / `market.ohlcv_1d` and the level-2 book tables `market.book_updates`,
`market.book_snapshots` and `market.book_validity` look like, how they are partitioned and sorted, and how rows
become Arrow; and the shapes of the query results built from them, derived here so that a column is written once."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import NullOrder, SortDirection, SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    StructType,
    TimestamptzType,
)

from k2_core.model.topics import BookRecord, Kind

PRICE = DecimalType(18, 8)
# A day of a busy instrument trades more than DECIMAL(18, 8) holds (10 billion DOGE): sums are (38, 8).
VOLUME_SUM = DecimalType(38, 8)
DEDUP_KEY = ("exchange", "symbol", "exchange_sequence_number")
# A stored snapshot is one book of one source at one update number: the feed's and K2's own of the same moment
# are both kept (K2 writes its own where the feed sent none), and re-delivery of either is a duplicate.
BOOK_SNAPSHOT_KEY = (*DEDUP_KEY, "source")
SOURCE_FEED = "feed"  # a snapshot the exchange sent
SOURCE_K2 = "k2"  # a snapshot K2 computed from stored snapshots and updates (k2_core.upkeep.book_snapshots)
SIDES = ("bid", "ask")

TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
    "format-version": "2",
    # K2 retries commits itself, after re-checking partition ownership; pyiceberg's own retry would not.
    "commit.retry.num-retries": "0",
    # Flat commit latency (docs/performance.md): every append merges small manifests once 16 pile up, so a snapshot's
    # manifest list stays short; manifests are kept small so a merge rewrites little.
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "16",
    "commit.manifest.target-size-bytes": str(256 * 1024),
    # Old metadata.json files are deleted as new ones are written; the metadata log (copied on every commit) keeps 10.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "10",
    # Query layout: row groups of 64k rows give row-group statistics something to prune (docs/performance.md).
    "write.parquet.row-group-limit": str(64 * 1024),
}

TRADES_SCHEMA = Schema(
    NestedField(1, "symbol", StringType(), required=True),
    NestedField(2, "exchange", StringType(), required=True),
    NestedField(3, "exchange_timestamp", TimestamptzType(), required=True),
    NestedField(4, "exchange_sequence_number", LongType(), required=True),
    NestedField(5, "price", PRICE, required=True),
    NestedField(6, "volume", PRICE, required=True),
    NestedField(7, "side", StringType(), required=True),
    NestedField(8, "trade_id", StringType(), required=True),
    NestedField(9, "ingestion_timestamp", TimestamptzType(), required=True),
    identifier_field_ids=[],
)

QUOTES_SCHEMA = Schema(
    NestedField(1, "symbol", StringType(), required=True),
    NestedField(2, "exchange", StringType(), required=True),
    NestedField(3, "exchange_timestamp", TimestamptzType(), required=True),
    NestedField(4, "exchange_sequence_number", LongType(), required=True),
    NestedField(5, "bid_price", PRICE, required=True),
    NestedField(6, "bid_size", PRICE, required=True),
    NestedField(7, "ask_price", PRICE, required=True),
    NestedField(8, "ask_size", PRICE, required=True),
    NestedField(9, "ingestion_timestamp", TimestamptzType(), required=True),
)

# The columns version 2 of the feed schemas adds (schemas/avro/*.v2.avsc: what real feeds carry, all optional). A
# market table is created with the version-1 columns above and gains these, by name and optional, when a batch first
# carries them, so tables written before read them as null and old snapshots keep their old schema. The field ids
# here only describe the columns: the table assigns its own when it adds them.
EXTRA_COLUMNS: dict[Kind, tuple[NestedField, ...]] = {
    "trades": (
        NestedField(10, "ts_recv", TimestamptzType(), required=False, doc="Capture host receive time, UTC."),
        NestedField(
            11,
            "conditions",
            ListType(12, StringType(), element_required=True),
            required=False,
            doc="Trade condition codes as the venue sends them.",
        ),
        NestedField(13, "buyer_order_id", StringType(), required=False, doc="The buying order's venue id."),
        NestedField(14, "seller_order_id", StringType(), required=False, doc="The selling order's venue id."),
    ),
    "quotes": (
        NestedField(10, "bid_count", IntegerType(), required=False, doc="Orders at the best bid."),
        NestedField(11, "ask_count", IntegerType(), required=False, doc="Orders at the best ask."),
        NestedField(12, "ts_recv", TimestamptzType(), required=False, doc="Capture host receive time, UTC."),
    ),
}

GAPS_SCHEMA = Schema(
    NestedField(1, "gap_id", StringType(), required=True),
    NestedField(2, "data_type", StringType(), required=True, doc="trades or quotes"),
    NestedField(3, "exchange", StringType(), required=True),
    NestedField(4, "symbol", StringType(), required=True),
    NestedField(5, "first_missing", LongType(), required=True),
    NestedField(6, "last_missing", LongType(), required=True),
    NestedField(7, "missing_count", LongType(), required=True),
    NestedField(8, "severity", StringType(), required=True, doc="warning, alert or halt"),
    NestedField(9, "status", StringType(), required=True, doc="open, filled or unrecoverable"),
    NestedField(10, "detected_at", TimestamptzType(), required=True),
    NestedField(11, "resolved_at", TimestamptzType(), required=False),
    NestedField(12, "attempts", IntegerType(), required=True),
    NestedField(13, "reason", StringType(), required=False),
    # The gap's session, by exchange time: of the number before it (none for a session's missing head) and of the
    # number that revealed it. Sessions restart their numbers, so a gap is known by its first number and window_end.
    NestedField(14, "window_start", TimestamptzType(), required=False),
    NestedField(15, "window_end", TimestamptzType(), required=False),
)

BOOK_UPDATES_SCHEMA = Schema(
    NestedField(1, "symbol", StringType(), required=True),
    NestedField(2, "exchange", StringType(), required=True),
    NestedField(3, "exchange_timestamp", TimestamptzType(), required=True),
    NestedField(4, "exchange_sequence_number", LongType(), required=True, doc="Per symbol, consecutive."),
    NestedField(5, "side", StringType(), required=True, doc="bid or ask"),
    NestedField(6, "price", PRICE, required=True),
    NestedField(7, "size", PRICE, required=True, doc="The level's new size; 0 removes the level."),
    NestedField(8, "ingestion_timestamp", TimestamptzType(), required=True),
)


def _levels(list_id: int, price_id: int, size_id: int) -> ListType:
    """A side of a book: price levels best first."""
    level = StructType(
        NestedField(price_id, "price", PRICE, required=True), NestedField(size_id, "size", PRICE, required=True)
    )
    return ListType(list_id, level, element_required=True)


BOOK_SNAPSHOTS_SCHEMA = Schema(
    NestedField(1, "symbol", StringType(), required=True),
    NestedField(2, "exchange", StringType(), required=True),
    NestedField(3, "exchange_timestamp", TimestamptzType(), required=True),
    NestedField(4, "exchange_sequence_number", LongType(), required=True, doc="The last update the book includes."),
    NestedField(5, "bids", _levels(9, 10, 11), required=True, doc="Highest price first."),
    NestedField(6, "asks", _levels(12, 13, 14), required=True, doc="Lowest price first."),
    NestedField(7, "source", StringType(), required=True, doc="feed (the exchange's) or k2 (computed by K2)"),
    NestedField(8, "ingestion_timestamp", TimestamptzType(), required=True),
)

# When a book is known: a gap in an instrument's updates makes its book unknown from the last update before the
# gap (`state` invalid, `at` that update's time) until the next snapshot (`state` valid, `at` the snapshot's time).
# Append-only: the book at T is valid unless the latest row at or before T says invalid.
BOOK_VALIDITY_SCHEMA = Schema(
    NestedField(1, "exchange", StringType(), required=True),
    NestedField(2, "symbol", StringType(), required=True),
    NestedField(3, "at", TimestamptzType(), required=True),
    NestedField(4, "state", StringType(), required=True, doc="invalid or valid"),
    NestedField(5, "sequence", LongType(), required=True, doc="Last update before the gap, or the snapshot's."),
    NestedField(6, "gap_id", StringType(), required=False, doc="The sequence_gaps row that made it invalid."),
    NestedField(7, "recorded_at", TimestamptzType(), required=True),
)
BOOK_INVALID = "invalid"
BOOK_VALID = "valid"


OHLCV_SCHEMA = Schema(
    NestedField(1, "symbol", StringType(), required=True),
    NestedField(2, "exchange", StringType(), required=True),
    NestedField(3, "bar_start", TimestamptzType(), required=True),
    NestedField(4, "open", PRICE, required=True),
    NestedField(5, "high", PRICE, required=True),
    NestedField(6, "low", PRICE, required=True),
    NestedField(7, "close", PRICE, required=True),
    NestedField(8, "volume", VOLUME_SUM, required=True),
    NestedField(9, "vwap", PRICE, required=True),
    NestedField(10, "trade_count", LongType(), required=True),
)

# Reference data (k2_core.model.instruments): one row per listed instrument, replaced whole by each load, so a
# snapshot is what K2 knew of every instrument at that time. Ticks and lots are exact, like the prices they divide.
INSTRUMENTS_SCHEMA = Schema(
    NestedField(1, "symbol", StringType(), required=True),
    NestedField(2, "exchange", StringType(), required=True),
    NestedField(3, "asset_class", StringType(), required=True, doc="equities or crypto"),
    NestedField(4, "currency", StringType(), required=True, doc="ISO 4217 code (or the quote asset, e.g. USDT)"),
    NestedField(5, "tick_size", PRICE, required=True, doc="Every price is a whole multiple of it."),
    NestedField(6, "lot_size", PRICE, required=True, doc="Every size is a whole multiple of it."),
    NestedField(7, "isin", StringType(), required=False),
    NestedField(8, "figi", StringType(), required=False),
    NestedField(9, "listed", DateType(), required=False, doc="First trading day (UTC date), if known."),
    NestedField(10, "delisted", DateType(), required=False, doc="Last trading day (UTC date), if delisted."),
    NestedField(11, "strict", BooleanType(), required=True, doc="Records breaking these rules are dead-lettered."),
)


def _day_spec(name: str = "day") -> PartitionSpec:
    """Partitions by the UTC day of field 3, the time column of every table that has one."""
    return PartitionSpec(PartitionField(source_id=3, field_id=1000, transform=DayTransform(), name=name))


def _order(*source_ids: int) -> SortOrder:
    return SortOrder(
        *(
            SortField(
                source_id=i, transform=IdentityTransform(), direction=SortDirection.ASC, null_order=NullOrder.NULLS_LAST
            )
            for i in source_ids
        )
    )


def arrow_schema_of(schema: Schema) -> pa.Schema:
    """The one rule turning an Iceberg schema (a table's as created, or as it was at a snapshot) into the Arrow schema
    K2 reads and answers in: pyiceberg's types, no field ids, and no field docs (they describe the table, and a
    result carrying them would differ from one read through DuckDB, which drops them)."""
    arrow = schema_to_pyarrow(schema, include_field_ids=False)
    return pa.schema([_bare(field) for field in arrow])


def _bare(field: pa.Field) -> pa.Field:
    """`field` without metadata, its children's included (a list's element field carries it too)."""
    kind = field.type
    if pa.types.is_large_list(kind):
        kind = pa.large_list(_bare(kind.value_field))
    elif pa.types.is_list(kind):
        kind = pa.list_(_bare(kind.value_field))
    elif pa.types.is_struct(kind):
        kind = pa.struct([_bare(child) for child in kind])
    elif pa.types.is_map(kind):
        kind = pa.map_(_bare(kind.key_field), _bare(kind.item_field), kind.keys_sorted)
    return pa.field(field.name, kind, field.nullable)


_ARROW_SCHEMAS: dict[tuple[str, tuple[str, ...]], pa.Schema] = {}  # (table, extra columns) -> Arrow schema


@dataclass(frozen=True)
class TableDef:
    name: str
    schema: Schema
    partition_spec: PartitionSpec
    sort_order: SortOrder
    sort_keys: tuple[str, ...]
    # The order compaction rewrites a closed day in. Market tables cluster by instrument: every K2 query names one
    # (symbol, exchange), so its rows then sit in a few adjacent row groups that the Parquet statistics select,
    # and within an instrument the rows keep the declared sort order. The ingester's own files, written while the
    # day is open, follow the declared order alone. Empty: the declared sort keys.
    cluster_keys: tuple[str, ...] = ()
    # Optional columns the table gains when a batch first carries them (EXTRA_COLUMNS), after `schema`'s own: the
    # table is created with `schema` alone, so its history shows when each one arrived (k2_core.lake.evolution).
    extra_columns: tuple[NestedField, ...] = ()

    @property
    def arrow_schema(self) -> pa.Schema:
        """The columns every table of this definition has from its creation on (no extra column)."""
        return schema_to_pyarrow(self.schema, include_field_ids=False)

    @property
    def column_names(self) -> tuple[str, ...]:
        """Every column K2 may write to this table: the created ones, then the extra ones, in that order."""
        return (*(f.name for f in self.schema.fields), *(f.name for f in self.extra_columns))

    @property
    def full_schema(self) -> Schema:
        """The created columns and every extra column (their field ids only describe: a table assigns its own)."""
        return Schema(*self.schema.fields, *self.extra_columns)

    def extras_in(self, names: Iterable[str]) -> tuple[NestedField, ...]:
        """The extra columns among `names`, in their defined order."""
        wanted = set(names)
        return tuple(f for f in self.extra_columns if f.name in wanted)

    def arrow_schema_with(self, names: Collection[str]) -> pa.Schema:
        """The created columns plus the extra columns among `names`: the Arrow schema of rows that carry those.
        Built once per set of extra columns (the decoder asks for it per block)."""
        extras = self.extras_in(names)
        key = (self.name, tuple(f.name for f in extras))
        schema = _ARROW_SCHEMAS.get(key)
        if schema is None:
            schema = _ARROW_SCHEMAS[key] = schema_to_pyarrow(
                Schema(*self.schema.fields, *extras), include_field_ids=False
            )
        return schema

    def to_arrow(self, rows: list[dict[str, Any]], extra: Collection[str] = ()) -> pa.Table:
        """Rows (dicts of Python values) -> an Arrow table in the table's schema, plus the extra columns named in
        `extra`, sorted by its sort order, because pyiceberg does not sort on write."""
        table = pa.Table.from_pylist(rows, schema=self.arrow_schema_with(extra))
        return self.sort(table)

    @property
    def compaction_keys(self) -> tuple[str, ...]:
        return self.cluster_keys or self.sort_keys

    def sort(self, table: pa.Table) -> pa.Table:
        if not self.sort_keys or table.num_rows < 2 or _sorted(table, self.sort_keys):
            return table
        return table.sort_by([(k, "ascending") for k in self.sort_keys])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` as exactly `schema`'s columns, in its order and types: a column `table` lacks is all null (it must
    be nullable: rows written before a column existed read it as null), a column `schema` lacks is left out, and
    one of another Arrow type is cast (string vs large_string, a list's item name). A table already in `schema` is
    returned as is."""
    if table.schema.equals(schema, check_metadata=False):
        return table
    columns = []
    for f in schema:
        if f.name in table.column_names:
            column = table.column(f.name)
            columns.append(column if column.type == f.type else column.cast(f.type))
        elif f.nullable:
            columns.append(pa.nulls(table.num_rows, f.type))
        else:
            raise ValueError(f"rows lack the required column {f.name!r}")
    return pa.Table.from_arrays(columns, schema=schema)


def _sorted(table: pa.Table, keys: tuple[str, ...]) -> bool:
    """Whether `table` is already in `keys` order (files and feeds mostly are: then sorting is a wasted copy). Only
    integer and timestamp keys are checked; any other key means "sort"."""
    types = [table.schema.field(k).type for k in keys]
    if not all(pa.types.is_integer(t) or pa.types.is_timestamp(t) for t in types):
        return False
    undecided = np.ones(table.num_rows - 1, dtype=np.bool_)  # adjacent pairs equal on every key so far
    for key in keys:
        values = np.asarray(table.column(key).cast(pa.int64()), dtype=np.int64)
        step = np.diff(values)
        if (step[undecided] < 0).any():
            return False
        undecided &= step == 0
        if not undecided.any():
            return True
    return True


_TIME_KEYS = ("exchange_timestamp", "exchange_sequence_number")
_INSTRUMENT_KEYS = ("symbol", "exchange", *_TIME_KEYS)
_BAR_KEYS = ("symbol", "exchange", "bar_start")  # the order compute_bars returns
TRADES = TableDef(
    "trades", TRADES_SCHEMA, _day_spec(), _order(3, 4), _TIME_KEYS, _INSTRUMENT_KEYS, EXTRA_COLUMNS["trades"]
)
QUOTES = TableDef(
    "quotes", QUOTES_SCHEMA, _day_spec(), _order(3, 4), _TIME_KEYS, _INSTRUMENT_KEYS, EXTRA_COLUMNS["quotes"]
)
GAPS = TableDef("sequence_gaps", GAPS_SCHEMA, PartitionSpec(), SortOrder(), ())
# Precomputed bars (`k2_core.model.bars` defines a bar, `k2_core.upkeep.ohlcv` rebuilds them a day at a time).
OHLCV_1M = TableDef("ohlcv_1m", OHLCV_SCHEMA, _day_spec("bar_day"), _order(1, 2, 3), _BAR_KEYS)
OHLCV_1D = TableDef("ohlcv_1d", OHLCV_SCHEMA, _day_spec("bar_day"), _order(1, 2, 3), _BAR_KEYS)

# Level-2 books (k2_core.model.books): partitioned and clustered like trades, so a rebuild of one instrument at T
# reads one day's few row groups.
BOOK_UPDATES = TableDef("book_updates", BOOK_UPDATES_SCHEMA, _day_spec(), _order(3, 4), _TIME_KEYS, _INSTRUMENT_KEYS)
BOOK_SNAPSHOTS = TableDef(
    "book_snapshots", BOOK_SNAPSHOTS_SCHEMA, _day_spec(), _order(3, 4), _TIME_KEYS, _INSTRUMENT_KEYS
)
BOOK_VALIDITY = TableDef(
    "book_validity", BOOK_VALIDITY_SCHEMA, PartitionSpec(), _order(1, 2, 3), ("exchange", "symbol", "at")
)
INSTRUMENTS = TableDef("instruments", INSTRUMENTS_SCHEMA, PartitionSpec(), _order(2, 1), ("exchange", "symbol"))

MARKET_TABLES: dict[Kind, TableDef] = {"trades": TRADES, "quotes": QUOTES}
BOOK_TABLES: dict[BookRecord, TableDef] = {"book_snapshots": BOOK_SNAPSHOTS, "book_updates": BOOK_UPDATES}
BOOK_KEYS: dict[BookRecord, tuple[str, ...]] = {"book_snapshots": BOOK_SNAPSHOT_KEY, "book_updates": DEDUP_KEY}
ALL_TABLES = (TRADES, QUOTES, GAPS, BOOK_UPDATES, BOOK_SNAPSHOTS, BOOK_VALIDITY)


def feed_schema(kind: Kind) -> pa.Schema:
    """Every column a market table may have: those it is created with, then every `EXTRA_COLUMNS` one it may gain.
    What a record of the newest feed schema becomes, so it is the realtime tail's shape (the tail holds records the
    table may not have stored yet, whatever columns they carry)."""
    return _FEED_SCHEMAS[kind]


_FEED_SCHEMAS: dict[Kind, pa.Schema] = {kind: arrow_schema_of(t.full_schema) for kind, t in MARKET_TABLES.items()}


# --- query results built from the tables ---------------------------------------------------------------------------


def _quote_in_force() -> list[pa.Field]:
    """The quote columns a trade gets in an as-of join, named apart from the trade's own and null where no quote
    preceded the trade."""
    quotes = QUOTES.arrow_schema
    renamed = {"exchange_timestamp": "quote_timestamp", "exchange_sequence_number": "quote_sequence_number"}
    names = (*renamed, "bid_price", "bid_size", "ask_price", "ask_size")
    return [quotes.field(name).with_name(renamed.get(name, name)).with_nullable(True) for name in names]


def _day_summary() -> list[pa.Field]:
    """One instrument's day as one bar; a day without trades still has its row, with no prices."""
    bars = OHLCV_1D.arrow_schema
    prices = {"open", "high", "low", "close", "vwap"}
    return [
        *(bars.field(name).with_type(pa.string()) for name in ("symbol", "exchange")),  # as it always was: not large
        pa.field("date", pa.date32(), nullable=False),
        *(f.with_nullable(True) if f.name in prices else f for f in bars if f.name not in _BAR_KEYS),
    ]


def trades_with_quote_schema(trades: pa.Schema) -> pa.Schema:
    """Trades with the quote in force: the trades' own columns, whichever a read had (see `arrow_schema_of`), then
    the quote's."""
    return pa.schema([*trades, *_quote_in_force()])


SUMMARY_SCHEMA = pa.schema(_day_summary())


def _latest_on() -> list[pa.Field]:
    """One instrument's last trade and last quote side by side (`QueryEngine.latest_on`): the trade's time and
    sequence named apart from the quote's; either half null when the instrument has only the other kind."""
    trades = TRADES.arrow_schema
    renamed = {"exchange_timestamp": "trade_timestamp", "exchange_sequence_number": "trade_sequence_number"}
    trade = [trades.field(n).with_name(renamed.get(n, n)).with_nullable(True) for n in (*renamed, "price", "volume")]
    key = [trades.field("symbol"), trades.field("exchange")]
    return [*key, *trade, *_quote_in_force()]


LATEST_ON_SCHEMA = pa.schema(_latest_on())
