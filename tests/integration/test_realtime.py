"""Realtime/hybrid routing against a real Tansu broker: the tail consumer, the 5-minute boundary (shortened to
two here), duplicates between the tail and Iceberg, late arrivals, and the API serving a trade before any
ingester commits it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from pydantic import SecretStr

from k2_api.main import create_app
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.model.tables import TRADES
from k2_core.read.engine import QueryEngine
from k2_core.read.realtime import RealtimeBuffer
from k2_core.settings import Settings
from k2_stream.admin import ensure_topics
from k2_stream.producer import FeedProducer
from k2_stream.registry_confluent import make_registry
from k2_stream.tail import TailConsumer
from tests.support import bar_oracle, factories
from tests.support import query_oracle as oracle
from tests.support.clients import local_client

SettingsFactory = Callable[..., Settings]
WINDOW = timedelta(seconds=120)


def trade(at: datetime, seq: int, price: str = "45.10") -> dict[str, Any]:
    price_at = Decimal(price) + Decimal(seq) / 100
    received = at + timedelta(milliseconds=3)
    return factories.trade(
        "BHP", seq, at, price_at, Decimal(seq % 7 + 1), trade_id=f"t{seq}", ingestion_timestamp=received
    )


def answered(rows: list[dict[str, Any]], answer: pa.Table) -> list[dict[str, Any]]:
    """Expected rows in the answer's columns: one the rows lack is null (an optional column of a newer feed version,
    which the tail answers in once its decoder reads that version; k2_core.read.realtime)."""
    return [{name: row.get(name) for name in answer.schema.names} for row in rows]


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@dataclass
class Scene:
    now: datetime
    committed: list[dict[str, Any]]  # in Iceberg
    streamed: list[dict[str, Any]]  # sent through Kafka (a duplicate included)
    engine: QueryEngine

    @property
    def everything(self) -> list[dict[str, Any]]:
        seen = {r["exchange_sequence_number"]: r for r in self.streamed}
        seen.update({r["exchange_sequence_number"]: r for r in self.committed})
        return oracle.in_order(seen.values())


@pytest.fixture
def settings(make_settings: SettingsFactory, broker: str) -> Settings:
    settings = make_settings(bootstrap=broker)
    settings.query.realtime_window_seconds = WINDOW.total_seconds()
    return settings


@pytest.fixture
def scene(settings: Settings) -> Iterator[Scene]:
    """Trades every 5 s over the last 8 minutes. Iceberg holds those older than a minute (the ingester is
    "behind"); Kafka carries those of the last 4 minutes (so 3 minutes are in both), plus a late trade from
    before the boundary that Iceberg does not have yet, and one message delivered twice."""
    now = datetime.now(UTC)
    rows = [trade(now - timedelta(seconds=480 - 5 * i), i + 1) for i in range(95)]
    committed = [r for r in rows if r["exchange_timestamp"] < now - timedelta(seconds=60)]
    late = trade(now - WINDOW - timedelta(seconds=12), 500)
    streamed = [r for r in rows if r["exchange_timestamp"] >= now - timedelta(seconds=240)]
    streamed = [*streamed[:5], late, streamed[3], *streamed[5:]]
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.catalog.namespace)["trades"].append(TRADES.to_arrow(committed))
    catalog.close()

    layout = ensure_topics(settings)
    producer = FeedProducer(settings, layout, make_registry(SecretStr(""), settings.kafka.schemas_dir))
    for record in streamed:
        producer.send("trades", record)
    producer.flush()
    buffer = RealtimeBuffer(10_000, retention=2 * WINDOW)
    tail = TailConsumer(settings, buffer, layout)
    tail.start()
    try:
        wait_until(lambda: buffer.covers_from("trades", "asx") is not None and buffer.size() >= len(streamed) - 1)
        assert buffer.duplicates == 1
        with QueryEngine.from_settings(settings, realtime=buffer, cache=False) as engine:
            yield Scene(now, committed, streamed, engine)
    finally:
        tail.stop()


def test_a_range_across_the_boundary_merges_both_sources_without_duplicates(scene: Scene) -> None:
    start, end = scene.now - timedelta(minutes=10), scene.now + timedelta(seconds=5)
    result = scene.engine.fetch("trades", scene.engine.market_query("BHP", "asx", start, end, 1000))
    assert result.sources == ("iceberg", "realtime")
    got = result.table.to_pylist()
    assert got == answered(scene.everything, result.table)
    keys = [r["exchange_sequence_number"] for r in got]
    assert len(keys) == len(set(keys))
    assert 500 in keys  # the late trade only the tail has, from before the boundary
    assert 95 in keys  # the newest trades only the tail has


def test_paging_across_the_boundary_loses_and_repeats_nothing(scene: Scene) -> None:
    query = scene.engine.market_query("BHP", "asx", scene.now - timedelta(minutes=10), scene.now, 7)
    rows, cursor, pages = [], None, []
    while True:
        page = scene.engine.fetch("trades", query, cursor=cursor)
        rows += page.table.to_pylist()
        pages.append(page.table)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert rows == answered([r for r in scene.everything if r["exchange_timestamp"] < scene.now], pages[0])


def test_an_old_range_is_served_from_iceberg_alone(scene: Scene) -> None:
    start, end = scene.now - timedelta(minutes=10), scene.now - WINDOW - timedelta(seconds=30)
    result = scene.engine.fetch("trades", scene.engine.market_query("BHP", "asx", start, end, 1000))
    assert result.sources == ("iceberg",)
    assert result.table.to_pylist() == oracle.window(scene.committed, start, end)


def test_a_recent_range_adds_the_uncommitted_tail_to_iceberg(scene: Scene) -> None:
    """Iceberg is read to the end of a recent range too (the tail only holds what its broker still has), and
    the tail adds what is not committed yet; here nothing in the range is committed, so all of it is the tail's."""
    start, end = scene.now - timedelta(seconds=60), scene.now + timedelta(seconds=5)
    result = scene.engine.fetch("trades", scene.engine.market_query("BHP", "asx", start, end, 1000))
    assert result.sources == ("iceberg", "realtime")
    assert result.table.to_pylist() == answered(oracle.window(scene.streamed, start, end), result.table)
    committed = {r["exchange_sequence_number"] for r in scene.committed}
    assert result.table.num_rows > 5
    assert not committed & set(result.table.column("exchange_sequence_number").to_pylist())  # none committed yet


