"""K2's read path: `QueryEngine`, one method per query, each answering in the tables' own types. The API routes, the
CLI and the `get_*` functions (`k2_core.read.functions`, generated from these methods) are thin shells over it.

The engine is the front: it validates input (`k2_core.read.params`; every failure a `QueryError` whose message starts
with the offending parameter), rejects symbols never seen, and caches answers read purely from Iceberg
(`k2_core.read.cache`) under keys holding the snapshot id(s), so a commit is never hidden by a cached answer. Behind
it: which source answers, `k2_core.read.routing`; pages and streams, `k2_core.read.paging`; bars,
`k2_core.read.bars`; trades with the quote in force, `k2_core.read.joins`; as-of and window joins and markouts,
`k2_core.read.timejoins`; gaps, `k2_core.lake.gaps`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table

from k2_core.exceptions import QueryError
from k2_core.lake import scan
from k2_core.lake.catalog import CATALOG_FAILURES, ensure_tables, open_catalog
from k2_core.lake.gaps import read_gaps
from k2_core.lake.instruments import read_instruments
from k2_core.lake.scan import ScanPlan
from k2_core.logging import get_logger
from k2_core.model.bars import Interval
from k2_core.model.buckets import parse_interval
from k2_core.model.tables import (
    ALL_TABLES,
    BOOK_SNAPSHOTS,
    BOOK_UPDATES,
    BOOK_VALIDITY,
    GAPS,
    INSTRUMENTS,
    LATEST_ON_SCHEMA,
    MARKET_TABLES,
    QUOTES,
    TRADES,
    TableDef,
)
from k2_core.model.topics import Kind, TopicLayout
from k2_core.read import activity_bars, bars, exchange_bars, exchange_joins, joins, paging, timejoins
from k2_core.read.book import (
    BookAnswer,
    BookBar,
    TopOfBook,
    bar_starts,
    book_at,
    book_bars,
    series_marks,
    top_of_book_series,
    validate_depth,
)
from k2_core.read.cache import RedisTier, ResultCache, Tier
from k2_core.read.cursor import Cursor, CursorCodec, cursor_key, fingerprint, from_micros, micros
from k2_core.read.params import (
    AsOf,
    BarSpec,
    Limits,
    MarketQuery,
    TimeInput,
    TimeRange,
    parse_time,
    validate_as_of,
    validate_bar_count,
    validate_bar_spec,
    validate_date,
    validate_exchange,
    validate_exchanges,
    validate_gap_status,
    validate_interval,
    validate_kinds,
    validate_limit,
    validate_market_query,
    validate_spec_bar_count,
    validate_symbol,
    validate_symbols,
    validate_time_range,
)
from k2_core.read.realtime import RealtimeBuffer
from k2_core.read.result import ICEBERG, PRECOMPUTED, REALTIME, CatalogHealth, QueryResult, Replay
from k2_core.read.routing import (
    DEFAULT_REALTIME_WINDOW,
    TIME_COLUMN,
    Sources,
    Stream,
    latest_of_many,
    union_schema,
    utcnow,
)
from k2_core.read.snapshots import SNAPSHOT_TABLES, choose_snapshot, snapshot_log
from k2_core.read.symbols import SymbolIndex
from k2_core.read.timejoins import SpanInput, parse_span
from k2_core.settings import CatalogSettings, MaintenanceSettings, MarketHours, Settings

logger = get_logger(__name__)

DEFAULT_NAMESPACE = CatalogSettings().namespace
# The failures that mean "the catalog (or the warehouse behind it) cannot be read", as opposed to a bug.
_CATALOG_FAILURES: tuple[type[Exception], ...] = (*CATALOG_FAILURES, NoSuchTableError, NoSuchNamespaceError)


class QueryEngine:
    """Reads K2's tables. Safe to share between threads: tables are re-checked per call (a long-lived engine
    sees every commit), and every query runs on its own DuckDB connection."""

    def __init__(
        self,
        catalog: Catalog,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        exchanges: Collection[str] | None = None,
        limits: Limits | None = None,
        direct_reads: bool = True,
        owns_catalog: bool = False,
        realtime: RealtimeBuffer | None = None,
        realtime_window: timedelta = DEFAULT_REALTIME_WINDOW,
        cache: ResultCache | None = None,
        check_symbols: bool = True,
        clock: Callable[[], datetime] = utcnow,
        cursor_key: bytes | None = None,
        market_hours: Mapping[str, MarketHours] | None = None,
    ) -> None:
        """`exchanges=None` accepts any well-formed exchange name (a bare catalog has no topic layout to check
        against). `direct_reads`, `realtime` and `realtime_window` say where rows may come from
        (`k2_core.read.routing.Sources`). `owns_catalog` makes `close()` release the catalog's connections. `cache`
        is the result cache (None: none); `check_symbols` rejects symbols never seen on the exchange instead of
        answering with nothing. `cursor_key` signs page cursors (`from_settings` gives the installation's); None
        makes a random key of this engine's own, so its cursors are good for its lifetime only. `market_hours` (per
        exchange; default: K2's defaults) place exchange- and session-aligned bars."""
        self.sources = Sources(
            catalog,
            namespace,
            direct_reads=direct_reads,
            realtime=realtime,
            realtime_window=realtime_window,
            clock=clock,
        )
        self.exchanges = frozenset(exchanges) if exchanges is not None else None
        self.limits = limits if limits is not None else Limits()
        self.cache = cache
        self.check_symbols = check_symbols
        self.symbol_index = SymbolIndex()
        self.cursors = CursorCodec(cursor_key if cursor_key is not None else secrets.token_bytes(32))
        self.market_hours = dict(market_hours if market_hours is not None else MaintenanceSettings().market_hours)
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
            limits=Limits.from_settings(settings),
            owns_catalog=True,
            realtime=realtime,
            realtime_window=timedelta(seconds=settings.query.realtime_window_seconds),
            cache=result_cache,
            cursor_key=cursor_key(settings),
            market_hours=settings.maintenance.market_hours,
        )

    @property
    def catalog(self) -> Catalog:
        return self.sources.catalog

    @property
    def namespace(self) -> str:
        return self.sources.namespace

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
        self, symbol: str, exchange: str, start: TimeInput = None, end: TimeInput = None, limit: int | None = None
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
            default_limit=self.limits.default_limit,
            max_limit=self.limits.max_limit,
            now=self.sources.clock(),
            max_window=self.limits.max_window,
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
        key_parts = (kind, query.symbol, query.exchange, query.start, query.end, with_quote, as_of)
        position = self._position(cursor, fingerprint(*key_parts), 2, query.window)
        stream, pinned = self._open(kind, query.exchange, query.symbol, as_of, position)
        choice = stream.choice
        route = self.sources.route(kind, query.exchange, query.window, pinned=pinned)
        quote_choice = joins.quote_snapshot(self.sources, choice, as_of, position) if with_quote else None

        def compute() -> pa.Table:
            rows = paging.page(self.sources, stream, query.window, query.limit, route, position)
            if quote_choice is not None:
                rows = joins.attach_quotes(self.sources, rows, query, quote_choice, realtime=route.realtime)
            return rows

        quote_snapshot = quote_choice.snapshot_id if quote_choice is not None else None
        cache_key = (
            "page", *key_parts[:5], with_quote, choice.snapshot_id, quote_snapshot, position and position.after,
            query.limit,
        )  # fmt: skip
        rows, cached = self._cached(cache_key, compute, cacheable=not route.realtime)
        rows, last = paging.cut(rows, query.limit)
        next_cursor = None
        if last is not None:
            next_cursor = self.cursors.encode(
                Cursor(
                    after=(micros(last[TIME_COLUMN]), last["exchange_sequence_number"]),
                    snapshot_id=None if route.realtime else choice.snapshot_id,
                    fingerprint=fingerprint(*key_parts),
                    quote_snapshot_id=None if route.realtime else quote_snapshot,
                )
            )
        return QueryResult(
            rows, route.sources, choice.snapshot_id, next_cursor, cached, window=query.window, limit=query.limit
        )

    def fetch_many(
        self,
        kind: Kind,
        symbols: Collection[str] | str | None,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
        *,
        cursor: str | None = None,
        with_quote: bool = False,
        as_of: AsOf | None = None,
    ) -> QueryResult:
        """One page of trades/quotes of several symbols of one exchange, as `fetch` reads one, in
        `(exchange_timestamp, symbol, exchange_sequence_number)` order: exchange order within each symbol, rows of
        different symbols at one time by symbol. The cursor holds `(time, symbol's place in the sorted list, sequence)`,
        from which each symbol's own keyset position follows, so each page reads at most limit + 1 rows per symbol
        and merges them; a listing read from Iceberg alone is pinned to its first page's snapshot, as `fetch`'s.
        `symbols` None lists every instrument of the exchange, in the same order (`fetch_exchange`)."""
        if with_quote and kind != "trades":
            raise QueryError("with_quote applies to trades only")
        wanted = validate_symbols(symbols)
        if wanted is None:
            if with_quote:
                raise QueryError(
                    "with_quote needs one symbol or a list of them; for a whole exchange, ask for its symbols' "
                    "trades in lists, or use markouts/asof joins"
                )
            return self.fetch_exchange(kind, exchange, start, end, limit, cursor=cursor, as_of=as_of)
        first = self.market_query(wanted[0], exchange, start, end, limit)
        key_parts = (kind, wanted, first.exchange, first.start, first.end, with_quote, as_of)
        position = self._position(cursor, fingerprint("many", *key_parts), 3, first.window)
        pages: list[pa.Table] = []
        served: set[str] = set()
        snapshot_id: int | None = None
        quote_snapshot: int | None = None
        pinned_all = True
        for place, symbol in enumerate(wanted):
            query = replace(first, symbol=symbol)
            stream, pinned = self._open(kind, query.exchange, symbol, as_of, position)
            snapshot_id = stream.choice.snapshot_id
            route = self.sources.route(kind, query.exchange, query.window, pinned=pinned)
            served.update(route.sources)
            pinned_all = pinned_all and not route.realtime
            rows = paging.page(
                self.sources, stream, query.window, query.limit, route, _symbol_position(position, place)
            )
            if with_quote:
                quote_choice = joins.quote_snapshot(self.sources, stream.choice, as_of, position)
                quote_snapshot = quote_choice.snapshot_id
                rows = joins.attach_quotes(self.sources, rows, query, quote_choice, realtime=route.realtime)
            pages.append(rows)
        merged = pa.concat_tables(pages, promote_options="permissive").sort_by(
            [(TIME_COLUMN, "ascending"), ("symbol", "ascending"), ("exchange_sequence_number", "ascending")]
        )
        rows, last = paging.cut(merged, first.limit)
        next_cursor = None
        if last is not None:
            next_cursor = self.cursors.encode(
                Cursor(
                    after=(micros(last[TIME_COLUMN]), wanted.index(last["symbol"]), last["exchange_sequence_number"]),
                    snapshot_id=snapshot_id if pinned_all else None,
                    fingerprint=fingerprint("many", *key_parts),
                    quote_snapshot_id=quote_snapshot if pinned_all else None,
                )
            )
        sources = tuple(s for s in (ICEBERG, REALTIME) if s in served)
        return QueryResult(rows, sources, snapshot_id, next_cursor, window=first.window, limit=first.limit)

    def fetch_exchange(
        self,
        kind: Kind,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
        *,
        cursor: str | None = None,
        as_of: AsOf | None = None,
    ) -> QueryResult:
        """One page of the trades/quotes of every instrument of an exchange, in `(exchange_timestamp, symbol,
        exchange_sequence_number)` order as `fetch_many`'s: one scan of the exchange's rows, not one per symbol, so
        a venue of thousands of instruments pages as fast as one. The cursor holds the last row's time, symbol and
        sequence; a listing read from Iceberg alone is pinned to its first page's snapshot."""
        exchange = validate_exchange(exchange, self.exchanges)
        window = validate_time_range(start, end, now=self.sources.clock(), max_window=self.limits.max_window)
        limit = validate_limit(limit, default=self.limits.default_limit, maximum=self.limits.max_limit)
        key_parts = (kind, "*", exchange, window.start, window.end, as_of)
        position = self._position(cursor, fingerprint("exchange", *key_parts), 2, window)
        if position is not None and position.symbol is None:
            raise QueryError("cursor is malformed (pass next_cursor from a previous page unchanged)")
        stream, pinned = self.sources.stream(kind, None, exchange, as_of, position)
        route = self.sources.route(kind, exchange, window, pinned=pinned)
        rows, last = paging.cut(paging.page(self.sources, stream, window, limit, route, position), limit)
        next_cursor = None
        if last is not None:
            next_cursor = self.cursors.encode(
                Cursor(
                    after=(micros(last[TIME_COLUMN]), last["exchange_sequence_number"]),
                    snapshot_id=None if route.realtime else stream.choice.snapshot_id,
                    fingerprint=fingerprint("exchange", *key_parts),
                    symbol=last["symbol"],
                )
            )
        return QueryResult(rows, route.sources, stream.choice.snapshot_id, next_cursor, window=window, limit=limit)

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
        as_of: AsOf | TimeInput = None,
    ) -> pa.Table:
        """Trades of `symbol` on `exchange` in `[start, end)` (default: the last day), oldest first, at most
        `limit` rows. `with_quote=True` adds the quote in force at each trade (bid/ask and its time and sequence).
        `as_of_snapshot` / `as_of` read the table as of a snapshot id or a time."""
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
        as_of: AsOf | TimeInput = None,
    ) -> pa.Table:
        """Quotes of `symbol` on `exchange` in `[start, end)`, oldest first; the rules of `trades`."""
        query = self.market_query(symbol, exchange, start, end, limit)
        return self.fetch("quotes", query, as_of=validate_as_of(as_of_snapshot, as_of)).table

    def count(self, kind: Kind, query: MarketQuery, *, as_of: AsOf | None = None) -> int:
        """How many rows the whole (unpaged) query holds: what a long export's progress bar counts to."""
        stream, pinned = self._open(kind, query.exchange, query.symbol, as_of)
        route = self.sources.route(kind, query.exchange, query.window, pinned=pinned)
        return self.sources.count(stream, query.window, route)

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
        as_of_snapshot: int | str | None = None,
        as_of: AsOf | TimeInput = None,
        align: str = "utc",
        fill: str = "none",
        bar_type: str = "time",
        size: Decimal | int | float | str | None = None,
    ) -> QueryResult:
        """OHLCV bars (open, high, low, close, volume, vwap, trade_count per `bar_start`) of one symbol at one of
        1s, 5s, 1m, 5m, 15m, 1h, 1d, in bar order. The window is widened to whole bars (start rounded down, end
        rounded up to the interval, UTC-aligned), so no bar is partial. Intervals without trades have no bar. At
        most `limit` bars per page (default and maximum: max_limit).

        Beyond those: any `interval` from 1s to 1mo (`<N>s|m|h|d|w`, `1mo`), `align` utc | exchange | session,
        `fill` none | previous | null | linear for intervals without trades, and `bar_type` tick | volume | dollar
        bars of `size` (`k2_core.model.buckets`, `k2_core.read.bars.fill`, `k2_core.read.activity_bars`); those
        are `ohlcv_many`'s listing of this one symbol."""
        travel = validate_as_of(as_of_snapshot, as_of)
        symbol = validate_symbol(symbol)
        exchange = validate_exchange(exchange, self.exchanges)
        spec = self._bar_spec(interval, align, fill, bar_type, size, exchange)
        if spec.legacy is None or spec.fill != "none":
            return self._spec_listing((symbol,), exchange, spec, start, end, limit, cursor, travel)
        bar = validate_interval(interval)
        requested = validate_time_range(start, end, now=self.sources.clock(), max_window=self.limits.max_window)
        window = bars.widen(requested, bar)
        validate_bar_count(bar, window, self.limits.max_bars)
        limit = validate_limit(limit, default=self.limits.max_limit, maximum=self.limits.max_limit)
        key_parts = ("ohlcv", symbol, exchange, bar, window.start, window.end, travel)
        position = self._position(cursor, fingerprint(*key_parts), 1, window)
        stream, pinned = self._open("trades", exchange, symbol, travel, position)
        choice = stream.choice
        rows, served, cached = self._bars(stream, bar, window, pinned=pinned)
        if position is not None:
            after = pa.scalar(from_micros(position.after[0]), pa.timestamp("us", tz="UTC"))
            rows = rows.filter(pc.greater(rows.column("bar_start"), after))
        rows, last = paging.cut(rows, limit)
        next_cursor = None
        if last is not None:
            next_cursor = self.cursors.encode(
                Cursor(
                    after=(micros(last["bar_start"]),),
                    snapshot_id=None if REALTIME in served else choice.snapshot_id,
                    fingerprint=fingerprint(*key_parts),
                )
            )
        return QueryResult(rows, served, choice.snapshot_id, next_cursor, cached, window=window, limit=limit)

    def ohlcv_many(
        self,
        symbols: Collection[str] | str | None,
        exchange: str,
        interval: str = "1m",
        start: TimeInput = None,
        end: TimeInput = None,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        as_of_snapshot: int | str | None = None,
        as_of: AsOf | TimeInput = None,
        align: str = "utc",
        fill: str = "none",
        bar_type: str = "time",
        size: Decimal | int | float | str | None = None,
    ) -> QueryResult:
        """`ohlcv` for several symbols of one exchange in one listing, ordered by `(bar_start, symbol)`. Each symbol's
        bars are `ohlcv`'s (same widening, precomputed days, cache); the cursor holds the last bar's start and its
        symbol's place in the sorted list. `symbols=None`: every symbol of the exchange (as the symbol index knows them
        after a refresh). `align`, `fill`, `bar_type`, `size` as `ohlcv`."""
        travel = validate_as_of(as_of_snapshot, as_of)
        exchange = validate_exchange(exchange, self.exchanges)
        wanted = validate_symbols(symbols) if symbols is not None else self._exchange_symbols(exchange)
        assert wanted is not None
        spec = self._bar_spec(interval, align, fill, bar_type, size, exchange)
        if spec.legacy is None or spec.fill != "none" or symbols is None:
            whole = symbols is None
            return self._spec_listing(wanted, exchange, spec, start, end, limit, cursor, travel, whole_exchange=whole)
        bar = validate_interval(interval)
        requested = validate_time_range(start, end, now=self.sources.clock(), max_window=self.limits.max_window)
        window = bars.widen(requested, bar)
        validate_bar_count(bar, window, self.limits.max_bars)
        limit = validate_limit(limit, default=self.limits.max_limit, maximum=self.limits.max_limit)
        key_parts = ("ohlcv_many", wanted, exchange, bar, window.start, window.end, travel)
        position = self._position(cursor, fingerprint(*key_parts), 2, window)
        found: list[pa.Table] = []
        served: set[str] = set()
        snapshot_id: int | None = None
        tiers: list[Tier | None] = []
        for place, symbol in enumerate(wanted):
            stream, pinned = self._open("trades", exchange, symbol, travel, position)
            snapshot_id = stream.choice.snapshot_id
            rows, sources, cached = self._bars(stream, bar, window, pinned=pinned)
            served.update(sources)
            tiers.append(cached)
            if position is not None:
                after_us, cursor_place = position.after
                after = pa.scalar(from_micros(after_us), pa.timestamp("us", tz="UTC"))
                later = pc.greater_equal if place > cursor_place else pc.greater
                rows = rows.filter(later(rows.column("bar_start"), after))
            found.append(rows)
        merged = pa.concat_tables(found).sort_by([("bar_start", "ascending"), ("symbol", "ascending")])
        rows, last = paging.cut(merged, limit)
        next_cursor = None
        if last is not None:
            next_cursor = self.cursors.encode(
                Cursor(
                    after=(micros(last["bar_start"]), wanted.index(last["symbol"])),
                    snapshot_id=None if REALTIME in served else snapshot_id,
                    fingerprint=fingerprint(*key_parts),
                )
            )
        order = (PRECOMPUTED, ICEBERG, REALTIME)
        sources = tuple(s for s in order if s in served)
        cached = tiers[0] if all(t is not None for t in tiers) else None
        return QueryResult(rows, sources, snapshot_id, next_cursor, cached, window=window, limit=limit)

    def summary(
        self,
        symbol: str,
        exchange: str,
        day: date | str,
        *,
        as_of_snapshot: int | str | None = None,
        as_of: AsOf | TimeInput = None,
    ) -> QueryResult:
        """One UTC day of one symbol in one row: open, high, low, close, volume, VWAP and trade count. A day
        without trades is one row with trade_count 0, volume 0 and no prices."""
        travel = validate_as_of(as_of_snapshot, as_of)
        symbol = validate_symbol(symbol)
        exchange = validate_exchange(exchange, self.exchanges)
        window = validate_date(day)
        stream, pinned = self._open("trades", exchange, symbol, travel)
        rows, served, cached = self._bars(stream, "1d", window, pinned=pinned)
        summary = bars.day_summary(rows, symbol, exchange, window.start.date())
        return QueryResult(summary, served, stream.choice.snapshot_id, cached=cached, window=window)

    def latest(
        self,
        symbol: str,
        exchange: str,
        *,
        kind: Kind = "trades",
        as_of_snapshot: int | str | None = None,
        as_of: AsOf | TimeInput = None,
    ) -> QueryResult:
        """The last trade (or quote) of one symbol in exchange order: one row, or none if it never traded.
        Combines the newest committed row (cached per snapshot) with the realtime tail's newest."""
        travel = validate_as_of(as_of_snapshot, as_of)
        symbol = validate_symbol(symbol)
        exchange = validate_exchange(exchange, self.exchanges)
        stream, _ = self._open(kind, exchange, symbol, travel)
        choice = stream.choice
        committed, cached = self._cached(
            ("latest", kind, symbol, exchange, choice.snapshot_id),
            lambda: self.sources.latest_committed(stream, before=None),
        )
        realtime = self.sources.realtime
        if travel is None and realtime is not None:
            recent = realtime.latest(kind, symbol, exchange)
            if recent is not None and (
                committed.num_rows == 0 or paging.order_key(recent) > paging.order_key(committed.to_pylist()[0])
            ):
                row = pa.Table.from_pylist([recent], schema=union_schema(stream.schema, realtime.schema(kind)))
                return QueryResult(row, (REALTIME,), choice.snapshot_id)
        return QueryResult(committed, (ICEBERG,), choice.snapshot_id, cached=cached)

    def latest_on(
        self,
        exchange: str | Collection[str],
        symbols: Collection[str] | str | None = None,
        *,
        kinds: Collection[str] | str | None = None,
        as_of_snapshot: int | str | None = None,
        as_of: AsOf | TimeInput = None,
    ) -> QueryResult:
        """The last trade and the last quote of every instrument of `exchange` (or of several: a list of exchanges,
        read together) or of `symbols` there (a list or a comma-separated string) in one call: one row per
        instrument, by exchange and symbol, with the trade's time, sequence, price and volume and the quote's time,
        sequence, bid and ask; a half is null when the instrument has only the other kind. Each kind follows
        `latest`'s rules (exchange order; the realtime tail's newest wins when later), read newest day partition
        first and further back only for instruments not found yet. A requested symbol with neither has no row (on
        several exchanges, a symbol need only be listed on one of them). `kinds` (`"quotes"`, `"trades"`, a list;
        default both) reads only those tables: the other half is null and an instrument without the kinds asked for
        has no row; the halves read are `kinds=None`'s."""
        travel = validate_as_of(as_of_snapshot, as_of)
        exchanges = validate_exchanges(exchange, self.exchanges)
        wanted = validate_symbols(symbols)
        halves = validate_kinds(kinds)
        if self.check_symbols and wanted is not None:
            for symbol in wanted:
                self.symbol_index.require(exchanges, symbol, self.sources)
        trades, _ = self.sources.stream("trades", "", exchanges[0], travel)
        # Quotes as of the same moment as trades, as `with_quote` reads them.
        quote_choice = joins.quote_snapshot(self.sources, trades.choice, travel, None)
        quotes = Stream("quotes", self.sources.load(QUOTES), "", exchanges[0], quote_choice)
        found: dict[Kind, tuple[pa.Table, bool, Tier | None]] = {}
        for stream in (trades, quotes):
            if stream.kind in halves:
                found[stream.kind] = self._latest_half(stream, exchanges, wanted, live=travel is None)
            else:
                found[stream.kind] = (_latest_schema(stream.kind).empty_table(), False, None)
        trade_rows, trade_live, _ = found["trades"]
        quote_rows, quote_live, _ = found["quotes"]
        table = _latest_rows(trade_rows, quote_rows)
        realtime = trade_live or quote_live
        tiers = [found[kind][2] for kind in halves]
        cached = tiers[0] if all(t is not None for t in tiers) and not realtime else None
        return QueryResult(
            table, (ICEBERG, REALTIME) if realtime else (ICEBERG,), trades.choice.snapshot_id, cached=cached
        )

    def _latest_half(
        self, stream: Stream, exchanges: tuple[str, ...], wanted: tuple[str, ...] | None, *, live: bool
    ) -> tuple[pa.Table, bool, Tier | None]:
        """One kind's last row per instrument for `latest_on`: the committed rows (cached per snapshot), each
        replaced by the realtime tail's newest when that is later in exchange order (`live`); and whether the tail
        served. Only the columns `latest_on` shows are read, and which symbols to expect comes from the symbol
        index."""
        columns = LATEST_HALF[stream.kind]

        def expected(files: Sequence[str], exchange: str) -> set[str]:
            assert stream.choice.snapshot_id is not None
            return self.symbol_index.symbols_in_files(
                stream.table,
                stream.table_def,
                stream.choice.snapshot_id,
                files,
                exchange,
                direct_reads=self.sources.direct_reads,
            )

        committed, cached = self._cached(
            ("latest_on", stream.kind, exchanges, wanted, stream.choice.snapshot_id),
            lambda: latest_of_many(self.sources, stream, exchanges, wanted, columns=columns, expected=expected),
        )
        schema = _latest_schema(stream.kind)
        realtime = self.sources.realtime
        if not live or realtime is None:
            return scan.cast_to(committed, schema), False, cached
        rows = {(row["exchange"], row["symbol"]): row for row in committed.select(list(columns)).to_pylist()}
        served = False
        for exchange in exchanges:
            for symbol in realtime.symbols(exchange) if wanted is None else wanted:
                recent = realtime.latest(stream.kind, symbol, exchange)
                held = rows.get((exchange, symbol))
                if recent is not None and (held is None or paging.order_key(recent) > paging.order_key(held)):
                    rows[(exchange, symbol)] = {n: recent.get(n) for n in columns}
                    served = True
        ordered = [rows[key] for key in sorted(rows)]
        return pa.Table.from_pylist(ordered, schema=schema), served, cached

    # --- replay, snapshots, gaps ----------------------------------------------------------------------------

    def replay(
        self,
        symbol: str,
        exchange: str,
        day: date | str,
        *,
        kind: Kind = "trades",
        as_of_snapshot: int | str | None = None,
        as_of: AsOf | TimeInput = None,
        batch_size: int = 10_000,
        count: bool = False,
    ) -> Replay:
        """Every trade (or quote) of one UTC day in exchange order, streamed in record batches, so the day is never
        held in Python whole. `count` also counts the rows first, for a progress bar."""
        travel = validate_as_of(as_of_snapshot, as_of)
        symbol = validate_symbol(symbol)
        exchange = validate_exchange(exchange, self.exchanges)
        window = validate_date(day)
        stream, pinned = self._open(kind, exchange, symbol, travel)
        route = self.sources.route(kind, exchange, window, pinned=pinned)
        batches = paging.day_batches(self.sources, stream, window, route, batch_size)
        total = self.sources.count(stream, window, route) if count else None
        return Replay(route.sources, stream.choice.snapshot_id, batches, self.sources.columns(stream, route), total)

    def snapshots(self, table: str = "trades", limit: int | None = None, *, cursor: str | None = None) -> QueryResult:
        """A table's snapshots, newest first: time, operation, rows added and the Kafka offsets each commit
        covered."""
        if table not in SNAPSHOT_TABLES:
            raise QueryError(f"table must be one of {', '.join(SNAPSHOT_TABLES)}; got {table!r}")
        limit = validate_limit(limit, default=self.limits.default_limit, maximum=self.limits.max_limit)
        print_ = fingerprint("snapshots", table)
        position = self.cursors.decode(cursor, print_, 1) if cursor else None
        try:
            iceberg_table = self.sources.loader.load(table)
        except NoSuchTableError:
            raise QueryError(f"table {table} does not exist yet in namespace {self.namespace}") from None
        log = snapshot_log(iceberg_table, before_sequence=position.after[0] if position else None, limit=limit + 1)
        log, last = paging.cut(log, limit)
        next_cursor = None
        if last is not None:
            next_cursor = self.cursors.encode(
                Cursor(after=(last["sequence_number"],), snapshot_id=None, fingerprint=print_)
            )
        return QueryResult(log, (ICEBERG,), iceberg_table.metadata.current_snapshot_id, next_cursor, limit=limit)

    def gaps(self, exchange: str | None = None, symbol: str | None = None, status: str | None = None) -> pa.Table:
        """Sequence gaps, newest detection first, narrowed by any of exchange, symbol, status. No limit: the table
        holds one row per gap, not per tick."""
        equal: dict[str, str] = {}
        if exchange is not None:
            equal["exchange"] = validate_exchange(exchange, self.exchanges)
        if symbol is not None:
            equal["symbol"] = validate_symbol(symbol)
        if status is not None:
            equal["status"] = validate_gap_status(status)
        table = self.load(GAPS)
        return read_gaps(table, plans=self.sources.plans, direct_reads=self.sources.direct_reads, **equal)

    # --- level-2 books -------------------------------------------------------------------------------------

    def book(self, symbol: str, exchange: str, at: TimeInput = None, depth: int | None = None) -> BookAnswer:
        """The instrument's book at `at` (default: now), `depth` levels a side, rebuilt from the nearest snapshot
        at or before it and the updates after (k2_core.read.book); an answer with `valid` False says why not."""
        symbol = validate_symbol(symbol)
        exchange = validate_exchange(exchange, self.exchanges)
        when = self.sources.clock() if at is None else parse_time(at, "at")
        return book_at(*self._book_tables(), exchange, symbol, when, validate_depth(depth))

    def _book_tables(self) -> tuple[Table, Table, Table]:
        """The book tables as every book query reads them: snapshots, updates, validity."""
        return self.load(BOOK_SNAPSHOTS), self.load(BOOK_UPDATES), self.load(BOOK_VALIDITY)

    def _book_span(
        self, symbol: str, exchange: str, start: TimeInput, end: TimeInput
    ) -> tuple[str, str, datetime, datetime]:
        """A book series' or bars' instrument and span, checked: `start` is required, `end` defaults to now."""
        symbol = validate_symbol(symbol)
        exchange = validate_exchange(exchange, self.exchanges)
        if start is None:
            raise QueryError("start is required")
        first = parse_time(start, "start")
        return symbol, exchange, first, self.sources.clock() if end is None else parse_time(end, "end")

    def book_series(
        self,
        symbol: str,
        exchange: str,
        start: TimeInput,
        end: TimeInput = None,
        every: SpanInput = "1s",
        depth: int | None = None,
    ) -> list[TopOfBook]:
        """Spread, mid, size imbalance and the size on the best `depth` levels a side of the instrument's book at
        every `every` from `start` to `end` (default now), as a series; points where the book is unknown say so
        (k2_core.read.book)."""
        symbol, exchange, first, last = self._book_span(symbol, exchange, start, end)
        marks = series_marks(first, last, parse_span(every, "every", allow_zero=False))
        return top_of_book_series(*self._book_tables(), exchange, symbol, marks, validate_depth(depth))

    def book_bars(
        self,
        symbol: str,
        exchange: str,
        start: TimeInput,
        end: TimeInput = None,
        interval: str = "1m",
        depth: int | None = None,
    ) -> list[BookBar]:
        """The instrument's book as bars of `interval` (1s to 31d, aligned to UTC) covering `start` to `end`
        (default now): the mid's open, high, low and close, time-weighted spread, imbalance and depth of the best
        `depth` levels, over the time the book was known (k2_core.read.book)."""
        symbol, exchange, first, last = self._book_span(symbol, exchange, start, end)
        try:
            width = parse_interval(interval).fixed
        except ValueError as exc:
            raise QueryError(f"interval {exc}") from None
        if width is None:
            raise QueryError(f"interval {interval}: book bars take a fixed width (<N>s, <N>m, <N>h or <N>d)")
        starts = bar_starts(first, last, width)
        return book_bars(*self._book_tables(), exchange, symbol, starts, width, last, validate_depth(depth))

    def instruments(
        self,
        exchange: str | None = None,
        symbol: str | None = None,
        *,
        as_of_snapshot: int | str | None = None,
        as_of: AsOf | TimeInput = None,
    ) -> QueryResult:
        """Reference data (`market.instruments`), by exchange and symbol, as of the current load or a past one. An
        exchange need not have topics: reference data may come first. Before any load: no rows."""
        exchange = validate_exchange(exchange, None) if exchange is not None else None
        symbol = validate_symbol(symbol) if symbol is not None else None
        travel = validate_as_of(as_of_snapshot, as_of)
        try:
            table = self.sources.loader.load(INSTRUMENTS.name)
        except NoSuchTableError:
            if travel is not None and travel.snapshot_id is not None:
                raise QueryError(
                    f"as_of_snapshot {travel.snapshot_id} is not a snapshot of table instruments"
                ) from None
            return QueryResult(read_instruments(None, None), (ICEBERG,), None)
        choice = choose_snapshot(table, travel, INSTRUMENTS.name)
        rows = read_instruments(table, choice.snapshot_id, exchange=exchange, symbol=symbol)
        return QueryResult(rows, (ICEBERG,), choice.snapshot_id)

    # --- planning and health -------------------------------------------------------------------------------

    def load(self, table_def: TableDef) -> Table:
        """The table at its latest commit; loading per call is how a long-lived reader sees new snapshots."""
        return self.sources.load(table_def)

    def plan(self, table_def: TableDef, row_filter: BooleanExpression | None = None) -> ScanPlan:
        """Ask Iceberg which data files of the current snapshot can hold rows matching `row_filter`."""
        return self.sources.plan(table_def, row_filter)

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

    # --- internals ------------------------------------------------------------------------------------------

    def _position(self, cursor: str | None, print_: str, key_length: int, window: TimeRange) -> Cursor | None:
        """Where a page continues: the cursor verified, and its time within the query's window."""
        if not cursor:
            return None
        return self.cursors.decode(cursor, print_, key_length, first_within=(micros(window.start), micros(window.end)))

    def _open(
        self, kind: Kind, exchange: str, symbol: str, as_of: AsOf | None, position: Cursor | None = None
    ) -> tuple[Stream, bool]:
        """What every stream query starts with: the symbol known, the stream at the snapshot to read (and whether the
        read is pinned to it)."""
        if self.check_symbols:
            self.symbol_index.require(exchange, symbol, self.sources)
        return self.sources.stream(kind, symbol, exchange, as_of, position)

    def _cached(
        self, key: tuple[Any, ...], compute: Callable[[], pa.Table], *, cacheable: bool = True
    ) -> tuple[pa.Table, Tier | None]:
        if self.cache is None or not cacheable:
            return compute(), None
        return self.cache.get_or_compute(ResultCache.key(*self._cache_scope, self.namespace, *key), compute)

    def _bars(
        self, stream: Stream, interval: Interval, window: TimeRange, *, pinned: bool
    ) -> tuple[pa.Table, tuple[str, ...], Tier | None]:
        """Bars as routed, cached unless the tail served; the sources travel with cached bars in their metadata."""
        route = self.sources.route("trades", stream.exchange, window, pinned=pinned)
        key = ("bars", stream.symbol, stream.exchange, interval, window.start, window.end, stream.choice.snapshot_id)
        found, cached = self._cached(
            key,
            lambda: bars.read_bars(self.sources, stream, interval, window, route, use_precomputed=not pinned),
            cacheable=not route.realtime,
        )
        return bars.unlabelled(found), bars.sources_of(found, route.sources), cached

    def _bar_spec(
        self,
        interval: str,
        align: str,
        fill: str,
        bar_type: str,
        size: Decimal | int | float | str | None,
        exchange: str,
    ) -> BarSpec:
        hours = self.market_hours.get(exchange)
        return validate_bar_spec(interval, align, fill, bar_type, size, hours=hours, exchange=exchange)

    def _exchange_symbols(self, exchange: str) -> tuple[str, ...]:
        """Every symbol the exchange has data for, after a refresh of the symbol index (and the realtime tail's)."""
        self.symbol_index.refresh(
            [(self.sources.load(TRADES), TRADES), (self.sources.load(QUOTES), QUOTES)],
            direct_reads=self.sources.direct_reads,
        )
        known = set(self.symbol_index.symbols(exchange))
        if self.sources.realtime is not None:
            known.update(self.sources.realtime.symbols(exchange))
        if not known:
            raise QueryError(f"symbol: exchange {exchange} has no symbols yet; name one")
        return tuple(sorted(known))

    def _spec_listing(
        self,
        wanted: tuple[str, ...],
        exchange: str,
        spec: BarSpec,
        start: TimeInput,
        end: TimeInput,
        limit: int | None,
        cursor: str | None,
        travel: AsOf | None,
        *,
        whole_exchange: bool = False,
    ) -> QueryResult:
        """Bars beyond the original seven UTC intervals (any interval, alignment, fill; tick, volume and dollar bars)
        of one or several symbols, ordered by `(bar_start, symbol, bar's place in its symbol's list)` and paged by a
        keyset cursor of those three (activity bars of one symbol may share a start time). `whole_exchange`: the
        symbols are every symbol of the exchange, read in one pass when no realtime tail is involved."""
        requested = validate_time_range(start, end, now=self.sources.clock(), max_window=self.limits.max_window)
        if spec.bar_type == "time":
            window = bars.widen_spec(spec, requested)
            validate_spec_bar_count(spec, window, self.limits.max_bars)
        else:
            window = requested
        limit = validate_limit(limit, default=self.limits.max_limit, maximum=self.limits.max_limit)
        key_parts = ("ohlcv_spec", wanted, exchange, spec.key, window.start, window.end, travel)
        position = self._position(cursor, fingerprint(*key_parts), 3, window)
        found: list[pa.Table] = []
        served: set[str] = set()
        snapshot_id: int | None = None
        tiers: list[Tier | None] = []
        at_once = self._exchange_bars(exchange, spec, window, travel, position) if whole_exchange else None
        if at_once is not None:
            # The whole exchange: every symbol's bars in one table (filled in one query), placed in one sort.
            snapshot_id, every, sources, cached = at_once
            served.update(sources)
            tiers.append(cached)
            every = bars.fill_many(every, spec, window, list(wanted), exchange)
            found.append(exchange_bars.placed(every, spec, wanted))
        for place, symbol in enumerate(wanted if at_once is None else ()):
            stream, pinned = self._open("trades", exchange, symbol, travel, position)
            snapshot_id = stream.choice.snapshot_id
            rows, sources, cached = self._spec_bars(stream, spec, window, pinned=pinned)
            served.update(sources)
            tiers.append(cached)
            rows = rows.append_column("k2_place", pa.array([place] * rows.num_rows, pa.int64()))
            ordinal = [0] * rows.num_rows if spec.bar_type == "time" else range(rows.num_rows)  # as `placed`
            rows = rows.append_column("k2_ord", pa.array(ordinal, pa.int64()))
            found.append(rows)
        merged = found[0] if len(found) == 1 else pa.concat_tables(found).sort_by(exchange_bars.LISTING_ORDER)
        if position is not None:
            merged = merged.filter(_after(merged, position.after))
        rows, last = paging.cut(merged, limit)
        next_cursor = None
        if last is not None:
            next_cursor = self.cursors.encode(
                Cursor(
                    after=(micros(last["bar_start"]), last["k2_place"], last["k2_ord"]),
                    snapshot_id=None if REALTIME in served else snapshot_id,
                    fingerprint=fingerprint(*key_parts),
                )
            )
        rows = rows.drop_columns(["k2_place", "k2_ord"])
        order = (PRECOMPUTED, ICEBERG, REALTIME)
        sources = tuple(s for s in order if s in served)
        cached = tiers[0] if all(t is not None for t in tiers) else None
        return QueryResult(rows, sources, snapshot_id, next_cursor, cached, window=window, limit=limit)

    def _exchange_bars(
        self, exchange: str, spec: BarSpec, window: TimeRange, travel: AsOf | None, position: Cursor | None
    ) -> tuple[int | None, pa.Table, tuple[str, ...], Tier | None]:
        """Every symbol's bars of the exchange from one scan (`k2_core.read.exchange_bars`; precomputed days of 1m / 1d
        bars from one scan of their table), by symbol then bar, unfilled, with the sources that served; cached unless
        the tail served."""
        stream, pinned = self.sources.stream("trades", None, exchange, travel, position)
        route = self.sources.route("trades", exchange, window, pinned=pinned)
        snapshot_id = stream.choice.snapshot_id
        key = ("bars_exchange", exchange, spec.key, window.start, window.end, snapshot_id)
        found, cached = self._cached(
            key,
            lambda: exchange_bars.read(self.sources, stream, spec, window, route, use_precomputed=not pinned),
            cacheable=not route.realtime,
        )
        served = bars.sources_of(found, route.sources)
        return snapshot_id, bars.unlabelled(found), served, cached

    def _spec_bars(
        self, stream: Stream, spec: BarSpec, window: TimeRange, *, pinned: bool
    ) -> tuple[pa.Table, tuple[str, ...], Tier | None]:
        """One symbol's bars of `spec`: the original intervals as `_bars` reads them (precomputed days included),
        others computed from trades; cached unless the tail served. Filling is applied on top."""
        if spec.legacy is not None:
            rows, served, cached = self._bars(stream, spec.legacy, window, pinned=pinned)
        else:
            route = self.sources.route("trades", stream.exchange, window, pinned=pinned)
            snapshot_id = stream.choice.snapshot_id
            key = ("bars_spec", stream.symbol, stream.exchange, spec.key, window.start, window.end, snapshot_id)

            def compute() -> pa.Table:
                if spec.bar_type == "time":
                    return bars.computed_spec(self.sources, stream, spec, window, route)
                return activity_bars.activity_bars(self.sources, stream, spec, window, route)

            found, cached = self._cached(key, compute, cacheable=not route.realtime)
            rows, served = found, route.sources
        assert stream.symbol is not None
        return bars.fill(rows, spec, window, stream.symbol, stream.exchange), served, cached

    # --- joins on time (k2_core.read.timejoins holds the rules and the SQL) --------------------------------

    def asof_join(
        self,
        symbol: str | None,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
        *,
        right_symbol: str | None = None,
        right_exchange: str | None = None,
        right_kind: str = "quotes",
        direction: str = "backward",
        tolerance: timedelta | str | None = None,
        cursor: str | None = None,
        as_of_snapshot: int | str | None = None,
        as_of: AsOf | TimeInput = None,
    ) -> QueryResult:
        """Each trade of `symbol` in `[start, end)` (a page of at most `limit`, exchange order) joined to the quote
        (`right_kind="trades"`: the trade) of `right_symbol` on `right_exchange` (default: the same instrument) in
        `direction`: `backward` the latest at or before it, `forward` the first at or after it, `nearest` the
        closer (equal distance: the backward one). At one timestamp the highest sequence number is the row in force.
        `tolerance` (`"500ms"`, `"2s"`, a timedelta; at most 1 day) keeps matches within it, boundary included;
        beyond it the right columns are null. Without it, forward/nearest look ahead at most one day. Right
        columns: quotes as `with_quote` names them plus quote_symbol, quote_exchange; trades prefixed `right_`;
        `*_time_diff_us` = right time - trade time in microseconds.

        `symbol` None joins every trade of the exchange to its OWN instrument's row (so `right_symbol` must be None):
        one scan per side, day by day, matched in numpy (`k2_core.read.exchange_joins`); pages in `(time, symbol,
        sequence)` order as `fetch_exchange` does. Raise `limit` (up to `Limits.max_limit`) to get a whole range in
        one call."""
        kind = timejoins.validate_right_kind(right_kind)
        way = timejoins.validate_direction(direction)
        tol = timejoins.parse_span(tolerance, "tolerance") if tolerance is not None else None
        r_symbol, r_exchange = timejoins.right_side(right_symbol, right_exchange, self.exchanges)
        if symbol is None:
            if r_symbol is not None:
                raise QueryError("right_symbol needs a symbol: without one, each trade joins its own instrument's rows")
            return exchange_joins.exchange_join(
                self, "asof", exchange, start, end, limit, cursor, validate_as_of(as_of_snapshot, as_of),
                exchange_joins.asof_reach(kind, way, tol), (kind, way, tol, r_exchange), r_exchange,
            )  # fmt: skip
        reach = tol if tol is not None else timejoins.MAX_SPAN
        right = timejoins.Right(
            kind,
            r_symbol,
            r_exchange,
            before=timedelta(0),
            after=reach if way != "backward" else timedelta(0),
            prior=way != "forward",
        )
        return timejoins.paged_join(
            self, "asof", validate_symbol(symbol), exchange, start, end, limit, cursor,
            validate_as_of(as_of_snapshot, as_of), right, (kind, way, tol, r_symbol, r_exchange),
            lambda trades, rows: timejoins.asof(trades, rows, kind, way, tol),
        )  # fmt: skip

    def window_join(
        self,
        symbol: str,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
        *,
        before: timedelta | str = "1s",
        after: timedelta | str = "1s",
        prevailing: bool = False,
        right_symbol: str | None = None,
        right_exchange: str | None = None,
        cursor: str | None = None,
        as_of_snapshot: int | str | None = None,
        as_of: AsOf | TimeInput = None,
    ) -> QueryResult:
        """Each trade of `symbol` in `[start, end)` (a page of at most `limit`) with statistics of the quotes of
        `right_symbol` on `right_exchange` (default: the same instrument) timed in `[t - before, t + after]`, both
        ends inside (kdb+ `wj1`: the quote prevailing at `t - before` counts only if inside the window; with
        `prevailing=True`, kdb+ `wj`: the quote in force at `t - before` and every later one up to `t + after`):
        quote_count, min/max bid and ask, last bid and ask (by time, then sequence), last_mid (exact, decimal(19,9)),
        and mean_mid and mean_spread (float64 statistics). A window without quotes: quote_count 0, the rest null."""
        lo = timejoins.parse_span(before, "before")
        hi = timejoins.parse_span(after, "after")
        r_symbol, r_exchange = timejoins.right_side(right_symbol, right_exchange, self.exchanges)
        if not isinstance(prevailing, bool):
            raise QueryError(f"prevailing must be true or false; got {prevailing!r}")
        right = timejoins.Right("quotes", r_symbol, r_exchange, before=lo, after=hi, prior=prevailing)
        return timejoins.paged_join(
            self, "window", validate_symbol(symbol), exchange, start, end, limit, cursor,
            validate_as_of(as_of_snapshot, as_of), right, (lo, hi, prevailing, r_symbol, r_exchange),
            lambda trades, rows: timejoins.window(trades, rows, lo, hi, prevailing=prevailing),
        )  # fmt: skip

    def markouts(
        self,
        symbols: Collection[str] | str | None,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
        *,
        horizons: Sequence[timedelta | str] | str = timejoins.DEFAULT_HORIZONS,
        cursor: str | None = None,
        as_of_snapshot: int | str | None = None,
        as_of: AsOf | TimeInput = None,
    ) -> QueryResult:
        """Markouts of the trades of `symbols` (a list or comma list; None: every symbol of the exchange) in
        `[start, end)`, a page of at most `limit` in `(time, symbol, sequence)` order. For each horizon `h` (more than
        0, at most 1 day; default 1s, 5s, 60s) three columns named by it (`mid_1s`, `markout_1s`, `markout_bps_1s`):
        the mid `(bid + ask) / 2` of the instrument's quote in force at `t + h` (exact, decimal(19,9)), the markout
        `(mid - price)` signed by the aggressor (+ buy, - sell, null otherwise; decimal(20,9)) and the same in basis
        points of the price (float64). Null when no quote was in force at `t + h`. A whole exchange (`symbols` None)
        is read in one scan per side, day by day, matched in numpy (`k2_core.read.exchange_joins`); its cursor holds
        the last row's symbol, as `fetch_exchange`'s. A horizon that has not come yet (`t + h` after now, or after
        the moment a time-travel read is as of) is null, not the latest mid known."""
        spans = timejoins.validate_horizons(horizons)
        travel = validate_as_of(as_of_snapshot, as_of)
        if symbols is None:
            result = exchange_joins.exchange_join(
                self, "markouts", exchange, start, end, limit, cursor, travel,
                exchange_joins.markouts_reach(spans), spans,
            )  # fmt: skip
        else:
            right = timejoins.Right("quotes", None, None, before=timedelta(0), after=spans[-1], prior=True)
            result = timejoins.paged_join(
                self, "markouts", validate_symbols(symbols), exchange, start, end, limit, cursor, travel, right,
                spans, lambda trades, rows: timejoins.markouts(trades, rows, spans),
            )  # fmt: skip
        known_until = self._known_until(travel)
        return replace(result, table=timejoins.not_yet_known(result.table, spans, known_until))

    def _known_until(self, travel: AsOf | None) -> datetime:
        """The last moment a read knows the market at: now, or the moment a time-travel read is as of (for a snapshot
        id, its commit)."""
        if travel is None:
            return self.sources.clock()
        if travel.timestamp is not None:
            return travel.timestamp
        committed = choose_snapshot(self.sources.load(TRADES), travel, TRADES.name).committed_at
        return committed if committed is not None else self.sources.clock()


