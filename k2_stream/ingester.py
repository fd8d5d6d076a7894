"""The stream ingester: Kafka -> decode -> sequence/dedup -> Iceberg, exactly once.

Per micro-batch (bounded by rows and seconds): decode and validate (bad messages go to `<topic>.dlq`), classify
every row against the sequence tracker, record newly found gaps, append one snapshot per table carrying the
offsets it covers, and only then commit the offsets to Kafka. On start and on every assignment each partition
resumes from the newer of Kafka's committed offset and the offset stored in the table, so a crash between the
Iceberg commit and the Kafka commit neither loses nor duplicates a row. Any failed write rolls the batch back:
the tracker is rebuilt from the table and consumption resumes from the committed positions.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from k2_core.exceptions import CommitConflictError, FencedError, K2Error, WriteError
from k2_core.ingest.dedup import already_stored, catch_up, load_history, rebuild, to_us
from k2_core.ingest.degradation import Degradation, Level
from k2_core.ingest.gaps import HALT, SHED_GAP_REASON, WARNING, GapGrading, GapStore
from k2_core.ingest.sequence import DAY_US, DUPLICATE, FILL, GapEvent, SequenceTracker, StreamKey, observe_batch
from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.lake.offsets import TopicPartition as TP
from k2_core.logging import get_logger
from k2_core.model.avro import Decoder
from k2_core.model.records import dead_letter_body, reason_class
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import KINDS, Kind, TopicLayout
from k2_core.settings import Settings
from k2_core.upkeep.retention import RetentionPolicy, apply_retention
from k2_stream import metrics
from k2_stream.admin import cluster_id, ensure_topics, load_layout, topic_ids
from k2_stream.decode import BatchDecoder
from k2_stream.registry_confluent import make_registry

log = get_logger(__name__)

_RECOVERABLE = (WriteError, CommitConflictError, FencedError, KafkaException)
EVICT_EVERY_SECONDS = 60.0
TP_OFFSET = tuple[str, int, int]


@dataclass
class BatchView:
    """A batch's messages as columns: read each message's coordinates once."""

    topic_names: list[str]
    topic_codes: npt.NDArray[np.int64]  # index into `topic_names`
    values: list[bytes | None]
    offsets: npt.NDArray[np.int64]
    tp_codes: npt.NDArray[np.int64]  # index into `tps`
    tps: list[TP]

    @classmethod
    def of(cls, batch: list[Message]) -> BatchView:
        # map over the C methods: no Python frame per message
        topics = pc.dictionary_encode(pa.array(list(map(Message.topic, batch)), pa.string()))
        partitions = np.fromiter(map(Message.partition, batch), dtype=np.int64, count=len(batch))
        offsets = np.fromiter(map(Message.offset, batch), dtype=np.int64, count=len(batch))
        topic_idx = np.asarray(topics.indices, dtype=np.int64)
        found, tp_codes = np.unique(topic_idx << 32 | partitions, return_inverse=True)
        names = topics.dictionary.to_pylist()
        tps = [(names[int(c >> 32)], int(c & 0xFFFFFFFF)) for c in found]
        return cls(names, topic_idx, list(map(Message.value, batch)), offsets, tp_codes.astype(np.int64), tps)

    def by_topic(self) -> list[tuple[str, npt.NDArray[np.int64]]]:
        """(topic, indices of its messages in batch order) per topic."""
        if len(self.topic_names) == 1:
            return [(self.topic_names[0], np.arange(len(self.values), dtype=np.int64))]
        order = np.argsort(self.topic_codes, kind="stable")
        bounds = np.searchsorted(self.topic_codes[order], np.arange(len(self.topic_names) + 1))
        return [(name, order[bounds[i] : bounds[i + 1]]) for i, name in enumerate(self.topic_names)]

    def last_index(self) -> list[int]:
        """Per partition (in `tps` order), the index of its last message in the batch."""
        last = np.full(len(self.tps), -1, dtype=np.int64)
        np.maximum.at(last, self.tp_codes, np.arange(len(self.tp_codes), dtype=np.int64))
        return [int(i) for i in last]

    def next_offsets(self) -> dict[TP, int]:
        nxt = np.full(len(self.tps), -1, dtype=np.int64)
        np.maximum.at(nxt, self.tp_codes, self.offsets)
        return {tp: int(o) + 1 for tp, o in zip(self.tps, nxt, strict=True)}


@dataclass
class KindRows:
    """The valid rows of one data type in a batch (unsorted) and, per row, its partition, offset and position."""

    table: pa.Table
    tp_codes: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]
    positions: npt.NDArray[np.int64]


def _int64(column: pa.ChunkedArray) -> npt.NDArray[np.int64]:
    return np.asarray(column.cast(pa.int64()), dtype=np.int64)


StreamIndex = tuple[list[StreamKey], npt.NDArray[np.int64]]


def _stream_keys(kind: Kind, table: pa.Table) -> StreamIndex:
    """The distinct (kind, exchange, symbol) streams of `table`, sorted, and each row's index into them."""
    if table.num_rows == 0:
        return [], np.zeros(0, dtype=np.int64)
    exchange, symbol = table.column("exchange"), table.column("symbol")
    joined = pc.binary_join_element_wise(exchange, symbol, pa.scalar("\x1f", symbol.type))
    encoded = pc.dictionary_encode(joined).combine_chunks()
    found = [(kind, *s.split("\x1f", 1)) for s in encoded.dictionary.to_pylist()]
    order = sorted(range(len(found)), key=found.__getitem__)
    rank = np.empty(len(found), dtype=np.int64)
    rank[order] = np.arange(len(found))
    keys = [cast(StreamKey, found[i]) for i in order]
    return keys, rank[np.asarray(encoded.indices, dtype=np.int64)]