def test_bars_and_latest_price_include_the_tail(scene: Scene) -> None:
    start, end = scene.now - timedelta(minutes=10), scene.now + timedelta(minutes=1)
    bars = scene.engine.ohlcv("BHP", "asx", "1m", start, end)
    assert bars.sources == ("iceberg", "realtime")
    assert bars.table.to_pylist() == oracle.bars(scene.everything, "1m")
    keys = ("bar_start", "open", "high", "low", "close", "volume", "vwap", "trade_count")
    ticks = scene.engine.ohlcv("BHP", "asx", start=start, end=end, bar_type="tick", size=3)
    assert ticks.sources == ("iceberg", "realtime")
    expected = bar_oracle.activity_bars(oracle.window(scene.everything, start, end), "tick", Decimal(3))
    assert [{k: r[k] for k in keys} for r in ticks.table.to_pylist()] == [{k: r[k] for k in keys} for r in expected]
    whole = scene.engine.ohlcv_many(None, "asx", "2m", start, end, align="exchange")  # one scan, with the tail
    assert whole.sources == ("iceberg", "realtime")
    expected = bar_oracle.time_bars(scene.everything, "2m", "exchange", "Australia/Sydney")
    assert [{k: r[k] for k in keys} for r in whole.table.to_pylist()] == [{k: r[k] for k in keys} for r in expected]
    latest = scene.engine.latest("BHP", "asx")
    assert latest.sources == ("realtime",)
    assert latest.table.to_pylist() == answered([scene.everything[-1]], latest.table)


def test_time_travel_never_reads_the_tail(scene: Scene) -> None:
    start, end = scene.now - timedelta(minutes=10), scene.now + timedelta(seconds=5)
    snapshot = scene.engine.load(TRADES).metadata.current_snapshot_id
    result = scene.engine.trades("BHP", "asx", start, end, 1000, as_of_snapshot=snapshot)
    assert result.to_pylist() == oracle.in_order(scene.committed)


def test_the_api_serves_a_trade_before_it_is_committed(settings: Settings) -> None:
    """The API's own consumer, started in its lifespan: a trade produced after startup becomes visible with
    nothing but the broker between producer and API (no ingester runs here)."""
    layout = ensure_topics(settings)
    producer = FeedProducer(settings, layout, make_registry(SecretStr(""), settings.kafka.schemas_dir))
    producer.send("quotes", _quote(datetime.now(UTC) - timedelta(seconds=1), 1))
    producer.flush()
    with local_client(create_app(settings)) as client:
        wait_until(lambda: "trades.asx" in (client.get("/health").json()["realtime_topics"] or []))
        at = datetime.now(UTC)
        producer.send("trades", trade(at, 1))
        producer.flush()
        params = {"symbol": "BHP", "exchange": "asx", "start": (at - timedelta(seconds=30)).isoformat()}

        def visible() -> bool:
            response = client.get("/v1/trades", params=params | {"with_quote": "true"})
            return response.status_code == 200 and response.json()["count"] == 1

        wait_until(visible)
        response = client.get("/v1/trades", params=params | {"with_quote": "true"})
        body = response.json()
        assert body["sources"] == ["iceberg", "realtime"]  # the uncommitted trade came from the tail
        assert response.headers["K2-Sources"] == "iceberg,realtime"
        assert body["data"][0]["trade_id"] == "t1"
        assert body["data"][0]["bid_price"] == "45.00000000"  # the quote, also only in the tail
        latest = client.get("/v1/latest", params={"symbol": "BHP", "exchange": "asx"}).json()
        assert (latest["sources"], latest["data"]["trade_id"]) == (["realtime"], "t1")


def _quote(at: datetime, seq: int) -> dict[str, Any]:
    return factories.quote("BHP", seq, at, "45", "45.02", "10", "12", ingestion_timestamp=at)
