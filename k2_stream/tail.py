"""The API's own Kafka consumer: keeps `k2_core.read.realtime.RealtimeBuffer` filled with the newest market records.

It is not in the ingester's consumer group and commits nothing: it assigns itself every partition of every
market topic, starting at the offsets for `now - realtime_window` (so a freshly started API can serve the
realtime window at once), decodes and validates each record exactly as the ingester does (a record the ingester
would dead-letter is never served), and hands it to the buffer. A topic counts as caught up once each of its
partitions has reported end-of-partition; until then queries route around the tail. New topics and partitions
are picked up from metadata every few seconds.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from k2_core.exceptions import DecodeError, SchemaRegistryUnavailableError, ValidationError
from k2_core.logging import get_logger
from k2_core.model.avro import Decoder
from k2_core.model.records import validate
from k2_core.model.topics import TopicLayout, TopicSpec
from k2_core.read.realtime import RealtimeBuffer
from k2_core.settings import Settings
from k2_stream.admin import load_layout
from k2_stream.registry_confluent import make_registry

logger = get_logger(__name__)

_METADATA_REFRESH_SECONDS = 3.0
_BATCH = 5000


class TailConsumer:
    """Run with `start()` / `stop()`; one daemon thread."""

    def __init__(self, settings: Settings, buffer: RealtimeBuffer, layout: TopicLayout | None = None) -> None:
        self.settings = settings
        self.buffer = buffer
        self.layout = layout or load_layout(settings)
        self.window = timedelta(seconds=settings.query.realtime_window_seconds)
        registry = make_registry(settings.kafka.schema_registry_url, settings.kafka.schemas_dir)
        self.decoder = Decoder(registry)
        self.readers = {t.subject: registry.latest(t.subject)[1] for t in self.layout.topics}
        self.rejected = 0
        self._assigned: dict[str, set[int]] = {}  # topic -> partitions assigned
        self._at_end: dict[str, set[int]] = {}  # topic -> partitions that reached their end once
        self._covers_from: dict[str, datetime | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                # Required by librdkafka, unused: partitions are assigned, never subscribed, and nothing is committed.
                "group.id": f"k2-api-tail-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                "fetch.queue.backoff.ms": 1,
                "topic.metadata.refresh.interval.ms": 5000,
            }
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="k2-realtime-tail", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def ready(self) -> bool:
        """Whether every market topic that exists has been read to its end once."""
        return bool(self._assigned) and all(self._at_end.get(t) == p for t, p in self._assigned.items())

    # --- the loop ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        logger.info("realtime tail started", extra={"topics": len(self.layout.topics), "window": str(self.window)})
        next_refresh = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_refresh:
                    self._assign_new_partitions()
                    next_refresh = time.monotonic() + _METADATA_REFRESH_SECONDS
                first = self._consumer.poll(0.2)
                if first is None:
                    self.buffer.expire(datetime.now(UTC))
                    continue
                for message in [first, *self._consumer.consume(_BATCH, 0)]:
                    self._handle(message)
        except KafkaException as exc:
            logger.error("realtime tail stopped", extra={"error": str(exc)})
        finally:
            self._consumer.close()
            logger.info("realtime tail stopped", extra={"held": self.buffer.size(), "rejected": self.rejected})

    def _assign_new_partitions(self) -> None:
        try:
            metadata = self._consumer.list_topics(timeout=2)
        except KafkaException as exc:
            logger.warning("realtime tail cannot read topic metadata", extra={"error": str(exc)})
            return
        since = datetime.now(UTC) - self.window
        new: list[TopicPartition] = []
        for spec in self.layout.topics:
            topic = metadata.topics.get(spec.name)
            if topic is None or topic.error is not None:
                continue
            known = self._assigned.setdefault(spec.name, set())
            fresh = sorted(set(topic.partitions) - known)
            if not fresh:
                continue
            first_time = not known
            wanted = [TopicPartition(spec.name, p, int(since.timestamp() * 1000)) for p in fresh]
            try:
                positions = self._consumer.offsets_for_times(wanted, timeout=5)
                starts = [
                    TopicPartition(spec.name, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                    for tp in positions
                ]
                covers: datetime | None = since
            except KafkaException:
                starts = [TopicPartition(spec.name, p, OFFSET_BEGINNING) for p in fresh]
                covers = None
            if first_time:
                self._covers_from[spec.name] = covers
            known.update(fresh)
            new.extend(starts)
        if new:
            self._consumer.incremental_assign(new)
            logger.info("realtime tail assigned", extra={"partitions": len(new)})

    def _handle(self, message: Message) -> None:
        topic = message.topic() or ""
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._reached_end(topic, message.partition() or 0)
            else:
                logger.warning("realtime tail consumer error", extra={"error": str(error)})
            return
        spec = self.layout.by_name.get(topic)
        if spec is None:
            return
        try:
            record = self.decoder.decode(message.value(), self.readers[spec.subject])
            validate(spec.kind, spec.exchange, record)
        except (DecodeError, ValidationError, SchemaRegistryUnavailableError):
            self.rejected += 1  # the tables will have what is valid; the tail only shows it early
            return
        kind, stamp = message.timestamp()
        produced_at = (
            datetime.now(UTC) if kind == TIMESTAMP_NOT_AVAILABLE else datetime.fromtimestamp(stamp / 1000, UTC)
        )
        self.buffer.add(spec.kind, record, produced_at)

    def _reached_end(self, topic: str, partition: int) -> None:
        at_end = self._at_end.setdefault(topic, set())
        if partition in at_end:
            return
        at_end.add(partition)
        if at_end >= self._assigned.get(topic, set()):
            spec: TopicSpec = self.layout.by_name[topic]
            self.buffer.mark_ready(spec.kind, spec.exchange, self._covers_from.get(topic))
            logger.info("realtime tail caught up", extra={"topic": topic, "held": self.buffer.size()})
