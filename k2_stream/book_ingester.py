"""The book ingester: `market.<asset_class>.books.<exchange>` -> `book_snapshots` and `book_updates`, exactly once.

A consumer group of its own beside the trades/quotes ingester (k2_stream.ingester), with the same rules in the same
order for each micro-batch:

1. dead letters delivered (a record that is not Avro, or breaks `check_book_record`);
2. the batch stored by k2_core.ingest.book_tables, in its crash-safe order (what the batch reveals - gaps, validity
   changes, healed gaps - before its data; the snapshots, then the updates with the batch's Kafka offsets in the
   snapshot summary, so the updates table is where every books partition resumes, k2_core.ingest.resume), the same
   steps `k2 import` stores book files by;
3. Kafka offsets, best effort.

Duplicates and gaps are decided per symbol by k2_core.ingest.book_sequence, reset on every assignment and after
every failed write, and filled for each instrument from its newest stored day before its first record is decided
(k2_core.ingest.book_state): a restart reads about a day of keys, not the whole history.

It reports like the trades ingester, on a port of its own (K2_INGEST_BOOK_METRICS_PORT): the shared ingestion
metrics (k2_stream.metrics) and the books' own (unknown books, gaps healed, last commit), and a `/health` that
`k2 status` reads.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from k2_core.exceptions import (
    CommitConflictError,
    DecodeError,
    FencedError,
    SchemaRegistryUnavailableError,
    ValidationError,
    WriteError,
)
from k2_core.ingest.book_sequence import BookDecisions, BookStreams
from k2_core.ingest.book_tables import BookTables
from k2_core.ingest.gaps import event_gap_id
from k2_core.ingest.resume import position, resume_offsets
from k2_core.lake.catalog import CATALOG_FAILURES, ensure_tables, open_catalog
from k2_core.lake.offsets import TopicPartition as TP
from k2_core.logging import get_logger
from k2_core.model.avro import Decoder, schema_id_of
from k2_core.model.books import check_book_record
from k2_core.model.registry import ParsedSchema
from k2_core.model.tables import BOOK_SNAPSHOTS, BOOK_UPDATES, BOOK_VALID, TableDef
from k2_core.model.topics import BOOK_RECORDS, BookRecord, TopicLayout
from k2_core.settings import Settings
from k2_core.upkeep.retention import RetentionCadence
from k2_stream import book_metrics, gc_pause, metrics
from k2_stream.admin import cluster_id, ensure_topics, load_layout
from k2_stream.dead_letters import DeadLetterSender
from k2_stream.lag import export_lag, newest_of
from k2_stream.registry_confluent import make_registry

log = get_logger(__name__)

# A batch failing with one of these is committed again after a backoff; the catalog's own failures included (a
# table read to fill a book, or to re-read them after a failure, meets the same outage as the write).
_RECOVERABLE: tuple[type[Exception], ...] = (
    WriteError,
    CommitConflictError,
    FencedError,
    KafkaException,
    SchemaRegistryUnavailableError,
    *CATALOG_FAILURES,
)


class BookIngester:
    def __init__(self, settings: Settings, layout: TopicLayout | None = None) -> None:
        self.settings = settings
        self.layout = layout or load_layout(settings)
        self.writer_id = f"book-ingester-{uuid.uuid4().hex[:12]}"
        registry = make_registry(settings.kafka.schema_registry_url, settings.kafka.schemas_dir)
        self.decoder = Decoder(registry)
        # The reader schema per record type, and which record type each writer schema's name is.
        self.readers: dict[BookRecord, ParsedSchema] = {}
        self.record_names: dict[str, BookRecord] = {}
        for spec in self.layout.books:
            for record_type in BOOK_RECORDS:
                _, schema = registry.latest(spec.subject(record_type))
                self.readers[record_type] = schema
                self.record_names[schema["name"]] = record_type
        tables = ensure_tables(open_catalog(settings), settings.catalog.namespace)
        cluster = cluster_id(settings.kafka.bootstrap_servers)
        self.books = BookTables(tables, self.writer_id, cluster, settings.ingest, observe=_observe_append)
        # A batch a second is 86,400 snapshots a day: thinned as the trade ingester thins its own (the offsets chain
        # it resumes from is kept), not left to the daily maintenance job's 7-day expiry.
        self.retention = RetentionCadence.of(
            {BOOK_UPDATES.name: self.books.updates, BOOK_SNAPSHOTS.name: self.books.snapshots}, settings
        )
        self.streams = BookStreams(event_gap_id)
        self.state = self.books.tracker(self.streams)
        self.stats: dict[str, int] = {
            "updates_written": 0,
            "snapshots_written": 0,
            "duplicates": 0,
            "gaps": 0,
            "healed": 0,
            "failed_batches": 0,
        }
        self.last_commit: datetime | None = None  # wall time of the last committed batch
        self.lag_seconds = 0.0  # the worst partition's, as of the last committed batch
        self.failing: str | None = None  # why the last batch failed, until one commits
        self.rewinding = False  # a batch failed (or an assignment could not read the tables): re-read them first
        self._unknown_exchanges: set[str] = set()  # those with a BOOK_UNKNOWN_SINCE series
        self.positions: dict[TP, int] = {}
        self._stop = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"{settings.kafka.group_id}-books",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.kafka.session_timeout_ms,
                "heartbeat.interval.ms": settings.kafka.heartbeat_interval_ms,
                "enable.partition.eof": False,
            }
        )
        self.dead_letters = DeadLetterSender(settings.kafka.bootstrap_servers, self.layout, self.stats)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        ensure_topics(self.settings, self.layout)
        topics = [b.name for b in self.layout.books]
        if not topics:
            log.info("no books topics configured: book ingester idle")
            return
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        log.info("book ingester started", extra={"writer": self.writer_id, "topics": len(topics)})
        ing = self.settings.ingest
        backoff = ing.retry_backoff_seconds
        gc_pause.freeze_startup()
        try:
            while not self._stop.is_set():
                if self.rewinding and not self._rewound(backoff):
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, ing.max_backoff_seconds)
                    continue
                with gc_pause.paused():  # a batch's messages are not cyclic garbage (k2_stream.gc_pause)
                    batch = self.consumer.consume(ing.batch_max_rows, ing.batch_max_seconds)
                    batch = [m for m in batch if m.error() is None and (m.topic(), m.partition()) in self.positions]
                    if not batch:
                        continue
                    committed = self._commit_or_fail(batch, backoff)
                del batch
                if committed:
                    backoff = ing.retry_backoff_seconds
                    continue
                self.rewinding = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, ing.max_backoff_seconds)
        finally:
            self.consumer.close()
            self.dead_letters.close()
            log.info("book ingester stopped", extra={"writer": self.writer_id, **self.stats})

    # ---- rebalances and resets ------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = {
            (p.topic, p.partition): (p.offset if p.offset >= 0 else None) for p in consumer.committed(partitions)
        }
        try:
            stored = self.books.committed_offsets()
            self.load()
        except _RECOVERABLE as exc:
            # The table cannot be read: start from Kafka's committed offsets (never past the table's: they follow its
            # commits) and re-read the tables before consuming anything (the loop's rewind).
            log.warning("book tables unreadable on assignment; re-read before consuming", extra={"error": str(exc)})
            stored, self.rewinding = {}, True
        resume = resume_offsets(committed, stored)
        for p in partitions:
            start = resume[(p.topic, p.partition)]
            p.offset = OFFSET_BEGINNING if start is None else start
            self.positions[(p.topic, p.partition)] = position(start)
        consumer.assign(partitions)
        log.info("book partitions assigned", extra={"count": len(partitions)})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.positions.pop((p.topic, p.partition), None)

    def _rewound(self, backoff: float) -> bool:
        """`_rewind`, or False (said on /health) while the tables cannot be read: nothing is consumed until it is
        done, since the tracker and the positions must be the tables' first."""
        try:
            self._rewind()
        except _RECOVERABLE as exc:
            log.warning("book ingester cannot re-read the tables yet, retrying", extra={"error": str(exc),
                        "backoff": backoff})  # fmt: skip
            self.failing = f"{type(exc).__name__}: {exc}"
            return False
        self.rewinding = False
        return True

    def _rewind(self) -> None:
        """After a failed write: the tracker as the tables are, and every owned partition back where it was (or where
        the table holds it, when that is further: positions taken from Kafka while the table could not be read)."""
        stored = self.books.committed_offsets()
        for tp, offset in self.positions.items():
            self.positions[tp] = max(offset, stored.get(tp, offset))
        self.load()
        for (topic, partition), offset in self.positions.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.warning("cannot seek back", extra={"topic": topic, "partition": partition, "error": str(exc)})

    def load(self) -> None:
        """Reset the per-symbol tracker to the tables: each book is filled from them when first needed."""
        self.state.reset()
        self._export_books()

    # ---- one batch -------------------------------------------------------------------------------------------

    def decode(self, message: Message) -> tuple[BookRecord, dict[str, Any]]:
        payload = message.value()
        writer = self.decoder.writer(schema_id_of(payload))
        record_type = self.record_names.get(str(writer.get("name")))
        if record_type is None:
            raise DecodeError(f"schema {writer.get('name')!r} is not a book record")
        record = self.decoder.decode(payload, self.readers[record_type])
        exchange = (message.topic() or "").rsplit(".", 1)[-1]
        check_book_record(record_type, record, exchange)
        return record_type, record

    def _commit_or_fail(self, batch: list[Message], backoff: float) -> bool:
        """Commit `batch`; False (logged, counted, said on /health) when it was not committed: the loop backs off
        `backoff` seconds and re-reads from the committed positions."""
        try:
            self.commit(batch)
        except _RECOVERABLE as exc:
            log.warning("book batch not committed, retrying", extra={"error": str(exc), "backoff": backoff})
            self.stats["failed_batches"] += 1
            self.failing = f"{type(exc).__name__}: {exc}"
            book_metrics.BOOK_FAILED_BATCHES.inc()
            return False
        self.failing = None
        return True

    def commit(self, batch: list[Message]) -> BookDecisions:
        now = datetime.now(UTC)
        records: list[tuple[str, dict[str, Any]]] = []
        dead: list[tuple[Message, str]] = []
        offsets: dict[TP, int] = {}
        for m in batch:
            tp = (m.topic() or "", m.partition() or 0)
            offsets[tp] = max(offsets.get(tp, 0), (m.offset() or 0) + 1)
            try:
                records.append(self.decode(m))
            except (DecodeError, ValidationError) as exc:
                dead.append((m, f"{type(exc).__name__}: {exc}"))
        for topic, count in Counter(m.topic() or "" for m in batch).items():
            metrics.MESSAGES_CONSUMED.labels(topic).inc(count)
        self.state.ensure({(r["exchange"], r["symbol"]) for _, r in records})
        decisions = self.streams.decide(records, now)
        self.dead_letters.send(dead)  # 1
        # Every owned partition rides along at its position, so the newest snapshot holds each one's offset and
        # snapshot retention never keeps a chain behind a partition gone quiet (a market closed for the night).
        covered = {**{tp: pos for tp, pos in self.positions.items() if tp not in offsets}, **offsets}
        positions = {tp: self.positions.get(tp, 0) for tp in covered}
        self.books.store(decisions, covered, positions, now)  # 2
        self.positions.update(offsets)
        self.dead_letters.batch_committed()
        try:  # 3
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            log.warning("kafka offset commit failed; the table holds them", extra={"error": str(exc)})
        # every batch appends to the updates table (its offsets, rows or not), the snapshots table when it has some
        self.retention.appended([BOOK_UPDATES.name, *([BOOK_SNAPSHOTS.name] if decisions.snapshots else [])])
        self.stats["updates_written"] += len(decisions.updates)
        self.stats["snapshots_written"] += len(decisions.snapshots)
        self.stats["duplicates"] += decisions.duplicates
        self.stats["gaps"] += len(decisions.gaps)
        self.stats["healed"] += len(decisions.healed)
        self._export(batch, decisions, now)
        if decisions.gaps:
            log.warning("book gaps detected", extra={"gaps": len(decisions.gaps), "healed": len(decisions.healed)})
        return decisions

    # ---- what it reports -------------------------------------------------------------------------------------

    def _export(self, batch: list[Message], decisions: BookDecisions, now: datetime) -> None:
        """The metrics of one committed batch."""
        self.last_commit = datetime.now(UTC)
        book_metrics.BOOK_LAST_COMMIT.set(self.last_commit.timestamp())
        self.lag_seconds = export_lag(self.consumer, self.positions, newest_of(batch), now)
        metrics.DUPLICATES.labels(BOOK_UPDATES.name).inc(decisions.duplicates - decisions.duplicate_snapshots)
        metrics.DUPLICATES.labels(BOOK_SNAPSHOTS.name).inc(decisions.duplicate_snapshots)
        for gap in decisions.gaps:
            metrics.SEQUENCE_GAPS.labels(gap.key[1], self.books.grading(gap.missing)).inc()
        healed = Counter(v["exchange"] for v in decisions.validity if v["state"] == BOOK_VALID)
        for exchange, count in healed.items():
            book_metrics.BOOK_GAPS_HEALED.labels(exchange).inc(count)
        self._export_books()

    def _export_books(self) -> None:
        """Unknown books per exchange, and since when the longest-unknown of each is unknown (no series while none
        is: the BookUnknownTooLong alert reads its age against Prometheus's clock)."""
        count: Counter[str] = Counter()
        oldest: dict[str, datetime] = {}
        for (exchange, _), since in self.streams.unknown().items():
            count[exchange] += 1
            oldest[exchange] = min(oldest.get(exchange, since), since)
        for exchange in {e for e, _ in self.streams.streams} | set(count) | self._unknown_exchanges:
            book_metrics.BOOKS_UNKNOWN.labels(exchange).set(count[exchange])
            if exchange in oldest:
                book_metrics.BOOK_UNKNOWN_SINCE.labels(exchange).set(oldest[exchange].timestamp())
            elif exchange in self._unknown_exchanges:
                book_metrics.BOOK_UNKNOWN_SINCE.remove(exchange)
        self._unknown_exchanges = set(oldest)

    def health(self) -> dict[str, Any]:
        """What /health of the book ingester reports (`k2 status` reads it): `down` while batches keep failing."""
        now = datetime.now(UTC)
        unknown = self.streams.unknown()
        return {
            "status": "down" if self.failing else "ok",
            "error": self.failing,
            "assigned_partitions": len(self.positions),
            "last_commit": self.last_commit.isoformat() if self.last_commit else None,
            "last_commit_age_seconds": (now - self.last_commit).total_seconds() if self.last_commit else None,
            "lag_seconds": self.lag_seconds,
            "books_tracked": len(self.streams.streams),
            "unknown_books": {
                f"{e}:{s}": round((now - since).total_seconds(), 1) for (e, s), since in sorted(unknown.items())
            },
            "stats": dict(self.stats),
        }


def _observe_append(table_def: TableDef, rows: int, seconds: float) -> None:
    """The shared ingestion metrics of one append of a batch's rows (k2_core.ingest.book_tables)."""
    if rows:
        metrics.WRITE_DURATION.labels(table_def.name).observe(seconds)
        metrics.ROWS_PER_COMMIT.labels(table_def.name).observe(rows)
        metrics.ROWS_WRITTEN.labels(table_def.name).inc(rows)
