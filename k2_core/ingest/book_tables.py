"""The three book tables as one writer stores a batch of book records into them, in the one order that survives a
crash: shared by the live book ingester (k2_stream.book_ingester) and `k2 import` of book files
(k2_core.ingest.book_importer), so that a day imported and the same day streamed are stored by the same steps.

For each batch the per-symbol tracker (k2_core.ingest.book_sequence) has decided:

1. what the batch reveals is recorded before its data: gaps (`sequence_gaps`, data type `book_updates`), the
   books' validity changes (`book_validity`, upserted: a replayed batch writes the same rows) and the gaps a
   snapshot healed;
2. the snapshots are appended, then the updates with the batch's progress (Kafka offsets, or an import's rows of
   its file) in the snapshot summary - always, rows or not, so the updates table is where a writer resumes; a crash
   between the two appends replays the batch, whose stored snapshots the tracker, reset and filled from the tables
   (`tracker`, k2_core.ingest.book_state), finds and drops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import And, EqualTo
from pyiceberg.table import Table
from sqlalchemy.exc import SQLAlchemyError

from k2_core.exceptions import CommitConflictError, WriteError
from k2_core.ingest.book_sequence import BookDecisions, BookStreams
from k2_core.ingest.book_state import BookState
from k2_core.ingest.gaps import GapGrading, GapStore
from k2_core.ingest.writer import TableWriter
from k2_core.lake.offsets import TopicPartition
from k2_core.model.tables import BOOK_SNAPSHOTS, BOOK_UPDATES, BOOK_VALIDITY, GAPS, SOURCE_FEED, TableDef
from k2_core.settings import IngestSettings

VALIDITY_KEY = ["exchange", "symbol", "state", "sequence"]


class BookTables:
    def __init__(
        self,
        tables: Mapping[str, Table],
        writer_id: str,
        cluster: str,
        ingest: IngestSettings,
        trusts_peers: bool = True,
        observe: Callable[[TableDef, int, float], None] | None = None,
    ) -> None:
        """`tables`: the catalog's tables by name (k2_core.lake.catalog.ensure_tables). `cluster` names where the
        progress in the summaries comes from (a Kafka cluster, or `k2 import`'s files). `observe(table, rows,
        seconds)` hears of each append (the book ingester's metrics)."""
        self.updates = tables[BOOK_UPDATES.name]
        self.snapshots = tables[BOOK_SNAPSHOTS.name]
        self.validity = tables[BOOK_VALIDITY.name]
        retries, backoff = ingest.commit_retries, ingest.conflict_backoff_seconds
        self.update_writer = TableWriter(self.updates, writer_id, cluster, retries, backoff, trusts_peers=trusts_peers)
        self.snapshot_writer = TableWriter(
            self.snapshots, writer_id, cluster, retries, backoff, trusts_peers=trusts_peers
        )
        self.grading = GapGrading(ingest.gap_alert_threshold, ingest.gap_halt_threshold)
        self.gaps = GapStore(tables[GAPS.name], self.grading)
        self.observe = observe

    def tracker(self, streams: BookStreams) -> BookState:
        """`streams` filled from these tables one instrument at a time, from its newest stored day: `reset()` it
        before a writer starts deciding (and after a failed write), `ensure(instruments)` before each batch."""
        return BookState(self.updates, self.snapshots, self.validity, self.gaps.open_book_gaps, streams)

    def holds(self, record_type: str, record: Mapping[str, Any]) -> bool:
        """Whether this record (its instrument, number and time; a snapshot of the feed's) is stored."""
        table = self.updates if record_type == "book_updates" else self.snapshots
        found = table.scan(
            row_filter=And(
                And(EqualTo(term="exchange", value=record["exchange"]), EqualTo(term="symbol", value=record["symbol"])),
                And(
                    EqualTo(term="exchange_sequence_number", value=record["exchange_sequence_number"]),
                    EqualTo(term="exchange_timestamp", value=record["exchange_timestamp"]),
                ),
            ),
            selected_fields=("exchange_sequence_number",),
        ).to_arrow()
        return found.num_rows > 0

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """The progress the updates table holds, per partition (or file)."""
        return self.update_writer.committed_offsets()

    def store(
        self,
        decisions: BookDecisions,
        offsets: Mapping[TopicPartition, int],
        positions: Mapping[TopicPartition, int],
        now: datetime,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        """Steps 1 and 2 of the module's order for one decided batch; `offsets` and `positions` as
        `TableWriter.append` takes them."""
        self.gaps.record_detected(decisions.gaps, now)
        if decisions.validity:
            self._upsert_validity(decisions)
        self.gaps.record_healed(decisions.healed, now)
        if decisions.snapshots:
            rows = [{**r, "source": SOURCE_FEED} for r in decisions.snapshots]
            self._append(self.snapshot_writer, BOOK_SNAPSHOTS, rows, offsets, positions, properties)
        self._append(self.update_writer, BOOK_UPDATES, decisions.updates, offsets, positions, properties)

    def _append(
        self,
        writer: TableWriter,
        table_def: TableDef,
        rows: list[dict[str, Any]],
        offsets: Mapping[TopicPartition, int],
        positions: Mapping[TopicPartition, int],
        properties: Mapping[str, str] | None,
    ) -> None:
        started = time.perf_counter()
        writer.append(table_def.to_arrow(rows), offsets, positions, properties=properties)
        if self.observe is not None:
            self.observe(table_def, len(rows), time.perf_counter() - started)

    def _upsert_validity(self, decisions: BookDecisions) -> None:
        data = BOOK_VALIDITY.to_arrow(decisions.validity)
        try:
            self.validity.refresh()
            self.validity.upsert(data, join_cols=VALIDITY_KEY)
        except CommitFailedException as exc:
            raise CommitConflictError(f"book_validity: {exc}") from exc
        except (OSError, SQLAlchemyError) as exc:
            raise WriteError(f"cannot write book_validity: {exc}") from exc
