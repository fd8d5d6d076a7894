"""`k2 import`: historical files straight into the Iceberg tables, by the ingester's own rules, no Kafka on the way.

A file is read in chunks (k2_core.ingest.formats); each chunk goes through what a micro-batch goes through: the record
rules (k2_core.ingest.validate), the sequence plan against what the tables hold for those stream-days (duplicates
dropped, gaps found and graded, late numbers filling recorded gaps), the gaps recorded, then one fenced append. So a
day imported and the same day streamed give the same rows and the same gap records. Gaps never halt an import: they
are recorded and graded, and the import goes on.

Progress rides in the data's own snapshots, like the ingester's Kafka offsets: each append records, under the file's
id (`file:<sha256 of its bytes>`), how many of the file's rows precede the next chunk, and its last append marks the
file complete. A crash mid-import resumes after the last committed chunk (and the dedup absorbs a chunk that was
being committed); a file already complete is skipped without being read. Two imports of the same file fence each
other like two ingesters of one partition, and an ingester writing the same tables re-checks its rows against the
import's files before it commits (k2_core.ingest.writer), so a row both see is stored once.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from queue import Full, Queue
from typing import Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from k2_core.exceptions import K2Error
from k2_core.ingest.dedup import to_us
from k2_core.ingest.formats import BadRow, Chunk, FileFormat, ReadOptions
from k2_core.ingest.gaps import GapGrading, GapStore
from k2_core.ingest.plan import BatchPlan, KindRows, history_wanted, plan_batch
from k2_core.ingest.reference import ReferenceWatcher, keep_mask
from k2_core.ingest.state import SequenceState
from k2_core.ingest.validate import reasons, surely_valid
from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.lake.offsets import TopicPartition
from k2_core.logging import get_logger
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import KINDS, Kind
from k2_core.settings import Settings

log = get_logger(__name__)

IMPORT_CLUSTER = "k2-import"  # the "cluster" of import progress in snapshot summaries, apart from any Kafka cluster
IMPORT_FILE_PROPERTY = "k2.import.file"  # the file name an import snapshot came from, for people reading history
ROWS, COMPLETE = 0, 1  # the file's "partitions": rows read through the last committed chunk; 1 once complete
_HASH_BLOCK = 1 << 20
T = TypeVar("T")
_NEVER_HALT = 2**62


def file_id(path: Path) -> str:
    """The file's identity for resuming and skipping: its content, not its name (a renamed dump is the same file)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                digest.update(block)
    except OSError as exc:
        raise K2Error(f"cannot read {path}: {exc}") from exc
    return f"file:{digest.hexdigest()}"


@dataclass
class Rejected:
    """A row read well but refused by the record rules: where it is (symbol, sequence number) and why."""

    symbol: str
    sequence: int
    reason: str


@dataclass
class FileReport:
    path: Path
    kind: Kind | Literal["books"]
    skipped: bool = False  # already imported completely
    resumed_at: int = 0  # rows of the file before the first chunk read this time
    rows_read: int = 0  # data rows read this time (good and bad)
    written: int = 0
    duplicates: int = 0
    gaps: int = 0
    filled: int = 0  # numbers of recorded gaps this file filled
    bad: list[BadRow] = field(default_factory=list)  # rows the format could not read
    rejected: list[Rejected] = field(default_factory=list)  # rows the record rules refused
    commits: int = 0
    seconds: float = 0.0
    span: tuple[datetime, datetime] | None = None  # the first and last time of the rows read this time (book files)

    def resume(self, stored: Mapping[TopicPartition, int], source: str) -> int | None:
        """Where this file's import starts, from the progress its table holds under the file's content hash
        (`source`): the rows committed by an earlier run, or None when the file was imported completely (skipped)."""
        if stored.get((source, COMPLETE)) == 1:
            self.skipped = True
            log.info("file already imported, skipped", extra={"path": str(self.path), "file_id": source})
            return None
        self.resumed_at = stored.get((source, ROWS), 0)
        return self.resumed_at

    def log_done(self, fmt: str) -> None:
        """The file's one log line once imported (trades, quotes or books alike)."""
        log.info(
            "file imported",
            extra={
                "path": str(self.path),
                "format": fmt,
                "kind": self.kind,
                "rows_read": self.rows_read,
                "written": self.written,
                "duplicates": self.duplicates,
                "gaps": self.gaps,
                "bad": len(self.bad),
                "rejected": len(self.rejected),
                "resumed_at": self.resumed_at,
                "seconds": round(self.seconds, 3),
            },
        )


