"""The stream ingester: Kafka -> decode -> sequence/dedup -> Iceberg, exactly once.

This module is the consumer loop: it collects micro-batches (bounded by rows and seconds) from the partitions it
owns, has each prepared (k2_stream.prepare: decode, validate, plan) and committed by the checkpoint
(k2_stream.checkpoint: dead letters, gaps, data, state, then Kafka offsets), and reacts to what happens around that:
rebalances, failed writes, load.

On start and on every assignment each partition resumes from the newer of Kafka's committed offset and the offset
stored in the table (k2_core.ingest.resume), so a crash between the Iceberg commit and the Kafka commit neither
loses nor duplicates a row. A failed write puts the loop in `RESETTING`: it backs off, brings the sequence state up
to the table, and commits the same batch again, on the partitions it still owns.

With `ingest.pipeline` (opt-in, independent commit mode) a batch is written and committed on a writer thread
while the next one is consumed and decoded (k2_stream.pipeline says what keeps that exactly once); everything that
reads or moves the sequence state, the positions or the consumer stays on the loop's thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from k2_core.exceptions import (
    CommitConflictError,
    CommitTimeoutError,
    FencedError,
    K2Error,
    SchemaRegistryUnavailableError,
    WriteError,
)
from k2_core.ingest.degradation import Degradation
from k2_core.ingest.gaps import GapGrading, GapStore
from k2_core.ingest.reference import ReferenceWatcher
from k2_core.ingest.resume import position, resume_offsets
from k2_core.ingest.sequence import StreamKey
from k2_core.ingest.state import SequenceState
from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.lake.offsets import TopicPartition as TP
from k2_core.logging import get_logger
from k2_core.model.avro import Decoder
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import KINDS, TopicLayout
from k2_core.settings import Settings
from k2_core.upkeep.retention import RetentionCadence
from k2_stream import gc_pause, metrics
from k2_stream.admin import cluster_id, ensure_topics, load_layout, topic_ids
from k2_stream.checkpoint import Checkpoint
from k2_stream.control import CommitClient
from k2_stream.dead_letters import DeadLetterSender
from k2_stream.lag import export_lag
from k2_stream.pipeline import WriterThread
from k2_stream.prepare import BatchPreparer, DecodedBatch, PreparedBatch, Preparer
from k2_stream.registry_confluent import make_registry

log = get_logger(__name__)

# A batch that fails with one of these is committed again after a backoff (a registry that cannot answer says nothing
# about the messages: they wait, they are not dead-lettered).
# A coordinated commit refused (CommitRejectedError, a FencedError) or unanswered resets the same way.
_RECOVERABLE = (
    WriteError,
    CommitConflictError,
    CommitTimeoutError,
    FencedError,
    KafkaException,
    SchemaRegistryUnavailableError,
)


class Mode(Enum):
    CONSUMING = "consuming"  # collect batches and commit them
    RESETTING = "resetting"  # a write failed, or assigned partitions could not be resumed: nothing new is read


@dataclass
class Backoff:
    """The wait before the next reset: doubles with every failed attempt, back to `first` once a batch commits."""

    first: float
    limit: float
    seconds: float = field(init=False)

    def __post_init__(self) -> None:
        self.seconds = self.first

    def grow(self) -> None:
        self.seconds = min(self.seconds * 2, self.limit)

    def reset(self) -> None:
        self.seconds = self.first


class Measured(NamedTuple):
    """What one committed batch tells the degradation cascade."""

    lag_seconds: float
    write_seconds: float


class Ingester:
    def __init__(
        self,
        settings: Settings,
        layout: TopicLayout | None = None,
        preparer: Callable[[Ingester], Preparer] = BatchPreparer,
    ) -> None:
        """`preparer` builds the hot path from this ingester (bench/per_message.py swaps in its baseline)."""
        self.settings = settings
        self.layout = layout or load_layout(settings)
        self.writer_id = f"ingester-{uuid.uuid4().hex[:12]}"
        registry = make_registry(settings.kafka.schema_registry_url, settings.kafka.schemas_dir)
        self.decoder = Decoder(registry)
        self.readers = {t.subject: registry.latest(t.subject) for t in self.layout.topics}
        ing = settings.ingest
        catalog = open_catalog(settings)
        tables = ensure_tables(catalog, settings.catalog.namespace)
        # Strict instruments' rules, re-read within K2_INSTRUMENTS_REFRESH_SECONDS of a reload (no restart).
        self.reference = ReferenceWatcher(catalog, settings.catalog.namespace, settings.instruments)
        self.tables = {kind: tables[MARKET_TABLES[kind].name] for kind in KINDS}
        cluster = cluster_id(settings.kafka.bootstrap_servers)
        self.writers = {
            kind: TableWriter(t, self.writer_id, cluster, ing.commit_retries, ing.conflict_backoff_seconds)
            for kind, t in self.tables.items()
        }
        self.grading = GapGrading(ing.gap_alert_threshold, ing.gap_halt_threshold)
        self.gaps = GapStore(tables["sequence_gaps"], self.grading)
        self.state = SequenceState(self.tables, self.gaps.open_gaps, int(ing.dedup_window_hours * 3600 * 1_000_000))
        self.degradation = Degradation(settings.degradation)
        self.stats: dict[str, int] = defaultdict(int)
        # What this ingester owns: the next offset to read per partition (where a batch starts; -1 until resumed),
        # the halted ones with why, and the streams shed under load whose next gap is K2's own (never a halt).
        self.positions: dict[TP, int] = {}
        self.halted: dict[TP, str] = {}
        self.shed_streams: set[StreamKey] = set()
        # The loop's state: whether it may consume, the batch to commit again first, the wait before a reset.
        self.mode = Mode.CONSUMING
        self.held: list[Message] = []
        self.backoff = Backoff(ing.retry_backoff_seconds, ing.max_backoff_seconds)
        self._assignments = 0  # bumped by every rebalance callback: a batch collected across one is stale
        self._halted_at_collect: set[TP] = set()  # a batch in flight may halt partitions the next one has messages of
        self._stop = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": settings.kafka.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.kafka.session_timeout_ms,
                "heartbeat.interval.ms": settings.kafka.heartbeat_interval_ms,
                "fetch.queue.backoff.ms": 1,
                "queued.min.messages": 100_000,
                "enable.partition.eof": False,
            }
        )
        self.dead_letters = DeadLetterSender(settings.kafka.bootstrap_servers, self.layout, self.stats)
        # Coordinated mode: batches are handed to the elected committer (k2_stream.committer), not appended here.
        self.coordinator = CommitClient(settings, self.writer_id) if ing.commit_mode == "coordinated" else None
        self.checkpoint = Checkpoint(
            layout=self.layout,
            consumer=self.consumer,
            dead_letters=self.dead_letters,
            gaps=self.gaps,
            grading=self.grading,
            writers=self.writers,
            state=self.state,
            degradation=self.degradation,
            positions=self.positions,
            halted=self.halted,
            shed_streams=self.shed_streams,
            stats=self.stats,
            coordinator=self.coordinator,
        )
        # In coordinated mode the committer thins the snapshots it commits: one writer per table, not every worker.
        self.retention = RetentionCadence.of(self.tables, settings, enabled=ing.commit_mode == "independent")
        self.preparer = preparer(self)
        # Coordinated mode hands batches to the committer inline: the pipeline is for independent commits.
        self.writer_thread = (
            WriterThread(self.checkpoint) if ing.pipeline and ing.commit_mode == "independent" else None
        )

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish: the batch in hand is committed, then the consumer leaves the group."""
        self._stop.set()

    def run(self) -> None:
        ensure_topics(self.settings, self.layout)
        self.consumer.subscribe(
            [t.name for t in self.layout.topics],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info(
            "ingester started",
            extra={
                "writer": self.writer_id,
                "topics": len(self.layout.topics),
                "pipeline": self.writer_thread is not None,
            },
        )
        gc_pause.freeze_startup()
        try:
            while not self._stop.is_set():
                if self.mode is Mode.RESETTING:
                    self._reset()
                    continue
                with gc_pause.paused():  # a batch's messages are not cyclic garbage (k2_stream.gc_pause)
                    if self.held:
                        batch, self.held = self.held, []
                    else:
                        batch = self._collect()
                    if batch and self.mode is Mode.CONSUMING:  # an assignment during the collect may have failed
                        if self.writer_thread is not None:
                            self._pipelined(batch)
                        else:
                            self._commit(batch)
                    del batch
        finally:
            try:
                self._drain()  # the batch in flight is committed before the consumer leaves
            finally:
                if self.writer_thread is not None:
                    self.writer_thread.close()
                self.consumer.close()
            self.dead_letters.close()
            if self.coordinator is not None:
                self.coordinator.close()
            log.info("ingester stopped", extra={"writer": self.writer_id, **self.stats})

    # ---- rebalances ------------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drain()  # the writer thread must not commit while partitions move (a failure: resumed from the table)
        self._assignments += 1
        if self.coordinator is not None:
            self.coordinator.generation = self._assignments
        self.held = []  # re-read from the committed positions instead
        try:
            self._refresh_topic_ids()
            resume = self._resume_offsets(partitions)
            self.state.sync()
        except (K2Error, KafkaException) as exc:
            log.error("cannot resume assigned partitions, pausing", extra={"error": str(exc)})
            consumer.assign(partitions)
            consumer.pause(partitions)
            self.positions.clear()
            self.positions.update({(p.topic, p.partition): -1 for p in partitions})
            self.mode = Mode.RESETTING
            return
        for p in partitions:
            start = resume[(p.topic, p.partition)]
            p.offset = OFFSET_BEGINNING if start is None else start
            self.positions[(p.topic, p.partition)] = position(start)
        consumer.assign(partitions)
        consumer.resume(partitions)  # a pause from a failed-write reset must not outlive the assignment
        self.mode = Mode.CONSUMING
        log.info("partitions assigned", extra={"count": len(partitions)})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drain()  # commit the batch in flight while the partitions are still ours
        self._assignments += 1
        self.held = []
        for p in partitions:
            self.positions.pop((p.topic, p.partition), None)
            self.halted.pop((p.topic, p.partition), None)
        metrics.HALTED_PARTITIONS.set(len(self.halted))

    def _refresh_topic_ids(self) -> None:
        """The topics' current ids: offsets stored for an earlier incarnation of a topic (deleted and created again,
        its log restarted at 0) must not be resumed from."""
        ids = topic_ids(self.settings.kafka.bootstrap_servers, [t.name for t in self.layout.topics])
        for writer in self.writers.values():
            writer.index.set_topic_ids(ids)

    def _resume_offsets(self, partitions: list[TopicPartition]) -> dict[TP, int | None]:
        committed = self.consumer.committed(partitions, timeout=30)
        stored: dict[TP, int] = {}
        for writer in self.writers.values():
            stored.update(writer.committed_offsets())
        kafka: dict[TP, int | None] = {(c.topic, c.partition): c.offset for c in committed}
        if self.coordinator is not None:
            # The committer accepts a range only from the offset the table holds: where the table holds a partition,
            # resume exactly there (a Kafka offset ahead of it, left by an independent-mode run, is re-read).
            kafka = {tp: None if tp in stored else offset for tp, offset in kafka.items()}
        return resume_offsets(kafka, stored)

    def _reset(self) -> None:
        """After a failed write: wait out the backoff, bring the state up to the table and keep the failed batch
        to commit again (no rewind: a seek on a paused or not yet fetching partition is refused). While this fails,
        the breaker stays open and nothing new is consumed."""
        self._drain()  # nothing is in flight in this mode; made sure of, as the state is synced below
        self.consumer.pause(self.consumer.assignment())
        if self.degradation.failures:
            self._idle(self.backoff.seconds)
            self.backoff.grow()
        self.degradation.probing()
        self._export_state()
        # The assignment as it is now: a rebalance during the wait may have moved partitions away, and a partition
        # this ingester no longer owns must never be written (its new owner commits it; we would fence ourselves).
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        owned = {(p.topic, p.partition) for p in assignment}
        for tp in [tp for tp in self.positions if tp not in owned]:
            del self.positions[tp]
        self.held = [m for m in self.held if (m.topic(), m.partition()) in owned]
        try:
            self.state.sync()
            resume = self._resume_offsets(assignment)
            for p in assignment:
                tp = (p.topic, p.partition)
                self.positions[tp] = position(resume.get(tp), self.positions.get(tp))
        except (K2Error, KafkaException) as exc:
            log.warning("reset failed, backing off", extra={"error": str(exc), "wait_s": self.backoff.seconds})
            self.degradation.write_failed()
            self._export_state()
            return
        self.consumer.resume([p for p in assignment if (p.topic, p.partition) not in self.halted])
        self.mode = Mode.CONSUMING
        log.info("ingester resumed after reset")

    def _idle(self, seconds: float) -> None:
        """Wait while serving rebalance callbacks; paused partitions deliver nothing, and a message from a
        partition assigned meanwhile joins the batch to commit."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            msg = self.consumer.poll(min(remaining, 0.5))
            if msg is not None and msg.error() is None:
                self.held.append(msg)

    # ---- the batch loop --------------------------------------------------------------------------------------

    def _collect(self) -> list[Message]:
        ing = self.settings.ingest
        scale = self.degradation.batch_scale()
        max_rows = ing.batch_max_rows * scale
        deadline = time.monotonic() + ing.batch_max_seconds * scale
        batch: list[Message] = []
        assignments = self._assignments
        self._halted_at_collect = set(self.halted)
        while len(batch) < max_rows and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self.writer_thread is not None and self.writer_thread.written() and not self._drain():
                # The batch before failed: it and what this collect took so far are committed again after the reset.
                self.held.extend(batch)
                return []
            msgs = self.consumer.consume(min(max_rows - len(batch), 10_000), min(remaining, 0.5))
            if self._assignments != assignments:
                # The assignment inside that call re-positioned every partition at its committed offset:
                # what was collected before is stale, what this call returned is already the new start.
                assignments = self._assignments
                batch.clear()
            errors = list(map(Message.error, msgs))
            if errors.count(None) != len(msgs):
                for err in errors:
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error", extra={"error": str(err)})
                msgs = [m for m, err in zip(msgs, errors, strict=True) if err is None]
            # Only owned, running partitions (checked per partition, not per message, when all are).
            found = set(zip(map(Message.topic, msgs), map(Message.partition, msgs), strict=True))
            if all(tp in self.positions and tp not in self.halted for tp in found):
                batch.extend(msgs)
            else:
                batch.extend(
                    m
                    for m in msgs
                    if (tp := (m.topic() or "", m.partition() or 0)) in self.positions and tp not in self.halted
                )
        return batch

    def _commit(self, batch: list[Message]) -> None:
        """Prepare and commit `batch` on this thread (no pipeline)."""
        try:
            measured = self.process(batch)
        except _RECOVERABLE as exc:
            self._failed(batch, exc)
        else:
            self._succeeded(measured)

    def process(self, batch: list[Message]) -> Measured:
        """Prepare and commit one batch, then the upkeep that may follow a commit. Raises if it is not committed."""
        now = datetime.now(UTC)
        prepared = self.preparer.plan(self.preparer.decode(batch, now))
        lag = self._export_lag(prepared.newest, now)
        write_seconds = self.checkpoint.commit(prepared, now)
        self._upkeep(prepared, now)
        return Measured(lag, write_seconds)

    def _pipelined(self, batch: list[Message]) -> None:
        """Decode `batch` while the batch before it is written, then finish that one, then plan this one and hand it
        to the writer thread. A failure of either stops here, both batches held, in order, for the reset."""
        decoded: DecodedBatch | None = None
        error: Exception | None = None
        try:
            decoded = self.preparer.decode(batch, datetime.now(UTC))
        except _RECOVERABLE as exc:
            error = exc
        if not self._drain():  # nothing of this batch is written: it is committed again after the failed one
            log.warning("next batch held behind the failed one", extra={"messages": len(batch)})
            self.held.extend(batch)
            return
        try:
            if decoded is None:
                raise error or WriteError("batch not decoded")
            # Partitions the batch before halted after this one's collect began: nothing past a halt goes on.
            if self.halted.keys() - self._halted_at_collect:
                batch = [m for m in batch if (m.topic() or "", m.partition() or 0) not in self.halted]
                if not batch:
                    return
                decoded = self.preparer.decode(batch, decoded.now)
            prepared = self.preparer.plan(decoded)
        except _RECOVERABLE as exc:
            self._failed(batch, exc)
            return
        lag = self._export_lag(prepared.newest, decoded.now)
        if self.writer_thread is not None:
            self.writer_thread.submit(batch, prepared, decoded.now, lag)

    def _drain(self) -> bool:
        """Wait for the batch in flight, if any, and finish it (state, positions, Kafka offsets). False if its write
        failed: the loop resets, holding that batch."""
        flight = self.writer_thread.take() if self.writer_thread is not None else None
        if flight is None:
            return True
        try:
            written = flight.written.result()
        except _RECOVERABLE as exc:
            self._failed(flight.batch, exc)
            return False
        write_seconds = self.checkpoint.finish(flight.prepared, written, flight.now)
        self._upkeep(flight.prepared, flight.now)
        self._succeeded(Measured(flight.lag_seconds, write_seconds))
        return True

    def _upkeep(self, prepared: PreparedBatch, now: datetime) -> None:
        self.retention.appended([kind for kind, rows in prepared.plan.rows.items() if rows.num_rows])
        if not self.degradation.skip_non_critical():  # deferred under load
            self.state.age_out(now)

    def _failed(self, batch: list[Message], exc: Exception) -> None:
        breaker = self.degradation.write_failed()
        log.error(
            "batch not committed, rolling back",
            extra={
                "error": str(exc),
                "error_type": type(exc).__name__,
                "messages": len(batch),
                "circuit_breaker": breaker.name,
            },
        )
        self.stats["failed_batches"] += 1
        self.held = batch
        self.mode = Mode.RESETTING
        self._export_state()

    def _succeeded(self, measured: Measured) -> None:
        self.backoff.reset()
        self.degradation.write_succeeded()
        before = self.degradation.level
        level = self.degradation.observe(measured.lag_seconds, measured.write_seconds, time.monotonic())
        if level != before:
            log.warning(
                "degradation level changed",
                extra={
                    "from": before.name,
                    "to": level.name,
                    "lag_s": measured.lag_seconds,
                    "write_s": measured.write_seconds,
                },
            )
        self._export_state()

    # ---- what it reports -------------------------------------------------------------------------------------

    def _export_lag(self, newest: dict[TP, tuple[int, int]], now: datetime) -> float:
        return export_lag(self.consumer, self.positions, newest, now)

    def _export_state(self) -> None:
        metrics.CIRCUIT_BREAKER_STATE.set(int(self.degradation.breaker))
        metrics.DEGRADATION_LEVEL.set(int(self.degradation.level))
        metrics.HALTED_PARTITIONS.set(len(self.halted))

    def health(self) -> dict[str, Any]:
        """What /health of the ingester reports."""
        level = self.degradation.level
        return {
            "status": "degraded" if level or self.halted else "ok",
            "degradation_level": int(level),
            "degradation": level.name.lower(),
            "circuit_breaker": self.degradation.breaker.name.lower(),
            "assigned_partitions": len(self.positions),
            "halted_partitions": {f"{t}[{p}]": reason for (t, p), reason in self.halted.items()},
            "stats": dict(self.stats),
        }
