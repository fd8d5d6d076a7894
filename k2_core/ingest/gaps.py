"""The `sequence_gaps` table: graded gap records, split as late numbers fill them.

A gap belongs to a session of its stream (`k2_core.ingest.sequence`): its `window_end` (the exchange time of the number
that revealed it) tells which, and is part of its id, since a new session reuses the numbers of the one before.

Detected gaps are written *before* the data commit that reveals them, so a crash can never lose one (the replayed
batch finds it already recorded). Fills are written after the data commit; one lost to a crash leaves a gap open
whose rows are stored, which the backfill job closes when it finds nothing missing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from k2_core.exceptions import CommitConflictError, WriteError
from k2_core.ingest.sequence import GapEvent, Recorded, StreamKey
from k2_core.lake.catalog import CATALOG_FAILURES
from k2_core.lake.gaps import read_gaps
from k2_core.model.tables import GAPS
from k2_core.model.topics import KINDS

OPEN, FILLED, UNRECOVERABLE = "open", "filled", "unrecoverable"
# A gap in a book's updates is never filled (the updates are not retransmitted): a snapshot covering it makes the
# book known again, and the gap is then `healed` (k2_core.ingest.book_sequence).
HEALED = "healed"
HEALED_REASON = "book known again from a snapshot that includes the missing updates"
SHED_GAP_REASON = "shed under load (degradation level 3): the messages are in the DLQ; replay them to fill the gap"
WARNING, ALERT, HALT = "warning", "alert", "halt"
HEAD_GAP_REASON = "the session began above 1: its first numbers never arrived"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def grade(missing: int, alert_threshold: int, halt_threshold: int) -> str:
    """The seed's graded response: < alert -> warning, alert..halt -> alert, > halt -> halt."""
    if missing > halt_threshold:
        return HALT
    return ALERT if missing >= alert_threshold else WARNING


def gap_id(key: StreamKey, first: int, window_end: datetime | None = None) -> str:
    """`trades/asx/BHP/101@2026-11-26T10:00:00.123456+00:00`; gaps recorded before sessions were told apart have
    no window and keep their old id."""
    data_type, exchange, symbol = key
    base = f"{data_type}/{exchange}/{symbol}/{first}"
    return base if window_end is None else f"{base}@{window_end.isoformat()}"


def event_gap_id(event: GapEvent) -> str:
    """The id `record_detected` gives a detected gap."""
    return gap_id(event.key, event.first, _time(event.window_end))


def _time(us: int | None) -> datetime | None:
    return None if us is None else EPOCH + timedelta(microseconds=us)


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class GapGrading:
    alert_threshold: int
    halt_threshold: int

    def __call__(self, missing: int) -> str:
        return grade(missing, self.alert_threshold, self.halt_threshold)


# Reading the open gaps goes through the catalog and then DuckDB.
_READ_FAILURES: tuple[type[Exception], ...] = (*CATALOG_FAILURES, duckdb.Error)


