"""Gap backfill: fetch the sequence numbers a feed never delivered from a recovery source, store each exactly once,
and close the gap records in `market.sequence_gaps`.

Sequence numbers restart with every exchange session, so a gap's numbers are only meaningful inside its session:
the gap's *window* runs from the exchange time of the stored row just below it (`first - 1`) to that of the stored
row just above it (`last + 1`, the one whose arrival revealed the gap, recognised by its ingestion time nearest the
detection time). Rows count as the gap's, whether already stored or recovered, only inside that window.

Each data append reads what is stored and drops what is already there, then commits only after re-checking the
files other writers committed meanwhile (a conflict re-checks the newer ones and tries again), so a row is written
exactly once even when the ingester, a rerun or a concurrent backfill races it. Gap records are then split like
the ingester's late fills: recovered or already-stored runs become `filled`, the rest stay `open` with one more
attempt counted, and turn `unrecoverable`, with the reason, once `max_attempts` attempts found nothing more.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import pyarrow as pa
from pyiceberg.expressions import (
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThanOrEqual,
    Or,
)
from pyiceberg.table import Table

from k2_core.exceptions import CommitConflictError, ValidationError
from k2_core.ingest.dedup import keys_in_files
from k2_core.ingest.gaps import FILLED, OPEN, UNRECOVERABLE, gap_id
from k2_core.lake.evolution import arrow_schema, evolve
from k2_core.lake.files import append_files, delete_uncommitted, write_files
from k2_core.lake.gaps import read_gaps
from k2_core.lake.lineage import files_to_recheck
from k2_core.lake.offsets import WRITER_PROPERTY
from k2_core.lake.retry import commit_with_retries
from k2_core.logging import get_logger
from k2_core.model.records import validate
from k2_core.model.tables import GAPS, MARKET_TABLES, conform
from k2_core.model.topics import KINDS, Kind

log = get_logger(__name__)

WRITER = "backfill"
STORED_FIELDS = ("symbol", "exchange", "exchange_sequence_number", "exchange_timestamp", "ingestion_timestamp")


class RecoverySource(Protocol):
    """Where missing records can be asked for again (an exchange's retransmission service, a recorded file)."""

    @property
    def name(self) -> str: ...

    def fetch(self, kind: Kind, symbol: str, first: int, last: int) -> list[dict[str, Any]]:
        """The source's records of the stream with first <= sequence <= last; absent numbers are simply missing."""
        ...


SourceResolver = Callable[[str, str], Sequence[RecoverySource]]  # (exchange, symbol) -> sources to try, in order


@dataclass(frozen=True)
class Window:
    """Exchange-time bounds of a gap's session (None: unbounded on that side)."""

    low: datetime | None
    high: datetime | None

    def __contains__(self, ts: datetime) -> bool:
        return (self.low is None or ts >= self.low) and (self.high is None or ts <= self.high)


@dataclass
class GapOutcome:
    gap_id: str
    data_type: str
    exchange: str
    symbol: str
    first: int
    last: int
    already_stored: int = 0
    recovered: int = 0
    written: int = 0
    still_missing: int = 0
    status: str = OPEN
    reason: str = ""
    sources: list[str] = field(default_factory=list)


@dataclass
class BackfillReport:
    outcomes: list[GapOutcome] = field(default_factory=list)
    rows_written: dict[str, int] = field(default_factory=dict)

    @property
    def filled(self) -> int:
        return sum(1 for o in self.outcomes if o.status == FILLED)

    @property
    def unrecoverable(self) -> int:
        return sum(1 for o in self.outcomes if o.status == UNRECOVERABLE)

    @property
    def still_open(self) -> int:
        return sum(1 for o in self.outcomes if o.status == OPEN)


def open_gaps(
    gaps_table: Table, now: datetime, *, min_age: timedelta, gap_ids: Collection[str] | None = None, limit: int
) -> list[dict[str, Any]]:
    """Open gaps detected at least `min_age` ago (all of `gap_ids` if given), oldest first, at most `limit`."""
    gaps_table.refresh()
    # Book gaps heal by snapshot, not by retransmission (k2_core.ingest.book_sequence): never backfilled.
    rows = [r for r in read_gaps(gaps_table, status=OPEN).to_pylist() if r["data_type"] in KINDS]
    if gap_ids is not None:
        wanted = set(gap_ids)
        rows = [r for r in rows if r["gap_id"] in wanted]
    else:
        rows = [r for r in rows if r["detected_at"] <= now - min_age]
    rows.sort(key=lambda r: (r["detected_at"], r["gap_id"]))
    return rows[:limit]


def _stream_filter(exchange: str, ranges: Mapping[str, tuple[int, int]]) -> BooleanExpression:
    per_symbol: list[BooleanExpression] = [
        And(
            EqualTo(term="symbol", value=symbol),
            And(
                GreaterThanOrEqual(term="exchange_sequence_number", value=lo),
                LessThanOrEqual(term="exchange_sequence_number", value=hi),
            ),
        )
        for symbol, (lo, hi) in sorted(ranges.items())
    ]
    either = per_symbol[0] if len(per_symbol) == 1 else Or(*per_symbol)
    return And(EqualTo(term="exchange", value=exchange), either)


def _stored(table: Table, exchange: str, gaps: list[dict[str, Any]], pad: int) -> list[dict[str, Any]]:
    """Stored keys of the gaps' streams with sequence numbers in [first - pad, last + pad]."""
    if table.metadata.current_snapshot_id is None:
        return []
    ranges: dict[str, tuple[int, int]] = {}
    for g in gaps:
        lo, hi = g["first_missing"] - pad, g["last_missing"] + pad
        old = ranges.get(g["symbol"])
        ranges[g["symbol"]] = (min(lo, old[0]), max(hi, old[1])) if old else (lo, hi)
    scan = table.scan(row_filter=_stream_filter(exchange, ranges), selected_fields=STORED_FIELDS)
    return scan.to_arrow().to_pylist()


def gap_window(gap: dict[str, Any], stored: list[dict[str, Any]]) -> Window:
    """The exchange-time window of the gap's session, from its stored neighbours."""
    symbol, first, last = gap["symbol"], gap["first_missing"], gap["last_missing"]
    above = [r for r in stored if r["symbol"] == symbol and r["exchange_sequence_number"] == last + 1]
    high = None
    if above:
        detected = gap["detected_at"]
        nearest = min(above, key=lambda r: abs(r["ingestion_timestamp"] - detected))
        high = nearest["exchange_timestamp"]
    below = [
        r["exchange_timestamp"]
        for r in stored
        if r["symbol"] == symbol
        and r["exchange_sequence_number"] == first - 1
        and (high is None or r["exchange_timestamp"] <= high)
    ]
    return Window(max(below) if below else None, high)


def _runs(first: int, last: int, present: set[int]) -> list[tuple[int, int, bool]]:
    """[first, last] cut into maximal runs of present / absent numbers."""
    runs: list[tuple[int, int, bool]] = []
    for seq in range(first, last + 1):
        here = seq in present
        if runs and runs[-1][2] == here and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq, here)
        else:
            runs.append((seq, seq, here))
    return runs