def chunk_progress(source: str, rows: int, last: bool) -> dict[TopicPartition, int]:
    """What a committed chunk records in the snapshot summary: the file's rows read through it, and that the file is
    complete after its last chunk."""
    return {(source, ROWS): rows, **({(source, COMPLETE): 1} if last else {})}


@dataclass
class Progress:
    """What the import has done so far in its current file, after each committed chunk."""

    path: Path
    rows_read: int  # of the file, through the last committed chunk
    report: FileReport


class Importer:
    """Imports files into the catalog's market tables; one per process (its writer id fences it from others)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ing = settings.ingest
        catalog = open_catalog(settings)
        tables = ensure_tables(catalog, settings.catalog.namespace)
        self.tables = {kind: tables[MARKET_TABLES[kind].name] for kind in KINDS}
        # Strict instruments' rules, as the ingester applies them; a reload during a long import is seen.
        self.reference = ReferenceWatcher(catalog, settings.catalog.namespace, settings.instruments)
        # The committer thread works on table objects of its own: a pyiceberg Table is not shared between threads.
        committing = ensure_tables(open_catalog(settings), settings.catalog.namespace)
        self.writer_id = f"import-{uuid.uuid4().hex[:12]}"
        self.writers = {
            kind: TableWriter(
                t,
                self.writer_id,
                IMPORT_CLUSTER,
                ing.commit_retries,
                ing.conflict_backoff_seconds,
                trusts_peers=False,
                pieces=os.cpu_count() or 1,
            )
            for kind, t in ((kind, committing[MARKET_TABLES[kind].name]) for kind in KINDS)
        }
        grading = GapGrading(ing.gap_alert_threshold, ing.gap_halt_threshold)
        self.gaps = GapStore(tables["sequence_gaps"], grading)
        self.recorded_gaps = GapStore(committing["sequence_gaps"], grading)
        # Gaps are graded as the ingester grades them, but never stop an import.
        self.planning = GapGrading(ing.gap_alert_threshold, _NEVER_HALT)
        self.state = SequenceState(self.tables, self.gaps.open_gaps, int(ing.dedup_window_hours * 3600 * 1_000_000))
        self.synced = False  # the sequence state matches the tables

    def import_file(
        self,
        path: Path,
        fmt: FileFormat,
        options: ReadOptions,
        progress: Callable[[Progress], None] | None = None,
    ) -> FileReport:
        began = time.monotonic()
        report = FileReport(path, fmt.kind)
        # The first chunk is read while the file is hashed and its progress looked up.
        with ReadAhead(fmt.read(path, options)) as chunks:
            source = file_id(path)
            position = report.resume(self.writers[fmt.kind].committed_offsets(), source)
            if position is None:
                return report
            if not self.synced or self.state.stale:
                self.state.sync()
                self.synced = True
            read_to = 0
            with Committer(self, report, progress) as committer:
                for chunk, last in with_last(iter(chunks)):
                    chunk_start, read_to = read_to, chunk.end
                    if chunk.end <= position:
                        continue  # committed by an earlier run
                    report.rows_read += chunk.end - chunk_start
                    report.bad.extend(chunk.bad)
                    offsets = chunk_progress(source, chunk.end, last)
                    job = self._prepare(chunk, fmt.kind, options.exchange, offsets, position, path, report)
                    committer.submit(job)
                    position = chunk.end
        report.seconds = time.monotonic() - began
        report.log_done(fmt.name)
        return report

    def _prepare(
        self,
        chunk: Chunk,
        kind: Kind,
        exchange: str,
        offsets: dict[TopicPartition, int],
        position: int,
        path: Path,
        report: FileReport,
    ) -> Commit:
        """One chunk planned as the ingester plans a batch: rules, history, sequence plan. Its staged sequence state
        is merged now, so that the next chunk is planned while this one commits (an import that fails stops, and the
        next file syncs the state from the tables again)."""
        now = datetime.now(UTC)
        table = self._valid(chunk.table, kind, exchange, now, report)
        rows = KindRows(
            kind,
            table,
            np.zeros(table.num_rows, dtype=np.int64),
            np.arange(table.num_rows, dtype=np.int64),
            np.arange(table.num_rows, dtype=np.int64),
        )
        wanted = history_wanted(self.state.tracker, {kind: rows})
        if wanted:
            self.state.load_history(wanted)
        positions = {tp: position for tp in offsets if tp[1] == ROWS}
        plan = plan_batch({kind: rows}, list(positions), self.state.tracker, to_us(now), self.planning)
        self.state.settle_late(plan)
        txn = plan.txns.get(kind)
        if txn is not None:
            txn.commit()
        data = plan.rows.get(kind, table.slice(0, 0))
        report.duplicates += plan.duplicates.get(kind, 0)
        report.gaps += len(plan.detected)
        report.filled += sum(g.missing for g in plan.filled)
        return Commit(
            kind=kind,
            data=MARKET_TABLES[kind].sort(data),
            offsets=offsets,
            positions=positions,
            plan=plan,
            planned_at=self.state.at(kind),
            at=now,
            properties={IMPORT_FILE_PROPERTY: path.name[:200]},
            read_to=chunk.end,
        )

    def commit(self, job: Commit, report: FileReport) -> None:
        """On the committer thread, in chunk order, as the ingester's checkpoint commits a batch: gaps found, then
        the data with the file's progress, then the gaps filled. A chunk with nothing new commits nothing, unless it
        is the file's last: that one marks the file complete."""
        plan, kind = job.plan, job.kind
        if plan.detected:
            self.recorded_gaps.record_detected(plan.detected, job.at)
        snapshot_id = None
        if job.data.num_rows or any(p == COMPLETE for _, p in job.offsets):
            fills, checked_at = plan.fills.get(kind, (None, None))
            writer = self.writers[kind]
            snapshot_id = writer.append(
                job.data,
                job.offsets,
                job.positions,
                fills=fills,
                checked_at=checked_at,
                planned_at=job.planned_at,
                recheck=True,
                properties=job.properties,
            )
            report.commits += 1
            report.written += job.data.num_rows
            self.state.committed(kind, None, snapshot_id, writer.foreign, writer.table)
        if plan.filled:
            self.recorded_gaps.record_filled(plan.filled, job.at)

    def _valid(self, table: pa.Table, kind: Kind, exchange: str, now: datetime, report: FileReport) -> pa.Table:
        """The rows that meet the record rules and their strict instruments' reference data (k2_core.ingest.reference);
        the others are reported with their reasons."""
        ok = surely_valid(kind, exchange, table, now, self.settings.records)
        if not ok.all():
            table = self._recheck(table, ok, kind, exchange, now, report)
        refused = self.reference.rules().refuse(kind, exchange, table)
        if not refused:
            return table
        symbols = table.column("symbol").to_pylist()
        sequences = table.column("exchange_sequence_number").to_pylist()
        report.rejected.extend(Rejected(symbols[i], sequences[i], reason) for i, reason in refused)
        return table.filter(pa.array(keep_mask(table.num_rows, refused)))

    def _recheck(
        self, table: pa.Table, ok: npt.NDArray[np.bool_], kind: Kind, exchange: str, now: datetime, report: FileReport
    ) -> pa.Table:
        """The rows the vector checks doubted, checked alone: those `validate` refuses are reported and dropped."""
        doubtful = np.flatnonzero(~ok)
        suspects = table.take(pa.array(doubtful))
        refused = dict(reasons(kind, exchange, suspects, now, self.settings.records))
        symbols = suspects.column("symbol").to_pylist()
        sequences = suspects.column("exchange_sequence_number").to_pylist()
        report.rejected.extend(Rejected(symbols[i], sequences[i], reason) for i, reason in refused.items())
        ok[doubtful] = [i not in refused for i in range(len(doubtful))]  # the vector checks are the stricter
        return table.filter(pa.array(ok))


