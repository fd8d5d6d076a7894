"""Producing pre-encoded messages in bulk (a replay's blocks from k2_core.model.avro_bulk) as fast as librdkafka takes
them, knowing every offset the broker gave them (for a wait on the ingester, k2_stream.acks) without a Python call
per message.

The send loop does nothing per message but slice its bytes out of the block and hand them to librdkafka. Partitions
are chosen here as librdkafka's default partitioner (`consistent_random`) chooses them, CRC-32 of the key modulo the
topic's partition count, so a replay sends a symbol's rows where the per-line path and the live feeds send them and a
symbol's order holds across them.

Deliveries are sampled: only the last message of each group sent to a partition (`send`, at most a few thousand
messages) carries a callback, which records how many messages the partition had been sent through it and the offset
it got. A report per message would cost ~0.5 µs of the sending thread, a quarter of a replay's whole budget. What the
samples leave out follows from how the producer is set up:

- Nothing fails unseen. The producer is idempotent with `enable.gapless.guarantee` (librdkafka: a failure that would
  leave a gap in a partition's series is a fatal error, failing every later message) and messages never time out
  (`message.timeout.ms` 0: a timeout is the one failure the guarantee lets through). So a message fails only with
  every later one to its partition, the last sample included, and `flush` raises.
- Between two samples the partition's offsets rose by at least the messages sent in between, each of which has an
  offset of its own; by exactly that many when nothing else was written to the partition meanwhile (the usual case
  for a replay), and then the messages' offsets are exactly the ones in between. When it rose by more, others'
  messages are among them, where is not known, and the highest offsets they can have are recorded: a wait for the
  ingester can then under-count progress but never calls it done too early. When it rose by less, messages went
  missing after all, and `delivered` says so rather than guess.

The broker's high watermark cannot replace the samples: the embedded broker reports the first offset of the last batch
it stored, plus one, rather than the end of that batch (tests/integration/test_replay_bulk.py shows it), so it would
under-count what to wait for.
"""

from __future__ import annotations

import time
import zlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
from confluent_kafka import KafkaException, Producer

from k2_core.exceptions import K2Error
from k2_core.logging import get_logger
from k2_core.model.avro_bulk import EncodedRows
from k2_core.model.registry import SchemaRegistry
from k2_core.model.topics import TopicLayout
from k2_core.settings import Settings
from k2_stream.producer import flush_or_raise

log = get_logger(__name__)

TP = tuple[str, int]
Delivered = Callable[[Any, Any], None]
# Delivery reports are served every this many messages (librdkafka frees a message once its report is served).
POLL_EVERY = 4096
# Messages never time out (see above), so a broker that takes nothing is noticed here: a full local queue that does not
# drain for this long fails the send.
STALL_SECONDS = 120.0
# librdkafka settings for bulk sends. Large batches, few requests: the embedded broker's cost is per request and per
# batch far more than per byte. zstd keeps what the embedded broker holds in memory small (k2_stream.producer says
# the same): level 1 holds a replay in as little memory as the default level 3 (31 bytes a trade) for a quarter less
# of librdkafka's CPU; lz4 would save a little more CPU (0.1 µs a message) for 30% more memory (measured with
# bench/replay.py, 2M trades).
BULK_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,
    "linger.ms": 50,
    "batch.num.messages": 100_000,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "compression.type": "zstd",
    "compression.level": 1,
    # what makes sampled delivery reports enough (see above)
    "enable.gapless.guarantee": True,
    "message.timeout.ms": 0,
}


