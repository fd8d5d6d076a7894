"""Response models: the API's public contract, and the source of its OpenAPI schema.

Prices and sizes go out as fixed-point decimal strings ("45.12000000"): a JSON number would pass through a
client's binary float and lose the exactness the tables store. Timestamps are ISO-8601 in UTC ("...Z").

Trades and quotes also describe the optional columns a table gains from version 2 of the feeds
(`k2_core.model.tables.EXTRA_COLUMNS`, whose docs they show). A row carries such a field when the snapshot it was read
from has the column (null for a row stored before the column was added), and leaves it out when it does not (time
travel to before the change): the JSON says what the Arrow, Parquet and CSV answers say.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer, model_serializer

from k2_core.model.tables import EXTRA_COLUMNS
from k2_core.model.topics import Kind


def _decimal_text(value: Decimal) -> str:
    # "f", not str(): str(Decimal("0E-8")) is "0E-8", which many clients cannot parse as a plain number.
    return format(value, "f")


DecimalString = Annotated[
    Decimal,
    PlainSerializer(_decimal_text, return_type=str),
    Field(examples=["45.12000000"]),
]


def _added(kind: Kind, name: str) -> str:
    """The description of a column version 2 of the feeds added: its table doc, and when a row has it."""
    doc = next(f.doc for f in EXTRA_COLUMNS[kind] if f.name == name)
    return (
        f"{doc} Added by version 2 of the feeds: null for rows stored before it; absent when the snapshot read "
        "predates the column."
    )


class ErrorResponse(BaseModel):
    detail: str = Field(examples=["start must be before end (start=..., end=...)"])


class Trade(BaseModel):
    symbol: str
    exchange: str
    exchange_timestamp: AwareDatetime
    exchange_sequence_number: int
    price: DecimalString
    volume: DecimalString
    side: str
    trade_id: str
    ingestion_timestamp: AwareDatetime
    ts_recv: AwareDatetime | None = Field(default=None, description=_added("trades", "ts_recv"))
    conditions: list[str] | None = Field(
        default=None, description=_added("trades", "conditions"), examples=[["@", "F"]]
    )
    buyer_order_id: str | None = Field(default=None, description=_added("trades", "buyer_order_id"))
    seller_order_id: str | None = Field(default=None, description=_added("trades", "seller_order_id"))


class Quote(BaseModel):
    symbol: str
    exchange: str
    exchange_timestamp: AwareDatetime
    exchange_sequence_number: int
    bid_price: DecimalString
    bid_size: DecimalString
    ask_price: DecimalString
    ask_size: DecimalString
    ingestion_timestamp: AwareDatetime
    bid_count: int | None = Field(default=None, description=_added("quotes", "bid_count"))
    ask_count: int | None = Field(default=None, description=_added("quotes", "ask_count"))
    ts_recv: AwareDatetime | None = Field(default=None, description=_added("quotes", "ts_recv"))


class Gap(BaseModel):
    gap_id: str
    data_type: str
    exchange: str
    symbol: str
    first_missing: int
    last_missing: int
    missing_count: int
    severity: str
    status: str
    detected_at: AwareDatetime
    resolved_at: AwareDatetime | None
    attempts: int
    reason: str | None


class TradeWithQuote(Trade):
    """A trade and the quote in force at it (the latest at or before its time); quote fields are null when no
    quote preceded the trade."""

    quote_timestamp: AwareDatetime | None
    quote_sequence_number: int | None
    bid_price: DecimalString | None
    bid_size: DecimalString | None
    ask_price: DecimalString | None
    ask_size: DecimalString | None


class AsofRow(Trade):
    """A trade and the right row matched in time (`QueryEngine.asof_join`): a quote's fields as `with_quote` names them
    plus quote_symbol/quote_exchange, or another trade's prefixed `right_`; null beyond the tolerance or with no match.
    `*_time_diff_us` is the right row's time minus the trade's, in microseconds."""

    quote_symbol: str | None = None
    quote_exchange: str | None = None
    quote_timestamp: AwareDatetime | None = None
    quote_sequence_number: int | None = None
    bid_price: DecimalString | None = None
    bid_size: DecimalString | None = None
    ask_price: DecimalString | None = None
    ask_size: DecimalString | None = None
    quote_time_diff_us: int | None = None
    right_symbol: str | None = None
    right_exchange: str | None = None
    right_timestamp: AwareDatetime | None = None
    right_sequence_number: int | None = None
    right_price: DecimalString | None = None
    right_volume: DecimalString | None = None
    right_side: str | None = None
    right_time_diff_us: int | None = None


class WindowRow(Trade):
    """A trade and statistics of the quotes timed in [t - before, t + after] (`QueryEngine.window_join`)."""

    quote_count: int
    min_bid: DecimalString | None
    max_bid: DecimalString | None
    min_ask: DecimalString | None
    max_ask: DecimalString | None
    mean_mid: float | None = Field(description="Mean of (bid + ask) / 2 over the window's quotes: a float statistic.")
    mean_spread: float | None = Field(description="Mean of ask - bid over the window's quotes: a float statistic.")
    last_bid: DecimalString | None
    last_ask: DecimalString | None
    last_mid: DecimalString | None = Field(description="(last_bid + last_ask) / 2, exact to 9 places.")


class MarkoutRow(Trade):
    """A trade and, per horizon h (named as asked, e.g. 1s, 500ms), `mid_<h>` (exact decimal string, 9 places),
    `markout_<h>` ((mid - price) signed by side: + buy, - sell, null otherwise; exact) and `markout_bps_<h>` (float)."""

    model_config = ConfigDict(extra="allow")

    @model_serializer(mode="wrap")
    def _exact(self, handler: Any) -> Any:
        data = handler(self)
        for name, value in (self.model_extra or {}).items():
            if isinstance(value, Decimal):
                data[name] = _decimal_text(value)
        return data


class Bar(BaseModel):
    symbol: str
    exchange: str
    bar_start: AwareDatetime = Field(
        description="Start of the interval as a UTC time (aligned as `align` says); the bar covers [bar_start, "
        "+interval). Tick, volume and dollar bars: the time of the bar's first trade."
    )
    open: DecimalString | None = Field(description="Null only in a filled interval (fill=null, linear at the edges).")
    high: DecimalString | None
    low: DecimalString | None
    close: DecimalString | None
    volume: DecimalString
    vwap: DecimalString | None = Field(
        description="sum(price * volume) / sum(volume), rounded half-even to 8 places; null in a filled interval."
    )
    trade_count: int = Field(description="0 marks a filled interval: no trade in it.")
    bar_end: AwareDatetime | None = Field(
        None, description="Tick, volume and dollar bars only: the time of the bar's last trade."
    )
    complete: bool | None = Field(
        None, description="Tick, volume and dollar bars only: false for a last bar that has not reached `size`."
    )


class Provenance(BaseModel):
    """Where an answer came from: iceberg (committed tables), realtime (the API's Kafka tail), precomputed (the
    OHLCV tables); the Iceberg snapshot read; and the cache tier that answered, if any."""

    sources: list[str] = Field(examples=[["iceberg", "realtime"]])
    snapshot_id: int | None = Field(
        description="The trades/quotes snapshot read; pass it as as_of_snapshot to re-read."
    )
    cached: Literal["lru", "redis"] | None = None


class _Page(Provenance):
    """`next_cursor` is null on the last page; otherwise pass it back as `cursor` with the same parameters."""

    count: int
    limit: int
    next_cursor: str | None


class _MarketResponse(_Page):
    """The resolved query is echoed so a client that relied on defaults knows which window it got."""

    symbol: str | None = Field(description="The symbols asked for, a comma list; null: every one of the exchange.")
    exchange: str
    start: AwareDatetime
    end: AwareDatetime


class TradesResponse(_MarketResponse):
    data: list[TradeWithQuote] | list[Trade]


class AsofResponse(_MarketResponse):
    data: list[AsofRow]


class WindowResponse(_MarketResponse):
    data: list[WindowRow]


class MarkoutsResponse(_MarketResponse):
    data: list[MarkoutRow]


class QuotesResponse(_MarketResponse):
    data: list[Quote]


class BarsResponse(_MarketResponse):
    interval: str
    align: str | None = None
    fill: str | None = None
    bar_type: str | None = None
    size: str | None = None
    data: list[Bar]


class SummaryResponse(Provenance):
    symbol: str
    exchange: str
    date: date
    open: DecimalString | None
    high: DecimalString | None
    low: DecimalString | None
    close: DecimalString | None
    volume: DecimalString
    vwap: DecimalString | None
    trade_count: int


class LatestResponse(Provenance):
    data: Trade


class LatestOn(BaseModel):
    """One instrument's last trade and last quote; a half is null when the instrument has only the other kind."""

    symbol: str
    exchange: str
    trade_timestamp: AwareDatetime | None
    trade_sequence_number: int | None
    price: DecimalString | None
    volume: DecimalString | None
    quote_timestamp: AwareDatetime | None
    quote_sequence_number: int | None
    bid_price: DecimalString | None
    bid_size: DecimalString | None
    ask_price: DecimalString | None
    ask_size: DecimalString | None


