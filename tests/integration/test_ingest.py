"""The ingester against a real Tansu broker and real Iceberg tables (SQLite, PostgreSQL and REST catalogs)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from k2_core.lake.catalog import open_catalog
from k2_core.lake.offsets import OFFSETS_PROPERTY, decode_offsets
from k2_core.model.registry import FileSchemaRegistry
from k2_core.model.tables import TRADES
from k2_core.settings import Settings
from k2_stream.admin import ensure_topics
from k2_stream.ingester import Ingester
from k2_stream.producer import FeedProducer
from tests.support.factories import feed_trade
from tests.support.kafka import broker_contents, produce
from tests.support.lake import table_rows
from tests.support.waits import wait_for


@pytest.mark.parametrize("catalog", ["sqlite", "postgres", "rest"])
def test_gaps_duplicates_and_reorders_land_exactly_once(
    catalog: str, broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[..., Ingester]
) -> None:
    settings = make_settings(catalog=catalog, bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    withheld = {("BHP", 50), ("BHP", 120), ("CBA", 7), ("CBA", 8), ("CBA", 9)}
    stream: list[dict[str, Any]] = []
    for symbol in ("BHP", "CBA", "CSL"):
        seqs = [s for s in range(1, 201) if (symbol, s) not in withheld]
        seqs[10], seqs[11] = seqs[11], seqs[10]  # reordered pair
        for i, s in enumerate(seqs):
            stream.append(feed_trade(symbol, s))
            if i % 25 == 0:
                stream.append(feed_trade(symbol, s))  # duplicate
    produce(settings, [("trades", r) for r in stream])

    running_ingester(settings)
    expected = {(r["symbol"], r["exchange_sequence_number"]) for r in stream}
    wait_for(lambda: len(table_rows(settings, "trades")) >= len(expected))
    time.sleep(1.0)  # a late duplicate would show up here

    rows = table_rows(settings, "trades")
    keys = [(r["symbol"], r["exchange_sequence_number"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(expected)
    assert set(keys) == expected
    stored = {(r["symbol"], r["exchange_sequence_number"]): r for r in rows}
    assert stored[("BHP", 1)]["price"] == Decimal("45.11000000")

    gaps = table_rows(settings, "sequence_gaps")
    open_gaps = {(g["symbol"], g["first_missing"], g["last_missing"]) for g in gaps if g["status"] == "open"}
    assert open_gaps == {("BHP", 50, 50), ("BHP", 120, 120), ("CBA", 7, 9)}
    assert all(g["severity"] == "warning" for g in gaps)


@pytest.mark.parametrize("catalog", ["sqlite", "rest"])
def test_restart_resumes_from_table_offsets_without_duplicates(
    catalog: str, broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[..., Ingester]
) -> None:
    settings = make_settings(catalog=catalog, bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    produce(settings, [("trades", feed_trade("BHP", s)) for s in range(1, 101)])
    first = running_ingester(settings)
    wait_for(lambda: len(table_rows(settings, "trades")) == 100)
    first.stop()
    time.sleep(1)

    # A new consumer group has no Kafka-committed offsets at all: only the table's summary can resume it.
    settings.kafka.group_id += "-fresh"
    produce(settings, [("trades", feed_trade("BHP", s)) for s in range(101, 151)])
    running_ingester(settings)
    wait_for(lambda: len(table_rows(settings, "trades")) >= 150)
    time.sleep(1.5)
    seqs = sorted(r["exchange_sequence_number"] for r in table_rows(settings, "trades"))
    assert seqs == list(range(1, 151))

    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    offsets = decode_offsets(table.current_snapshot().summary.additional_properties[OFFSETS_PROPERTY])  # type: ignore[union-attr]
    assert sum(offsets.values()) > 0


def test_undecodable_and_invalid_messages_go_to_the_dlq(
    broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[..., Ingester]
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    layout = ensure_topics(settings)
    producer = FeedProducer(settings, layout, FileSchemaRegistry(settings.kafka.schemas_dir))
    topic = layout.spec("asx", "trades").name
    producer.send("trades", feed_trade("BHP", 1))
    producer.send_raw(topic, b"BHP", b"\x00\x00\x00\x00\x01garbage")  # truncated Avro body
    producer.send_raw(topic, b"BHP", b"\x00\x00\x00\x03\xe7" + b"x" * 20)  # unknown schema id 999
    producer.send("trades", {**feed_trade("BHP", 2), "price": Decimal("-1")})  # negative price
    producer.send("trades", feed_trade("BHP", 3))
    producer.flush()

    running_ingester(settings)
    wait_for(lambda: len(table_rows(settings, "trades")) == 2)

    consumer = Consumer({"bootstrap.servers": broker, "group.id": "dlq-reader", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic + ".dlq", 0, 0)])
    dead = []
    deadline = time.monotonic() + 20
    while len(dead) < 3 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            dead.append(dict(msg.headers() or []))
    consumer.close()
    reasons = [h["k2.error"].decode() for h in dead]
    assert len(reasons) == 3
    assert any("DecodeError" in r and "undecodable" in r for r in reasons)
    assert any("unknown schema id 999" in r for r in reasons)
    assert any("price must be > 0" in r for r in reasons)
    assert {h["k2.source.topic"] for h in dead} == {topic.encode()}
    # the stream went on: seq 2 was refused, so the table holds 1 and 3 and a recorded gap for 2
    assert sorted(r["exchange_sequence_number"] for r in table_rows(settings, "trades")) == [1, 3]


def test_large_gap_halts_the_partition_until_restart(
    broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[..., Ingester]
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    produce(settings, [("trades", feed_trade("BHP", s)) for s in range(1, 11)])
    ingester = running_ingester(settings)
    wait_for(lambda: len(table_rows(settings, "trades")) == 10)
    produce(settings, [("trades", feed_trade("BHP", s)) for s in [*range(211, 221)]])  # 200 missing
    wait_for(lambda: bool(ingester.halted))
    time.sleep(1.0)
    assert len(table_rows(settings, "trades")) == 10
    (reason,) = ingester.halted.values()
    assert "gap of 200" in reason
    assert "restart the ingester" in reason
    gaps = table_rows(settings, "sequence_gaps")
    assert [(g["first_missing"], g["last_missing"], g["severity"], g["status"]) for g in gaps] == [
        (11, 210, "halt", "open")
    ]
    ingester.stop()
    time.sleep(1.0)

    running_ingester(settings)  # the operator's go-ahead: the recorded gap is passed, not re-halted
    wait_for(lambda: len(table_rows(settings, "trades")) == 20)
    assert len(table_rows(settings, "sequence_gaps")) == 1


def test_a_late_number_already_written_by_the_backfill_is_not_stored_twice(
    broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[..., Ingester]
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    produce(settings, [("trades", feed_trade("BHP", s)) for s in [*range(1, 11), *range(13, 21)]])
    running_ingester(settings)
    wait_for(lambda: len(table_rows(settings, "trades")) == 18)
    # the gap backfill job recovers 11 and 12 from the exchange and writes them straight to the table ...
    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    table.append(TRADES.to_arrow([feed_trade("BHP", 11), feed_trade("BHP", 12)]))
    # ... and then the feed delivers them late after all
    produce(
        settings,
        [("trades", feed_trade("BHP", 11)), ("trades", feed_trade("BHP", 12)), ("trades", feed_trade("BHP", 21))],
    )
    wait_for(lambda: len(table_rows(settings, "trades")) >= 21)
    time.sleep(1.0)
    seqs = sorted(r["exchange_sequence_number"] for r in table_rows(settings, "trades"))
    assert seqs == list(range(1, 22))


def test_a_failed_commit_with_the_next_batch_in_hand_loses_and_duplicates_nothing(
    broker: str,
    make_settings: Callable[..., Settings],
    running_ingester: Callable[..., Ingester],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pipeline's hazard (k2_stream.pipeline): batch N's catalog commit fails (the SQLite catalog locked by
    another connection, for real) while batch N+1 is consumed and decoded. Nothing of N+1 may be committed before N,
    and after the reset both land once: the table holds exactly what the broker holds, its offsets and the consumer
    group's are the partitions' ends, and the sequence state saw the batches in order (no gap recorded)."""
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0, pipeline=True)
    caplog.set_level(logging.WARNING, logger="k2_stream.ingester")
    produce(settings, [("trades", feed_trade("BHP", s)) for s in range(1, 101)])
    ingester = running_ingester(settings)
    wait_for(lambda: len(table_rows(settings, "trades")) == 100)

    catalog_db = settings.catalog_uri.get_secret_value().removeprefix("sqlite:///")
    lock = sqlite3.connect(catalog_db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every catalog commit now waits out SQLite's busy timeout, then fails
    try:
        produce(settings, [("trades", feed_trade("BHP", s)) for s in range(101, 201)])  # batch N: its commit waits
        time.sleep(1.0)
        produce(settings, [("trades", feed_trade("BHP", s)) for s in range(201, 301)])  # N+1, in hand meanwhile
        wait_for(lambda: ingester.stats["failed_batches"] >= 1, timeout=60)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    held = [r for r in caplog.records if r.getMessage() == "next batch held behind the failed one"]
    assert held, "batch N+1 was not in hand when batch N failed: the hazard was not exercised"

    truth, ends = broker_contents(settings)
    assert sorted(truth) == [("asx", "BHP", s) for s in range(1, 301)]
    wait_for(lambda: len(table_rows(settings, "trades")) >= len(truth))
    group = Consumer({"bootstrap.servers": broker, "group.id": settings.kafka.group_id})
    try:

        def group_offsets() -> dict[tuple[str, int], int]:
            committed = group.committed([TopicPartition(t, p) for t, p in ends], timeout=10)
            return {(c.topic, c.partition): c.offset for c in committed if c.offset >= 0}

        wait_for(lambda: group_offsets() == ends)  # Kafka's commit follows the Iceberg one
    finally:
        group.close()
    rows = table_rows(settings, "trades")
    assert sorted((r["exchange"], r["symbol"], r["exchange_sequence_number"]) for r in rows) == sorted(truth)
    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    stored = decode_offsets(table.current_snapshot().summary.additional_properties[OFFSETS_PROPERTY])  # type: ignore[union-attr]
    assert {tp: o for tp, o in stored.items() if tp in ends} == ends
    assert table_rows(settings, "sequence_gaps") == []
