"""Feed producer: encodes market records as Confluent-framed Avro and sends them keyed by symbol."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException, Producer

from k2_core.avro import encode
from k2_core.exceptions import K2Error
from k2_core.registry import SchemaRegistry
from k2_core.settings import Settings
from k2_core.topics import Kind, TopicLayout


class FeedProducer:
    """Idempotent producer (no broker-side duplicates on retry) for the market topics."""

    def __init__(self, settings: Settings, layout: TopicLayout, registry: SchemaRegistry) -> None:
        self.layout = layout
        self.registry = registry
        self._errors: list[str] = []
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "enable.idempotence": True,
                "linger.ms": 5,
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 1_000_000,
                "compression.type": "lz4",
            }
        )

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(self, kind: Kind, record: dict[str, Any]) -> None:
        spec = self.layout.spec(record["exchange"], kind)
        schema_id, schema = self.registry.latest(spec.subject)
        self.send_raw(spec.name, record["symbol"].encode(), encode(schema_id, schema, record))

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
        remaining = self._producer.flush(timeout)
        if remaining:
            raise K2Error(f"{remaining} messages still undelivered after {timeout:.0f}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise K2Error(f"{len(errors)} messages failed delivery, first: {errors[0]}")
