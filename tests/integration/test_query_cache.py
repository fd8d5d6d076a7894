"""The three caching tiers against real components: the in-process LRU, the real Redis (and the API without
it), and the precomputed OHLCV tables built by `k2_core.upkeep.ohlcv`, served only while provably fresh."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from k2_api.main import create_app
from k2_core.lake import scan
from k2_core.lake.catalog import ensure_table, ensure_tables, open_catalog
from k2_core.model.tables import TRADES
from k2_core.read import precomputed
from k2_core.read.engine import QueryEngine
from k2_core.read.params import AsOf
from k2_core.settings import Settings
from k2_core.upkeep.compaction import compact_day
from k2_core.upkeep.expiry import expire_snapshots
from k2_core.upkeep.ohlcv import OHLCV_TABLES, rebuild_daily_bars, rebuild_minute_bars
from k2_core.upkeep.retention import RetentionPolicy, apply_retention
from tests.support import factories
from tests.support import query_oracle as oracle
from tests.support.clients import local_client

SettingsFactory = Callable[..., Settings]
D1 = datetime(2024, 3, 4, tzinfo=UTC)
DAYS = [D1 + timedelta(days=i) for i in range(3)]
END = DAYS[-1] + timedelta(days=1)


def make_trades(seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for symbol in ("BHP", "CBA"):
        at = D1 + timedelta(hours=9)
        for seq in range(1, 301):
            at += timedelta(seconds=rng.randrange(1, 800))
            price = Decimal(rng.randrange(4000_0000, 4600_0000)) / 10**6
            volume = Decimal(rng.randrange(1, 10**9)) / 10**6
            rows.append(
                factories.trade(
                    symbol, seq, at, price, volume, side="buy", trade_id=f"{symbol}{seq}", ingestion_timestamp=at
                )
            )
    return rows


TRADE_ROWS = make_trades()


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    settings = make_settings()
    settings.query.tail_enabled = False
    catalog = open_catalog(settings)
    try:
        tables = ensure_tables(catalog, settings.catalog.namespace)
        for day in DAYS:  # one commit per day, as a day's ingest would leave it
            tables["trades"].append(
                TRADES.to_arrow([r for r in TRADE_ROWS if r["exchange_timestamp"].date() == day.date()])
            )
    finally:
        catalog.close()
    return settings


@pytest.fixture
def engine(settings: Settings) -> Iterator[QueryEngine]:
    with QueryEngine.from_settings(settings) as engine:
        yield engine


def append(settings: Settings, rows: list[dict[str, Any]]) -> None:
    catalog = open_catalog(settings)
    try:
        catalog.load_table((settings.catalog.namespace, "trades")).append(TRADES.to_arrow(rows))
    finally:
        catalog.close()


def late_trade(day: datetime, seq: int = 1000, price: str = "99.5") -> dict[str, Any]:
    at = day + timedelta(hours=23, minutes=59)
    return TRADE_ROWS[0] | {
        "exchange_timestamp": at,
        "exchange_sequence_number": seq,
        "price": Decimal(price),
        "trade_id": f"late{seq}",
    }


def test_a_repeated_query_comes_from_the_lru_then_from_redis_in_another_process(
    engine: QueryEngine, settings: Settings
) -> None:
    first = engine.ohlcv("BHP", "asx", "5m", D1, END)
    again = engine.ohlcv("BHP", "asx", "5m", D1, END)
    assert (first.cached, again.cached) == (None, "lru")
    assert again.table.equals(first.table)
    with QueryEngine.from_settings(settings) as other:  # its own LRU is empty: the shared Redis answers
        shared = other.ohlcv("BHP", "asx", "5m", D1, END)
    assert shared.cached == "redis"
    assert shared.table.equals(first.table)
    assert shared.table.to_pylist() == oracle.bars([r for r in TRADE_ROWS if r["symbol"] == "BHP"], "5m")


def test_a_commit_is_never_hidden_by_a_cached_answer(engine: QueryEngine, settings: Settings) -> None:
    engine.ohlcv("BHP", "asx", "1h", D1, END)
    engine.latest("BHP", "asx")
    assert engine.latest("BHP", "asx").cached == "lru"
    newest = late_trade(DAYS[-1])
    append(settings, [newest])
    bars = engine.ohlcv("BHP", "asx", "1h", D1, END)
    latest = engine.latest("BHP", "asx")
    assert (bars.cached, latest.cached) == (None, None)
    bhp = [r for r in TRADE_ROWS if r["symbol"] == "BHP"] + [newest]
    assert bars.table.to_pylist() == oracle.bars(bhp, "1h")
    assert latest.table.to_pylist() == [newest]


def test_trade_pages_are_cached_per_snapshot_and_cursor(engine: QueryEngine) -> None:
    query = engine.market_query("CBA", "asx", D1, END, 100)
    one = engine.fetch("trades", query)
    two = engine.fetch("trades", query, cursor=one.next_cursor)
    assert (one.cached, two.cached) == (None, None)
    assert engine.fetch("trades", query, cursor=one.next_cursor).cached == "lru"
    assert two.table.to_pylist() == oracle.in_order(r for r in TRADE_ROWS if r["symbol"] == "CBA")[100:200]


def test_queries_work_without_redis(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    settings.redis.url = "redis://127.0.0.1:1/0"  # nothing listens there
    caplog.set_level(logging.WARNING, logger="k2_core.read.cache")
    with QueryEngine.from_settings(settings) as engine:
        first = engine.ohlcv("CBA", "asx", "15m", D1, END)
        second = engine.ohlcv("CBA", "asx", "15m", D1, END)
        third = engine.ohlcv("CBA", "asx", "1h", D1, END)
    assert (first.cached, second.cached, third.cached) == (None, "lru", None)
    assert first.table.to_pylist() == oracle.bars([r for r in TRADE_ROWS if r["symbol"] == "CBA"], "15m")
    warnings = [r for r in caplog.records if r.getMessage() == "redis unavailable, caching in-process only"]
    assert len(warnings) == 1  # the breaker stops retrying (and timing out) on every query
    with local_client(create_app(settings)) as client:
        response = client.get(
            "/v1/ohlcv",
            params={"symbol": "CBA", "exchange": "asx", "interval": "1d", "start": "2024-03-04", "end": "2024-03-07"},
        )
    assert response.status_code == 200
    assert [bar["trade_count"] for bar in response.json()["data"]] == [
        b["trade_count"] for b in oracle.bars([r for r in TRADE_ROWS if r["symbol"] == "CBA"], "1d")
    ]


def _build(settings: Settings, days: list[datetime]) -> None:
    catalog = open_catalog(settings)
    try:
        trades = catalog.load_table((settings.catalog.namespace, "trades"))
        minute = ensure_table(catalog, settings.catalog.namespace, OHLCV_TABLES["1m"])
        daily = ensure_table(catalog, settings.catalog.namespace, OHLCV_TABLES["1d"])
        for day in days:
            rebuild_minute_bars(trades, minute, day.date(), retries=2, backoff=0.01)
            rebuild_daily_bars(trades, minute, daily, day.date(), retries=2, backoff=0.01)
    finally:
        catalog.close()


def _whole(engine: QueryEngine, interval: str, start: datetime, end: datetime, limit: int | None = None) -> Any:
    """`ohlcv_many` of the whole exchange, every page: (rows, the sources each page named)."""
    rows: list[dict[str, Any]] = []
    sources = set()
    cursor = None
    while True:
        page = engine.ohlcv_many(None, "asx", interval, start, end, limit=limit, cursor=cursor)
        rows += page.table.to_pylist()
        sources.add(page.sources)
        cursor = page.next_cursor
        if cursor is None:
            return rows, sources


def _expected(rows: list[dict[str, Any]], interval: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The oracle's bars of every symbol in rows, in the listing's (bar_start, symbol) order."""
    found = []
    for symbol in ("BHP", "CBA"):
        found += oracle.bars(
            [r for r in rows if r["symbol"] == symbol and start <= r["exchange_timestamp"] < end], interval
        )
    return sorted(found, key=lambda b: (b["bar_start"], b["symbol"]))