@dataclass
class Commit:
    """A planned chunk, for the committer."""

    kind: Kind
    data: pa.Table
    offsets: dict[TopicPartition, int]
    positions: dict[TopicPartition, int]
    plan: BatchPlan
    planned_at: int | None
    at: datetime
    properties: dict[str, str]
    read_to: int  # the file's rows through this chunk


class Committer:
    """Commits planned chunks on a thread of its own, one at a time and in order, while the next is planned. A failed
    commit stops the import: it is raised at the next `submit` or when the file ends, and the sequence state is
    synced from the tables before the next file."""

    def __init__(self, importer: Importer, report: FileReport, progress: Callable[[Progress], None] | None) -> None:
        self.importer, self.report, self.progress = importer, report, progress
        self.jobs: Queue[Commit | None] = Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="import-committer", daemon=True)

    def __enter__(self) -> Committer:
        self.thread.start()
        return self

    def submit(self, job: Commit) -> None:
        self._raise()
        while self.thread.is_alive():
            try:
                self.jobs.put(job, timeout=0.1)
                return
            except Full:
                continue
        self._raise()

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self.jobs.put(None)  # the thread drains the queue: there is always room for the end
        self.thread.join()
        if exc is None:
            self._raise()
        if exc is not None or self.error is not None:
            self.importer.synced = False

    def _raise(self) -> None:
        if self.error is not None:
            self.importer.synced = False
            raise self.error

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is not None:
                continue  # drained, not committed: the import has failed
            try:
                self.importer.commit(job, self.report)
            except Exception as exc:  # noqa: BLE001  # raised again on the importing thread
                self.error = exc
                continue
            if self.progress is not None:
                self.progress(Progress(self.report.path, job.read_to, self.report))


