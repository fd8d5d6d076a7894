"""Issue 12, through the real broker, ingester and Iceberg tables: sessions that restart their numbers, a session
whose seq 1 never arrives, a late number the backfill stores between the ingester's plan and its commit, a
recreated topic, and a day replayed after its rows left the dedup window."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from k2_core.ingest.dedup import already_stored
from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.model.registry import FileSchemaRegistry
from k2_core.model.tables import TRADES
from k2_core.settings import Settings
from k2_stream.admin import ensure_topics
from k2_stream.ingester import Ingester
from k2_stream.producer import FeedProducer
from tests.support import factories

DAY1 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday session, then Tuesday's: the numbers restart
DAY2 = DAY1 + timedelta(days=1)


def trade(symbol: str, seq: int, start: datetime, exchange: str = "asx") -> dict[str, Any]:
    """Trade `seq` of a session that opened at `start`: half a second apart, prices cycling, volumes rising."""
    ts = start + timedelta(milliseconds=500 * seq)
    price, volume = Decimal("45.10") + Decimal(seq % 7) / 100, Decimal(100 + seq)
    return factories.trade(symbol, seq, ts, price, volume, exchange, trade_id=f"{exchange}-{symbol}-{start:%d}-{seq}")


def produce(settings: Settings, records: list[dict[str, Any]]) -> None:
    producer = FeedProducer(settings, ensure_topics(settings), FileSchemaRegistry(settings.kafka.schemas_dir))
    for rec in records:
        producer.send("trades", rec)
    producer.flush()


def rows(settings: Settings, name: str = "trades") -> list[dict[str, Any]]:
    return open_catalog(settings).load_table((settings.catalog.namespace, name)).scan().to_arrow().to_pylist()


def keys(settings: Settings, symbol: str) -> list[tuple[str, int]]:
    return sorted(
        (f"{r['exchange_timestamp']:%d}", r["exchange_sequence_number"])
        for r in rows(settings)
        if r["symbol"] == symbol
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError("condition not met in time")


def test_two_sessions_waiting_in_kafka_land_whole_without_a_gap_or_a_halt(
    broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[..., Ingester]
) -> None:
    """F1: the ingester starts after both runs of each symbol are on the topic, so each batch holds both sessions."""
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.5, metrics_port=0)
    produce(
        settings,
        [trade("AAA", s, DAY1) for s in range(1, 61)]
        + [trade("AAA", s, DAY2) for s in range(1, 51)]
        + [trade("BBB", s, DAY1) for s in range(1, 1001)]
        + [trade("BBB", s, DAY2) for s in range(1, 51)],
    )
    ingester = running_ingester(settings)
    wait_for(lambda: len(rows(settings)) >= 1160)
    time.sleep(1)
    assert len(keys(settings, "AAA")) == 110
    assert len(keys(settings, "BBB")) == 1050
    assert len(rows(settings)) == 1160
    assert rows(settings, "sequence_gaps") == []
    assert ingester.halted == {}


def test_a_session_whose_seq_1_fails_validation_is_stored_with_its_head_recorded(
    broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[..., Ingester]
) -> None:
    """F2: yesterday 1..500, today's seq 1 dead-lettered (a negative price), 2..300 must all land."""
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.5, metrics_port=0)
    bad = trade("CCC", 1, DAY2) | {"price": Decimal("-1")}
    produce(
        settings,
        [trade("CCC", s, DAY1) for s in range(1, 501)] + [bad] + [trade("CCC", s, DAY2) for s in range(2, 301)],
    )
    running_ingester(settings)
    wait_for(lambda: len(rows(settings)) >= 799)
    time.sleep(1)
    assert keys(settings, "CCC") == sorted([("02", s) for s in range(1, 501)] + [("03", s) for s in range(2, 301)])
    [gap] = rows(settings, "sequence_gaps")
    assert (gap["first_missing"], gap["last_missing"], gap["status"]) == (1, 1, "open")
    assert gap["window_end"] == DAY2 + timedelta(seconds=1)  # today's session, by its first row's time
    assert "first numbers never arrived" in gap["reason"]


def test_a_late_number_the_backfill_stores_between_plan_and_commit_is_not_stored_twice(
    make_settings: Callable[..., Settings],
) -> None:
    """F3: the ingester found seq 5 not stored (its plan); the backfill then commits seq 5; the ingester's commit
    re-checks the files added since its plan and drops it."""
    settings = make_settings()
    table = ensure_tables(open_catalog(settings), settings.catalog.namespace)["trades"]
    table.append(TRADES.to_arrow([trade("DDD", s, DAY1) for s in (1, 2, 3, 4, 6)]))
    late = TRADES.to_arrow([trade("DDD", 5, DAY1)])
    stored, checked_at = already_stored(table, late)
    assert not stored.any()
    ensure_tables(open_catalog(settings), settings.catalog.namespace)["trades"].append(late)  # the backfill
    writer = TableWriter(table, "ingester-test", "cluster-1")
    batch = pa.concat_tables([late, TRADES.to_arrow([trade("DDD", 7, DAY1)])])
    writer.append(batch, {("market.equities.trades.asx", 0): 10}, {}, fills=late, checked_at=checked_at)
    assert sorted(r["exchange_sequence_number"] for r in rows(settings)) == [1, 2, 3, 4, 5, 6, 7]


