"""The control topic of coordinated commits: workers hand in commit requests, the committer answers with verdicts.

One topic of one partition (`ingest.control_topic`) carries both, in order, JSON encoded
(k2_core.ingest.coordination). Kafka is the channel the field chose (Iceberg's Kafka Connect sink, Redpanda): K2
already runs it, it keeps requests across a committer's failure (the next committer reads on from the offset its
predecessor committed), and its consumer group elects the committer: the owner of the topic's one partition in the
committer group (k2_stream.committer). A worker reads the verdicts from where the topic ended when it started.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from k2_core.exceptions import CommitRejectedError, CommitTimeoutError, K2Error
from k2_core.ingest.coordination import CommitRequest, Outcome, Verdict, decode_message
from k2_core.logging import get_logger
from k2_core.settings import Settings

log = get_logger(__name__)


def ensure_control_topic(settings: Settings) -> str:
    """Create the control topic (one partition: one committer, requests in order) unless it exists."""
    topic = settings.ingest.control_topic
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    if topic in admin.list_topics(timeout=10).topics:
        return topic
    replication = settings.kafka.replication_factor or 1
    for name, future in admin.create_topics([NewTopic(topic, 1, replication)]).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise K2Error(f"cannot create topic {name}: {exc}") from exc
    return topic


class CommitClient:
    """A worker's side of the channel: hand a request in and wait for its verdict. `generation` is bumped by the
    worker on every assignment (it travels in each request, for the committer's log)."""

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.topic = ensure_control_topic(settings)
        self.worker_id = worker_id
        self.wait_seconds = settings.ingest.commit_verdict_seconds
        self.resubmits = settings.ingest.commit_resubmits
        self.generation = 0
        servers = settings.kafka.bootstrap_servers
        self.producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True})
        self.consumer = Consumer(
            {
                "bootstrap.servers": servers,
                "group.id": f"{worker_id}.verdicts",  # never joined: the partition is assigned, offsets never committed
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 50,
            }
        )
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=30)
        except KafkaException as exc:
            raise K2Error(f"cannot read the control topic {self.topic}: {exc}") from exc
        self.consumer.assign([TopicPartition(self.topic, 0, high)])

    def submit(self, request: CommitRequest) -> Verdict:
        """The committer's verdict on `request`. Raises `CommitRejectedError` (carrying the verdict) when it was
        refused, `CommitTimeoutError` when no verdict came after `resubmits` more hand-ins of the same request (its
        id makes it commit at most once, whoever reads it)."""
        for attempt in range(self.resubmits + 1):
            self._produce(request)
            verdict = self._await(request.request_id, time.monotonic() + self.wait_seconds)
            if verdict is not None:
                if verdict.outcome is Outcome.REJECTED:
                    raise CommitRejectedError(verdict.reason, verdict.files_certain_uncommitted)
                return verdict
            log.warning(
                "no commit verdict yet, handing the request in again",
                extra={"request": request.request_id, "attempt": attempt + 1, "wait_s": self.wait_seconds},
            )
        raise CommitTimeoutError(
            f"no committer answered request {request.request_id} in {self.resubmits + 1} x {self.wait_seconds} s"
        )

    def _produce(self, request: CommitRequest) -> None:
        errors: list[str] = []

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                errors.append(str(err))

        try:
            self.producer.produce(self.topic, request.encode(), key=self.worker_id.encode(), on_delivery=delivered)
        except (KafkaException, BufferError) as exc:
            raise CommitTimeoutError(f"cannot hand in request {request.request_id}: {exc}") from exc
        self.producer.flush(self.wait_seconds)
        if errors or len(self.producer):
            raise CommitTimeoutError(f"request {request.request_id} not delivered: {errors or 'timed out'}")

    def _await(self, request_id: str, deadline: float) -> Verdict | None:
        while (remaining := deadline - time.monotonic()) > 0:
            msg = self.consumer.poll(min(remaining, 0.5))
            if msg is None or msg.error() is not None:
                continue
            found = decode_message(msg.value() or b"")
            if isinstance(found, Verdict) and found.request_id == request_id:
                log.debug("commit verdict", extra={"request": request_id, "outcome": found.outcome.value})
                return found
        return None

    def close(self) -> None:
        self.producer.flush(5)
        self.consumer.close()