class LatestOnResponse(Provenance):
    exchange: str = Field(description="The exchange read; several: their names, sorted, comma-separated.")
    count: int
    data: list[LatestOn]
    snapshot_id: int | None = Field(
        description="The trades snapshot read (quotes are read as of the same moment); pass it as as_of_snapshot."
    )


class KafkaOffset(BaseModel):
    topic: str
    partition: int
    next_offset: int = Field(description="The next offset to read: every message before it is in this snapshot.")


class SnapshotInfo(BaseModel):
    snapshot_id: int
    parent_id: int | None
    sequence_number: int
    committed_at: AwareDatetime
    operation: str | None
    added_records: int | None
    deleted_records: int | None
    total_records: int | None
    kafka_cluster: str | None
    kafka_offsets: list[KafkaOffset]
    is_current: bool
    schema_id: int | None = Field(
        default=None,
        description="The table schema the commit was made under: as_of_snapshot reads its columns. A new id marks a "
        "schema change (columns added).",
    )


class SnapshotsResponse(BaseModel):
    table: str
    count: int
    limit: int
    next_cursor: str | None
    data: list[SnapshotInfo]


class GapsResponse(BaseModel):
    data: list[Gap]
    count: int
    exchange: str | None
    symbol: str | None
    status: str | None


class InstrumentRow(BaseModel):
    symbol: str
    exchange: str
    asset_class: str
    currency: str
    tick_size: DecimalString
    lot_size: DecimalString
    isin: str | None
    figi: str | None
    listed: date | None
    delisted: date | None
    strict: bool


