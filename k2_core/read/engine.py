"""K2's read path: one function per query, each returning a `pyarrow.Table` in the tables' own types.

Where rows come from (the response says which):

- `iceberg`: Iceberg plans the data files of one snapshot (current, or chosen by time travel), DuckDB reads
  them (`k2_core.read.scan`).
- `realtime`: ranges reaching into the last `realtime_window` (5 minutes by default) are read from the API's
  in-memory tail of the Kafka topics (`k2_core.read.realtime`), because the ingester commits only about once a
  second. A range that spans the boundary reads Iceberg before it and the tail after it; tail rows older than
  the boundary (late arrivals not yet committed) are added unless Iceberg already has their
  (exchange, symbol, sequence) key, so nothing is counted twice. Time-travel reads never use the tail.
- `precomputed`: 1m and 1d bars come from `market.ohlcv_1m` / `market.ohlcv_1d` for the days those tables
  provably hold the current answer for (`k2_core.read.precomputed`); other days are computed from trades.

Answers read purely from Iceberg are cached (`k2_core.read.cache`) under keys holding the snapshot id(s), so a
commit is never hidden by a cached answer. Every function validates its input (`k2_core.read.params`) and
raises `QueryError`, whose message starts with the offending parameter, for anything it cannot answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThan,
)
from pyiceberg.table import Table
from sqlalchemy.exc import SQLAlchemyError

from k2_core.exceptions import QueryError, UnknownSymbolError
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.logging import get_logger
from k2_core.model.bars import BARS_ARROW_SCHEMA, INTERVALS, PRECOMPUTED_TABLES, Interval, compute_bars
from k2_core.model.tables import ALL_TABLES, GAPS, MARKET_TABLES, QUOTES, TRADES, TableDef
from k2_core.model.topics import Kind, TopicLayout
from k2_core.read import precomputed, scan
from k2_core.read.cache import RedisTier, ResultCache, Tier
from k2_core.read.cursor import Cursor, decode_cursor, fingerprint
from k2_core.read.params import (
    AsOf,
    MarketQuery,
    TimeInput,
    TimeRange,
    align_down,
    validate_as_of,
    validate_bar_count,
    validate_date,
    validate_exchange,
    validate_gap_status,
    validate_interval,
    validate_limit,
    validate_market_query,
    validate_symbol,
    validate_time_range,
)
from k2_core.read.realtime import RealtimeBuffer
from k2_core.read.scan import ScanPlan
from k2_core.read.snapshots import SnapshotChoice, choose_snapshot, snapshot_log
from k2_core.read.symbols import SymbolIndex
from k2_core.settings import ApiSettings, CatalogSettings, QuerySettings, Settings

logger = get_logger(__name__)

DEFAULT_NAMESPACE = CatalogSettings().namespace
_API_DEFAULTS = ApiSettings()
_QUERY_DEFAULTS = QuerySettings()
_TIME_COLUMN = "exchange_timestamp"
# The failures that mean "the catalog (or the warehouse behind it) cannot be read", as opposed to a bug.
_CATALOG_FAILURES = (SQLAlchemyError, OSError, NoSuchTableError, NoSuchNamespaceError)
_SOURCES_KEY = b"k2.sources"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ICEBERG, REALTIME, PRECOMPUTED = "iceberg", "realtime", "precomputed"
SNAPSHOT_TABLES = tuple(t.name for t in ALL_TABLES) + tuple(PRECOMPUTED_TABLES.values())

QUOTE_COLUMNS = pa.schema(
    [
        pa.field("quote_timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("quote_sequence_number", pa.int64()),
        pa.field("bid_price", pa.decimal128(18, 8)),
        pa.field("bid_size", pa.decimal128(18, 8)),
        pa.field("ask_price", pa.decimal128(18, 8)),
        pa.field("ask_size", pa.decimal128(18, 8)),
    ]
)
TRADES_WITH_QUOTE_SCHEMA = pa.schema(list(TRADES.arrow_schema) + list(QUOTE_COLUMNS))
SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("date", pa.date32(), nullable=False),
        pa.field("open", pa.decimal128(18, 8)),
        pa.field("high", pa.decimal128(18, 8)),
        pa.field("low", pa.decimal128(18, 8)),
        pa.field("close", pa.decimal128(18, 8)),
        pa.field("volume", pa.decimal128(38, 8), nullable=False),
        pa.field("vwap", pa.decimal128(18, 8)),
        pa.field("trade_count", pa.int64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class QueryResult:
    """Rows plus how they were obtained: the sources that served them, the Iceberg snapshot read (None when
    the table had none), the cursor for the next page (None on the last), and the cache tier that answered."""

    table: pa.Table
    sources: tuple[str, ...]
    snapshot_id: int | None
    next_cursor: str | None = None
    cached: Tier | None = None
    window: TimeRange | None = None
    limit: int | None = None


@dataclass(frozen=True)
class Route:
    """Which sources serve a window: Iceberg for `[start, iceberg_end)` (no Iceberg part when None), the
    realtime tail for the rest; tail rows before `split` may duplicate Iceberg rows and are deduplicated."""

    iceberg_end: datetime | None
    realtime: bool
    split: datetime | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        return ((ICEBERG,) if self.iceberg_end is not None else ()) + ((REALTIME,) if self.realtime else ())


@dataclass(frozen=True)
class CatalogHealth:
    """Whether the catalog answers, and each table's current snapshot (None = created but never written)."""

    reachable: bool
    snapshots: dict[str, int | None]
    error: str | None = None


@dataclass
class Replay:
    """A day of one stream in exchange order, as Arrow record batches read lazily: iterate once. `sources`
    and `snapshot_id` are known before the first batch, so a server can announce them in headers."""

    sources: tuple[str, ...]
    snapshot_id: int | None
    _batches: Iterator[pa.RecordBatch] = field(repr=False)
    total: int | None = None  # the row count, when asked for (a progress bar's target)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self._batches

    def rows(self) -> Iterator[dict[str, Any]]:
        for batch in self._batches:
            yield from batch.to_pylist()

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


