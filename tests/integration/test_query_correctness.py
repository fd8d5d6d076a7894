"""Query answers checked row by row against independent pandas/Decimal computations on the same rows.

Once per module a seeded simulator feed with faults (sequence gaps, duplicate deliveries, out-of-order
deliveries), on a clock with ties, irregular spacing, multi-hour quiet spells and midnight crossings, is
committed to Iceberg as the ingester commits it: in delivery order, deduplicated by key, one snapshot per
micro-batch, so late rows land in later files than their neighbours. The oracle is the delivered rows kept in
Python; for time travel it is what pyiceberg's own reader returns for the chosen snapshot. (The ingester itself
is tested in test_ingest.py; here only the read path is under test.)
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.lake.offsets import CLUSTER_PROPERTY, OFFSETS_PROPERTY, decode_offsets, encode_offsets
from k2_core.model.bars import INTERVALS
from k2_core.model.tables import QUOTES, TRADES
from k2_core.read.engine import QueryEngine
from k2_core.read.functions import get_latest_price, get_market_summary, get_ohlcv, get_trades, replay_day
from k2_core.read.params import AsOf
from k2_core.settings import CatalogSettings, Settings
from k2_stream.simulator import FaultConfig, SimulatorConfig
from k2_stream.simulator.generator import MarketSimulator
from tests.support import query_oracle as oracle

SYMBOLS = ("BHP", "CBA", "CSL")
STEPS = 2500
BATCH = 150
Key = tuple[str, str, int]


def market_clock(start: datetime, rng: random.Random) -> Callable[[], datetime]:
    """Irregular event times: ties (15% of steps add nothing), up to a minute apart, and now and then a quiet
    spell of 1-6 hours, so bars of every width have empty intervals to omit."""
    now = [start]

    def clock() -> datetime:
        roll = rng.random()
        if roll < 0.003:
            now[0] += timedelta(hours=rng.uniform(1, 6))
        elif roll > 0.15:
            now[0] += timedelta(microseconds=rng.randrange(1, 60_000_000))
        return now[0]

    return clock


@dataclass
class Pipeline:
    settings: Settings
    trades: list[dict[str, Any]]
    quotes: list[dict[str, Any]]
    engine: QueryEngine

    def days(self) -> list[date]:
        stamps = [r["exchange_timestamp"] for r in self.trades]
        first, last = min(stamps).date(), max(stamps).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    def of(self, symbol: str, kind: str = "trades") -> list[dict[str, Any]]:
        return [r for r in (self.trades if kind == "trades" else self.quotes) if r["symbol"] == symbol]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """The faulty feed, committed the way the ingester commits: in delivery order, duplicates dropped by key,
    one append per micro-batch of `BATCH` messages carrying the Kafka offsets it covers."""
    settings = Settings(home=tmp_path_factory.mktemp("correctness") / "k2home", catalog=CatalogSettings(name="c"))
    start = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0) - timedelta(days=8)
    faults = FaultConfig(gap_every=37, duplicate_every=11, reorder_every=7)
    simulator = MarketSimulator(
        SimulatorConfig("asx", symbols=SYMBOLS, seed=11, faults=faults), clock=market_clock(start, random.Random(5))
    )
    delivered = list(simulator.events(STEPS))
    assert simulator.stats.duplicates > 0
    assert simulator.stats.reorders > 0
    assert sum(len(v) for v in simulator.stats.withheld.values()) > 0
    seen: set[Key] = set()
    kept: dict[str, list[dict[str, Any]]] = {"trades": [], "quotes": []}
    catalog = open_catalog(settings)
    tables = ensure_tables(catalog, "market")
    offsets: dict[tuple[str, int], int] = {}
    for first in range(0, len(delivered), BATCH):
        batch: dict[str, list[dict[str, Any]]] = {"trades": [], "quotes": []}
        for position, event in enumerate(delivered[first : first + BATCH], start=first):
            # The table's created columns: the simulator also fills schema version 2's, which these tables lack.
            columns = (TRADES if event.kind == "trades" else QUOTES).arrow_schema.names
            record = {k: v for k, v in event.record.items() if k in columns} | {
                "ingestion_timestamp": event.record["exchange_timestamp"] + timedelta(seconds=1)
            }
            offsets[(f"market.equities.{event.kind}.asx", 0)] = position + 1
            key = (record["exchange"], record["symbol"], record["exchange_sequence_number"])
            if (event.kind, *key) in seen:
                continue
            seen.add((event.kind, *key))
            batch[event.kind].append(record)
            kept[event.kind].append(record)
        for kind, table_def in (("trades", TRADES), ("quotes", QUOTES)):
            topic_offsets = {tp: o for tp, o in offsets.items() if f".{kind}." in tp[0]}
            if batch[kind]:
                tables[kind].append(
                    table_def.to_arrow(batch[kind]),
                    snapshot_properties={OFFSETS_PROPERTY: encode_offsets(topic_offsets), CLUSTER_PROPERTY: "test"},
                )
    catalog.close()
    with QueryEngine.from_settings(settings, cache=False) as engine:
        yield Pipeline(settings, kept["trades"], kept["quotes"], engine)


def test_the_table_holds_exactly_the_distinct_delivered_rows(pipeline: Pipeline) -> None:
    catalog = open_catalog(pipeline.settings)
    try:
        table = catalog.load_table(("market", "trades"))
        stored = table.scan().to_arrow().to_pylist()
        commits = len(table.snapshots())
    finally:
        catalog.close()

    def key(row: dict[str, Any]) -> tuple[str, int]:
        return row["symbol"], row["exchange_sequence_number"]

    assert sorted(stored, key=key) == sorted(pipeline.trades, key=key)
    assert commits > 5  # many small commits: a day's rows are spread over many files, late rows included


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_trades_paged_with_cursors_are_every_row_in_exchange_order(pipeline: Pipeline, symbol: str) -> None:
    engine = pipeline.engine
    first, last = pipeline.days()[0], pipeline.days()[-1] + timedelta(days=1)
    query = engine.market_query(symbol, "asx", first.isoformat(), last.isoformat(), 157)
    rows: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        result = engine.fetch("trades", query, cursor=cursor)
        assert result.table.num_rows <= 157
        rows += result.table.to_pylist()
        pages += 1
        cursor = result.next_cursor
        if cursor is None:
            break
    assert pages > 3
    assert rows == oracle.in_order(pipeline.of(symbol))


def test_windows_cut_anywhere_hold_exactly_their_rows(pipeline: Pipeline) -> None:
    rng = random.Random(3)
    stamps = sorted(r["exchange_timestamp"] for r in pipeline.trades)
    for _ in range(12):
        a, b = sorted(rng.sample(stamps, 2))
        symbol = rng.choice(SYMBOLS)
        got = get_trades(pipeline.engine, symbol, "asx", a, b, limit=100_000).to_pylist()
        assert got == oracle.window(pipeline.of(symbol), a, b)


@pytest.mark.parametrize("interval", list(INTERVALS))
def test_ohlcv_and_vwap_match_pandas_at_every_interval(pipeline: Pipeline, interval: str) -> None:
    first, last = pipeline.days()[0], pipeline.days()[-1] + timedelta(days=1)
    for symbol in SYMBOLS:
        got = get_ohlcv(pipeline.engine, symbol, "asx", interval, first.isoformat(), last.isoformat()).to_pylist()
        want = oracle.bars(pipeline.of(symbol), interval)
        assert got == want
    # Empty intervals are omitted, never filled: the quiet spells leave holes at every width below a day.
    starts = [b["bar_start"] for b in got]
    if interval != "1d":
        assert any(b - a > INTERVALS[interval] for a, b in itertools.pairwise(starts))


def test_bars_over_a_window_cut_mid_bar_cover_whole_bars(pipeline: Pipeline) -> None:
    stamps = sorted(r["exchange_timestamp"] for r in pipeline.of("CSL"))
    a, b = stamps[len(stamps) // 4], stamps[3 * len(stamps) // 4]
    result = pipeline.engine.ohlcv("CSL", "asx", "15m", a, b)
    assert result.window is not None
    assert result.window.start <= a
    assert result.window.start.minute % 15 == result.window.start.second == 0
    want = oracle.bars(oracle.window(pipeline.of("CSL"), result.window.start, result.window.end), "15m")
    assert result.table.to_pylist() == want


def test_daily_summary_matches_pandas_on_every_day(pipeline: Pipeline) -> None:
    for day in [*pipeline.days(), pipeline.days()[-1] + timedelta(days=1)]:
        for symbol in SYMBOLS:
            (got,) = get_market_summary(pipeline.engine, symbol, "asx", day).to_pylist()
            want = oracle.day_summary(pipeline.of(symbol), day)
            assert got["date"] == day
            assert {k: got[k] for k in want} == want


def test_latest_price_is_the_last_trade_in_exchange_order(pipeline: Pipeline) -> None:
    for symbol in SYMBOLS:
        (got,) = get_latest_price(pipeline.engine, symbol, "asx").to_pylist()
        assert got == oracle.in_order(pipeline.of(symbol))[-1]


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_asof_join_matches_pandas_merge_asof(pipeline: Pipeline, symbol: str) -> None:
    first, last = pipeline.days()[0], pipeline.days()[-1] + timedelta(days=1)
    got = get_trades(pipeline.engine, symbol, "asx", first, last, limit=100_000, with_quote=True).to_pylist()
    want = oracle.asof_quotes(pipeline.of(symbol), pipeline.of(symbol, "quotes"))
    assert got == want
    # The gaps the feed left in the quotes make some trades join an older quote; none precede every quote.
    assert all(row["quote_timestamp"] <= row["exchange_timestamp"] for row in got if row["quote_timestamp"])


def test_asof_join_on_a_later_page_uses_the_quote_in_force_before_the_page(pipeline: Pipeline) -> None:
    engine = pipeline.engine
    first, last = pipeline.days()[0], pipeline.days()[-1] + timedelta(days=1)
    query = engine.market_query("BHP", "asx", first.isoformat(), last.isoformat(), 50)
    page_one = engine.fetch("trades", query, with_quote=True)
    page_two = engine.fetch("trades", query, cursor=page_one.next_cursor, with_quote=True)
    want = oracle.asof_quotes(pipeline.of("BHP"), pipeline.of("BHP", "quotes"))
    assert page_one.table.to_pylist() + page_two.table.to_pylist() == want[:100]


def test_replay_day_streams_each_day_in_exchange_order(pipeline: Pipeline) -> None:
    for day in pipeline.days():
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        want = oracle.window(pipeline.of("CBA"), start, start + timedelta(days=1))
        replay = pipeline.engine.replay("CBA", "asx", day, batch_size=64)
        batches = list(replay)
        assert [row for batch in batches for row in batch.to_pylist()] == want
        assert len(batches) >= len(want) // 64
        assert list(replay_day(pipeline.engine, "CBA", "asx", day.isoformat(), kind="quotes")) == oracle.window(
            pipeline.of("CBA", "quotes"), start, start + timedelta(days=1)
        )


def test_time_travel_reads_exactly_what_pyiceberg_reads_at_that_snapshot(pipeline: Pipeline) -> None:
    engine = pipeline.engine
    table = engine.load(TRADES)
    history = sorted(table.snapshots(), key=lambda s: s.sequence_number or 0)
    middle = history[len(history) // 2]
    at_middle = table.scan(snapshot_id=middle.snapshot_id).to_arrow().to_pylist()
    assert 0 < len(at_middle) < len(pipeline.trades)
    first, last = pipeline.days()[0], pipeline.days()[-1] + timedelta(days=1)
    committed_at = datetime.fromtimestamp(middle.timestamp_ms / 1000, UTC)
    for as_of in (AsOf(snapshot_id=middle.snapshot_id), AsOf(timestamp=committed_at)):
        for symbol in SYMBOLS:
            mine = [r for r in at_middle if r["symbol"] == symbol]
            query = engine.market_query(symbol, "asx", first.isoformat(), last.isoformat(), 100_000)
            got = engine.fetch("trades", query, as_of=as_of)
            assert got.snapshot_id == middle.snapshot_id
            assert got.sources == ("iceberg",)
            assert got.table.to_pylist() == oracle.in_order(mine)
            bars = engine.ohlcv(symbol, "asx", "1h", first.isoformat(), last.isoformat(), as_of=as_of)
            assert bars.table.to_pylist() == oracle.bars(mine, "1h")
    before_all = AsOf(timestamp=datetime.fromtimestamp(history[0].timestamp_ms / 1000, UTC) - timedelta(seconds=1))
    assert engine.fetch("trades", engine.market_query("BHP", "asx", first, last), as_of=before_all).table.num_rows == 0


def test_snapshot_log_lists_every_commit_with_its_offsets(pipeline: Pipeline) -> None:
    table = pipeline.engine.load(TRADES)
    log = pipeline.engine.snapshots("trades", limit=100_000).table.to_pylist()
    assert [r["snapshot_id"] for r in log] == [
        s.snapshot_id for s in sorted(table.snapshots(), key=lambda s: -(s.sequence_number or 0))
    ]
    assert sum(r["added_records"] or 0 for r in log) == len(pipeline.trades)
    assert log[0]["is_current"]
    for row in log:
        snapshot = table.snapshot_by_id(row["snapshot_id"])
        assert snapshot is not None
        assert snapshot.summary is not None
        stored = decode_offsets(snapshot.summary.additional_properties.get(OFFSETS_PROPERTY))
        assert {(o["topic"], o["partition"]): o["next_offset"] for o in row["kafka_offsets"]} == stored
    assert any(row["kafka_offsets"] for row in log)