class InstrumentsResponse(BaseModel):
    data: list[InstrumentRow]
    count: int
    exchange: str | None
    symbol: str | None
    snapshot_id: int | None = Field(description="The instruments snapshot read; null before the first load.")
    exchanges: list[str] | None = Field(
        description="The exchanges the caller's scopes narrowed the rows to; null when not narrowed."
    )


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    catalog_reachable: bool
    namespace: str
    snapshots: dict[str, int | None] = Field(description="Current snapshot id per table; null = never written.")
    error: str | None = None
    realtime_topics: list[str] | None = Field(
        default=None, description="Topics the realtime tail has caught up with; null when the tail is off."
    )


class SqlRequest(BaseModel):
    """The body of `POST /v1/sql`."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(
        description="One read-only DuckDB SELECT (WITH, UNION ...) over trades, quotes, ohlcv_1m, ohlcv_1d and "
        "sequence_gaps; nothing else may be read (docs/query.md, SQL).",
        examples=["SELECT exchange, count(*) AS n FROM trades GROUP BY exchange"],
    )
    as_of_snapshot: int | None = Field(
        default=None,
        description="A snapshot id of trades or quotes: that table is read as of it, every other table at its "
        "current snapshot.",
    )


class SqlResponse(BaseModel):
    data: list[dict[str, Any]] = Field(
        description="The rows; decimals as fixed-point strings, times as ISO-8601 UTC, as in the NDJSON export."
    )
    count: int
    snapshots: dict[str, int | None] = Field(description="The snapshot each table read was pinned to.")
    exchanges: dict[str, list[str] | None] = Field(
        description="Per table, the exchanges its rows were narrowed to by the caller's scopes; null = all."
    )


class BookLevel(BaseModel):
    price: DecimalString
    size: DecimalString


class BookResponse(BaseModel):
    """One instrument's level-2 book at a time: rebuilt from the nearest snapshot at or before it plus the updates
    after. `valid` false: the book is unknown there (a gap not yet healed by a snapshot, or no snapshot), `reason`
    says why, and no level is given."""

    symbol: str
    exchange: str
    at: AwareDatetime
    depth: int
    valid: bool
    reason: str | None
    snapshot_at: AwareDatetime | None = Field(description="The snapshot the book was rebuilt from.")
    snapshot_source: str | None = Field(description="feed (the exchange's) or k2 (computed by K2).")
    sequence: int | None = Field(description="The number of the last update applied.")
    updates_applied: int
    bids: list[BookLevel] = Field(description="Highest price first, at most `depth`.")
    asks: list[BookLevel] = Field(description="Lowest price first, at most `depth`.")
    spread: DecimalString | None
    mid: DecimalString | None
    imbalance: DecimalString | None = Field(description="(bid size - ask size) / (bid size + ask size) at the top.")


class TopOfBookPoint(BaseModel):
    at: AwareDatetime
    valid: bool
    best_bid: DecimalString | None
    bid_size: DecimalString | None
    best_ask: DecimalString | None
    ask_size: DecimalString | None
    spread: DecimalString | None
    mid: DecimalString | None
    imbalance: DecimalString | None
    bid_depth: DecimalString | None = Field(description="Size resting on the best `depth` bid levels.")
    ask_depth: DecimalString | None = Field(description="Size resting on the best `depth` ask levels.")


class BookSeriesResponse(BaseModel):
    """An instrument's top of book every `every` from `start` to `end`; points where the book is unknown have
    `valid` false and no prices."""

    symbol: str
    exchange: str
    every: str
    depth: int
    count: int
    data: list[TopOfBookPoint]


class BookBar(BaseModel):
    start: AwareDatetime
    known_seconds: float = Field(description="How long in the bar the book was known; the means are over that time.")
    updates: int = Field(description="Stored updates timed in the bar.")
    mid_open: DecimalString | None
    mid_high: DecimalString | None
    mid_low: DecimalString | None
    mid_close: DecimalString | None
    spread_mean: DecimalString | None = Field(description="Time-weighted.")
    spread_min: DecimalString | None
    spread_max: DecimalString | None
    imbalance_mean: DecimalString | None = Field(description="Time-weighted (bid - ask) / (bid + ask) at the top.")
    bid_depth_mean: DecimalString | None = Field(description="Time-weighted size on the best `depth` bid levels.")
    ask_depth_mean: DecimalString | None = Field(description="Time-weighted size on the best `depth` ask levels.")


class BookBarsResponse(BaseModel):
    """An instrument's book as UTC-aligned bars: the mid's open, high, low and close as the book moved, and
    time-weighted spread, imbalance and depth over the time the book was known (all null in a bar where it never
    was)."""

    symbol: str
    exchange: str
    interval: str
    depth: int
    count: int
    data: list[BookBar]