# The columns each half of a `latest_on` row comes from.
LATEST_HALF: dict[Kind, tuple[str, ...]] = {
    "trades": ("symbol", "exchange", TIME_COLUMN, "exchange_sequence_number", "price", "volume"),
    "quotes": (
        "symbol",
        "exchange",
        TIME_COLUMN,
        "exchange_sequence_number",
        "bid_price",
        "bid_size",
        "ask_price",
        "ask_size",
    ),
}


def _latest_schema(kind: Kind) -> pa.Schema:
    """The columns of one half of a `latest_on` row, as the table defines them."""
    schema = MARKET_TABLES[kind].arrow_schema
    return pa.schema([schema.field(name) for name in LATEST_HALF[kind]])


def _latest_rows(trades: pa.Table, quotes: pa.Table) -> pa.Table:
    """The last trade and last quote of each symbol side by side (a full outer join on symbol), by symbol. On the
    process's shared DuckDB (`scan.connect`): opening a database of its own cost ~100 ms a call. One half empty
    (`latest_on(kinds=...)`): the other's rows as they are, its columns null."""
    halves: tuple[tuple[pa.Table, pa.Table, Kind], ...] = ((trades, quotes, "trades"), (quotes, trades, "quotes"))
    for rows, other, mine in halves:
        if other.num_rows == 0:
            return _one_half(rows.sort_by([("exchange", "ascending"), ("symbol", "ascending")]), mine)
    with scan.connect() as con:
        con.register("t", trades)
        con.register("q", quotes)
        joined = con.sql(
            f"""
            SELECT coalesce(t.symbol, q.symbol) AS symbol, coalesce(t.exchange, q.exchange) AS exchange,
                   t.{TIME_COLUMN} AS trade_timestamp, t.exchange_sequence_number AS trade_sequence_number,
                   t.price, t.volume,
                   q.{TIME_COLUMN} AS quote_timestamp, q.exchange_sequence_number AS quote_sequence_number,
                   q.bid_price, q.bid_size, q.ask_price, q.ask_size
            FROM t FULL OUTER JOIN q ON t.exchange = q.exchange AND t.symbol = q.symbol
            ORDER BY exchange, symbol
            """
        ).to_arrow_table()
    return scan.cast_to(joined, LATEST_ON_SCHEMA)