def _clean(kind: Kind, exchange: str, record: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """The record as a row: every created column, and the extra columns the source gave (a feed's newer fields)."""
    table_def = MARKET_TABLES[kind]
    extra = {f.name for f in table_def.extra_columns}
    row = {name: record.get(name) for name in table_def.column_names if name not in extra or name in record}
    row["ingestion_timestamp"] = now  # when K2 stored it, as for any ingested row
    try:
        validate(kind, exchange, row)
    except ValidationError as exc:
        log.warning("recovered record rejected", extra={"exchange": exchange, "error": str(exc)})
        return None
    return row


@dataclass
class _Work:
    gap: dict[str, Any]
    outcome: GapOutcome
    window: Window
    present: set[int]  # numbers of the gap stored or recovered, inside its window
    rows: list[dict[str, Any]] = field(default_factory=list)


def _recover(work: _Work, kind: Kind, sources: Sequence[RecoverySource], now: datetime) -> None:
    gap, outcome = work.gap, work.outcome
    missing = set(range(gap["first_missing"], gap["last_missing"] + 1)) - work.present
    for source in sources:
        if not missing:
            break
        got = 0
        for record in source.fetch(kind, gap["symbol"], gap["first_missing"], gap["last_missing"]):
            seq = record.get("exchange_sequence_number")
            ts = record.get("exchange_timestamp")
            if seq not in missing or not isinstance(ts, datetime) or ts not in work.window:
                continue
            row = _clean(kind, gap["exchange"], record, now)
            if row is None:
                continue
            work.rows.append(row)
            missing.discard(seq)
            got += 1
        if got:
            outcome.sources.append(source.name)
    outcome.recovered = len(work.rows)


Key = tuple[str, str, int, datetime]


def _key(row: dict[str, Any]) -> Key:
    return row["exchange"], row["symbol"], row["exchange_sequence_number"], row["exchange_timestamp"]


def _append_once(table: Table, kind: Kind, rows: list[dict[str, Any]], *, retries: int, backoff: float) -> set[Key]:
    """Append the rows not already stored (same exchange, symbol, sequence number and exchange time); returns the
    keys written. The table is checked once and the files written once; each commit attempt then re-checks only the
    files other writers (the ingester, every second) added since, so the window between looking and committing
    stays short and a busy table does not starve the backfill."""
    checked_at = table.metadata.current_snapshot_id
    by_exchange: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_exchange[r["exchange"]].append(r)
    stored: set[Key] = set()
    for exchange, recs in by_exchange.items():
        seqs = [{"symbol": r["symbol"], "first_missing": r["exchange_sequence_number"]} for r in recs]
        for q in seqs:
            q["last_missing"] = q["first_missing"]
        stored |= {_key(s) for s in _stored(table, exchange, seqs, pad=0)}
    table_def = MARKET_TABLES[kind]
    carried = {name for r in rows for name in r}
    fresh = table_def.to_arrow([r for r in rows if _key(r) not in stored], extra=carried)
    evolve(table, table_def, fresh.column_names, writer=WRITER, retries=retries, backoff_seconds=backoff)
    fresh = conform(fresh, arrow_schema(table))
    files = write_files(table, fresh)
    written_in = table.metadata.current_schema_id

    def attempt(current: Table) -> set[Key]:
        nonlocal checked_at, fresh, files, written_in
        if current.metadata.current_schema_id != written_in:  # another writer changed the columns meanwhile
            fresh = conform(fresh, arrow_schema(current))
            delete_uncommitted(current, files)
            files = write_files(current, fresh)
            written_in = current.metadata.current_schema_id
        seen = keys_in_files(current, files_to_recheck(current, checked_at), fresh)
        checked_at = current.metadata.current_snapshot_id
        if seen.any():
            delete_uncommitted(current, files)
            fresh = fresh.filter(pa.array(~seen))
            files = write_files(current, fresh)
        if files:
            append_files(current, files, {WRITER_PROPERTY: WRITER})
        return {_key(r) for r in fresh.to_pylist()}

    try:
        return commit_with_retries(table, attempt, retries=retries, backoff_seconds=backoff, what="backfill append")
    except CommitConflictError:  # certainly not committed
        delete_uncommitted(table, files)
        raise


def _gap_rows(work: _Work, row: dict[str, Any], now: datetime, max_attempts: int) -> list[dict[str, Any]]:
    """The gap record (as it is now) split into filled and still-missing runs."""
    key = (row["data_type"], row["exchange"], row["symbol"])
    attempts = row["attempts"] + 1
    sources = ", ".join(work.outcome.sources)
    out = []
    for first, last, present in _runs(row["first_missing"], row["last_missing"], work.present):
        n = last - first + 1
        if present:
            recovered = any(first <= r["exchange_sequence_number"] <= last for r in work.rows)
            reason = f"recovered from {sources}" if recovered else "already stored"
            status, resolved = FILLED, now
        elif attempts >= max_attempts:
            status, resolved = UNRECOVERABLE, now
            reason = f"{n} sequence numbers not available from any recovery source after {attempts} attempts"
        else:
            status, resolved = OPEN, None
            reason = f"attempt {attempts}/{max_attempts}: {n} sequence numbers not available yet"
        out.append(
            {
                **row,
                "gap_id": gap_id(key, first, row.get("window_end")),
                "first_missing": first,
                "last_missing": last,
                "missing_count": n,
                "status": status,
                "resolved_at": resolved,
                "attempts": attempts,
                "reason": reason,
            }
        )
    return out


def _update_gaps(
    gaps_table: Table, work: list[_Work], now: datetime, *, max_attempts: int, retries: int, backoff: float
) -> None:
    by_id = {w.gap["gap_id"]: w for w in work}

    def attempt(current: Table) -> None:
        rows = read_gaps(current, gap_ids=by_id).to_pylist()
        out: list[dict[str, Any]] = []
        for row in rows:
            w = by_id[row["gap_id"]]
            if row["status"] != OPEN:  # closed meanwhile (the ingester got the numbers late, or another run)
                w.outcome.status = row["status"]
                continue
            new = _gap_rows(w, row, now, max_attempts)
            out.extend(new)
            statuses = {r["status"] for r in new}
            w.outcome.status = OPEN if OPEN in statuses else (UNRECOVERABLE if UNRECOVERABLE in statuses else FILLED)
            w.outcome.reason = (
                "; ".join(sorted({r["reason"] for r in new if r["status"] != FILLED})) or new[0]["reason"]
            )
            w.outcome.still_missing = sum(r["missing_count"] for r in new if r["status"] != FILLED)
        if out:
            current.upsert(GAPS.to_arrow(out), join_cols=["gap_id"])

    gaps_table.refresh()
    commit_with_retries(gaps_table, attempt, retries=retries, backoff_seconds=backoff, what="gap update")


def backfill(
    tables: Mapping[Kind, Table],
    gaps_table: Table,
    resolve: SourceResolver,
    now: datetime,
    *,
    max_attempts: int,
    min_age: timedelta,
    limit: int,
    retries: int,
    backoff_seconds: float,
    gap_ids: Collection[str] | None = None,
) -> BackfillReport:
    """One backfill pass over open gaps (the given ids, or all old enough, oldest first, at most `limit`)."""
    report = BackfillReport()
    gaps = open_gaps(gaps_table, now, min_age=min_age, gap_ids=gap_ids, limit=limit)
    if not gaps:
        return report
    groups: dict[tuple[Kind, str], list[dict[str, Any]]] = defaultdict(list)
    for g in gaps:
        groups[(g["data_type"], g["exchange"])].append(g)

    work: list[_Work] = []
    for (kind, exchange), group in sorted(groups.items()):
        table = tables[kind]
        table.refresh()
        stored = _stored(table, exchange, group, pad=1)
        recovered: list[dict[str, Any]] = []
        group_work: list[_Work] = []
        for g in group:
            window = gap_window(g, stored)
            present = {
                r["exchange_sequence_number"]
                for r in stored
                if r["symbol"] == g["symbol"]
                and g["first_missing"] <= r["exchange_sequence_number"] <= g["last_missing"]
                and r["exchange_timestamp"] in window
            }
            outcome = GapOutcome(g["gap_id"], kind, exchange, g["symbol"], g["first_missing"], g["last_missing"])
            outcome.already_stored = len(present)
            w = _Work(g, outcome, window, present)
            _recover(w, kind, resolve(exchange, g["symbol"]), now)
            w.present |= {r["exchange_sequence_number"] for r in w.rows}
            recovered.extend(w.rows)
            group_work.append(w)
        if recovered:
            written = _append_once(table, kind, recovered, retries=retries, backoff=backoff_seconds)
            if written:
                report.rows_written[kind] = report.rows_written.get(kind, 0) + len(written)
            for w in group_work:
                w.outcome.written += sum(1 for r in w.rows if _key(r) in written)
        work.extend(group_work)
    _update_gaps(gaps_table, work, now, max_attempts=max_attempts, retries=retries, backoff=backoff_seconds)
    report.outcomes = [w.outcome for w in work]
    log.info(
        "backfill pass finished",
        extra={
            "gaps": len(work),
            "filled": report.filled,
            "unrecoverable": report.unrecoverable,
            "still_open": report.still_open,
            "rows_written": sum(report.rows_written.values()),
        },
    )
    return report
