"""Records onto the market topics as a feed sends them, and read back from the broker: what the feeds really sent
is the ground truth a table is checked against."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from k2_core.model.avro import Decoder
from k2_core.model.registry import FileSchemaRegistry
from k2_core.settings import Settings
from k2_stream.admin import ensure_topics, load_layout
from k2_stream.producer import FeedProducer

Key = tuple[str, str, int]  # (exchange, symbol, sequence)


def produce(settings: Settings, records: list[tuple[str, dict[str, Any]]]) -> None:
    """Each (kind, record) onto its market topic, the topics created first as the feeds do."""
    layout = ensure_topics(settings)
    producer = FeedProducer(settings, layout, FileSchemaRegistry(settings.kafka.schemas_dir))
    for kind, rec in records:
        producer.send(kind, rec)  # type: ignore[arg-type]
    producer.flush()


def produced_keys(settings: Settings, kind: str = "trades") -> list[Key]:
    """Every valid record on the market topics of `kind`, duplicates included: what the feeds really sent."""
    return broker_contents(settings, kind)[0]


def broker_contents(settings: Settings, kind: str = "trades") -> tuple[list[Key], dict[tuple[str, int], int]]:
    """`produced_keys`, and per partition holding any record, its end offset (the next offset to read)."""
    layout = load_layout(settings)
    decoder = Decoder(FileSchemaRegistry(settings.kafka.schemas_dir))
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "truth-reader"})
    parts = [TopicPartition(t.name, p, 0) for t in layout.topics if t.kind == kind for p in range(t.partitions)]
    consumer.assign(parts)
    keys: list[Key] = []
    ends: dict[tuple[str, int], int] = {}
    idle_since = time.monotonic()
    try:
        while time.monotonic() - idle_since < 3.0:
            msgs = consumer.consume(10_000, 0.5)
            if msgs:
                idle_since = time.monotonic()
            for m in msgs:
                if m.error() is None:
                    rec = decoder.decode(m.value())
                    keys.append((rec["exchange"], rec["symbol"], rec["exchange_sequence_number"]))
                    tp = (m.topic() or "", m.partition() or 0)
                    ends[tp] = max(ends.get(tp, 0), (m.offset() or 0) + 1)
    finally:
        consumer.close()
    return keys, ends


def read_dead_letters(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[dict[str, bytes]]:
    """The headers of the dead letters on `topic` (every partition), once `expected` have arrived or `timeout`
    passed: a test then asserts on how many came, so a missing one fails it rather than hangs."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-reader", "auto.offset.reset": "earliest"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    dead: list[dict[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(dead) < expected and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            dead.append(dict(msg.headers() or []))
    consumer.close()
    return dead