def test_a_recreated_topic_is_read_from_its_start(
    broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[..., Ingester]
) -> None:
    """F5: same name, same cluster, a new log from offset 0: the offsets stored for the old topic must not apply."""
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    produce(settings, [trade("EEE", s, DAY1) for s in range(1, 201)])
    first = running_ingester(settings)
    wait_for(lambda: len(rows(settings)) >= 200)
    first.stop()
    time.sleep(2)
    admin = AdminClient({"bootstrap.servers": broker})
    topic = "market.equities.trades.asx"
    for future in admin.delete_topics([topic]).values():
        future.result()
    time.sleep(1)
    produce(settings, [trade("EEE", s, DAY2) for s in range(1, 51)])  # recreated by ensure_topics, offsets from 0
    running_ingester(settings)
    wait_for(lambda: len(rows(settings)) >= 250)
    assert len(keys(settings, "EEE")) == 250


def test_a_day_replayed_after_it_left_the_dedup_window_changes_nothing(
    broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[..., Ingester]
) -> None:
    """Re-loading history: the day was stored 25 h ago (ingestion time) and is three days old (exchange time)."""
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    day = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=3)
    stored_long_ago = [
        trade("FFF", s, day) | {"ingestion_timestamp": datetime.now(UTC) - timedelta(hours=25)} for s in range(1, 301)
    ]
    ensure_tables(open_catalog(settings), settings.catalog.namespace)["trades"].append(TRADES.to_arrow(stored_long_ago))
    produce(settings, [trade("FFF", s, day) for s in range(1, 301)] + [trade("FFF", s, day) for s in range(301, 311)])
    ingester = running_ingester(settings)
    wait_for(lambda: ingester.stats["trades_duplicates"] + ingester.stats["trades_written"] >= 310)
    time.sleep(1)
    assert keys(settings, "FFF") == [(f"{day:%d}", s) for s in range(1, 311)]
    assert ingester.stats["trades_duplicates"] == 300
    assert ingester.stats["history_days_loaded"] >= 1


def dead_letter_copies(settings: Settings, topic: str) -> Counter[tuple[int, int]]:
    """How many dead letters each source message (partition, offset) got."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"dlq-{uuid.uuid4()}"})
    consumer.assign([TopicPartition(f"{topic}.dlq", 0, 0)])
    copies: Counter[tuple[int, int]] = Counter()
    idle = time.monotonic()
    while time.monotonic() - idle < 3:
        for m in consumer.consume(1000, 0.5):
            if m.error() is None:
                idle = time.monotonic()
                headers = dict(m.headers() or [])
                copies[(int(headers["k2.source.partition"]), int(headers["k2.source.offset"]))] += 1
    consumer.close()
    return copies


def test_a_rebalance_during_a_failed_write_neither_fences_the_ingester_nor_repeats_its_dead_letters(
    broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[..., Ingester], tmp_path: Path
) -> None:
    """F4: writes fail (the warehouse disk is full) while a second ingester joins and takes partitions away; once
    the disk has room, both commit within seconds, and a batch retried after each failure does not dead-letter its
    poison messages again."""
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(warehouse)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
        settings.catalog.warehouse = warehouse.as_uri()
        settings.ingest.retry_backoff_seconds = 0.5
        settings.ingest.max_backoff_seconds = 0.5
        first = running_ingester(settings)
        wait_for(lambda: bool(first.positions), timeout=30)
        ballast = warehouse / "ballast"
        with ballast.open("wb", buffering=0) as f:  # fill the volume: new data files fail with ENOSPC
            for chunk in (1 << 20, 4096, 1):
                while True:
                    try:
                        f.write(b"\0" * chunk)
                    except OSError:
                        break
        symbols = ("GGA", "GGB", "GGC", "GGD", "GGE", "GGF")
        good = [trade(sym, s, DAY1) for sym in symbols for s in range(1, 51)]
        produce(settings, good)
        producer = FeedProducer(settings, ensure_topics(settings), FileSchemaRegistry(settings.kafka.schemas_dir))
        for symbol in symbols:
            producer.send_raw("market.equities.trades.asx", symbol.encode(), b"\x00\x00\x00\x00\x01truncated")
        producer.flush()
        wait_for(lambda: first.stats["failed_batches"] >= 3, timeout=30)  # the same batch, retried
        second = running_ingester(settings)  # joins while the first is failing: a rebalance mid-retry
        wait_for(lambda: bool(second.positions), timeout=30)
        time.sleep(2)
        ballast.unlink()
        wait_for(lambda: len(rows(settings)) >= len(good), timeout=30)
        time.sleep(1)
        assert len(rows(settings)) == len(good)
        copies = dead_letter_copies(settings, "market.equities.trades.asx")
        assert len(copies) == len(symbols)
        assert max(copies.values()) <= 2, copies  # at most once per owner, not once per retry
    finally:
        subprocess.run(["umount", "-l", str(warehouse)], check=False)