class ReadAhead(Generic[T]):
    """The chunks, read by a thread of their own from the moment this is made, up to `depth` ahead: reading (Arrow and
    numpy, mostly outside the GIL) overlaps whatever the importing thread does meanwhile (hashing the file, committing
    the chunk before). The reader's errors are raised by the iteration, in order; `close` stops the reader."""

    def __init__(self, chunks: Iterator[T], depth: int = 1) -> None:
        self._queue: Queue[tuple[T | None, BaseException | None]] = Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(chunks,), name="import-reader", daemon=True)
        self._thread.start()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[T]:
        while True:
            chunk, error = self._queue.get()
            if error is not None:
                raise error
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _put(self, item: tuple[T | None, BaseException | None]) -> bool:
        """Hand over `item` unless the consumer has gone; False once it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def _produce(self, chunks: Iterator[T]) -> None:
        try:
            for chunk in chunks:
                if not self._put((chunk, None)):
                    return
            self._put((None, None))
        except Exception as exc:  # noqa: BLE001  # raised again by the consumer, in order
            self._put((None, exc))


def with_last(chunks: Iterator[T]) -> Iterator[tuple[T, bool]]:
    """Each chunk, and whether it is the file's last (read one ahead)."""
    previous: T | None = None
    for chunk in chunks:
        if previous is not None:
            yield previous, False
        previous = chunk
    if previous is not None:
        yield previous, True
