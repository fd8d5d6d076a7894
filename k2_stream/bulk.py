"""Producing pre-encoded messages in bulk (a replay's blocks from k2_core.model.avro_bulk) as fast as librdkafka takes
them, with what the broker acknowledged known exactly, without a Python call per delivered message.

`FeedProducer` (k2_stream.producer) asks for a delivery report per message and records its offset in a Python
callback: ~0.5 µs a message, a quarter of a columnar replay's whole budget. This producer asks librdkafka for failure
reports only (`delivery.report.only.error`), so a success costs no Python at all and every failure is still seen, and
learns the offsets its messages took from the partitions' high watermarks instead:

- Partitions are chosen here, as librdkafka's default partitioner (`consistent_random`) would choose them: CRC-32 of
  the key modulo the topic's partition count. A replay sends a symbol's rows to the same partition as the per-line
  path and the live feeds do, so a symbol's order holds across them.
- Before its first message to a partition, the partition's high watermark `lo` is read; after the final flush, `hi`.
  Every one of the `n` messages sent there was written (a failure would have been reported), each at its own offset,
  all at or after `lo` and before `hi`. So when `hi - lo == n` (nobody else wrote to the partition meanwhile, the
  usual case for a replay) they are exactly `lo .. hi - 1`. Otherwise their places among the others' are unknown and
  the highest `n` offsets below `hi` are recorded: never lower than the true ones, so a wait for the ingester
  (k2_stream.acks) can under-count progress but never declares done too early.
"""

from __future__ import annotations

import uuid
import zlib
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from k2_core.exceptions import K2Error
from k2_core.logging import get_logger
from k2_core.model.avro_bulk import EncodedRows
from k2_core.model.registry import SchemaRegistry
from k2_core.model.topics import TopicLayout
from k2_core.settings import Settings

log = get_logger(__name__)

TP = tuple[str, int]
# Delivery reports (failures only, but librdkafka frees a message only once its report is served) are served every
# this many messages.
POLL_EVERY = 1024
# librdkafka settings for bulk sends. Large batches, few requests: the embedded broker's cost is per request and per
# batch far more than per byte, and zstd keeps what it holds in memory small (k2_stream.producer says the same).
BULK_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,
    "linger.ms": 50,
    "batch.num.messages": 100_000,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "compression.type": "zstd",
    "delivery.report.only.error": True,
}


def partition_for(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (`consistent_random`) gives a non-empty key: CRC-32 of the key
    modulo the partition count (tests/integration check it against librdkafka's own choice)."""
    return zlib.crc32(key) % partitions


class BulkProducer:
    """Idempotent producer of pre-encoded messages, keyed (and partitioned) by symbol."""

    def __init__(self, settings: Settings, layout: TopicLayout, registry: SchemaRegistry) -> None:
        self.layout = layout
        self.registry = registry
        self._errors: list[str] = []
        self._partitions: dict[str, int] = {}
        self._start: dict[TP, int] = {}  # each partition's high watermark before the first message sent to it
        self._sent: dict[TP, int] = {}
        bootstrap = settings.kafka.bootstrap_servers
        self._producer = Producer({"bootstrap.servers": bootstrap, **BULK_CONFIG, "on_delivery": self._on_failure})
        # Reads the partitions' high watermarks only: never subscribes, never commits.
        self._watermarks = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"k2-replay-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        try:
            self.cluster_id = str(self._producer.list_topics(timeout=10).cluster_id or "unknown")
        except KafkaException as exc:
            self.close()
            raise K2Error(f"cannot reach Kafka at {bootstrap}: {exc}") from exc

    def _on_failure(self, err: Any, msg: Any) -> None:
        # Called for failed messages only (delivery.report.only.error).
        self._errors.append(str(err))

    def partition(self, topic: str, key: bytes) -> int:
        """The partition `key`'s messages go to; the first time a partition is named, its high watermark is read."""
        count = self._partitions.get(topic)
        if count is None:
            try:
                metadata = self._producer.list_topics(topic, timeout=10).topics[topic]
            except KafkaException as exc:
                raise K2Error(f"cannot read the partitions of {topic}: {exc}") from exc
            if metadata.error is not None or not metadata.partitions:
                raise K2Error(f"topic {topic} has no partitions: {metadata.error}")
            count = self._partitions[topic] = len(metadata.partitions)
        partition = partition_for(key, count)
        if (topic, partition) not in self._start:
            self._start[topic, partition] = self._high_watermark(topic, partition)
            self._sent[topic, partition] = 0
        return partition

    def _high_watermark(self, topic: str, partition: int) -> int:
        try:
            _, high = self._watermarks.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
        except KafkaException as exc:
            raise K2Error(f"cannot read the end offset of {topic} [{partition}]: {exc}") from exc
        return int(high)

    def send(self, topic: str, partition: int, key: bytes, rows: EncodedRows, begin: int, end: int) -> None:
        """Messages `begin .. end - 1` of `rows`, in order, to one partition (`partition(topic, key)`)."""
        produce = self._producer.produce
        data = rows.data
        bounds = rows.offsets[begin : end + 1].tolist()
        for i in range(end - begin):
            value = data[bounds[i] : bounds[i + 1]]
            try:
                produce(topic, value, key, partition)
            except BufferError:
                self._produce_when_room(topic, value, key, partition)
            if i % POLL_EVERY == 0:
                self._producer.poll(0)
        self._sent[topic, partition] += end - begin

    def send_keyed(
        self, topic: str, partitions: Sequence[int], keys: Sequence[bytes], rows: EncodedRows, begin: int, end: int
    ) -> None:
        """Messages `begin .. end - 1` of `rows`, each with its own key and partition (`keys[i]`, `partitions[i]`,
        indexed like `rows`): for files of many symbols."""
        produce = self._producer.produce
        data = rows.data
        bounds = rows.offsets.tolist()
        for i in range(begin, end):
            value = data[bounds[i] : bounds[i + 1]]
            key, partition = keys[i], partitions[i]
            try:
                produce(topic, value, key, partition)
            except BufferError:
                self._produce_when_room(topic, value, key, partition)
            if i % POLL_EVERY == 0:
                self._producer.poll(0)
            self._sent[topic, partition] += 1

    def _produce_when_room(self, topic: str, value: bytes, key: bytes, partition: int) -> None:
        """The local queue is full: serve delivery reports (which frees the delivered messages) until it takes one."""
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, value, key, partition)
                return
            except BufferError:
                continue
            except KafkaException as exc:
                raise K2Error(f"cannot produce to {topic}: {exc}") from exc

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise K2Error(f"{remaining} messages still undelivered after {timeout:.0f}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise K2Error(f"{len(errors)} messages failed delivery, first: {errors[0]}")

    def delivered(self) -> dict[TP, array[int]]:
        """After `flush`: the offsets the messages took, per partition, ascending (k2_stream.acks)."""
        out: dict[TP, array[int]] = {}
        for tp, sent in self._sent.items():
            if not sent:
                continue
            lo, hi = self._start[tp], self._high_watermark(*tp)
            if hi - lo != sent:
                # Others wrote to the partition meanwhile (or it was emptied): record the highest offsets it can be.
                log.info(
                    "delivered offsets bounded, not exact: the partition took other messages meanwhile",
                    extra={"topic": tp[0], "partition": tp[1], "sent": sent, "start": lo, "end": hi},
                )
            offsets = array("q")
            offsets.frombytes(np.arange(hi - sent, hi, dtype=np.int64).tobytes())
            out[tp] = offsets
        return out

    def close(self) -> None:
        self._watermarks.close()