def market_filter(symbol: str, exchange: str, window: TimeRange) -> BooleanExpression:
    """The Iceberg filter for a trades/quotes query: the time range prunes day partitions, the equalities prune
    files by their symbol/exchange min-max stats."""
    return And(
        And(
            GreaterThanOrEqual(term=_TIME_COLUMN, value=window.start.isoformat()),
            LessThan(term=_TIME_COLUMN, value=window.end.isoformat()),
        ),
        And(EqualTo(term="symbol", value=symbol), EqualTo(term="exchange", value=exchange)),
    )


def _ts(moment: datetime) -> str:
    """A timestamptz SQL literal (values come from validated datetimes, never from raw input)."""
    return f"TIMESTAMPTZ '{moment.isoformat()}'"


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _with_sources(table: pa.Table, sources: tuple[str, ...]) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), _SOURCES_KEY: ",".join(sources).encode()})


def _sources_of(table: pa.Table, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = (table.schema.metadata or {}).get(_SOURCES_KEY)
    return tuple(raw.decode().split(",")) if raw else default


def _plain(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata(None)


T = TypeVar("T")


class QueryEngine:
    """Reads K2's tables. Safe to share between threads: tables are re-checked per call (a long-lived engine
    sees every commit), and every query runs on its own DuckDB connection."""

    def __init__(
        self,
        catalog: Catalog,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        exchanges: Collection[str] | None = None,
        default_limit: int = _API_DEFAULTS.default_limit,
        max_limit: int = _API_DEFAULTS.max_limit,
        direct_reads: bool = True,
        owns_catalog: bool = False,
        realtime: RealtimeBuffer | None = None,
        realtime_window: timedelta = timedelta(seconds=_QUERY_DEFAULTS.realtime_window_seconds),
        cache: ResultCache | None = None,
        max_window: timedelta | None = timedelta(days=_QUERY_DEFAULTS.max_range_days),
        max_bars: int = _QUERY_DEFAULTS.max_bars,
        check_symbols: bool = True,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """`exchanges=None` accepts any well-formed exchange name (a bare catalog has no topic layout to check
        against). `direct_reads=False` always reads through pyiceberg, the path taken anyway for delete files or
        remote storage; it exists to cross-check DuckDB's reading against pyiceberg's. `owns_catalog` makes
        `close()` release the catalog's connections. `realtime` is the tail to route recent ranges to (None:
        Iceberg only); `cache` the result cache (None: none); `check_symbols` rejects symbols never seen on
        the exchange instead of answering with nothing."""
        self.catalog = catalog
        self.namespace = namespace
        self.exchanges = frozenset(exchanges) if exchanges is not None else None
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.direct_reads = direct_reads
        self.realtime = realtime
        self.realtime_window = realtime_window
        self.cache = cache
        self.max_window = max_window
        self.max_bars = max_bars
        self.check_symbols = check_symbols
        self.clock = clock
        self.symbol_index = SymbolIndex()
        self._loader = scan.TableLoader(catalog, namespace)
        self._plans = scan.PlanCache()
        self._owns_catalog = owns_catalog
        # Identifies this catalog in shared cache keys (several catalogs may share one Redis).
        self._cache_scope = (getattr(catalog, "name", ""), str(getattr(catalog, "properties", {}).get("uri", "")))

    @classmethod
    def from_settings(
        cls, settings: Settings, *, realtime: RealtimeBuffer | None = None, cache: bool = True
    ) -> QueryEngine:
        """Open the configured catalog, create missing tables (a fresh install then answers with empty results
        rather than errors), take exchanges, limits and routing from settings, and build the result cache
        (in-process LRU, plus Redis when enabled)."""
        catalog = open_catalog(settings)
        try:
            ensure_tables(catalog, settings.catalog.namespace)
            layout = TopicLayout.load(settings.kafka.topics_file)
        except BaseException:
            catalog.close()
            raise
        result_cache = None
        if cache:
            redis_tier = RedisTier(settings.redis) if settings.redis.enabled else None
            result_cache = ResultCache(settings.query.lru_max_bytes, redis_tier)
        return cls(
            catalog,
            settings.catalog.namespace,
            exchanges=layout.exchanges,
            default_limit=settings.api.default_limit,
            max_limit=settings.api.max_limit,
            owns_catalog=True,
            realtime=realtime,
            realtime_window=timedelta(seconds=settings.query.realtime_window_seconds),
            cache=result_cache,
            max_window=timedelta(days=settings.query.max_range_days),
            max_bars=settings.query.max_bars,
        )

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        if self._owns_catalog:
            self.catalog.close()

    def __enter__(self) -> QueryEngine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- trades and quotes ---------------------------------------------------------------------------------

    def market_query(
        self,
        symbol: str,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
    ) -> MarketQuery:
        """Validate a trades/quotes request against this engine's exchanges and limits, filling defaults
        (end = now, start = end - 1 day, limit = default_limit). Raises `QueryError`."""
        return validate_market_query(
            symbol,
            exchange,
            start,
            end,
            limit,
            exchanges=self.exchanges,
            default_limit=self.default_limit,
            max_limit=self.max_limit,
            now=self.clock(),
            max_window=self.max_window,
        )

    def fetch(
        self,
        kind: Kind,
        query: MarketQuery,
        *,
        cursor: str | None = None,
        with_quote: bool = False,
        as_of: AsOf | None = None,
    ) -> QueryResult:
        """One page of a validated trades/quotes query in exchange order `(exchange_timestamp, sequence)`,
        at most `query.limit` rows. `cursor` continues after a previous page; `with_quote` (trades only) adds
        the latest quote at or before each trade; `as_of` reads a past snapshot."""
        if with_quote and kind != "trades":
            raise QueryError("with_quote applies to trades only")
        table_def = MARKET_TABLES[kind]
        key_parts = (kind, query.symbol, query.exchange, query.start, query.end, with_quote, as_of)
        position = decode_cursor(cursor, fingerprint(*key_parts), 2) if cursor else None
        self._check_symbol(query.exchange, query.symbol)
        table = self.load(table_def)
        if position is not None and position.snapshot_id is not None:
            choice = self._pinned(table, table_def, position.snapshot_id)
        else:
            choice = choose_snapshot(table, as_of, table_def.name)
        pinned = as_of is not None or (position is not None and position.snapshot_id is not None)
        route = self._route(kind, query.exchange, query.window, pinned=pinned)
        quote_choice = self._quote_snapshot(choice, as_of, position) if with_quote else None

        def compute() -> pa.Table:
            page = self._page(table, table_def, query, choice, route, position)
            if quote_choice is not None:
                page = self._attach_quotes(page, query, quote_choice, realtime=route.realtime)
            return page

        quote_snapshot = quote_choice.snapshot_id if quote_choice is not None else None
        cache_key = (
            "page", *key_parts[:5], with_quote, choice.snapshot_id, quote_snapshot, position and position.after,
            query.limit,
        )  # fmt: skip
        page, cached = self._cached(cache_key, compute, cacheable=not route.realtime)
        next_cursor = None
        if page.num_rows > query.limit:
            page = page.slice(0, query.limit)
            last = page.slice(page.num_rows - 1).to_pylist()[0]
            next_cursor = Cursor(
                after=(_micros(last[_TIME_COLUMN]), last["exchange_sequence_number"]),
                snapshot_id=None if route.realtime else choice.snapshot_id,
                fingerprint=fingerprint(*key_parts),
                quote_snapshot_id=None if route.realtime else quote_snapshot,
            ).encode()
        return QueryResult(
            page, route.sources, choice.snapshot_id, next_cursor, cached, window=query.window, limit=query.limit
        )

    def _quote_snapshot(self, trades: SnapshotChoice, as_of: AsOf | None, position: Cursor | None) -> SnapshotChoice:
        """The quotes snapshot to join: the one a cursor pinned; for time travel, the one current at the
        requested time (for a trades snapshot id: at that snapshot's commit); else the current one."""
        quotes = self.load(QUOTES)
        if position is not None and position.quote_snapshot_id is not None:
            return self._pinned(quotes, QUOTES, position.quote_snapshot_id)
        if as_of is not None and as_of.timestamp is not None:
            return choose_snapshot(quotes, as_of, QUOTES.name)
        if as_of is not None:
            if trades.committed_at is None:
                return SnapshotChoice(None, None)
            return choose_snapshot(quotes, AsOf(timestamp=trades.committed_at), QUOTES.name)
        return choose_snapshot(quotes, None, QUOTES.name)

    def read(self, kind: Kind, query: MarketQuery, *, as_of: AsOf | None = None) -> pa.Table:
        """The first page of a validated trades/quotes query as a table."""
        return self.fetch(kind, query, as_of=as_of).table

    def trades(
        self,
        symbol: str,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
        *,
        with_quote: bool = False,
        as_of_snapshot: int | str | None = None,
        as_of: TimeInput = None,
    ) -> pa.Table:
        """Trades of one symbol on one exchange in `[start, end)`, oldest first."""
        query = self.market_query(symbol, exchange, start, end, limit)
        return self.fetch("trades", query, with_quote=with_quote, as_of=validate_as_of(as_of_snapshot, as_of)).table

    def quotes(
        self,
        symbol: str,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
        *,
        as_of_snapshot: int | str | None = None,
        as_of: TimeInput = None,
    ) -> pa.Table:
        """Quotes of one symbol on one exchange in `[start, end)`, oldest first."""
        query = self.market_query(symbol, exchange, start, end, limit)
        return self.fetch("quotes", query, as_of=validate_as_of(as_of_snapshot, as_of)).table

    def count(self, kind: Kind, query: MarketQuery, *, as_of: AsOf | None = None) -> int:
        """How many rows the whole (unpaged) query holds: what a long export's progress bar counts to."""
        self._check_symbol(query.exchange, query.symbol)
        table_def = MARKET_TABLES[kind]
        table = self.load(table_def)
        choice = choose_snapshot(table, as_of, table_def.name)
        route = self._route(kind, query.exchange, query.window, pinned=as_of is not None)
        with scan.connect() as con:
            self._market_view(con, table, table_def, query.symbol, query.exchange, query.window, choice, route)
            row = con.execute("SELECT count(*) FROM market").fetchone()
        return int(row[0]) if row else 0

    # --- bars, summary, latest ------------------------------------------------------------------------------

    def ohlcv(
        self,
        symbol: str,
        exchange: str,
        interval: str = "1m",
        start: TimeInput = None,
        end: TimeInput = None,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        as_of: AsOf | None = None,
    ) -> QueryResult:
        """OHLCV + VWAP + trade count bars of one symbol at `interval`, in bar order. The window is widened to
        whole bars (start rounded down, end rounded up to the interval, UTC-aligned), so no bar is partial.
        Intervals without trades have no bar. At most `limit` bars per page (default and maximum: max_limit)."""
        symbol = validate_symbol(symbol)
        exchange = validate_exchange(exchange, self.exchanges)
        bar = validate_interval(interval)
        requested = validate_time_range(start, end, now=self.clock(), max_window=self.max_window)
        window = _widen(requested, bar)
        validate_bar_count(bar, window, self.max_bars)
        limit = validate_limit(limit, default=self.max_limit, maximum=self.max_limit)
        key_parts = ("ohlcv", symbol, exchange, bar, window.start, window.end, as_of)
        position = decode_cursor(cursor, fingerprint(*key_parts), 1) if cursor else None
        self._check_symbol(exchange, symbol)
        table = self.load(TRADES)
        if position is not None and position.snapshot_id is not None:
            choice = self._pinned(table, TRADES, position.snapshot_id)
        else:
            choice = choose_snapshot(table, as_of, TRADES.name)
        pinned = as_of is not None or (position is not None and position.snapshot_id is not None)
        bars, sources, cached = self._bars(table, symbol, exchange, bar, window, choice, pinned=pinned)
        if position is not None:
            after = pa.scalar(_from_micros(position.after[0]), pa.timestamp("us", tz="UTC"))
            bars = bars.filter(pc.greater(bars.column("bar_start"), after))
        next_cursor = None
        if bars.num_rows > limit:
            bars = bars.slice(0, limit)
            last = bars.column("bar_start")[bars.num_rows - 1].as_py()
            next_cursor = Cursor(
                after=(_micros(last),),
                snapshot_id=None if REALTIME in sources else choice.snapshot_id,
                fingerprint=fingerprint(*key_parts),
            ).encode()
        return QueryResult(bars, sources, choice.snapshot_id, next_cursor, cached, window=window, limit=limit)

    def summary(self, symbol: str, exchange: str, day: date | str, *, as_of: AsOf | None = None) -> QueryResult:
        """One UTC day of one symbol: open, high, low, close, volume, VWAP and trade count. A day without
        trades is one row with trade_count 0, volume 0 and no prices."""
        symbol = validate_symbol(symbol)
        exchange = validate_exchange(exchange, self.exchanges)
        window = validate_date(day)
        self._check_symbol(exchange, symbol)
        table = self.load(TRADES)
        choice = choose_snapshot(table, as_of, TRADES.name)
        bars, sources, cached = self._bars(table, symbol, exchange, "1d", window, choice, pinned=as_of is not None)
        row: dict[str, Any] = {"symbol": symbol, "exchange": exchange, "date": window.start.date()}
        if bars.num_rows:
            found = bars.to_pylist()[0]
            row |= {k: found[k] for k in ("open", "high", "low", "close", "volume", "vwap", "trade_count")}
        else:
            row |= {"open": None, "high": None, "low": None, "close": None, "vwap": None}
            row |= {"volume": pa.scalar(0, pa.decimal128(38, 8)).as_py(), "trade_count": 0}
        result = pa.Table.from_pylist([row], schema=SUMMARY_SCHEMA)
        return QueryResult(result, sources, choice.snapshot_id, cached=cached, window=window)

    def latest(self, symbol: str, exchange: str, *, kind: Kind = "trades", as_of: AsOf | None = None) -> QueryResult:
        """The last trade (or quote) of one symbol in exchange order: one row, or none if it never traded.
        Combines the newest committed row (cached per snapshot) with the realtime tail's newest."""
        symbol = validate_symbol(symbol)
        exchange = validate_exchange(exchange, self.exchanges)
        self._check_symbol(exchange, symbol)
        table_def = MARKET_TABLES[kind]
        table = self.load(table_def)
        choice = choose_snapshot(table, as_of, table_def.name)
        committed, cached = self._cached(
            ("latest", kind, symbol, exchange, choice.snapshot_id),
            lambda: self._latest_committed(table, table_def, symbol, exchange, choice.snapshot_id, before=None),
        )
        sources: tuple[str, ...] = (ICEBERG,)
        if as_of is None and self.realtime is not None:
            recent = self.realtime.latest(kind, symbol, exchange)
            if recent is not None and (
                committed.num_rows == 0 or _order_key(recent) > _order_key(committed.to_pylist()[0])
            ):
                return QueryResult(table_def.to_arrow([recent]), (REALTIME,), choice.snapshot_id)
        return QueryResult(committed, sources, choice.snapshot_id, cached=cached)

    # --- replay, snapshots, gaps ----------------------------------------------------------------------------

    def replay(
        self,
        symbol: str,
        exchange: str,
        day: date | str,
        *,
        kind: Kind = "trades",
        as_of: AsOf | None = None,
        batch_size: int = 10_000,
        count: bool = False,
    ) -> Replay:
        """A UTC day of one stream in exchange order, streamed in record batches: DuckDB sorts (spilling to
        disk if it must) and hands batches over one at a time, so the day is never held in Python. `count` also
        counts the rows first, for a progress bar."""
        symbol = validate_symbol(symbol)
        exchange = validate_exchange(exchange, self.exchanges)
        window = validate_date(day)
        self._check_symbol(exchange, symbol)
        table_def = MARKET_TABLES[kind]
        table = self.load(table_def)
        choice = choose_snapshot(table, as_of, table_def.name)
        route = self._route(kind, exchange, window, pinned=as_of is not None)

        def batches() -> Iterator[pa.RecordBatch]:
            with scan.connect() as con:
                self._market_view(con, table, table_def, symbol, exchange, window, choice, route)
                reader = con.sql(
                    f"SELECT * FROM market ORDER BY {_TIME_COLUMN}, exchange_sequence_number"
                ).fetch_record_batch(batch_size)
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                    yield pa.RecordBatch.from_arrays(
                        [batch.column(i).cast(f.type) for i, f in enumerate(table_def.arrow_schema)],
                        schema=table_def.arrow_schema,
                    )

        total = None
        if count:
            with scan.connect() as con:
                self._market_view(con, table, table_def, symbol, exchange, window, choice, route)
                row = con.execute("SELECT count(*) FROM market").fetchone()
                total = int(row[0]) if row else 0
        return Replay(route.sources, choice.snapshot_id, batches(), total)

    def snapshots(self, table_name: str, *, limit: int | None = None, cursor: str | None = None) -> QueryResult:
        """A table's snapshot log, newest first, with the Kafka offsets each commit covered."""
        if table_name not in SNAPSHOT_TABLES:
            raise QueryError(f"table must be one of {', '.join(SNAPSHOT_TABLES)}; got {table_name!r}")
        limit = validate_limit(limit, default=self.default_limit, maximum=self.max_limit)
        print_ = fingerprint("snapshots", table_name)
        position = decode_cursor(cursor, print_, 1) if cursor else None
        try:
            table = self._loader.load(table_name)
        except NoSuchTableError:
            raise QueryError(f"table {table_name} does not exist yet in namespace {self.namespace}") from None
        log = snapshot_log(table, before_sequence=position.after[0] if position else None, limit=limit + 1)
        next_cursor = None
        if log.num_rows > limit:
            log = log.slice(0, limit)
            last = log.column("sequence_number")[limit - 1].as_py()
            next_cursor = Cursor(after=(last,), snapshot_id=None, fingerprint=print_).encode()
        return QueryResult(log, (ICEBERG,), table.metadata.current_snapshot_id, next_cursor, limit=limit)

    def gaps(self, exchange: str | None = None, symbol: str | None = None, status: str | None = None) -> pa.Table:
        """Sequence gaps, newest detection first, optionally narrowed. No limit: the table holds one row per gap,
        not per tick."""
        params: dict[str, str] = {}
        if exchange is not None:
            params["exchange"] = validate_exchange(exchange, self.exchanges)
        if symbol is not None:
            params["symbol"] = validate_symbol(symbol)
        if status is not None:
            params["status"] = validate_gap_status(status)
        row_filter: BooleanExpression = AlwaysTrue()
        for column, value in params.items():
            row_filter = And(row_filter, EqualTo(term=column, value=value))
        where = " AND ".join(f'"{column}" = ${column}' for column in params) or "TRUE"
        table = self.load(GAPS)
        choice = choose_snapshot(table, None, GAPS.name)
        with scan.connect() as con:
            self._register(con, "gaps", table, GAPS, row_filter, choice.snapshot_id, params)
            result = con.sql(f"SELECT * FROM gaps WHERE {where} ORDER BY detected_at DESC, gap_id", params=params)
            return scan.cast_to(result.to_arrow_table(), GAPS.arrow_schema)

    # --- planning and health -------------------------------------------------------------------------------

    def load(self, table_def: TableDef) -> Table:
        """The table at its latest commit; loading per call is how a long-lived reader sees new snapshots."""
        return self._loader.load(table_def.name)

    def plan(self, table_def: TableDef, row_filter: BooleanExpression | None = None) -> ScanPlan:
        """Ask Iceberg which data files of the current snapshot can hold rows matching `row_filter`."""
        table = self.load(table_def)
        return self._plans.plan(table, table_def, row_filter or AlwaysTrue(), table.metadata.current_snapshot_id)

    def health(self) -> CatalogHealth:
        """Load every table; a failure is reported, not raised, because the caller is a health probe."""
        try:
            snapshots = {t.name: self.load(t).metadata.current_snapshot_id for t in ALL_TABLES}
        except _CATALOG_FAILURES as exc:
            logger.warning("catalog unreachable", extra={"error": repr(exc)})
            # First line only: SQLAlchemy appends the SQL statement and a help link, no use to a probe.
            summary = (str(exc).splitlines() or [""])[0][:300]
            return CatalogHealth(reachable=False, snapshots={}, error=f"{type(exc).__name__}: {summary}")
        return CatalogHealth(reachable=True, snapshots=snapshots)

    # --- internals: routing, sources, caching --------------------------------------------------------------

    def _route(self, kind: Kind, exchange: str, window: TimeRange, *, pinned: bool) -> Route:
        if pinned or self.realtime is None:
            return Route(window.end, realtime=False)
        covers = self.realtime.covers_from(kind, exchange)
        if covers is None:  # the tail has not caught up with the topic yet
            return Route(window.end, realtime=False)
        split = max(self.clock() - self.realtime_window, covers)
        if window.end <= split:
            return Route(window.end, realtime=False)
        # Iceberg is read to the window's end too: the tail only holds what its broker still has (a restarted
        # broker, or retention, can leave committed rows the tail never saw), so it adds what Iceberg does not
        # have yet, key-checked, instead of standing in for Iceberg after `split`.
        return Route(window.end, realtime=True, split=window.end)

    def _pinned(self, table: Table, table_def: TableDef, snapshot_id: int) -> SnapshotChoice:
        """The snapshot a cursor pinned; gone (expired) means the listing cannot continue consistently."""
        try:
            return choose_snapshot(table, AsOf(snapshot_id=snapshot_id), table_def.name)
        except QueryError:
            raise QueryError(
                f"cursor refers to snapshot {snapshot_id} of {table_def.name}, which has expired: start again"
            ) from None

    def _check_symbol(self, exchange: str, symbol: str) -> None:
        if not self.check_symbols or self.symbol_index.known(exchange, symbol):
            return
        if self.realtime is not None and symbol in self.realtime.symbols(exchange):
            return
        self.symbol_index.refresh(
            [(self.load(TRADES), TRADES), (self.load(QUOTES), QUOTES)], direct_reads=self.direct_reads
        )
        if self.symbol_index.known(exchange, symbol):
            return
        known = self.symbol_index.symbols(exchange)
        hint = f"; symbols there include {', '.join(known[:10])}" if known else "; it has no data yet"
        raise UnknownSymbolError(f"symbol {symbol!r} has no trades or quotes on exchange {exchange}{hint}")

    def _cached(
        self, key: tuple[Any, ...], compute: Callable[[], pa.Table], *, cacheable: bool = True
    ) -> tuple[pa.Table, Tier | None]:
        if self.cache is None or not cacheable:
            return compute(), None
        return self.cache.get_or_compute(ResultCache.key(*self._cache_scope, self.namespace, *key), compute)

    def _register(
        self,
        con: duckdb.DuckDBPyConnection,
        name: str,
        table: Table,
        table_def: TableDef,
        row_filter: BooleanExpression,
        snapshot_id: int | None,
        filters: Mapping[str, object],
    ) -> ScanPlan:
        began = time.perf_counter()
        plan = self._plans.plan(table, table_def, row_filter, snapshot_id)
        read_path = scan.register_scan(con, name, table, table_def, plan, row_filter, direct_reads=self.direct_reads)
        logger.info(
            "query",
            extra={
                "table": table_def.name,
                "snapshot_id": plan.snapshot_id,
                "filters": {k: str(v) for k, v in filters.items()},
                "planned_files": len(plan.data_files),
                "delete_files": plan.delete_files,
                "read_path": read_path,
                "plan_ms": round((time.perf_counter() - began) * 1000, 2),
            },
        )
        return plan

    def _market_view(
        self,
        con: duckdb.DuckDBPyConnection,
        table: Table,
        table_def: TableDef,
        symbol: str,
        exchange: str,
        window: TimeRange,
        choice: SnapshotChoice,
        route: Route,
        *,
        name: str = "market",
    ) -> ScanPlan | None:
        """Define view `name` on `con`: the stream's rows in `window`, from Iceberg and/or the tail as routed,
        without duplicates. Only a handful of tail rows (late arrivals) need the key check against Iceberg.
        Returns the Iceberg scan plan (None when the tail alone serves)."""
        keep = f"symbol = {_text(symbol)} AND exchange = {_text(exchange)}"
        parts: list[str] = []
        plan = None
        if route.iceberg_end is not None:
            ice_window = TimeRange(window.start, route.iceberg_end)
            plan = self._register(
                con,
                f"{name}_ice",
                table,
                table_def,
                market_filter(symbol, exchange, ice_window),
                choice.snapshot_id,
                {"symbol": symbol, "exchange": exchange, "start": window.start, "end": route.iceberg_end},
            )
            parts.append(
                f"SELECT * FROM {name}_ice WHERE {keep} AND {_TIME_COLUMN} >= {_ts(window.start)} "
                f"AND {_TIME_COLUMN} < {_ts(route.iceberg_end)}"
            )
        if route.realtime:
            assert self.realtime is not None
            assert route.split is not None
            kind: Kind = "trades" if table_def is TRADES else "quotes"
            tail = self.realtime.rows(kind, symbol, exchange, window.start, window.end)
            con.register(f"{name}_tail", tail)
            parts.append(f"SELECT * FROM {name}_tail WHERE {_TIME_COLUMN} >= {_ts(route.split)}")
            late = tail.filter(pc.less(tail.column(_TIME_COLUMN), pa.scalar(route.split)))
            if late.num_rows and route.iceberg_end is not None:
                parts.append(
                    f"SELECT * FROM {name}_tail WHERE {_TIME_COLUMN} < {_ts(route.split)} AND "
                    f"exchange_sequence_number NOT IN (SELECT exchange_sequence_number FROM ({parts[0]}))"
                )
            elif late.num_rows:
                parts.append(f"SELECT * FROM {name}_tail WHERE {_TIME_COLUMN} < {_ts(route.split)}")
        con.sql(f"CREATE OR REPLACE TEMP VIEW {name} AS " + " UNION ALL ".join(parts))
        return plan

    def _page(
        self,
        table: Table,
        table_def: TableDef,
        query: MarketQuery,
        choice: SnapshotChoice,
        route: Route,
        position: Cursor | None,
    ) -> pa.Table:
        """Up to limit + 1 rows after the cursor (the extra row says whether another page exists)."""
        where = "TRUE"
        params: dict[str, Any] = {}
        if position is not None:
            after_ts, after_seq = position.after
            params |= {"after_ts": _from_micros(after_ts), "after_seq": after_seq}
            where = (
                f"{_TIME_COLUMN} >= $after_ts AND ({_TIME_COLUMN} > $after_ts OR exchange_sequence_number > $after_seq)"
            )
        n = query.limit + 1
        with scan.connect() as con:
            plan = self._market_view(con, table, table_def, query.symbol, query.exchange, query.window, choice, route)
            if not route.realtime and plan is not None and len(plan.data_files) == 1:
                # One file, and the rest of the window fits in the page: read it whole in file order, unsorted and
                # unlimited (both cost DuckDB more than the read). Every file K2 writes holds each instrument's
                # rows in exchange order, so the sort below is a check that almost never has to sort.
                (count,) = con.sql(f"SELECT count(*) FROM market WHERE {where}", params=params).fetchall()[0]
                if count < n:
                    result = con.sql(f"SELECT * FROM market WHERE {where}", params=params).to_arrow_table()
                    if not _in_exchange_order(result):
                        result = result.sort_by(
                            [(_TIME_COLUMN, "ascending"), ("exchange_sequence_number", "ascending")]
                        )
                    return scan.cast_to(result, table_def.arrow_schema)
            result = con.sql(
                f"SELECT * FROM market WHERE {where} ORDER BY {_TIME_COLUMN}, exchange_sequence_number LIMIT $n",
                params=params | {"n": n},
            ).to_arrow_table()
        return scan.cast_to(result, table_def.arrow_schema)

    def _attach_quotes(
        self, trades: pa.Table, query: MarketQuery, quote_choice: SnapshotChoice, *, realtime: bool
    ) -> pa.Table:
        """ASOF-join each trade to the latest quote of its stream at or before it. Quotes are read for the page's
        time span only, plus the one quote in force when the page starts. Several quotes at one timestamp: the
        highest sequence number is the one in force. With `realtime`, the tail's quotes count too."""
        if trades.num_rows == 0:
            return TRADES_WITH_QUOTE_SCHEMA.empty_table()
        times = trades.column(_TIME_COLUMN)
        first, last = times[0].as_py(), times[trades.num_rows - 1].as_py()
        span = TimeRange(first, last + timedelta(microseconds=1))
        quotes = self.load(QUOTES)
        route = self._route("quotes", query.exchange, span, pinned=not realtime)
        prior = self._latest_committed(quotes, QUOTES, query.symbol, query.exchange, quote_choice.snapshot_id, first)
        if realtime and self.realtime is not None:
            recent = self.realtime.rows("quotes", query.symbol, query.exchange, datetime.min.replace(tzinfo=UTC), first)
            prior = pa.concat_tables([prior, recent])
        with scan.connect() as con:
            self._market_view(con, quotes, QUOTES, query.symbol, query.exchange, span, quote_choice, route, name="q")
            con.register("prior", prior)
            con.register("page", trades)
            result = con.sql(
                f"""
                WITH quotes AS (
                    SELECT * FROM q UNION ALL SELECT * FROM prior
                ),
                in_force AS (
                    SELECT * FROM quotes
                    QUALIFY row_number() OVER (
                        PARTITION BY {_TIME_COLUMN} ORDER BY exchange_sequence_number DESC) = 1
                )
                SELECT t.*, f.{_TIME_COLUMN} AS quote_timestamp,
                       f.exchange_sequence_number AS quote_sequence_number,
                       f.bid_price, f.bid_size, f.ask_price, f.ask_size
                FROM page t ASOF LEFT JOIN in_force f ON t.{_TIME_COLUMN} >= f.{_TIME_COLUMN}
                ORDER BY t.{_TIME_COLUMN}, t.exchange_sequence_number
                """
            ).to_arrow_table()
        return scan.cast_to(result, TRADES_WITH_QUOTE_SCHEMA)

    def _latest_committed(
        self,
        table: Table,
        table_def: TableDef,
        symbol: str,
        exchange: str,
        snapshot_id: int | None,
        before: datetime | None,
    ) -> pa.Table:
        """The last committed row of a stream (before `before`, if given), searching day partitions newest
        first so that usually only the newest day's files are read."""
        if snapshot_id is None:
            return table_def.arrow_schema.empty_table()
        row_filter: BooleanExpression = And(
            EqualTo(term="symbol", value=symbol), EqualTo(term="exchange", value=exchange)
        )
        if before is not None:
            row_filter = And(row_filter, LessThan(term=_TIME_COLUMN, value=before.isoformat()))
        tasks = list(table.scan(row_filter=row_filter, snapshot_id=snapshot_id).plan_files())
        if not tasks:
            return table_def.arrow_schema.empty_table()
        condition = f"symbol = {_text(symbol)} AND exchange = {_text(exchange)}"
        if before is not None:
            condition += f" AND {_TIME_COLUMN} < {_ts(before)}"
        newest = (
            f"SELECT * FROM latest_src WHERE {condition} "
            f"ORDER BY {_TIME_COLUMN} DESC, exchange_sequence_number DESC LIMIT 1"
        )
        whole = ScanPlan(
            table_def.name,
            snapshot_id,
            tuple(t.file.file_path for t in tasks),
            sum(len(t.delete_files) for t in tasks),
        )
        if whole.local_paths is None or not self.direct_reads:
            plans = [whole]  # one pyiceberg read of everything planned
        else:
            by_day: dict[int, list[str]] = {}
            for task in tasks:
                by_day.setdefault(int(task.file.partition[0]), []).append(task.file.file_path)
            plans = [ScanPlan(table_def.name, snapshot_id, tuple(files), 0) for _, files in sorted(by_day.items())]
            plans.reverse()
        with scan.connect() as con:
            for plan in plans:
                scan.register_scan(
                    con, "latest_src", table, table_def, plan, row_filter, direct_reads=self.direct_reads
                )
                found = con.sql(newest).to_arrow_table()
                if found.num_rows:
                    return scan.cast_to(found, table_def.arrow_schema)
        return table_def.arrow_schema.empty_table()

    def _bars(
        self,
        table: Table,
        symbol: str,
        exchange: str,
        interval: Interval,
        window: TimeRange,
        choice: SnapshotChoice,
        *,
        pinned: bool,
    ) -> tuple[pa.Table, tuple[str, ...], Tier | None]:
        route = self._route("trades", exchange, window, pinned=pinned)

        def compute() -> pa.Table:
            if route.realtime:
                return _with_sources(
                    self._computed_bars(table, symbol, exchange, interval, window, choice, route), route.sources
                )
            return self._iceberg_bars(table, symbol, exchange, interval, window, choice, use_precomputed=not pinned)

        key = ("bars", symbol, exchange, interval, window.start, window.end, choice.snapshot_id)
        bars, cached = self._cached(key, compute, cacheable=not route.realtime)
        return _plain(bars), _sources_of(bars, route.sources), cached

    def _computed_bars(
        self,
        table: Table,
        symbol: str,
        exchange: str,
        interval: Interval,
        window: TimeRange,
        choice: SnapshotChoice,
        route: Route,
    ) -> pa.Table:
        with scan.connect() as con:
            self._market_view(con, table, TRADES, symbol, exchange, window, choice, route)
            return compute_bars(con.sql("SELECT * FROM market"), interval)

    def _iceberg_bars(
        self,
        table: Table,
        symbol: str,
        exchange: str,
        interval: Interval,
        window: TimeRange,
        choice: SnapshotChoice,
        *,
        use_precomputed: bool,
    ) -> pa.Table:
        """Bars from Iceberg: the provably fresh days from the precomputed table, the rest from trades."""
        bars_table = self._precomputed_table(interval) if use_precomputed else None
        if bars_table is None or choice.snapshot_id is None:
            bars = self._computed_bars(table, symbol, exchange, interval, window, choice, Route(window.end, False))
            return _with_sources(bars, (ICEBERG,))
        days = precomputed.days_between(window.start, window.end)
        fresh = precomputed.fresh_days(table, bars_table, days, choice.snapshot_id)
        parts, sources = [], []
        if fresh:
            parts.append(precomputed.read_days(bars_table, symbol, exchange, fresh, window.start, window.end))
            sources.append(PRECOMPUTED)
        fresh_set = set(fresh)
        for run in _runs([d for d in days if d not in fresh_set]):
            lo = max(window.start, datetime.combine(run[0], datetime.min.time(), tzinfo=UTC))
            hi = min(window.end, datetime.combine(run[-1], datetime.min.time(), tzinfo=UTC) + timedelta(days=1))
            parts.append(
                self._computed_bars(table, symbol, exchange, interval, TimeRange(lo, hi), choice, Route(hi, False))
            )
            if ICEBERG not in sources:
                sources.append(ICEBERG)
        logger.info(
            "bars",
            extra={"interval": interval, "days": len(days), "precomputed_days": len(fresh), "symbol": symbol},
        )
        bars = pa.concat_tables(parts).sort_by("bar_start") if parts else BARS_ARROW_SCHEMA.empty_table()
        return _with_sources(bars, tuple(sources))

    def _precomputed_table(self, interval: Interval) -> Table | None:
        name = PRECOMPUTED_TABLES.get(interval)
        if name is None:
            return None
        try:
            return self._loader.load(name)
        except (NoSuchTableError, NoSuchNamespaceError):
            return None


def _in_exchange_order(rows: pa.Table) -> bool:
    """True if `rows` are sorted by (exchange_timestamp, exchange_sequence_number)."""
    if rows.num_rows < 2:
        return True
    ts = pc.cast(rows.column(_TIME_COLUMN), pa.int64()).to_numpy()
    seq = rows.column("exchange_sequence_number").to_numpy()
    later, same = ts[1:] > ts[:-1], ts[1:] == ts[:-1]
    return bool(np.all(later | (same & (seq[1:] >= seq[:-1]))))


def _order_key(row: Mapping[str, Any]) -> tuple[datetime, int]:
    return row[_TIME_COLUMN], int(row["exchange_sequence_number"])


def _widen(window: TimeRange, interval: Interval) -> TimeRange:
    """Round start down and end up to whole bars."""
    width = INTERVALS[interval]
    start = align_down(window.start, interval)
    end = align_down(window.end, interval)
    if end < window.end:
        end += width
    return TimeRange(start, end)


def _runs(days: list[date]) -> list[list[date]]:
    """Consecutive days grouped: [1, 2, 4] -> [[1, 2], [4]]."""
    runs: list[list[date]] = []
    for day in days:
        if runs and runs[-1][-1] + timedelta(days=1) == day:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


# --- functions for direct use ------------------------------------------------------------------------------

Source = QueryEngine | Catalog | Settings


def _run(source: Source, namespace: str, query: Callable[[QueryEngine], T]) -> T:
    """Run `query` on an engine for `source`, closing any catalog opened here. With `Settings`, the namespace
    comes from the settings."""
    if isinstance(source, QueryEngine):
        return query(source)
    engine = QueryEngine.from_settings(source) if isinstance(source, Settings) else QueryEngine(source, namespace)
    with engine:
        return query(engine)


def get_trades(
    source: Source,
    symbol: str,
    exchange: str,
    start: TimeInput = None,
    end: TimeInput = None,
    limit: int | None = None,
    *,
    with_quote: bool = False,
    as_of_snapshot: int | str | None = None,
    as_of: TimeInput = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> pa.Table:
    """Trades of `symbol` on `exchange` in `[start, end)` (default: the last day), oldest first, at most
    `limit` rows. `with_quote=True` adds the quote in force at each trade (bid/ask and its time and sequence).
    `as_of_snapshot` / `as_of` read the table as of a snapshot id or a time.

    `source` is a `QueryEngine` (reuse it for many calls), a pyiceberg `Catalog`, or `Settings` (opens the
    catalog for this one call and checks `exchange` against the topic layout). Raises `QueryError` on bad input.
    """
    return _run(
        source,
        namespace,
        lambda e: e.trades(
            symbol, exchange, start, end, limit, with_quote=with_quote, as_of_snapshot=as_of_snapshot, as_of=as_of
        ),
    )


def get_quotes(
    source: Source,
    symbol: str,
    exchange: str,
    start: TimeInput = None,
    end: TimeInput = None,
    limit: int | None = None,
    *,
    as_of_snapshot: int | str | None = None,
    as_of: TimeInput = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> pa.Table:
    """Quotes of `symbol` on `exchange` in `[start, end)`; `source` as for `get_trades`."""
    return _run(
        source,
        namespace,
        lambda e: e.quotes(symbol, exchange, start, end, limit, as_of_snapshot=as_of_snapshot, as_of=as_of),
    )


def get_ohlcv(
    source: Source,
    symbol: str,
    exchange: str,
    interval: str = "1m",
    start: TimeInput = None,
    end: TimeInput = None,
    *,
    as_of_snapshot: int | str | None = None,
    as_of: TimeInput = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> pa.Table:
    """OHLCV bars (open, high, low, close, volume, vwap, trade_count per `bar_start`) at one of 1s, 5s, 1m, 5m,
    15m, 1h, 1d, UTC-aligned, widened to whole bars; intervals without trades have no row. Up to max_limit bars."""
    return _run(
        source,
        namespace,
        lambda e: e.ohlcv(symbol, exchange, interval, start, end, as_of=validate_as_of(as_of_snapshot, as_of)).table,
    )


def get_market_summary(
    source: Source,
    symbol: str,
    exchange: str,
    day: date | str,
    *,
    as_of_snapshot: int | str | None = None,
    as_of: TimeInput = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> pa.Table:
    """One row for one UTC day: open, high, low, close, volume, VWAP and trade count."""
    return _run(
        source,
        namespace,
        lambda e: e.summary(symbol, exchange, day, as_of=validate_as_of(as_of_snapshot, as_of)).table,
    )


def get_latest_price(
    source: Source,
    symbol: str,
    exchange: str,
    *,
    as_of_snapshot: int | str | None = None,
    as_of: TimeInput = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> pa.Table:
    """The last trade of `symbol` on `exchange` in exchange order (one row; none if it never traded)."""
    return _run(
        source,
        namespace,
        lambda e: e.latest(symbol, exchange, as_of=validate_as_of(as_of_snapshot, as_of)).table,
    )


def replay_day(
    source: Source,
    symbol: str,
    exchange: str,
    day: date | str,
    *,
    kind: Kind = "trades",
    as_of_snapshot: int | str | None = None,
    as_of: TimeInput = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> Iterator[dict[str, Any]]:
    """Every trade (or quote) of one UTC day in exchange order, one dict at a time, read in batches: a day
    never sits in memory whole. Input is validated on the first `next()`."""
    if isinstance(source, QueryEngine):
        replay = source.replay(symbol, exchange, day, kind=kind, as_of=validate_as_of(as_of_snapshot, as_of))
        yield from replay.rows()
        return
    engine = QueryEngine.from_settings(source) if isinstance(source, Settings) else QueryEngine(source, namespace)
    with engine:
        replay = engine.replay(symbol, exchange, day, kind=kind, as_of=validate_as_of(as_of_snapshot, as_of))
        yield from replay.rows()


def get_snapshots(
    source: Source, table: str = "trades", limit: int | None = None, *, namespace: str = DEFAULT_NAMESPACE
) -> pa.Table:
    """A table's snapshots, newest first: time, operation, rows added and the Kafka offsets covered."""
    return _run(source, namespace, lambda e: e.snapshots(table, limit=limit).table)


def get_gaps(
    source: Source,
    exchange: str | None = None,
    symbol: str | None = None,
    status: str | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
) -> pa.Table:
    """Sequence gaps, newest first, narrowed by any of exchange, symbol, status; `source` as for `get_trades`."""
    return _run(source, namespace, lambda engine: engine.gaps(exchange, symbol, status))
