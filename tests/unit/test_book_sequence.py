"""Per-symbol book sequence tracking (k2_core.ingest.book_sequence): re-delivery dropped, a gap recorded and the
book invalid until a snapshot that includes the missing numbers, and a tracker rebuilt from what was stored decides
a replayed batch as the first one did."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa

from k2_core.ingest.book_sequence import BookStreams
from k2_core.ingest.gaps import event_gap_id
from k2_core.model.books import Book, update_record
from k2_core.model.tables import BOOK_INVALID, BOOK_VALID, BOOK_VALIDITY

T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


def at(i: int) -> datetime:
    return T0 + timedelta(milliseconds=i)


def upd(seq: int, symbol: str = "BHP") -> tuple[str, dict[str, Any]]:
    return "book_updates", update_record(symbol, "asx", at(seq), seq, "bid", Decimal(1), Decimal(seq), at(seq))


def snap(seq: int, symbol: str = "BHP", when: int | None = None) -> tuple[str, dict[str, Any]]:
    return "book_snapshots", Book(seq).snapshot_record(symbol, "asx", at(seq if when is None else when), NOW)


def test_in_order_updates_and_snapshots_are_kept_and_re_delivery_is_dropped() -> None:
    streams = BookStreams(event_gap_id)
    batch = [snap(0), *(upd(i) for i in range(1, 6)), snap(5), upd(6, "CBA")]
    first = streams.decide(batch, NOW)
    assert [r["exchange_sequence_number"] for r in first.updates] == [1, 2, 3, 4, 5, 6]
    assert len(first.snapshots) == 2
    assert first.gaps == []
    assert first.validity == []
    again = streams.decide(batch, NOW)
    assert again.updates == []
    assert again.snapshots == []
    assert again.duplicates == len(batch)
    assert again.duplicate_snapshots == 2


def test_a_gap_makes_the_book_invalid_until_a_snapshot_that_includes_it() -> None:
    streams = BookStreams(event_gap_id)
    out = streams.decide([snap(0), upd(1), upd(2), upd(5), upd(6), snap(6, when=7)], NOW)
    (gap,) = out.gaps
    assert (gap.key, gap.first, gap.last) == (("book_updates", "asx", "BHP"), 3, 4)
    states = [(v["state"], v["at"], v["sequence"]) for v in out.validity]
    # invalid from the last update before the gap; the snapshot at 6 includes the missing numbers and heals it
    assert states == [(BOOK_INVALID, at(2), 2), (BOOK_VALID, at(7), 6)]
    assert out.healed == [event_gap_id(gap)]
    assert [r["exchange_sequence_number"] for r in out.updates] == [1, 2, 5, 6]


def test_a_snapshot_ahead_of_the_updates_records_the_updates_it_skipped() -> None:
    streams = BookStreams(event_gap_id)
    out = streams.decide([snap(0), upd(1), snap(4), upd(5)], NOW)
    (gap,) = out.gaps
    assert (gap.first, gap.last) == (2, 4)
    assert [v["state"] for v in out.validity] == [BOOK_INVALID, BOOK_VALID]
    assert [r["exchange_sequence_number"] for r in out.updates] == [1, 5]  # 5 follows the snapshot: no new gap


def _keys(records: list[dict[str, Any]]) -> pa.Table:
    cols = ("exchange", "symbol", "exchange_sequence_number", "exchange_timestamp")
    return pa.Table.from_pylist([{c: r[c] for c in cols} for r in records])


def test_a_tracker_rebuilt_from_the_tables_decides_a_replayed_batch_as_the_first() -> None:
    """A crash after the snapshots were stored but before the updates: the replay stores the updates only."""
    first = BookStreams(event_gap_id)
    stored = first.decide([snap(0), upd(1), upd(2)], NOW)
    replayed_batch = [upd(3), upd(6), snap(6)]
    decided = first.decide(replayed_batch, NOW)
    reloaded = BookStreams(event_gap_id)
    reloaded.load(
        _keys(stored.updates),
        _keys([*stored.snapshots, *decided.snapshots]),  # the snapshots made it, the updates did not
        BOOK_VALIDITY.to_arrow(decided.validity),
        {},
    )
    again = reloaded.decide(replayed_batch, NOW)
    assert [r["exchange_sequence_number"] for r in again.updates] == [3, 6]
    assert again.snapshots == []
    assert [(g.first, g.last) for g in again.gaps] == [(g.first, g.last) for g in decided.gaps] == [(4, 5)]
    assert again.healed == decided.healed  # the stored snapshot healed it: the book is known again
    assert reloaded.stream("asx", "BHP").open_gap is None


def test_an_invalid_book_stays_invalid_across_a_restart() -> None:
    first = BookStreams(event_gap_id)
    out = first.decide([snap(0), upd(1), upd(4)], NOW)
    reloaded = BookStreams(event_gap_id)
    reloaded.load(_keys(out.updates), _keys(out.snapshots), BOOK_VALIDITY.to_arrow(out.validity), {})
    healed = reloaded.decide([upd(5), snap(5)], NOW)
    assert [v["state"] for v in healed.validity] == [BOOK_VALID]
    assert healed.healed == [event_gap_id(out.gaps[0])]


def later(i: int) -> datetime:
    return T0 + timedelta(hours=2, milliseconds=i)


def test_a_feed_that_restarts_its_numbers_starts_a_new_session_not_duplicates() -> None:
    """After a feed handler restart its numbers begin again, timed after everything stored: kept, not dropped."""
    streams = BookStreams(event_gap_id)
    streams.decide([snap(0), *(upd(i) for i in range(1, 11)), snap(10)], NOW)
    new_snapshot = ("book_snapshots", Book(0).snapshot_record("BHP", "asx", later(0), NOW))
    new_updates = [
        ("book_updates", update_record("BHP", "asx", later(i), i, "ask", Decimal(2), Decimal(i), later(i)))
        for i in range(1, 4)
    ]
    out = streams.decide([new_snapshot, *new_updates], NOW)
    assert len(out.snapshots) == 1
    assert [r["exchange_sequence_number"] for r in out.updates] == [1, 2, 3]
    assert out.gaps == []
    assert out.validity == []
    again = streams.decide([new_snapshot, *new_updates], NOW)  # re-delivery of the new session
    assert again.duplicates == 4
    reloaded = BookStreams(event_gap_id)
    stored_updates = [*(upd(i)[1] for i in range(1, 11)), *(r for _, r in new_updates)]
    stored_snapshots = [snap(0)[1], snap(10)[1], new_snapshot[1]]
    reloaded.load(_keys(stored_updates), _keys(stored_snapshots), BOOK_VALIDITY.to_arrow([]), {})
    assert reloaded.stream("asx", "BHP").last_update == 3  # the newest by time, not the highest number
    assert reloaded.decide([new_snapshot, *new_updates], NOW).duplicates == 4


def test_a_session_that_begins_without_a_snapshot_is_unknown_until_one_comes() -> None:
    streams = BookStreams(event_gap_id)
    streams.decide([snap(0), *(upd(i) for i in range(1, 11))], NOW)
    first = ("book_updates", update_record("BHP", "asx", later(5), 5, "bid", Decimal(1), Decimal(1), later(5)))
    out = streams.decide([first], NOW)
    assert [r["exchange_sequence_number"] for r in out.updates] == [5]
    assert [(v["state"], v["at"]) for v in out.validity] == [(BOOK_INVALID, later(5))]
    healing = ("book_snapshots", Book(5).snapshot_record("BHP", "asx", later(6), NOW))
    healed = streams.decide([healing], NOW)
    assert [(v["state"], v["at"]) for v in healed.validity] == [(BOOK_VALID, later(6))]


def test_unknown_books_are_reported_since_they_became_unknown_also_across_a_restart() -> None:
    """`unknown()` (the book ingester's k2_books_unknown and /health): from the gap's detection until a snapshot
    heals it; a tracker filled from the stored rows of one book only (`add`) takes the time the gap was recorded."""
    streams = BookStreams(event_gap_id)
    first = streams.decide([snap(0), upd(1), upd(4), snap(0, "CBA"), upd(1, "CBA")], NOW)
    assert streams.unknown() == {("asx", "BHP"): NOW}
    later_batch = streams.decide([upd(5)], NOW + timedelta(minutes=1))
    assert [r["exchange_sequence_number"] for r in later_batch.updates] == [5]
    assert streams.unknown() == {("asx", "BHP"): NOW}  # since the first detection
    stored_updates = [r for r in first.updates + later_batch.updates if r["symbol"] == "BHP"]
    validity = BOOK_VALIDITY.to_arrow(first.validity)
    reloaded = BookStreams(event_gap_id)
    reloaded.add([("asx", "BHP")], _keys(stored_updates), _keys(first.snapshots), validity, {})
    assert set(reloaded.streams) == {("asx", "BHP")}  # CBA is filled when it is needed, not before
    assert reloaded.unknown() == {("asx", "BHP"): NOW}  # the validity row's recorded_at
    assert reloaded.stream("asx", "BHP").last_update == 5
    healed = reloaded.decide([upd(6), snap(6)], NOW + timedelta(minutes=2))
    assert healed.gaps == []
    assert [v["state"] for v in healed.validity] == [BOOK_VALID]
    assert reloaded.unknown() == {}


def test_a_new_sessions_snapshot_heals_the_gap_the_session_before_left_open() -> None:
    """A gap in one day's file stays open to its end; the next day's file (numbered from its own start, a new
    session) opens with a snapshot, and the book is known again from it."""
    streams = BookStreams(event_gap_id)
    first = streams.decide([snap(0), upd(1), upd(2), upd(4), upd(5)], NOW)
    (gap,) = first.gaps
    assert [v["state"] for v in first.validity] == [BOOK_INVALID]
    opening = ("book_snapshots", Book(0).snapshot_record("BHP", "asx", later(0), NOW))
    out = streams.decide([opening], NOW)
    assert len(out.snapshots) == 1
    assert out.gaps == []
    assert [(v["state"], v["at"], v["sequence"]) for v in out.validity] == [(BOOK_VALID, later(0), 0)]
    assert out.healed == [event_gap_id(gap)]
    assert streams.stream("asx", "BHP").open_gap is None
