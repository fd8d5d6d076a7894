"""Per-symbol sequence tracking of level-2 books: what to store, what is a duplicate, when a book becomes unknown.

A book's updates are numbered per symbol without holes, and a snapshot carries the number of the last update it
includes. In stream order (a symbol's snapshots and updates share a partition), for each record:

- an update numbered at or below the last stored update is a re-delivery: dropped (as trades dedup by their key);
- an update above the next number reveals a gap: the missing numbers are a `sequence_gaps` row (data type
  `book_updates`, graded like trade gaps) and the book is INVALID from the last update before the gap (a
  `book_validity` row): nothing stored can rebuild it until a snapshot includes the missing numbers;
- a snapshot at or below the last stored snapshot is a re-delivery; one above the last update seen says the updates
  between were never received (a gap too, healed at once by that snapshot); one that covers the open gap's last
  missing number heals the book (a `book_validity` row: VALID from the snapshot's time).

A record numbered at or below what is stored but timed after everything stored is a new session (a feed handler
restarted and numbers its book from the start again, as the simulator does): kept, with the stream started afresh;
a new session that begins with an update rather than a snapshot leaves the book INVALID until its first snapshot,
and a new session's snapshot makes the book known again whatever gap the session before left open (a day's file of
`k2 import`, numbered from its own start, is such a session).

The tracker is pure: the book ingester (k2_stream.book_ingester) feeds it a batch and commits what it decided, and
fills it from the tables (`BookStreams.add`, with what k2_core.ingest.book_state reads: each instrument's newest day
only) before the first record of an instrument is decided, so a replayed batch, or the first batch after a restart,
decides the same as if the tracker had never stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from k2_core.ingest.sequence import GapEvent
from k2_core.model.tables import BOOK_INVALID, BOOK_VALID

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BOOK_GAP_KIND = "book_updates"  # the data_type of a book gap in sequence_gaps
Instrument = tuple[str, str]  # (exchange, symbol)


def _us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


@dataclass
class BookStream:
    """What is stored of one instrument's book: the last update and snapshot numbers, the last update's time, and
    the open gap (first and last missing number) while the book is invalid."""

    last_update: int | None = None
    last_update_at: datetime | None = None
    last_snapshot: int | None = None
    open_gap: tuple[int, int] | None = None
    gap_id: str | None = None
    last_at: datetime | None = None  # the newest exchange time stored, of an update or a snapshot
    unknown_since: datetime | None = None  # wall time the book became unknown (while `open_gap` is set)

    def restarts(self, seq: int, at: datetime, stored: int | None) -> bool:
        """A number at or below the stored one, timed after everything stored: the feed began a new session
        (numbers restart, as after a feed handler's restart). A re-delivered record is never timed after what is
        stored, since it is stored itself."""
        return stored is not None and seq <= stored and self.last_at is not None and at > self.last_at

    def new_session(self) -> None:
        self.last_update = self.last_snapshot = None
        self.last_update_at = None

    def stored(self, at: datetime) -> None:
        self.last_at = at if self.last_at is None else max(self.last_at, at)


@dataclass
class BookDecisions:
    """One batch's outcome: rows to append per table, gaps found, validity changes, the gap ids healed."""

    updates: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[GapEvent] = field(default_factory=list)
    validity: list[dict[str, Any]] = field(default_factory=list)
    healed: list[str] = field(default_factory=list)
    duplicates: int = 0  # of both record types
    duplicate_snapshots: int = 0


class BookStreams:
    def __init__(self, gap_id_of: Any) -> None:
        """`gap_id_of(GapEvent) -> str`: how sequence_gaps names a gap (k2_core.ingest.gaps.gap_id)."""
        self.streams: dict[Instrument, BookStream] = {}
        self._gap_id_of = gap_id_of

    def stream(self, exchange: str, symbol: str) -> BookStream:
        return self.streams.setdefault((exchange, symbol), BookStream())

    def decide(self, records: list[tuple[str, dict[str, Any]]], now: datetime) -> BookDecisions:
        """Decide a batch of (record type, record) in stream order. The tracker moves as it decides: a batch that
        fails to commit must be decided again from a tracker reloaded from the tables."""
        out = BookDecisions()
        for record_type, r in records:
            s = self.stream(r["exchange"], r["symbol"])
            if record_type == "book_updates":
                self._update(s, r, now, out)
            else:
                self._snapshot(s, r, now, out)
        return out

    def _update(self, s: BookStream, r: dict[str, Any], now: datetime, out: BookDecisions) -> None:
        seq, at = r["exchange_sequence_number"], r["exchange_timestamp"]
        if s.restarts(seq, at, s.last_update):
            # A new session without its snapshot yet: the book is unknown until one comes.
            s.new_session()
            out.validity.append(_validity(r["exchange"], r["symbol"], at, BOOK_INVALID, seq - 1, None, now))
            s.open_gap, s.gap_id = (1, seq - 1), None
            s.unknown_since = s.unknown_since or now
        elif s.last_update is not None and seq <= s.last_update:
            out.duplicates += 1
            return
        # The number after the last stored update, or after a newer snapshot (which holds the updates between).
        follows_snapshot = s.last_snapshot is not None and seq == s.last_snapshot + 1
        if s.last_update is not None and seq > s.last_update + 1 and not follows_snapshot:
            self._gap(s, r, s.last_update + 1, seq - 1, now, out)
        s.last_update, s.last_update_at = seq, at
        s.stored(at)
        out.updates.append(r)

    def _snapshot(self, s: BookStream, r: dict[str, Any], now: datetime, out: BookDecisions) -> None:
        seq, at = r["exchange_sequence_number"], r["exchange_timestamp"]
        restarted = s.restarts(seq, at, s.last_snapshot) or s.restarts(seq + 1, at, s.last_update)
        if restarted:
            s.new_session()  # a new session's snapshot: the book is known from it, whatever the last one missed
        if s.last_snapshot is not None and seq <= s.last_snapshot:
            out.duplicates += 1
            out.duplicate_snapshots += 1
            if s.open_gap is not None and seq >= s.open_gap[1]:
                # A replayed batch re-found a gap this stored snapshot healed: its VALID row was recorded before
                # the snapshot was stored (validity precedes data), so the book is known again already.
                out.healed += [s.gap_id] if s.gap_id is not None else []
                s.open_gap, s.gap_id, s.unknown_since = None, None, None
            return
        if s.last_update is not None and seq > s.last_update:
            # Updates the snapshot includes never arrived: the book between them was unknown until now.
            self._gap(s, r, s.last_update + 1, seq, now, out)
        if s.open_gap is not None and (restarted or seq >= s.open_gap[1]):
            out.validity.append(
                _validity(r["exchange"], r["symbol"], r["exchange_timestamp"], BOOK_VALID, seq, None, now)
            )
            if s.gap_id is not None:
                out.healed.append(s.gap_id)
            s.open_gap, s.gap_id, s.unknown_since = None, None, None
        s.last_snapshot = seq
        s.stored(at)
        out.snapshots.append(r)

    def _gap(self, s: BookStream, r: dict[str, Any], first: int, last: int, now: datetime, out: BookDecisions) -> None:
        since = s.last_update_at or r["exchange_timestamp"]
        event = GapEvent(
            (BOOK_GAP_KIND, r["exchange"], r["symbol"]),
            first,
            last,
            window_start=_us(since),
            window_end=_us(r["exchange_timestamp"]),
        )
        out.gaps.append(event)
        gap_id = self._gap_id_of(event)
        out.validity.append(_validity(r["exchange"], r["symbol"], since, BOOK_INVALID, first - 1, gap_id, now))
        s.open_gap = (first, last) if s.open_gap is None else (s.open_gap[0], last)
        s.gap_id = gap_id
        s.unknown_since = s.unknown_since or now

    def unknown(self) -> dict[Instrument, datetime]:
        """The books held unknown (a gap no snapshot has healed yet), each with the wall time it became unknown.
        Safe to call from another thread (a status endpoint) while a batch is decided: it reads a copy."""
        return {key: s.unknown_since or EPOCH for key, s in list(self.streams.items()) if s.open_gap is not None}

    def load(
        self, updates: pa.Table, snapshots: pa.Table, validity: pa.Table, open_gap_ids: dict[Instrument, str]
    ) -> None:
        """Rebuild from everything stored (`add` for every instrument the rows name, on an empty tracker)."""
        self.streams.clear()
        keys = {
            (e, s)
            for t in (updates, snapshots, validity)
            for e, s in zip(t.column("exchange").to_pylist(), t.column("symbol").to_pylist(), strict=True)
        }
        self.add(keys, updates, snapshots, validity, open_gap_ids)

    def add(
        self,
        instruments: Iterable[Instrument],
        updates: pa.Table,
        snapshots: pa.Table,
        validity: pa.Table,
        open_gap_ids: Mapping[Instrument, str],
    ) -> None:
        """Set `instruments` to what is stored of them (each afresh, one stored nowhere as a new book): `updates` and
        `snapshots` hold (exchange, symbol, exchange_sequence_number, exchange_timestamp) of at least each one's
        newest stored rows (feed snapshots only), `validity` its book_validity rows; an instrument whose newest
        validity row is INVALID has its gap open again (`open_gap_ids`: its gap's id). The last number of each is
        the newest record's by time (a later session restarts its numbers). Rows of other instruments are ignored."""
        wanted = set(instruments)
        for key in wanted:
            self.streams[key] = BookStream()
        newest_snapshot: dict[Instrument, tuple[datetime, int]] = {}
        for row in updates.to_pylist():
            key = (row["exchange"], row["symbol"])
            if key not in wanted:
                continue
            s = self.streams[key]
            seq, at = row["exchange_sequence_number"], row["exchange_timestamp"]
            if s.last_update_at is None or (at, seq) > (s.last_update_at, s.last_update or 0):
                s.last_update, s.last_update_at = seq, at
            s.stored(at)
        for row in snapshots.to_pylist():
            key = (row["exchange"], row["symbol"])
            if key not in wanted:
                continue
            seq, at = row["exchange_sequence_number"], row["exchange_timestamp"]
            newest_snapshot[key] = max(newest_snapshot.get(key, (at, seq)), (at, seq))
            self.streams[key].stored(at)
        for key, (_, seq) in newest_snapshot.items():
            self.streams[key].last_snapshot = seq
        newest: dict[Instrument, dict[str, Any]] = {}
        for row in validity.to_pylist():
            key = (row["exchange"], row["symbol"])
            if key not in wanted:
                continue
            if key not in newest or (row["at"], row["sequence"]) >= (newest[key]["at"], newest[key]["sequence"]):
                newest[key] = row
        for key, row in newest.items():
            if row["state"] == BOOK_INVALID:
                s = self.streams[key]
                s.gap_id = row["gap_id"] or open_gap_ids.get(key)
                s.open_gap = (row["sequence"] + 1, max(s.last_update or 0, row["sequence"] + 1))
                s.unknown_since = row.get("recorded_at")


def _validity(
    exchange: str, symbol: str, at: datetime, state: str, sequence: int, gap_id: str | None, now: datetime
) -> dict[str, Any]:
    return {
        "exchange": exchange,
        "symbol": symbol,
        "at": at,
        "state": state,
        "sequence": sequence,
        "gap_id": gap_id,
        "recorded_at": now,
    }