@dataclass
class BatchPlan:
    rows: dict[Kind, pa.Table]
    detected: list[GapEvent]
    filled: list[GapEvent]
    halts: dict[TP, tuple[int, GapEvent]]
    duplicates: dict[Kind, int]
    # rows filling recorded gaps, per data type, and the snapshot they were found not stored at
    fills: dict[Kind, tuple[pa.Table, int | None]] = field(default_factory=dict)


class Ingester:
    def __init__(self, settings: Settings, layout: TopicLayout | None = None) -> None:
        self.settings = settings
        self.layout = layout or load_layout(settings)
        self.writer_id = f"ingester-{uuid.uuid4().hex[:12]}"
        registry = make_registry(settings.kafka.schema_registry_url, settings.kafka.schemas_dir)
        self.decoder = Decoder(registry)
        self.readers = {t.subject: registry.latest(t.subject) for t in self.layout.topics}
        self.batch_decoder = BatchDecoder(self.decoder, settings.records)
        tables = ensure_tables(open_catalog(settings), settings.catalog.namespace)
        self.tables = {kind: tables[MARKET_TABLES[kind].name] for kind in KINDS}
        ing = settings.ingest
        self.cluster_id = cluster_id(settings.kafka.bootstrap_servers)
        self.writers = {
            kind: TableWriter(t, self.writer_id, self.cluster_id, ing.commit_retries, ing.conflict_backoff_seconds)
            for kind, t in self.tables.items()
        }
        self.grading = GapGrading(ing.gap_alert_threshold, ing.gap_halt_threshold)
        self.gaps = GapStore(tables["sequence_gaps"], self.grading)
        self.tracker = SequenceTracker(int(ing.dedup_window_hours * 3600 * 1_000_000))
        self.positions: dict[TP, int] = {}  # next offset to read per owned partition (where a batch starts)
        self.halted: dict[TP, str] = {}
        self.stats: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._rebalanced = False
        self._needs_reset = False
        self._retry: list[Message] = []  # a batch whose commit failed, kept to be committed again
        self._backoff = ing.retry_backoff_seconds
        self.degradation = Degradation(settings.degradation)
        self._deferred_fills: list[GapEvent] = []
        self._shed_streams: set[StreamKey] = set()
        self._commits: dict[Kind, int] = defaultdict(int)
        self.retention = RetentionPolicy(
            keep_last=ing.keep_snapshots, daily_hours=settings.maintenance.snapshot_retention_hours
        )
        self._last_write_seconds = 0.0
        self._evicted_at = time.monotonic()
        # The snapshot of each table the sequence state is right as of (None: never built).
        self._state_at: dict[Kind, int | None] | None = None
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
        self.dlq = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "enable.idempotence": True})
        self._dlq_errors: list[str] = []
        self._dead_lettered: set[TP_OFFSET] = set()  # dead letters of the batch in hand already delivered

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
        log.info("ingester started", extra={"writer": self.writer_id, "topics": len(self.layout.topics)})
        try:
            while not self._stop.is_set():
                if self._needs_reset:
                    self._try_reset()
                    continue
                batch, self._retry = self._retry or self._collect(), []
                if batch and not self._needs_reset:
                    self._process_safely(batch)
        finally:
            self.consumer.close()
            self.dlq.flush(10)
            log.info("ingester stopped", extra={"writer": self.writer_id, **self.stats})

    # ---- rebalances ------------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalanced = True
        self._retry = []  # re-read from the committed positions instead
        try:
            self._refresh_topic_ids()
            resume = self._resume_offsets(partitions)
            self._rebuild_state()
        except (K2Error, KafkaException) as exc:
            log.error("cannot resume assigned partitions, pausing", extra={"error": str(exc)})
            consumer.assign(partitions)
            consumer.pause(partitions)
            self.positions = {(p.topic, p.partition): -1 for p in partitions}
            self._needs_reset = True
            return
        for p in partitions:
            start = resume[(p.topic, p.partition)]
            p.offset = start if start >= 0 else OFFSET_BEGINNING
            self.positions[(p.topic, p.partition)] = max(start, 0)
        consumer.assign(partitions)
        consumer.resume(partitions)  # a pause from a failed-write reset must not outlive the assignment
        self._needs_reset = False
        log.info("partitions assigned", extra={"count": len(partitions)})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalanced = True
        self._retry = []
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

    def _resume_offsets(self, partitions: list[TopicPartition]) -> dict[TP, int]:
        """Newer of Kafka's committed offset and the table's: the table wins after a crash between commits."""
        committed = self.consumer.committed(partitions, timeout=30)
        stored: dict[TP, int] = {}
        for writer in self.writers.values():
            stored.update(writer.committed_offsets())
        return {
            (c.topic, c.partition): max(c.offset if c.offset >= 0 else -1, stored.get((c.topic, c.partition), -1))
            for c in committed
        }

    def _rebuild_state(self) -> None:
        """Make the sequence state match the tables: catch up with what other writers committed since it was right
        (a rebalance, a failed write), or, the first time or when that snapshot has expired, read the whole window."""
        open_gaps = self.gaps.open_gaps()
        if self._state_at is not None:
            rows = catch_up(self.tracker, self.tables, self._state_at, open_gaps)
            if rows is not None:
                self._state_at = {kind: t.metadata.current_snapshot_id for kind, t in self.tables.items()}
                log.info("sequence state caught up", extra={"keys_read": rows, "streams": len(self.tracker.streams)})
                return
        for table in self.tables.values():
            table.refresh()
        state_at = {kind: t.metadata.current_snapshot_id for kind, t in self.tables.items()}
        rows = rebuild(self.tracker, self.tables, open_gaps, datetime.now(UTC))
        self._state_at = state_at
        log.info("sequence state rebuilt", extra={"keys_read": rows, "streams": len(self.tracker.streams)})

    def _try_reset(self) -> None:
        """After a failed write: wait out the backoff, rebuild the state from the table and keep the failed batch
        to commit again (no rewind: a seek on a paused or not yet fetching partition is refused). While this fails,
        the breaker stays open and nothing new is consumed."""
        self.consumer.pause(self.consumer.assignment())
        if self.degradation.failures:
            self._idle(self._backoff)
            self._backoff = min(self._backoff * 2, self.settings.ingest.max_backoff_seconds)
        self.degradation.probing()
        self._export_state()
        # The assignment as it is now: a rebalance during the wait may have moved partitions away, and a partition
        # this ingester no longer owns must never be written (its new owner commits it; we would fence ourselves).
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        owned = {(p.topic, p.partition) for p in assignment}
        for tp in [tp for tp in self.positions if tp not in owned]:
            del self.positions[tp]
        self._retry = [m for m in self._retry if (m.topic(), m.partition()) in owned]
        try:
            self._rebuild_state()
            resume = self._resume_offsets(assignment)
            for p in assignment:
                tp = (p.topic, p.partition)
                self.positions[tp] = max(resume.get(tp, -1), self.positions.get(tp, -1), 0)
        except (K2Error, KafkaException) as exc:
            log.warning("reset failed, backing off", extra={"error": str(exc), "wait_s": self._backoff})
            self.degradation.write_failed()
            self._export_state()
            return
        self.consumer.resume([p for p in assignment if (p.topic, p.partition) not in self.halted])
        self._needs_reset = False
        log.info("ingester resumed after reset")

    def _idle(self, seconds: float) -> None:
        """Wait while serving rebalance callbacks; paused partitions deliver nothing, and a message from a
        partition assigned meanwhile joins the batch to commit."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            msg = self.consumer.poll(min(remaining, 0.5))
            if msg is not None and msg.error() is None:
                self._retry.append(msg)

    # ---- the batch loop --------------------------------------------------------------------------------------

    def _collect(self) -> list[Message]:
        ing = self.settings.ingest
        scale = self.degradation.batch_scale()
        max_rows = ing.batch_max_rows * scale
        deadline = time.monotonic() + ing.batch_max_seconds * scale
        batch: list[Message] = []
        while len(batch) < max_rows and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msgs = self.consumer.consume(min(max_rows - len(batch), 10_000), min(remaining, 0.5))
            if self._rebalanced:
                # The assignment inside that call re-positioned every partition at its committed offset:
                # what was collected before is stale, what this call returned is already the new start.
                self._rebalanced = False
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

    def _process_safely(self, batch: list[Message]) -> None:
        try:
            lag = self._process(batch)
        except _RECOVERABLE as exc:
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
            self._retry = batch
            self._needs_reset = True
        else:
            self._dead_lettered.clear()
            self._backoff = self.settings.ingest.retry_backoff_seconds
            self.degradation.write_succeeded()
            before = self.degradation.level
            level = self.degradation.observe(lag, self._last_write_seconds, time.monotonic())
            if level != before:
                log.warning(
                    "degradation level changed",
                    extra={"from": before.name, "to": level.name, "lag_s": lag, "write_s": self._last_write_seconds},
                )
        self._export_state()

    def _decode(
        self, batch: list[Message], view: BatchView, now: datetime
    ) -> tuple[dict[Kind, KindRows], list[tuple[Message, str]]]:
        """Decode and validate each topic's messages as one block (k2_stream.decode), then shed non-critical
        symbols at degradation level 3. Returns the valid rows per data type and the dead letters, in batch order."""
        parts: dict[Kind, list[tuple[pa.Table, npt.NDArray[np.int64]]]] = defaultdict(list)
        dead: list[tuple[int, str]] = []
        for topic, idx in view.by_topic():
            metrics.MESSAGES_CONSUMED.labels(topic).inc(len(idx))
            spec = self.layout.by_name[topic]
            reader_id, reader = self.readers[spec.subject]
            values = view.values if len(idx) == len(batch) else [view.values[i] for i in idx.tolist()]
            out = self.batch_decoder.decode(
                spec.kind, spec.exchange, reader_id, reader, values, MARKET_TABLES[spec.kind].arrow_schema, now
            )
            self.stats["decoded_per_message"] += out.per_message
            dead.extend((int(idx[p]), reason) for p, reason in out.dead)
            table, positions = out.table, idx[out.positions]
            if self.degradation.level >= Level.SHED_SYMBOLS and table.num_rows:
                table, positions = self._shed(spec.kind, spec.exchange, table, positions, dead)
            parts[spec.kind].append((table, positions))
        rows: dict[Kind, KindRows] = {}
        for kind, chunks in parts.items():
            positions = np.concatenate([p for _, p in chunks])
            rows[kind] = KindRows(
                pa.concat_tables([t for t, _ in chunks]), view.tp_codes[positions], view.offsets[positions], positions
            )
        dead.sort(key=lambda d: d[0])
        return rows, [(batch[i], reason) for i, reason in dead]

    def _shed(
        self,
        kind: Kind,
        exchange: str,
        table: pa.Table,
        positions: npt.NDArray[np.int64],
        dead: list[tuple[int, str]],
    ) -> tuple[pa.Table, npt.NDArray[np.int64]]:
        symbols = table.column("symbol")
        shed = [s for s in pc.unique(symbols).to_pylist() if self.degradation.sheds(exchange, s)]
        if not shed:
            return table, positions
        # The shed numbers will show as a gap once the symbol is ingested again: recorded, but never a halt.
        self._shed_streams.update((kind, exchange, s) for s in shed)
        mask = np.asarray(pc.is_in(symbols, value_set=pa.array(shed, symbols.type)), dtype=np.bool_)
        reason = f"shed: degradation level {int(self.degradation.level)} keeps critical symbols only"
        dead.extend((int(p), reason) for p in positions[mask])
        count = int(mask.sum())
        metrics.SHED_MESSAGES.labels(exchange).inc(count)
        self.stats["shed"] += count
        return table.filter(pa.array(~mask)), positions[~mask]

    def _load_history(
        self,
        streams: dict[Kind, tuple[list[StreamKey], npt.NDArray[np.int64]]],
        times: dict[Kind, npt.NDArray[np.int64]],
    ) -> None:
        """Rows older than the tracker's horizon (a replay or import of history) are checked against what the tables
        hold for their stream-days: load those days first. Live rows never need this."""
        wanted: set[tuple[StreamKey, int]] = set()
        for kind, (keys, key_idx) in streams.items():
            old = np.flatnonzero(times[kind] < self.tracker.horizon_us)
            if old.size == 0:
                continue
            days = times[kind][old] // DAY_US
            for k, day in set(zip(key_idx[old].tolist(), days.tolist(), strict=True)):
                key = keys[k]
                if not self.tracker.covers(key, day * DAY_US):
                    wanted.add((key, day))
        if wanted:
            rows = load_history(self.tracker, self.tables, wanted, self.gaps.open_gaps(), datetime.now(UTC))
            self.stats["history_days_loaded"] += len(wanted)
            log.info("history loaded for older rows", extra={"stream_days": len(wanted), "keys_read": rows})

    def _plan(self, decoded: dict[Kind, KindRows], tps: list[TP], now_us: int) -> tuple[BatchPlan, dict[Kind, Any]]:
        """Classify every row (k2_core.ingest.sequence.observe_batch: whole runs at once, row by row only for streams
        that need it); a gap past the halt threshold cuts its partition at the revealing message and the plan is
        recomputed without it (repeat until stable)."""
        halts: dict[TP, tuple[int, GapEvent]] = {}
        streams = {kind: _stream_keys(kind, rows.table) for kind, rows in decoded.items()}
        times = {kind: _int64(rows.table.column("exchange_timestamp")) for kind, rows in decoded.items()}
        self._load_history(streams, times)
        while True:
            txns: dict[Kind, Any] = {}
            plan = BatchPlan({}, [], [], halts, defaultdict(int))
            new_halt = False
            for kind in sorted(decoded):  # the per-row order: data type, exchange, symbol, sequence, offset
                rows = decoded[kind]
                keys, key_idx = streams[kind]
                seqs = _int64(rows.table.column("exchange_sequence_number"))
                selected = np.arange(rows.table.num_rows)
                if halts:
                    cut = np.array([halts[tp][0] if tp in halts else np.iinfo(np.int64).max for tp in tps])
                    selected = np.flatnonzero(rows.offsets < cut[rows.tp_codes])
                ts = times[kind]
                # per stream in exchange-time order, so rows of two sessions in one batch fall in their own sessions
                order = selected[
                    np.lexsort(
                        (
                            rows.positions[selected],
                            rows.offsets[selected],
                            seqs[selected],
                            ts[selected],
                            key_idx[selected],
                        )
                    )
                ]
                if order.size == 0:
                    plan.rows[kind] = rows.table.slice(0, 0)
                    continue
                txn = txns[kind] = self.tracker.begin()
                verdicts = observe_batch(
                    txn,
                    keys,
                    key_idx[order],
                    seqs[order],
                    ts[order],
                    now_us,
                    # a session's missing head never halts: the rows after it are in order
                    stops=lambda gap: (
                        not gap.head and self.grading(gap.missing) == HALT and gap.key not in self._shed_streams
                    ),
                )
                if verdicts.halt is not None:
                    at, gap = verdicts.halt
                    row = order[at]
                    tp, offset = tps[rows.tp_codes[row]], int(rows.offsets[row])
                    halts[tp] = (min(offset, halts.get(tp, (offset, gap))[0]), gap)
                    new_halt = True
                    break
                keep = np.zeros(rows.table.num_rows, dtype=np.bool_)
                keep[order[verdicts.codes != DUPLICATE]] = True
                fills = order[verdicts.codes == FILL]
                if fills.size:  # a late number may have been written meanwhile by the gap backfill job
                    late = rows.table.take(pa.array(fills))
                    stored, checked_at = already_stored(self.tables[kind], late)
                    keep[fills[stored]] = False
                    plan.fills[kind] = (late.filter(pa.array(~stored)), checked_at)
                plan.rows[kind] = rows.table if keep.all() else rows.table.filter(pa.array(keep))
                plan.duplicates[kind] += int(order.size - keep.sum())
                self.stats["streams_fast"] += verdicts.fast_streams
                self.stats["streams_row_by_row"] += verdicts.slow_streams
            if new_halt:
                continue
            for txn in txns.values():
                plan.detected.extend(e for e in txn.events if not e.filled)
                plan.filled.extend(e for e in txn.events if e.filled)
            # A halting gap is recorded too: restarting the ingester is the operator's go-ahead to pass it.
            plan.detected.extend(gap for _, gap in halts.values())
            return plan, txns

    def _process(self, batch: list[Message]) -> float:
        """Commit one batch; returns the consumer lag in seconds it measured."""
        now = datetime.now(UTC)
        view = BatchView.of(batch)
        lag = self._measure_lag(batch, view, now)
        decoded, dead = self._decode(batch, view, now)
        plan, txns = self._plan(decoded, view.tps, to_us(now))
        next_offsets = view.next_offsets()
        for tp, (offset, _) in plan.halts.items():
            next_offsets[tp] = offset
        dead = [(m, r) for m, r in dead if not self._beyond_halt(m, plan)]

        # Dead letters first (at least once): if anything below fails, the batch is re-read and re-sent.
        self._send_dead_letters(dead)
        if plan.detected:
            shed = [g for g in plan.detected if g.key in self._shed_streams]
            self.gaps.record_detected(plan.detected, now, reasons={id(g): SHED_GAP_REASON for g in shed})
            self._shed_streams.difference_update(g.key for g in shed)
        self._last_write_seconds = 0.0
        for kind in KINDS:
            offsets = {tp: o for tp, o in next_offsets.items() if self.layout.by_name[tp[0]].kind == kind}
            rows = plan.rows.get(kind)
            written = rows.num_rows if rows is not None else 0
            if rows is not None and written:
                table_def = MARKET_TABLES[kind]
                data = table_def.sort(rows)
                started = time.perf_counter()
                # Every owned partition of this data type rides along at its position, so the newest snapshot holds
                # each one's offset and snapshot expiry never keeps a long chain behind an idle partition.
                covered = {**self._carried(kind, offsets), **offsets}
                fills, checked_at = plan.fills.get(kind, (None, None))
                snapshot_id = self.writers[kind].append(
                    data, covered, {tp: self.positions[tp] for tp in covered}, fills=fills, checked_at=checked_at
                )
                self._advance_state_at(kind, snapshot_id)
                elapsed = time.perf_counter() - started
                self._last_write_seconds = max(self._last_write_seconds, elapsed)
                metrics.WRITE_DURATION.labels(table_def.name).observe(elapsed)
                metrics.ROWS_PER_COMMIT.labels(table_def.name).observe(written)
                metrics.ROWS_WRITTEN.labels(table_def.name).inc(written)
            if kind in txns:
                txns[kind].commit()
            self.positions.update(offsets)
            self.stats[f"{kind}_written"] += written
            self.stats[f"{kind}_duplicates"] += plan.duplicates.get(kind, 0)
            metrics.DUPLICATES.labels(MARKET_TABLES[kind].name).inc(plan.duplicates.get(kind, 0))
        self._deferred_fills.extend(plan.filled)
        if self._deferred_fills and not self.degradation.skip_non_critical():
            try:
                self.gaps.record_filled(self._deferred_fills, now)
                self._deferred_fills = []
            except WriteError as exc:  # the rows are safe; an open gap whose rows exist is closed by backfill
                log.warning("could not mark gaps filled yet", extra={"error": str(exc)})
        self._report_gaps(plan.detected, plan.halts)
        self._commit_kafka(next_offsets)
        self._retain([kind for kind in KINDS if (rows := plan.rows.get(kind)) is not None and rows.num_rows])
        self._evict(now)
        return lag

    def _carried(self, kind: Kind, offsets: dict[TP, int]) -> dict[TP, int]:
        """Owned partitions of `kind` this batch has nothing from, at their committed positions."""
        return {
            tp: pos
            for tp, pos in self.positions.items()
            if pos >= 0 and tp not in offsets and self.layout.by_name[tp[0]].kind == kind
        }

    def _advance_state_at(self, kind: Kind, snapshot_id: int | None) -> None:
        """Our own commit keeps the state right as of it when nobody committed between (its parent is the state's
        snapshot); otherwise the next catch-up reads what the other writer added (and our rows again: harmless)."""
        if self._state_at is None or snapshot_id is None:
            return
        snapshot = self.tables[kind].metadata.snapshot_by_id(snapshot_id)
        if snapshot is not None and snapshot.parent_snapshot_id == self._state_at.get(kind):
            self._state_at[kind] = snapshot_id

    def _evict(self, now: datetime) -> None:
        """Once a minute, let sessions and loaded days older than the window age out of the sequence state (deferred
        at degradation level 2 and above)."""
        if time.monotonic() - self._evicted_at < EVICT_EVERY_SECONDS or self.degradation.skip_non_critical():
            return
        self._evicted_at = time.monotonic()
        dropped = self.tracker.evict(to_us(now))
        if dropped:
            log.info("sequence state aged out", extra={"sessions": dropped, "streams": len(self.tracker.streams)})

    def _retain(self, appended: list[Kind]) -> None:
        """Every `retention_every_commits` appends to a table, thin its snapshots (k2_core.upkeep.retention), so commit
        latency stays flat at any table age. Best effort: the batch is already committed."""
        every = self.settings.ingest.retention_every_commits
        if not every:
            return
        for kind in appended:
            self._commits[kind] += 1
            if self._commits[kind] % every:
                continue
            started = time.perf_counter()
            try:
                result = apply_retention(self.tables[kind], datetime.now(UTC), self.retention)
            except K2Error as exc:
                log.warning("snapshot retention failed; retried later", extra={"table": kind, "error": str(exc)})
                continue
            log.info(
                "snapshot retention applied",
                extra={
                    "table": kind,
                    "expired": result.expired,
                    "retained": result.retained,
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )

    def _measure_lag(self, batch: list[Message], view: BatchView, now: datetime) -> float:
        """Age of the newest message per partition (from its Kafka timestamp); partitions with nothing new
        are caught up. Message lag uses the cached high watermark, which the embedded broker may misreport."""
        newest: dict[TP, tuple[int, int]] = {}
        for tp, i in zip(view.tps, view.last_index(), strict=True):
            kind, ts = batch[i].timestamp()
            newest[tp] = (ts if kind else 0, int(view.offsets[i]))
        return self._export_lag(newest, now)

    def _export_lag(self, newest: dict[TP, tuple[int, int]], now: datetime) -> float:
        """Set the lag gauges of every owned partition from (newest Kafka timestamp ms, its offset) per partition
        that had messages; returns the worst lag in seconds."""
        now_ms = to_us(now) // 1000
        worst = 0.0
        for tp in self.positions:
            ts, offset = newest.get(tp, (0, -1))
            lag = max(0.0, (now_ms - ts) / 1000) if ts else 0.0
            worst = max(worst, lag)
            metrics.CONSUMER_LAG_SECONDS.labels(tp[0], str(tp[1])).set(lag)
            if offset >= 0:
                try:
                    _, high = self.consumer.get_watermark_offsets(TopicPartition(tp[0], tp[1]), cached=True)
                except KafkaException:
                    continue
                metrics.CONSUMER_LAG_MESSAGES.labels(tp[0], str(tp[1])).set(max(0, high - offset - 1))
        return worst

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

    def _beyond_halt(self, m: Message, plan: BatchPlan) -> bool:
        halt = plan.halts.get((m.topic() or "", m.partition() or 0))
        return halt is not None and (m.offset() or 0) >= halt[0]

    def _send_dead_letters(self, dead: Iterable[tuple[Message, str]]) -> None:
        """Produce the batch's dead letters and wait for their delivery. A batch retried after a failed write sends
        only those not delivered before (`_dead_lettered` is cleared once the batch commits)."""
        sent = shed = 0
        delivered: list[TP_OFFSET] = []
        for m, reason in dead:
            where = (m.topic() or "", m.partition() or 0, m.offset() or 0)
            if where in self._dead_lettered:
                continue
            delivered.append(where)
            topic = m.topic() or ""
            body, cut = dead_letter_body(m.value())
            self._produce_dead_letter(
                self.layout.by_name[topic].dlq,
                key=m.key(),
                value=body,
                headers={
                    "k2.error": reason.encode(),
                    "k2.error.class": reason_class(reason).encode(),
                    "k2.source.topic": topic.encode(),
                    "k2.source.partition": str(m.partition()).encode(),
                    "k2.source.offset": str(m.offset()).encode(),
                    "k2.failed_at": datetime.now(UTC).isoformat().encode(),
                    **cut,
                },
            )
            metrics.DLQ_MESSAGES.labels(topic, reason_class(reason)).inc()
            if not reason.startswith("shed:"):  # shedding is summarised once per batch below
                log.warning("message dead-lettered", extra={"topic": topic, "offset": m.offset(), "reason": reason})
            shed += reason.startswith("shed:")
            sent += 1
        if shed:
            log.warning("non-critical messages shed to the DLQ", extra={"count": shed})
        if sent:
            if self.dlq.flush(30):
                raise WriteError("dead-letter messages not delivered; batch not committed")
            if self._dlq_errors:
                errors, self._dlq_errors = self._dlq_errors, []
                raise WriteError(f"{len(errors)} dead letters refused by the broker ({errors[0]}); batch not committed")
            self._dead_lettered.update(delivered)
            self.stats["dead_lettered"] += sent

    def _produce_dead_letter(
        self, topic: str, key: bytes | None, value: bytes | None, headers: dict[str, str | bytes | None]
    ) -> None:
        """Queue one dead letter; its delivery is confirmed by the flush before the batch commits."""

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._dlq_errors.append(str(err))

        while True:
            try:
                self.dlq.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
                return
            except BufferError:
                self.dlq.poll(0.1)  # the local queue is full: let deliveries drain
            except KafkaException as exc:
                raise WriteError(f"cannot dead-letter to {topic}: {exc}") from exc

    def _report_gaps(self, detected: list[GapEvent], halts: dict[TP, tuple[int, GapEvent]]) -> None:
        halting = {id(g) for _, g in halts.values()}
        for gap in detected:
            data_type, exchange, symbol = gap.key
            severity = self.grading(gap.missing)
            metrics.SEQUENCE_GAPS.labels(exchange, severity).inc()
            self.stats["gaps"] += 1
            extra = {
                "data_type": data_type,
                "exchange": exchange,
                "symbol": symbol,
                "first_missing": gap.first,
                "last_missing": gap.last,
                "missing": gap.missing,
                "severity": severity,
            }
            if id(gap) in halting:
                continue  # logged below, with the partition it stopped
            if severity == WARNING:
                log.warning("sequence gap", extra=extra)
            else:
                log.error("sequence gap alert", extra=extra)
        for tp, (offset, gap) in halts.items():
            reason = (
                f"gap of {gap.missing} in {gap.key[0]} {gap.key[1]}:{gap.key[2]} (sequence {gap.first}..{gap.last}) "
                f"exceeds {self.grading.halt_threshold}; partition {tp[0]}[{tp[1]}] stopped at offset {offset}. "
                "The gap is recorded in sequence_gaps; restart the ingester to continue past it."
            )
            self.halted[tp] = reason
            self.consumer.pause([TopicPartition(tp[0], tp[1])])
            log.critical("partition halted", extra={"topic": tp[0], "partition": tp[1], "reason": reason})
        metrics.HALTED_PARTITIONS.set(len(self.halted))

    def _commit_kafka(self, offsets: dict[TP, int]) -> None:
        """Best effort: the table already holds these offsets, so a failed Kafka commit only costs a re-read
        that dedup absorbs."""
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            log.warning("kafka offset commit failed; offsets are safe in the table", extra={"error": str(exc)})
