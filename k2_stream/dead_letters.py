"""Sending a batch's dead letters: the first step of its checkpoint, so a refused message is never lost.

Dead letters are delivered (flushed and acknowledged) before anything of their batch is committed, and a batch that
must be committed again after a failed write sends only those not delivered before: at least once, and in practice
once. What a dead letter carries is the contract in `k2_core.ingest.dead_letters`.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from k2_core.exceptions import WriteError
from k2_core.ingest.dead_letters import dead_letter, is_shed, reason_class
from k2_core.logging import get_logger
from k2_core.model.topics import DLQ_SUFFIX, TopicLayout
from k2_stream import metrics

log = get_logger(__name__)

_Where = tuple[str, int, int]  # topic, partition, offset


class DeadLetterSender:
    def __init__(self, bootstrap_servers: str, layout: TopicLayout, stats: MutableMapping[str, int]) -> None:
        self.layout = layout
        self.stats = stats
        self.producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})
        self._errors: list[str] = []
        self._delivered: set[_Where] = set()  # of the batch in hand, across its attempts

    def send(self, dead: Iterable[tuple[Message, str]]) -> None:
        """Produce `(message, reason)` dead letters and wait for their delivery; raises `WriteError` (the batch is
        not to be committed) if any is not delivered."""
        sent = shed = 0
        delivered: list[_Where] = []
        for m, reason in dead:
            topic, partition, offset = m.topic() or "", m.partition() or 0, m.offset() or 0
            if (topic, partition, offset) in self._delivered:
                continue
            delivered.append((topic, partition, offset))
            letter = dead_letter(m.value(), reason, topic, partition, offset, datetime.now(UTC))
            self._produce(topic + DLQ_SUFFIX, m.key(), letter.body, letter.headers)
            metrics.DLQ_MESSAGES.labels(topic, reason_class(reason)).inc()
            if is_shed(reason):
                shed += 1  # summarised once per batch below
            else:
                log.warning("message dead-lettered", extra={"topic": topic, "offset": offset, "reason": reason})
            sent += 1
        if shed:
            log.warning("non-critical messages shed to the DLQ", extra={"count": shed})
        if not sent:
            return
        if self.producer.flush(30):
            raise WriteError("dead-letter messages not delivered; batch not committed")
        if self._errors:
            errors, self._errors = self._errors, []
            raise WriteError(f"{len(errors)} dead letters refused by the broker ({errors[0]}); batch not committed")
        self._delivered.update(delivered)
        self.stats["dead_lettered"] += sent

    def batch_committed(self) -> None:
        """The batch in hand is committed: the next one's dead letters are all new."""
        self._delivered.clear()

    def close(self) -> None:
        self.producer.flush(10)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: dict[str, bytes]) -> None:
        """Queue one dead letter; its delivery is confirmed by the flush before the batch commits."""

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._errors.append(str(err))

        wire: dict[str, str | bytes | None] = dict(headers)
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, headers=wire, on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0.1)  # the local queue is full: let deliveries drain
            except KafkaException as exc:
                raise WriteError(f"cannot dead-letter to {topic}: {exc}") from exc
