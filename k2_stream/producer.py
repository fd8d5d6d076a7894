"""Feed producer: encodes market records as Confluent-framed Avro and sends them keyed by symbol."""

from __future__ import annotations

from array import array
from typing import Any

from confluent_kafka import KafkaException, Producer

from k2_core.exceptions import K2Error, SchemaRegistryError
from k2_core.model.avro import encode
from k2_core.model.registry import ParsedSchema, SchemaRegistry
from k2_core.model.topics import BOOK_RECORDS, BookRecord, Kind, TopicLayout
from k2_core.settings import Settings


class FeedProducer:
    """Idempotent producer (no broker-side duplicates on retry) for the market topics."""

    def __init__(
        self, settings: Settings, layout: TopicLayout, registry: SchemaRegistry, track_deliveries: bool = False
    ) -> None:
        self.layout = layout
        self.track_deliveries = track_deliveries
        self.registry = registry
        self._versions: dict[tuple[str, int], ParsedSchema] = {}
        self._errors: list[str] = []
        # With `track_deliveries`, the offsets the broker acknowledged, per partition (ascending: an idempotent
        # producer keeps order), so a finite feed can wait until the ingester has committed them (k2_stream.acks).
        self.delivered: dict[tuple[str, int], array[int]] = {}
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "enable.idempotence": True,
                # Batches of 50 ms, zstd: the embedded broker holds every message in memory, and at 10,000 msg/s
                # these cut what it holds per message from ~90 to ~27 bytes and its CPU sixteenfold (measured
                # against 5 ms lz4 batches); 50 ms is a tenth of the freshness budget.
                "linger.ms": 50,
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 1_000_000,
                "compression.type": "zstd",
            }
        )
        try:
            # The cluster the messages go to: a broker that restarts empty is a new one (k2_stream.acks).
            self.cluster_id = str(self._producer.list_topics(timeout=10).cluster_id or "unknown")
        except KafkaException as exc:
            raise K2Error(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from exc

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))
            return
        if not self.track_deliveries or msg.topic() not in self.layout.by_name:
            return  # books topics are not tracked: the trades/quotes ingester, whose commits acks waits for, skips them
        tp = (msg.topic(), msg.partition())
        offsets = self.delivered.get(tp)
        if offsets is None:
            offsets = self.delivered[tp] = array("q")
        offsets.append(msg.offset())

    def send(self, kind: Kind, record: dict[str, Any], schema_id: int | None = None) -> None:
        """Encode `record` with the subject's newest version, or with the registered version `schema_id` (as a
        producer built against an older version writes: the fields that version lacks are left out)."""
        spec = self.layout.spec(record["exchange"], kind)
        if schema_id is None:
            schema_id, schema = self.registry.latest(spec.subject)
        else:
            schema = self._version(spec.subject, schema_id)
        self.send_raw(spec.name, record["symbol"].encode(), encode(schema_id, schema, record))

    def send_book(self, record_type: BookRecord, record: dict[str, Any]) -> None:
        """Encode a book snapshot or update with its subject's newest version onto the exchange's books topic,
        keyed by symbol like trades (a symbol's snapshots and updates share a partition, so keep their order)."""
        spec = self.layout.book_spec(record["exchange"])
        schema_id, schema = self.registry.latest(spec.subject(record_type))
        self.send_raw(spec.name, record["symbol"].encode(), encode(schema_id, schema, record))

    def send_event(self, kind: Kind | BookRecord, record: dict[str, Any]) -> None:
        """`send` for trades and quotes, `send_book` for book records."""
        if kind in BOOK_RECORDS:
            self.send_book(kind, record)
        else:
            self.send(kind, record)  # type: ignore[arg-type]

    def _version(self, subject: str, schema_id: int) -> ParsedSchema:
        key = (subject, schema_id)
        schema = self._versions.get(key)
        if schema is None:
            if schema_id not in {sid for sid, _ in self.registry.versions(subject)}:
                raise SchemaRegistryError(f"schema id {schema_id} is not a version of {subject}")
            schema = self._versions[key] = self.registry.by_id(schema_id)
        return schema

    def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send pre-encoded bytes (also how tests inject poison messages)."""
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise K2Error(f"cannot produce to {topic}: {exc}") from exc
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        flush_or_raise(self._producer, self._errors, timeout)


def flush_or_raise(producer: Producer, errors: list[str], timeout: float) -> None:
    """Wait for every message to be delivered; raise if some are still pending or if delivery reports collected in
    `errors` failed (which are then cleared, in place: delivery callbacks keep appending to the same list)."""
    remaining = producer.flush(timeout)
    if remaining:
        raise K2Error(f"{remaining} messages still undelivered after {timeout:.0f}s")
    if errors:
        count, first = len(errors), errors[0]
        errors.clear()
        raise K2Error(f"{count} messages failed delivery, first: {first}")