def test_whole_exchange_bars_from_the_precomputed_tables(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ohlcv_many(None, ...)` at 1m / 1d reads the fresh days from the precomputed table in one scan for the whole
    exchange and computes the others from trades, as one symbol's bars do: equal to the oracle, to the per-symbol
    listing and to bars computed from trades alone (time travel), labelled with the sources that served; a day a late
    trade made stale is computed, not served."""
    _build(settings, DAYS[:2])  # the third day has no precomputed bars
    reads: list[str] = []
    register = scan.register

    def spy(con: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(name)
        return register(con, name, *args, **kwargs)

    monkeypatch.setattr(scan, "register", spy)
    with QueryEngine.from_settings(settings, cache=False) as engine:
        for interval in ("1m", "1d"):
            reads.clear()
            rows, sources = _whole(engine, interval, D1, END)
            assert reads == ["bars", "market_ice"]  # one scan of the bar table, one of trades for the third day
            assert sources == {("precomputed", "iceberg")}
            assert rows == _expected(TRADE_ROWS, interval, D1, END)
            per_symbol = engine.ohlcv_many(["BHP", "CBA"], "asx", interval, D1, END).table.to_pylist()
            assert rows == per_symbol
            snapshot = engine.load(TRADES).metadata.current_snapshot_id
            computed = engine.ohlcv_many(None, "asx", interval, D1, END, as_of_snapshot=snapshot)
            assert computed.sources == ("iceberg",)  # time travel computes from the trades it reads
            assert computed.table.to_pylist() == rows
            built, built_sources = _whole(engine, interval, D1, DAYS[2])
            assert built_sources == {("precomputed",)}
            assert built == _expected(TRADE_ROWS, interval, D1, DAYS[2])
        paged, _ = _whole(engine, "1m", D1, END, limit=7)
        assert paged == _whole(engine, "1m", D1, END)[0]

        # A late trade lands on day one: that day is computed from trades (the bar table still holds the old bars).
        late = late_trade(DAYS[0])
        append(settings, [late])
        for interval in ("1m", "1d"):
            rows, sources = _whole(engine, interval, D1, DAYS[2])
            assert sources == {("precomputed", "iceberg")}
            assert rows == _expected([*TRADE_ROWS, late], interval, D1, DAYS[2])
            assert rows == engine.ohlcv_many(["BHP", "CBA"], "asx", interval, D1, DAYS[2]).table.to_pylist()
        day_two, sources = _whole(engine, "1m", DAYS[1], DAYS[2])
        assert sources == {("precomputed",)}
        assert day_two == _expected(TRADE_ROWS, "1m", DAYS[1], DAYS[2])


def test_precomputed_bars_are_served_for_fresh_days_only(settings: Settings) -> None:
    _build(settings, DAYS[:2])  # the third day has no precomputed bars
    with QueryEngine.from_settings(settings, cache=False) as engine:
        for interval in ("1m", "1d"):
            result = engine.ohlcv("BHP", "asx", interval, D1, END)
            assert result.sources == ("precomputed", "iceberg")
            assert result.table.to_pylist() == oracle.bars([r for r in TRADE_ROWS if r["symbol"] == "BHP"], interval)
        only_built = engine.ohlcv("CBA", "asx", "1m", D1, DAYS[2])
        assert only_built.sources == ("precomputed",)
        assert engine.summary("CBA", "asx", "2024-03-05").sources == ("precomputed",)
        assert engine.ohlcv("CBA", "asx", "5m", D1, DAYS[2]).sources == ("iceberg",)  # no 5m table

        # A late trade lands on day one: that day's bars are stale, day two's are not.
        late = late_trade(DAYS[0])
        append(settings, [late])
        bhp = [r for r in TRADE_ROWS if r["symbol"] == "BHP"] + [late]
        stale = engine.ohlcv("BHP", "asx", "1m", D1, DAYS[2])
        assert stale.sources == ("precomputed", "iceberg")
        assert stale.table.to_pylist() == oracle.bars([r for r in bhp if r["exchange_timestamp"] < DAYS[2]], "1m")
        (day_one,) = engine.summary("BHP", "asx", D1.date()).table.to_pylist()
        assert day_one["close"] == Decimal("99.5")
        assert engine.ohlcv("BHP", "asx", "1m", DAYS[1], DAYS[2]).sources == ("precomputed",)

        _build(settings, DAYS[:1])  # rebuilt from the new snapshot: fresh again
        rebuilt = engine.ohlcv("BHP", "asx", "1m", D1, DAYS[2])
        assert rebuilt.sources == ("precomputed",)
        assert rebuilt.table.equals(stale.table)

        travel = engine.ohlcv("BHP", "asx", "1m", D1, DAYS[2], as_of=None)
        snapshot = engine.load(TRADES).metadata.current_snapshot_id
        pinned = engine.ohlcv("BHP", "asx", "1m", D1, DAYS[2], as_of=AsOf(snapshot_id=snapshot))
        assert pinned.sources == ("iceberg",)  # time travel always computes from the trades it reads
        assert pinned.table.equals(travel.table)


def test_a_day_whose_manifest_was_only_rewritten_stays_fresh(make_settings: SettingsFactory) -> None:
    """One append holding every day's rows leaves one manifest listing every day's file. Compacting day two rewrites
    it: day one's file is carried over unchanged into a newer manifest, which the manifest test alone takes for a
    change. Planning day one at both snapshots finds the same files, so its bars are still served (and equal the
    oracle's); a file truly added to day one (a late trade) still makes it stale."""
    second = late_trade(DAYS[1], seq=2000, price="41.5")
    rows_then = [*TRADE_ROWS, second]
    settings = make_settings()
    settings.query.tail_enabled = False
    catalog = open_catalog(settings)
    try:
        tables = ensure_tables(catalog, settings.catalog.namespace)
        tables["trades"].append(TRADES.to_arrow(TRADE_ROWS))
        tables["trades"].append(TRADES.to_arrow([second]))  # day two's second file, for compaction to merge
    finally:
        catalog.close()
    _build(settings, DAYS[:2])
    catalog = open_catalog(settings)
    try:
        trades = catalog.load_table((settings.catalog.namespace, "trades"))
        compact_day(trades, TRADES, DAYS[1].date(), target_file_bytes=1 << 20, retries=2, backoff_seconds=0.01)
    finally:
        catalog.close()
    _build(settings, DAYS[1:2])
    with QueryEngine.from_settings(settings, cache=False) as engine:
        table = engine.load(TRADES)
        snapshot = table.metadata.current_snapshot_id
        assert snapshot is not None
        bars_1m = engine.sources.loader.load("ohlcv_1m")
        with pytest.MonkeyPatch.context() as patch:  # the manifest test alone: day one looks changed
            patch.setattr(precomputed, "_same_files", lambda *args: False)
            assert precomputed.fresh_days(table, bars_1m, [DAYS[0].date()], snapshot) == []
        assert precomputed.fresh_days(table, bars_1m, [d.date() for d in DAYS[:2]], snapshot) == [
            d.date() for d in DAYS[:2]
        ]
        for interval in ("1m", "1d"):
            rows, sources = _whole(engine, interval, D1, DAYS[2])
            assert sources == {("precomputed",)}
            assert rows == _expected(rows_then, interval, D1, DAYS[2])
            one = engine.ohlcv("BHP", "asx", interval, D1, DAYS[2])
            assert one.sources == ("precomputed",)
        late = late_trade(DAYS[0])
        append(settings, [late])
        rows, sources = _whole(engine, "1m", D1, DAYS[2])
        assert sources == {("precomputed", "iceberg")}
        assert rows == _expected([*rows_then, late], "1m", D1, DAYS[2])


def test_a_closed_days_bars_stay_fresh_after_retention_expired_their_source(settings: Settings) -> None:
    """The ingesters keep minutes of trades snapshots: a closed day's build outlives the snapshot it read within a
    minute of live ingestion. Its bars are still served while the day's files are those the build recorded (they
    were computed from trades whenever the source had expired), and a late trade still makes the day stale."""
    _build(settings, DAYS[:2])
    catalog = open_catalog(settings)
    try:
        trades = catalog.load_table((settings.catalog.namespace, "trades"))
        source = trades.metadata.current_snapshot_id
        today = datetime.now(UTC).replace(microsecond=0)
        for i in range(30):  # live ingestion of another day, thinned as the ingester thins it
            trades.append(TRADES.to_arrow([factories.trade("BHP", 50_000 + i, today, "40.1", Decimal(1))]))
        later = datetime.now(UTC) + timedelta(minutes=1)  # every snapshot but the newest 5 is old enough
        apply_retention(trades, later, RetentionPolicy(keep_last=5, hourly_hours=0, daily_hours=0))
        assert trades.snapshot_by_id(source) is None  # the builds' source has expired
    finally:
        catalog.close()
    bhp = _first_two_days_served_precomputed(settings)
    with QueryEngine.from_settings(settings, cache=False) as engine:
        late = late_trade(DAYS[0])
        append(settings, [late])
        stale = engine.ohlcv("BHP", "asx", "1m", D1, DAYS[2])
        assert stale.sources == ("precomputed", "iceberg")
        assert stale.table.to_pylist() == oracle.bars([*bhp, late], "1m")


def test_snapshot_expiry_keeps_each_days_newest_build_of_the_bar_tables(settings: Settings) -> None:
    """The daily maintenance expiry removes every bar-table snapshot past the retention: a day not rebuilt since
    then lost what its bars were built from, and was computed from trades for ever after. Each day's newest build
    is kept, and found across the chain expiry cut."""
    _build(settings, DAYS[:2])
    _build(settings, DAYS[1:2] * 6)  # day two rebuilt again and again (today, in a live system)
    catalog = open_catalog(settings)
    try:
        for table_def in OHLCV_TABLES.values():
            bars = catalog.load_table((settings.catalog.namespace, table_def.name))
            later = datetime.now(UTC) + timedelta(minutes=1)
            expire_snapshots(bars, later, retention=timedelta(0), keep_last=1, retries=2, backoff_seconds=0.01)
            bars.refresh()
            assert len(bars.metadata.snapshots) == 2  # day one's build, and day two's newest (the current one)
    finally:
        catalog.close()
    _first_two_days_served_precomputed(settings)


def _first_two_days_served_precomputed(settings: Settings) -> list[dict[str, Any]]:
    """BHP's bars of the first two days, at both intervals, come from the bar tables and equal the oracle's; returns
    the trades they were computed from."""
    bhp = [r for r in TRADE_ROWS if r["symbol"] == "BHP" and r["exchange_timestamp"] < DAYS[2]]
    with QueryEngine.from_settings(settings, cache=False) as engine:
        for interval in ("1m", "1d"):
            served = engine.ohlcv("BHP", "asx", interval, D1, DAYS[2])
            assert served.sources == ("precomputed",)
            assert served.table.to_pylist() == oracle.bars(bhp, interval)
    return bhp