class GapStore:
    def __init__(self, table: Table, grading: GapGrading) -> None:
        self.table = table
        self.grading = grading

    def open_gaps(self) -> list[tuple[StreamKey, Recorded]]:
        """Every open gap of trades and quotes, as the sequence tracker holds it: (stream, (first, last, window
        start, window end)). Book gaps are the book ingester's (`open_book_gaps`)."""
        return [
            (
                (r["data_type"], r["exchange"], r["symbol"]),
                (r["first_missing"], r["last_missing"], _us(r.get("window_start")), _us(r.get("window_end"))),
            )
            for r in self._open_rows()
            if r["data_type"] in KINDS
        ]

    def open_book_gaps(self) -> dict[tuple[str, str], list[str]]:
        """(exchange, symbol) -> the ids of its open book gaps, oldest first: a book can lose numbers more than once
        before a snapshot heals them all."""
        rows = sorted(
            (r for r in self._open_rows() if r["data_type"] not in KINDS),
            key=lambda r: (r["detected_at"], r["gap_id"]),
        )
        out: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            out.setdefault((r["exchange"], r["symbol"]), []).append(r["gap_id"])
        return out

    def record_healed(self, gap_ids: Iterable[str], now: datetime) -> None:
        """Mark open book gaps healed: a snapshot made their book known again."""
        wanted = set(gap_ids)
        if not wanted:
            return
        rows = [
            {**r, "status": HEALED, "resolved_at": now, "reason": HEALED_REASON}
            for r in self._open_rows()
            if r["gap_id"] in wanted
        ]
        self._upsert(rows)

    def _open_rows(self) -> list[dict[str, Any]]:
        self._refresh()
        try:
            return read_gaps(self.table, status=OPEN).to_pylist()
        except _READ_FAILURES as exc:
            raise WriteError(f"cannot read sequence_gaps: {exc}") from exc

    def record_detected(self, gaps: Iterable[GapEvent], now: datetime, reasons: dict[int, str] | None = None) -> None:
        """`reasons` by id() of the gap event, for gaps K2 made itself (shedding), which never halt."""
        reasons = reasons or {}
        rows = [
            {
                "gap_id": gap_id(g.key, g.first, _time(g.window_end)),
                "data_type": g.key[0],
                "exchange": g.key[1],
                "symbol": g.key[2],
                "first_missing": g.first,
                "last_missing": g.last,
                "missing_count": g.missing,
                "severity": self.grading(g.missing),
                "status": OPEN,
                "detected_at": now,
                "resolved_at": None,
                "attempts": 0,
                "reason": reasons.get(id(g)) or (HEAD_GAP_REASON if g.head else None),
                "window_start": _time(g.window_start),
                "window_end": _time(g.window_end),
            }
            for g in gaps
        ]
        self._upsert(rows)

    def record_filled(self, fills: Iterable[GapEvent], now: datetime) -> None:
        """Split each open gap that received numbers into its filled and still-open runs (numbers of another
        session never fill it)."""
        by_session: dict[tuple[StreamKey, int | None], set[int]] = defaultdict(set)
        for f in fills:
            by_session[(f.key, f.window_end)].update(range(f.first, f.last + 1))
        if not by_session:
            return
        open_rows = self._open_rows()
        out: list[dict[str, Any]] = []
        for row in open_rows:
            key = (row["data_type"], row["exchange"], row["symbol"])
            seqs = by_session.get((key, _us(row.get("window_end"))))
            if not seqs:
                continue
            first, last = row["first_missing"], row["last_missing"]
            hit = sorted(s for s in seqs if first <= s <= last)
            if not hit:
                continue
            out.extend(_split(row, hit, now))
        self._upsert(out)

    def _upsert(self, rows: list[dict[str, Any]], attempts: int = 5) -> None:
        """Upsert by gap_id; a concurrent writer (the backfill job) makes us re-read and retry."""
        if not rows:
            return
        data = GAPS.to_arrow(rows)
        for attempt in range(attempts):
            try:
                self.table.upsert(data, join_cols=["gap_id"])
                return
            except CommitFailedException as exc:
                if attempt == attempts - 1:
                    raise CommitConflictError(f"sequence_gaps: gave up after {attempts} attempts") from exc
                self._refresh()
            except CATALOG_FAILURES as exc:
                raise WriteError(f"cannot write sequence_gaps: {exc}") from exc

    def _refresh(self) -> None:
        try:
            self.table.refresh()
        except CATALOG_FAILURES as exc:
            raise WriteError(f"cannot read sequence_gaps: {exc}") from exc


def _split(row: dict[str, Any], filled: list[int], now: datetime) -> list[dict[str, Any]]:
    """Cut a gap row into alternating runs; each run keeps the original's detection time and gets its own id."""
    key = (row["data_type"], row["exchange"], row["symbol"])
    runs: list[tuple[int, int, bool]] = []
    cursor = row["first_missing"]
    for seq in filled:  # sorted, distinct, inside the gap
        if seq > cursor:
            runs.append((cursor, seq - 1, False))
        if runs and runs[-1][2] and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq, True)
        else:
            runs.append((seq, seq, True))
        cursor = seq + 1
    if cursor <= row["last_missing"]:
        runs.append((cursor, row["last_missing"], False))
    return [
        {
            **row,
            "gap_id": gap_id(key, first, row.get("window_end")),
            "first_missing": first,
            "last_missing": last,
            "missing_count": last - first + 1,
            "status": FILLED if is_filled else OPEN,
            "resolved_at": now if is_filled else None,
        }
        for first, last, is_filled in runs
    ]