# A `latest_on` row's columns by the half they come from, as named in each half's rows.
_LATEST_ON_NAMES: dict[Kind, dict[str, str]] = {
    "trades": {
        "trade_timestamp": TIME_COLUMN,
        "trade_sequence_number": "exchange_sequence_number",
        "price": "price",
        "volume": "volume",
    },
    "quotes": {
        "quote_timestamp": TIME_COLUMN,
        "quote_sequence_number": "exchange_sequence_number",
        **{n: n for n in ("bid_price", "bid_size", "ask_price", "ask_size")},
    },
}


def _one_half(rows: pa.Table, kind: Kind) -> pa.Table:
    """`latest_on` rows from one kind's rows alone (sorted by exchange and symbol), the other half's columns null."""
    names = _LATEST_ON_NAMES[kind]
    columns = []
    for field in LATEST_ON_SCHEMA:
        source = field.name if field.name in ("symbol", "exchange") else names.get(field.name)
        column = rows.column(source) if source is not None else pa.nulls(rows.num_rows, field.type)
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=LATEST_ON_SCHEMA)


# Keyset bounds for "any sequence number": sequence numbers are 64-bit.
_BEFORE_ANY, _AFTER_ANY = -(2**63), 2**63 - 1


def _symbol_position(position: Cursor | None, place: int) -> Cursor | None:
    """One symbol's own keyset position `(time, sequence)` from a several-symbol cursor `(time, place, sequence)`:
    rows strictly after it in `(time, symbol, sequence)` order. A symbol sorting before the cursor's continues after
    every row at the cursor's time, the cursor's own after its sequence, one sorting after it at the time itself."""
    if position is None:
        return None
    at, cursor_place, seq = position.after
    after_seq = seq if place == cursor_place else _AFTER_ANY if place < cursor_place else _BEFORE_ANY
    return replace(position, after=(at, after_seq))


def _after(rows: pa.Table, after: tuple[int, ...]) -> pa.ChunkedArray:
    """Rows strictly after a `(bar_start micros, place, ordinal)` keyset position."""
    at = pa.scalar(from_micros(after[0]), pa.timestamp("us", tz="UTC"))
    start, place, ordinal = rows.column("bar_start"), rows.column("k2_place"), rows.column("k2_ord")
    same_place = pc.and_(pc.equal(place, after[1]), pc.greater(ordinal, after[2]))
    same_start = pc.and_(pc.equal(start, at), pc.or_(pc.greater(place, after[1]), same_place))
    return pc.or_(pc.greater(start, at), same_start)
