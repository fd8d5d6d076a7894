"""`python -m k2_stream.committer`: the committer of coordinated commits (ingest.commit_mode=coordinated).

Run one or more; Kafka elects the one that commits: every candidate joins the consumer group
`<kafka.group_id>.committer` on the one-partition control topic, and the owner of that partition is the committer
(a candidate that owns nothing idles). The group does the election, its session timeout the fail-over, and no
extra service (ZooKeeper, a lease table) is needed.

A round: read what the control topic holds, commit each table's requests in one snapshot
(k2_core.ingest.coordination.Committer), produce the verdicts, then commit the control topic's offset. A committer
that dies anywhere in a round loses and duplicates nothing: its successor reads from the last committed control
offset, so requests not committed yet are committed now, and requests already committed are recognised by their
ids in the table and answered COMMITTED again. A deposed committer that does not know it yet is still fenced by the
table's offsets (a range commits only from where the table holds its partition).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from k2_core.exceptions import K2Error
from k2_core.ingest.coordination import CommitRequest, Committer, Outcome, RoundStats, Verdict, decode_message
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.logging import configure_logging, get_logger
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import Kind
from k2_core.settings import Settings
from k2_core.upkeep.retention import RetentionCadence
from k2_stream import metrics
from k2_stream.admin import cluster_id
from k2_stream.control import ensure_control_topic
from k2_stream.signals import stop_on_signals
from k2_stream.status import serve_status

log = get_logger(__name__)


class CommitterService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.committer_id = f"committer-{uuid.uuid4().hex[:12]}"
        self.topic = ensure_control_topic(settings)
        tables = ensure_tables(open_catalog(settings), settings.catalog.namespace)
        cluster = cluster_id(settings.kafka.bootstrap_servers)
        ing = settings.ingest
        self.committers = {
            d.name: Committer(
                tables[d.name], self.committer_id, cluster, ing.commit_retries, ing.conflict_backoff_seconds
            )
            for d in MARKET_TABLES.values()
        }
        # The snapshots it commits are thinned here (the workers do not), as the independent ingester thins its own.
        self.kinds = {d.name: kind for kind, d in MARKET_TABLES.items()}
        self.retention = RetentionCadence.of(
            {kind: self.committers[name].table for name, kind in self.kinds.items()}, settings
        )
        self.pending: list[CommitRequest] = []
        self.next_offset: int | None = None  # the control offset to commit once `pending` is answered
        self.rounds = 0
        self.elected = False
        self._stop = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"{settings.kafka.group_id}.committer",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.kafka.session_timeout_ms,
                "heartbeat.interval.ms": settings.kafka.heartbeat_interval_ms,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 50,
            }
        )
        self.producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "enable.idempotence": True})

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> dict[str, Any]:
        """For `/health`: up while running; whether this candidate is the elected committer."""
        return {"status": "down" if self._stop.is_set() else "ok", "elected": self.elected, "rounds": self.rounds}

    def run(self) -> None:
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("committer candidate started", extra={"committer": self.committer_id, "topic": self.topic})
        backoff = self.settings.ingest.retry_backoff_seconds
        try:
            while not self._stop.is_set():
                for msg in self.consumer.consume(1000, 0.2):
                    self._take(msg)
                if not self.pending:
                    continue
                try:
                    self._round()
                    backoff = self.settings.ingest.retry_backoff_seconds
                except (K2Error, KafkaException) as exc:
                    metrics.COMMITTER_FAILED_ROUNDS.inc()
                    log.error("commit round failed, retrying", extra={"error": str(exc), "wait_s": backoff})
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.settings.ingest.max_backoff_seconds)
        finally:
            self.consumer.close()
            self.producer.flush(5)
            log.info("committer stopped", extra={"committer": self.committer_id, "rounds": self.rounds})

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.pending, self.next_offset = [], None
        if partitions:
            self.elected = True
            metrics.COMMITTER_ELECTED.set(1)
            log.info("elected committer", extra={"committer": self.committer_id})

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.pending, self.next_offset = [], None  # the next committer reads them from the committed offset
        if partitions:
            self.elected = False
            metrics.COMMITTER_ELECTED.set(0)
            log.info("committer deposed", extra={"committer": self.committer_id})

    def _take(self, msg: Message) -> None:
        if msg.error() is not None:
            log.warning("control topic error", extra={"error": str(msg.error())})
            return
        self.next_offset = (msg.offset() or 0) + 1
        found = decode_message(msg.value() or b"")
        if isinstance(found, CommitRequest):
            self.pending.append(found)

    def _round(self) -> None:
        """Commit every pending request, table by table, answer each, then move the control offset past them. A
        failure before the offset commit leaves them pending: the retry (or the next committer) answers those
        already committed as COMMITTED again."""
        verdicts: list[Verdict] = []
        by_table: dict[str, list[CommitRequest]] = {}
        for request in self.pending:
            if request.table in self.committers:
                by_table.setdefault(request.table, []).append(request)
            else:
                verdicts.append(
                    Verdict(request.request_id, request.worker, Outcome.REJECTED, reason=f"no table {request.table}")
                )
        committed: list[Kind] = []
        for name, requests in by_table.items():
            committer = self.committers[name]
            verdicts.extend(committer.commit(requests))
            observe_round(name, committer.last_round)
            if committer.last_round.committed:
                committed.append(self.kinds[name])
        errors: list[str] = []
        for verdict in verdicts:
            self.producer.produce(
                self.topic,
                verdict.encode(),
                key=verdict.worker.encode(),
                on_delivery=lambda err, _msg: errors.append(str(err)) if err is not None else None,
            )
        self.producer.flush(30)
        if errors or len(self.producer):
            raise K2Error(f"verdicts not delivered: {errors or 'timed out'}")
        if self.next_offset is not None:
            self.consumer.commit(offsets=[TopicPartition(self.topic, 0, self.next_offset)], asynchronous=False)
        self.pending = []
        self.rounds += 1
        self.retention.appended(committed)  # best effort, after the round is answered


def observe_round(table: str, stats: RoundStats) -> None:
    """One table's round in the committer's metrics."""
    metrics.COMMITTER_ROUNDS.labels(table).inc()
    metrics.COMMITTER_REQUESTS.labels(table, Outcome.COMMITTED.value).inc(stats.committed)
    metrics.COMMITTER_REQUESTS.labels(table, Outcome.REJECTED.value).inc(stats.rejected)
    metrics.COMMITTER_FILES.labels(table).inc(stats.files)
    metrics.COMMITTER_REQUESTS_PER_ROUND.labels(table).observe(stats.requests)
    metrics.COMMITTER_ROUND_SECONDS.labels(table).observe(stats.seconds)
    metrics.COMMITTER_COMMIT_SECONDS.labels(table).observe(stats.commit_seconds)
    metrics.COMMITTER_READ_SECONDS.labels(table).observe(stats.read_seconds)


def run_committer(settings: Settings) -> None:
    configure_logging("committer", settings.log_level)
    service = CommitterService(settings)

    stop_on_signals(service.stop)
    port = settings.ingest.committer_metrics_port
    server = serve_status(service.health, settings.api.host, port) if port else None
    try:
        service.run()
    finally:
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    run_committer(Settings())