def partition_for(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (`consistent_random`) gives a non-empty key: CRC-32 of the key
    modulo the partition count (tests/integration/test_replay_bulk.py holds it to librdkafka's own choice)."""
    return zlib.crc32(key) % partitions


@dataclass
class DeliveryLedger:
    """What was sent to one partition, and what its sampled delivery reports said."""

    sent: int = 0
    samples: list[tuple[int, int]] = field(default_factory=list)  # (messages sent through the sampled one, its offset)

    def sampler(self, errors: list[str]) -> Delivered:
        """The callback of the message that makes `sent` messages."""
        count, samples = self.sent, self.samples

        def sampled(err: Any, msg: Any) -> None:
            if err is None:
                samples.append((count, msg.offset()))
            else:
                errors.append(str(err))

        return sampled

    def offsets(self, tp: TP) -> array[int]:
        """The offsets of every message sent, ascending (see the module's docstring)."""
        # A message the broker took as a duplicate of a retried send is acknowledged without an offset.
        known = sorted((count, offset) for count, offset in self.samples if offset >= 0)
        if not known:
            log.warning("no delivered offset known for a partition: not waited for", extra=_where(tp, self.sent))
            return array("q")
        if known[-1][0] != self.sent:
            log.warning("the last offsets are assumed to follow the last one known", extra=_where(tp, self.sent))
            known.append((self.sent, known[-1][1] + self.sent - known[-1][0]))
        counts = np.array([0] + [count for count, _ in known], dtype=np.int64)
        ends = np.array([offset for _, offset in known], dtype=np.int64)
        sizes = np.diff(counts)
        before = np.concatenate([ends[:1] - sizes[:1], ends[:-1]])  # the first stretch as if it were alone
        if (ends - before < sizes).any():
            raise K2Error(
                f"fewer offsets than messages between delivery reports of {tp[0]} [{tp[1]}]: messages went missing"
            )
        # each stretch's messages at the top of its span: exactly theirs when the span is, else the highest they can be
        offsets = np.repeat(ends - sizes + 1, sizes) + (np.arange(self.sent) - np.repeat(counts[:-1], sizes))
        out = array("q")
        out.frombytes(offsets.astype(np.int64).tobytes())
        return out


def _where(tp: TP, sent: int) -> dict[str, Any]:
    return {"topic": tp[0], "partition": tp[1], "sent": sent}


class BulkProducer:
    """Idempotent producer of pre-encoded messages, keyed (and partitioned) by symbol."""

    def __init__(self, settings: Settings, layout: TopicLayout, registry: SchemaRegistry) -> None:
        self.layout = layout
        self.registry = registry
        self._errors: list[str] = []
        self._partitions: dict[str, int] = {}
        self._ledgers: dict[TP, DeliveryLedger] = {}
        bootstrap = settings.kafka.bootstrap_servers
        self._producer = Producer({"bootstrap.servers": bootstrap, **BULK_CONFIG})
        try:
            self.cluster_id = str(self._producer.list_topics(timeout=10).cluster_id or "unknown")
        except KafkaException as exc:
            raise K2Error(f"cannot reach Kafka at {bootstrap}: {exc}") from exc

    def partition(self, topic: str, key: bytes) -> int:
        """The partition `key`'s messages go to."""
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
        self._ledgers.setdefault((topic, partition), DeliveryLedger())
        return partition

    def send(self, topic: str, partition: int, key: bytes, rows: EncodedRows, begin: int, end: int) -> None:
        """Messages `begin .. end - 1` of `rows`, in order, to one partition (`partition(topic, key)`); the last one
        carries the delivery sample (a replay sends a group of at most a few thousand at a time)."""
        if end <= begin:
            return
        produce = self._producer.produce
        ledger = self._ledgers[topic, partition]
        data = rows.data
        bounds = rows.offsets[begin : end + 1].tolist()
        for first in range(0, end - begin - 1, POLL_EVERY):
            for start, stop in pairwise(bounds[first : min(first + POLL_EVERY, end - begin - 1) + 1]):
                try:
                    produce(topic, data[start:stop], key, partition)
                except BufferError:
                    self._produce_when_room(topic, data[start:stop], key, partition, None)
                except KafkaException as exc:  # a fatal error: the producer is done
                    raise K2Error(f"cannot produce to {topic}: {exc}") from exc
            self._producer.poll(0)
        ledger.sent += end - begin
        value = data[bounds[-2] : bounds[-1]]
        sampled = ledger.sampler(self._errors)
        try:
            produce(topic, value, key, partition, sampled)
        except BufferError:
            self._produce_when_room(topic, value, key, partition, sampled)
        except KafkaException as exc:
            raise K2Error(f"cannot produce to {topic}: {exc}") from exc
        self._producer.poll(0)

    def send_keyed(
        self, topic: str, partitions: Sequence[int], keys: Sequence[bytes], rows: EncodedRows, begin: int, end: int
    ) -> None:
        """Messages `begin .. end - 1` of `rows`, each with its own key and partition (`keys[i]`, `partitions[i]`,
        indexed like `rows`, each partition from `partition`): for files of many symbols. The last message to each
        partition carries its delivery sample."""
        produce = self._producer.produce
        data = rows.data
        bounds = rows.offsets.tolist()
        last = {partitions[i]: i for i in range(begin, end)}
        for i in range(begin, end):
            value = data[bounds[i] : bounds[i + 1]]
            key, partition = keys[i], partitions[i]
            ledger = self._ledgers[topic, partition]
            ledger.sent += 1
            sampled = ledger.sampler(self._errors) if last[partition] == i else None
            try:
                produce(topic, value, key, partition, sampled)
            except BufferError:
                self._produce_when_room(topic, value, key, partition, sampled)
            except KafkaException as exc:
                raise K2Error(f"cannot produce to {topic}: {exc}") from exc
            if i % POLL_EVERY == 0:
                self._producer.poll(0)

    def _produce_when_room(
        self, topic: str, value: bytes, key: bytes, partition: int, sampled: Delivered | None
    ) -> None:
        """The local queue is full: serve delivery reports (which frees the delivered messages) until it takes one."""
        deadline = time.monotonic() + STALL_SECONDS
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, value, key, partition, sampled)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise K2Error(f"the broker took nothing for {STALL_SECONDS:.0f}s") from None
            except KafkaException as exc:
                raise K2Error(f"cannot produce to {topic}: {exc}") from exc

    def flush(self, timeout: float = 60.0) -> None:
        flush_or_raise(self._producer, self._errors, timeout)

    def delivered(self) -> dict[TP, array[int]]:
        """After `flush`: the offsets the messages took, per partition, ascending (k2_stream.acks)."""
        out = {tp: ledger.offsets(tp) for tp, ledger in self._ledgers.items() if ledger.sent}
        return {tp: offsets for tp, offsets in out.items() if offsets}
