"""The checkpoint: one prepared batch committed in the only order that keeps ingestion exactly once.

1. Dead letters, delivered: a refused message is on its DLQ before anything past it is committed.
2. Detected gaps: recorded before the data that reveals them, so a crash never loses one (the replayed batch finds
   it recorded).
3. Data: one fenced append per table, carrying the offsets it covers (k2_core.ingest.writer). From here on the batch
   is in: the table's offsets are the resume point (k2_core.ingest.resume).
4. State: the sequence state merges what the plan staged, only now, so a failed commit leaves it as the table is.
5. Kafka offsets: best effort, since the table already holds them.

In coordinated mode (ingest.commit_mode) step 3 writes the data files only and hands them to the elected committer
(k2_stream.control, k2_core.ingest.coordination), waiting for its verdict: the batch is in once the committer's
snapshot holds it, and a refused batch raises as a fenced one does (the ingester resumes from the table).

Steps 1-3 (`write`) and 4-5 (`finish`) are apart so the ingester can overlap a batch's write with the next batch's
consume and decode (k2_stream.pipeline); `commit` is both in a row. Step 3 goes table by table, then step 4. Any
failure before step 5 raises, and the ingester commits the same batch again after a reset (which brings the state
up to every table, including one committed before the failure); gap fills and halts come after the data (a fill
lost to a crash leaves a gap open whose rows are stored, which the backfill closes). This is quix-streams'
checkpoint idea (flush the sinks, then commit the offsets) with Iceberg as the sink.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
from confluent_kafka import Consumer, KafkaException, TopicPartition
from sqlalchemy.exc import SQLAlchemyError

from k2_core.exceptions import CommitRejectedError, WriteError
from k2_core.ingest.coordination import CommitRequest
from k2_core.ingest.degradation import Degradation
from k2_core.ingest.gaps import SHED_GAP_REASON, WARNING, GapGrading, GapStore
from k2_core.ingest.plan import BatchPlan, Halt
from k2_core.ingest.sequence import GapEvent, StreamKey
from k2_core.ingest.state import SequenceState
from k2_core.ingest.writer import TableWriter
from k2_core.lake.data_files import encode_data_file
from k2_core.lake.files import delete_uncommitted, write_files
from k2_core.lake.offsets import TopicPartition as TP
from k2_core.logging import get_logger
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import KINDS, Kind, TopicLayout
from k2_stream import metrics
from k2_stream.control import CommitClient
from k2_stream.dead_letters import DeadLetterSender
from k2_stream.prepare import PreparedBatch

log = get_logger(__name__)


@dataclass
class Written:
    """What `Checkpoint.write` committed: per table (in commit order) its snapshot (None: no rows) and the offsets it
    carries, and the slowest append in seconds."""

    tables: list[tuple[Kind, int | None, dict[TP, int]]] = field(default_factory=list)
    slowest: float = 0.0


class Checkpoint:
    """Long-lived: it holds what outlives one batch (gap fills not recorded yet, dead letters already delivered).
    `positions` and `halted` are the ingester's own dicts: each table's commit moves its partitions' positions, and
    a halt pauses its partition."""

    def __init__(
        self,
        *,
        layout: TopicLayout,
        consumer: Consumer,
        dead_letters: DeadLetterSender,
        gaps: GapStore,
        grading: GapGrading,
        writers: dict[Kind, TableWriter],
        state: SequenceState,
        degradation: Degradation,
        positions: dict[TP, int],
        halted: dict[TP, str],
        shed_streams: set[StreamKey],
        stats: MutableMapping[str, int],
        coordinator: CommitClient | None = None,
    ) -> None:
        """`coordinator`: hand the data to the elected committer (coordinated mode) instead of appending it."""
        self.layout = layout
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.gaps = gaps
        self.grading = grading
        self.writers = writers
        self.state = state
        self.degradation = degradation
        self.positions = positions
        self.halted = halted
        self.shed_streams = shed_streams
        self.stats = stats
        self.coordinator = coordinator
        self._unrecorded_fills: list[GapEvent] = []  # deferred under load, or their write failed

    def commit(self, batch: PreparedBatch, now: datetime) -> float:
        """Commit `batch`; returns the slowest table append, in seconds (what degradation watches)."""
        return self.finish(batch, self.write(batch, now), now)

    def write(self, batch: PreparedBatch, now: datetime) -> Written:
        """Steps 1-3. They touch neither the consumer nor the sequence state, nor the positions (they read them),
        so the ingester's pipeline runs them on its writer thread while the next batch is consumed and decoded."""
        plan = batch.plan
        self.dead_letters.send(batch.dead)  # 1
        self._record_detected(plan.detected, now)  # 2
        written = Written()
        for kind in KINDS:
            offsets = {tp: o for tp, o in batch.offsets.items() if self.layout.by_name[tp[0]].kind == kind}
            snapshot_id, seconds = self._append(kind, plan, offsets)  # 3
            written.tables.append((kind, snapshot_id, offsets))
            written.slowest = max(written.slowest, seconds)
        return written

    def finish(self, batch: PreparedBatch, written: Written, now: datetime) -> float:
        """Steps 4-5, once `write` returned: the state takes the plan, the positions move, Kafka gets the offsets.
        Returns the slowest table append, in seconds. A `write` that raised is not finished: the ingester resets, which
        brings the state and the positions up to the table (any table it did commit included)."""
        plan = batch.plan
        for kind, snapshot_id, offsets in written.tables:
            self.state.committed(kind, plan.txns.get(kind), snapshot_id, self.writers[kind].foreign)  # 4
            self.positions.update(offsets)
        self._record_filled(plan.filled, now)
        self._report_gaps(plan.detected, plan.halts)
        self._commit_offsets(batch.offsets)  # 5
        self.dead_letters.batch_committed()
        return written.slowest

    def _record_detected(self, detected: list[GapEvent], now: datetime) -> None:
        if not detected:
            return
        shed = [g for g in detected if g.key in self.shed_streams]
        self.gaps.record_detected(detected, now, reasons={id(g): SHED_GAP_REASON for g in shed})
        self.shed_streams.difference_update(g.key for g in shed)

    def _append(self, kind: Kind, plan: BatchPlan, offsets: dict[TP, int]) -> tuple[int | None, float]:
        """One fenced append of `kind`'s rows; returns its snapshot (None if nothing to write) and its seconds."""
        rows = plan.rows.get(kind)
        written = rows.num_rows if rows is not None else 0
        table_def = MARKET_TABLES[kind]
        snapshot_id, elapsed = None, 0.0
        started = time.perf_counter()
        if self.coordinator is not None:
            # Every batch that moves a partition is handed in, rows or not (all duplicates, all dead letters): the
            # committer accepts a range only from the offset the table holds, so the table must follow each move.
            data = table_def.sort(rows) if rows is not None and written else None
            snapshot_id = self._hand_in(self.coordinator, kind, data, offsets)
            elapsed = time.perf_counter() - started
        elif rows is not None and written:
            data = table_def.sort(rows)
            # Every owned partition of this data type rides along at its position, so the newest snapshot holds
            # each one's offset and snapshot expiry never keeps a long chain behind an idle partition (in
            # coordinated mode the committer carries every partition's offset in each snapshot).
            covered = {**self._carried(kind, offsets), **offsets}
            fills, checked_at = plan.fills.get(kind, (None, None))
            snapshot_id = self.writers[kind].append(
                data,
                covered,
                {tp: self.positions[tp] for tp in covered},
                fills=fills,
                checked_at=checked_at,
                planned_at=self.state.at(kind),
                recheck=True,
            )
            elapsed = time.perf_counter() - started
        if written:
            metrics.WRITE_DURATION.labels(table_def.name).observe(elapsed)
            metrics.ROWS_PER_COMMIT.labels(table_def.name).observe(written)
            metrics.ROWS_WRITTEN.labels(table_def.name).inc(written)
        self.stats[f"{kind}_written"] += written
        self.stats[f"{kind}_duplicates"] += plan.duplicates.get(kind, 0)
        metrics.DUPLICATES.labels(table_def.name).inc(plan.duplicates.get(kind, 0))
        return snapshot_id, elapsed

    def _hand_in(
        self, coordinator: CommitClient, kind: Kind, data: pa.Table | None, offsets: dict[TP, int]
    ) -> int | None:
        """Coordinated mode: write `data` as uncommitted files and have the committer commit them with each
        partition's range [position, offset); returns the committer's snapshot (None: nothing to hand in). A
        refused request's files are deleted when the committer found them in no snapshot, else left to orphan-file
        cleanup. Partitions the batch does not move past their position (messages re-read after a reset) are
        left out: their offsets are stored already. A request refused because rows were stored meanwhile raises
        too: the ingester plans the batch again from the table."""
        writer = self.writers[kind]
        ranges = {tp: (self.positions[tp], end) for tp, end in offsets.items() if end > self.positions[tp]}
        if not ranges:
            return None
        files, schema_id = [], None
        if data is not None:
            data = writer.fit(data)
            schema_id = writer.table.metadata.current_schema_id  # the schema the files are written in
            try:
                files = write_files(writer.table, data)
            except OSError as exc:
                raise WriteError(f"writing data files for {writer.table.name()} failed: {exc}") from exc
        request = CommitRequest(
            request_id=uuid.uuid4().hex,
            worker=writer.writer_id,
            generation=coordinator.generation,
            table=MARKET_TABLES[kind].name,
            ranges=ranges,
            files=[f.file_path for f in files],
            topic_ids={t: i for t, i in writer.index.topic_ids.items() if any(t == tp[0] for tp in offsets)},
            data_files=[
                entry
                for f in files
                if (entry := encode_data_file(f, writer.table.metadata.default_spec_id)) is not None
            ],
            planned_at=self.state.at(kind),  # an import or the backfill may store some of the rows before the commit
            recheck=True,
            schema_id=schema_id,
        )
        try:
            verdict = coordinator.submit(request)
        except CommitRejectedError as exc:
            if exc.files_uncommitted:
                delete_uncommitted(writer.table, files)
            raise
        try:
            writer.table.refresh()  # the committer's snapshot, for the sequence state's bookkeeping (step 4)
        except (OSError, SQLAlchemyError) as exc:
            log.warning("cannot refresh after a coordinated commit", extra={"error": str(exc)})
        return verdict.snapshot_id

    def _carried(self, kind: Kind, offsets: dict[TP, int]) -> dict[TP, int]:
        """Owned partitions of `kind` this batch has nothing from, at their committed positions."""
        return {
            tp: pos
            for tp, pos in self.positions.items()
            if pos >= 0 and tp not in offsets and self.layout.by_name[tp[0]].kind == kind
        }

    def _record_filled(self, filled: list[GapEvent], now: datetime) -> None:
        """Best effort, and deferred at degradation level 2 and above: the rows are safe, and an open gap whose
        rows exist is closed by the backfill."""
        self._unrecorded_fills.extend(filled)
        if not self._unrecorded_fills or self.degradation.skip_non_critical():
            return
        try:
            self.gaps.record_filled(self._unrecorded_fills, now)
            self._unrecorded_fills = []
        except WriteError as exc:
            log.warning("could not mark gaps filled yet", extra={"error": str(exc)})

    def _report_gaps(self, detected: list[GapEvent], halts: dict[TP, Halt]) -> None:
        halting = {id(halt.gap) for halt in halts.values()}
        for gap in detected:
            data_type, exchange, symbol = gap.key
            severity = self.grading(gap.missing)
            metrics.SEQUENCE_GAPS.labels(exchange, severity).inc()
            self.stats["gaps"] += 1
            if id(gap) in halting:
                continue  # logged below, with the partition it stopped
            extra = {
                "data_type": data_type,
                "exchange": exchange,
                "symbol": symbol,
                "first_missing": gap.first,
                "last_missing": gap.last,
                "missing": gap.missing,
                "severity": severity,
            }
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

    def _commit_offsets(self, offsets: dict[TP, int]) -> None:
        """Best effort: the table already holds these offsets, so a failed Kafka commit only costs a re-read
        that dedup absorbs."""
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            log.warning("kafka offset commit failed; offsets are safe in the table", extra={"error": str(exc)})
