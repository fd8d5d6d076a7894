"""Poison input against a real Tansu broker and real Iceberg tables: every bad message lands in `<topic>.dlq`
with a reason and a reason class, is counted in `k2_dlq_messages_total{topic,reason}`, and the good messages
around it are stored exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY

from k2_core.exceptions import K2Error
from k2_core.ingest.dead_letters import DEAD_LETTER_MAX_BODY
from k2_core.lake.catalog import open_catalog
from k2_core.model.avro import encode
from k2_core.model.registry import FileSchemaRegistry
from k2_core.settings import Settings
from k2_stream.admin import ensure_topics
from k2_stream.ingester import Ingester
from k2_stream.producer import FeedProducer
from tests.support import factories

TEN_MB = 10 * 1024 * 1024


def trade(seq: int, **overrides: Any) -> dict[str, Any]:
    return factories.trade("BHP", seq, price="45.12", volume="100", side="buy") | overrides


def quote(seq: int) -> dict[str, Any]:
    # 65e-8 is the one-byte two's-complement integer 65: read as the trade's `side` string it is "A",
    # valid UTF-8, so the body decodes as a trade and only the record rules can catch it.
    return factories.quote("BHP", seq, bid="45.1", bid_size="200", ask="0.00000065", ask_size="0.00000066")


def dlq_count(topic: str, reason: str) -> float:
    return REGISTRY.get_sample_value("k2_dlq_messages_total", {"topic": topic, "reason": reason}) or 0.0


def stored_seqs(settings: Settings) -> list[int]:
    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    return sorted(r["exchange_sequence_number"] for r in table.scan().to_arrow().to_pylist())


def read_dlq(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-reader", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    dead: list[tuple[bytes, dict[str, bytes]]] = []
    deadline = time.monotonic() + timeout
    while len(dead) < expected and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            dead.append((msg.value() or b"", dict(msg.headers() or [])))
    consumer.close()
    return dead


def test_feed_producer_refuses_a_10mb_message_with_a_clear_error(
    broker: str, make_settings: Callable[..., Settings]
) -> None:
    """librdkafka's default message.max.bytes (~1 MB) refuses it before it leaves the process."""
    settings = make_settings(bootstrap=broker)
    layout = ensure_topics(settings)
    producer = FeedProducer(settings, layout, FileSchemaRegistry(settings.kafka.schemas_dir))
    with pytest.raises(K2Error, match=r"cannot produce to market\.equities\.trades\.asx: .*Message size too large"):
        producer.send_raw(layout.spec("asx", "trades").name, b"BHP", b"\x00" * TEN_MB)


def test_values_avro_decimal_cannot_carry_never_reach_the_wire(make_settings: Callable[..., Settings]) -> None:
    """NaN, infinities and a ninth decimal place cannot be encoded as decimal(18,8): the producer fails, so the
    ingester never sees them (the record rules refuse them anyway, see tests/unit/test_records.py)."""
    settings = make_settings()
    schema_id, schema = FileSchemaRegistry(settings.kafka.schemas_dir).latest("market.equities.trades-value")
    for bad in (Decimal("NaN"), Decimal("Infinity"), Decimal("1.123456789")):
        with pytest.raises((TypeError, ValueError)):
            encode(schema_id, schema, trade(1, price=bad))


def test_poison_messages_are_dead_lettered_with_a_reason_and_the_stream_goes_on(
    broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[[Settings], Ingester]
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    layout = ensure_topics(settings)
    topic = layout.spec("asx", "trades").name
    registry = FileSchemaRegistry(settings.kafka.schemas_dir)
    trade_id, trade_schema = registry.latest("market.equities.trades-value")
    # Bodies of one kind under the other's id: version 1 of each (version 2's optional tails differ in length).
    (trade_v1, _), (quote_v1, _) = (registry.versions(f"market.equities.{k}-value")[0] for k in ("trades", "quotes"))
    trade_v1_schema, quote_v1_schema = registry.by_id(trade_v1), registry.by_id(quote_v1)
    good = encode(trade_id, trade_schema, trade(2))

    poison: list[tuple[str, bytes, str]] = [  # (what, bytes, expected reason class)
        ("truncated Avro", good[: len(good) // 2], "decode_error"),
        ("unknown schema id", b"\x00\x00\x00\x03\xe7" + good[5:], "decode_error"),
        ("quote body under the trade schema id", encode(trade_v1, quote_v1_schema, quote(3)), "validation_error"),
        ("trade body under the quote schema id", encode(quote_v1, trade_v1_schema, trade(4)), "decode_error"),
        ("negative price", encode(trade_id, trade_schema, trade(5, price=Decimal("-1"))), "validation_error"),
        (
            "price beyond DECIMAL(18,8)",
            encode(trade_id, trade_schema, trade(6, price=Decimal(10**11))),
            "validation_error",
        ),
        (
            "timestamp in 1970",
            encode(trade_id, trade_schema, trade(7, exchange_timestamp=datetime(1970, 1, 1, tzinfo=UTC))),
            "validation_error",
        ),
        (
            "timestamp in 2100",
            encode(trade_id, trade_schema, trade(8, exchange_timestamp=datetime(2100, 1, 1, tzinfo=UTC))),
            "validation_error",
        ),
        ("10 MB message", b"\x00\x00\x00\x00\x01" + b"\x02" * TEN_MB, "too_large"),
    ]
    before = {cls: dlq_count(topic, cls) for cls in ("decode_error", "validation_error", "too_large")}

    # A producer allowed to send 10 MB: Tansu, unlike a stock Kafka broker, accepts it.
    raw = Producer({"bootstrap.servers": broker, "enable.idempotence": True, "message.max.bytes": 2 * TEN_MB})
    errors: list[object] = []
    raw.produce(topic, key=b"BHP", value=encode(trade_id, trade_schema, trade(1)))
    for _, value, _ in poison:
        raw.produce(topic, key=b"BHP", value=value, on_delivery=lambda err, _msg: errors.append(err) if err else None)
    for seq in range(2, 6):
        raw.produce(topic, key=b"BHP", value=encode(trade_id, trade_schema, trade(seq)))
    assert raw.flush(30) == 0
    assert errors == []

    running_ingester(settings)
    dead = read_dlq(broker, topic + ".dlq", expected=len(poison))
    deadline = time.monotonic() + 30
    while stored_seqs(settings) != [1, 2, 3, 4, 5] and time.monotonic() < deadline:
        time.sleep(0.25)
    assert stored_seqs(settings) == [1, 2, 3, 4, 5], "the good messages after the poison were stored exactly once"

    assert len(dead) == len(poison)
    by_offset = sorted(dead, key=lambda d: int(d[1]["k2.source.offset"]))
    for (what, value, cls), (body, headers) in zip(poison, by_offset, strict=True):
        assert headers["k2.error.class"].decode() == cls, (what, headers["k2.error"])
        assert headers["k2.source.topic"] == topic.encode()
        if cls == "too_large":
            assert headers["k2.error"].startswith(b"MessageTooLargeError: message too large: 10485765 bytes > 1048576")
            assert headers["k2.truncated"] == b"true"
            assert headers["k2.original_bytes"] == str(len(value)).encode()
            assert body == value[:DEAD_LETTER_MAX_BODY]
        else:
            assert body == value, what
    reasons = [h["k2.error"].decode() for _, h in by_offset]
    assert "undecodable Avro body" in reasons[0]
    assert "unknown schema id 999" in reasons[1]
    assert "side must be one of buy, sell, unknown; got 'A'" in reasons[2]
    assert "undecodable Avro body for schema id 2" in reasons[3]
    assert "price must be > 0" in reasons[4]
    assert "does not fit DECIMAL(18,8)" in reasons[5]
    assert "exchange_timestamp 1970-01-01T00:00:00+00:00 is before 1990-01-01" in reasons[6]
    assert "exchange_timestamp 2100-01-01T00:00:00+00:00 is in the future" in reasons[7]

    expected = {"decode_error": 3, "validation_error": 5, "too_large": 1}
    assert {cls: dlq_count(topic, cls) - before[cls] for cls in expected} == expected
