"""Batch planning on hand-made batches, without a broker or a table: what is stored, what is a duplicate, which gaps
are recorded, where a partition halts and how the plan is made again without what lies past the halt, which gaps
never halt, late numbers already stored, and history to load. The plan only stages: the tracker is untouched."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from k2_core.ingest.gaps import GapGrading
from k2_core.ingest.plan import KindRows, history_wanted, plan_batch
from k2_core.ingest.sequence import DAY_US, SequenceTracker, StreamKey
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import Kind

GRADING = GapGrading(alert_threshold=10, halt_threshold=100)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY1 = 20_000 * DAY_US  # an exchange day, µs
NOW_US = DAY1 + DAY_US // 2
P0, P1 = ("market.equities.trades.asx", 0), ("market.equities.trades.asx", 1)
Q0 = ("market.equities.quotes.asx", 0)
TPS = [P0, P1, Q0]
BHP: StreamKey = ("trades", "asx", "BHP")
CBA: StreamKey = ("trades", "asx", "CBA")


def at(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def record(kind: Kind, symbol: str, seq: int, ts_us: int) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "symbol": symbol,
        "exchange": "asx",
        "exchange_timestamp": at(ts_us),
        "exchange_sequence_number": seq,
        "ingestion_timestamp": at(ts_us),
    }
    if kind == "trades":
        return rec | {"price": Decimal("45.1"), "volume": Decimal(100), "side": "buy", "trade_id": f"{symbol}-{seq}"}
    return rec | {"bid_price": Decimal(1), "bid_size": Decimal(1), "ask_price": Decimal(2), "ask_size": Decimal(1)}


def arrow(kind: Kind, records: list[dict[str, Any]]) -> pa.Table:
    """In batch order, as decoded (the plan never relies on an order)."""
    return pa.Table.from_pylist(records, schema=MARKET_TABLES[kind].arrow_schema)


def rows(kind: Kind, messages: list[tuple[str, int, tuple[str, int], int]], ts0: int = DAY1) -> KindRows:
    """(symbol, seq, partition, offset) per message, in batch order; a number's exchange time is ts0 + seq ms."""
    table = arrow(kind, [record(kind, s, seq, ts0 + seq * 1000) for s, seq, _, _ in messages])
    return KindRows(
        kind,
        table,
        np.array([TPS.index(tp) for _, _, tp, _ in messages], dtype=np.int64),
        np.array([o for _, _, _, o in messages], dtype=np.int64),
        np.arange(len(messages), dtype=np.int64),
    )


def seqs(table: pa.Table) -> list[tuple[str, int]]:
    symbols, numbers = table.column("symbol").to_pylist(), table.column("exchange_sequence_number").to_pylist()
    return sorted(zip(symbols, numbers, strict=True))


def tracker_with(*committed: tuple[StreamKey, list[int]], ts0: int = DAY1) -> SequenceTracker:
    """A tracker that has seen these numbers (each at ts0 + seq ms)."""
    tracker = SequenceTracker(DAY_US)
    txn = tracker.begin()
    for key, numbers in committed:
        for seq in numbers:
            txn.observe(key, seq, ts0 + seq * 1000, NOW_US)
    txn.commit()
    return tracker


def test_a_clean_batch_is_stored_whole_and_the_tracker_is_only_staged() -> None:
    tracker = tracker_with((BHP, [1, 2]))
    before = copy.deepcopy(tracker.streams)
    batch = rows("trades", [("BHP", 3, P0, 10), ("CBA", 1, P1, 4), ("BHP", 4, P0, 11), ("CBA", 2, P1, 5)])
    plan = plan_batch({"trades": batch}, TPS, tracker, NOW_US, GRADING)
    assert seqs(plan.rows["trades"]) == [("BHP", 3), ("BHP", 4), ("CBA", 1), ("CBA", 2)]
    assert (plan.detected, plan.filled, plan.halts) == ([], [], {})
    assert plan.duplicates["trades"] == 0
    assert tracker.streams == before  # nothing merged before the data commit
    plan.txns["trades"].commit()
    newest = tracker.streams[BHP].newest
    assert newest is not None
    assert newest.top == 4
    assert plan.commit_offsets({P0: 12, P1: 6}) == {P0: 12, P1: 6}


def test_numbers_already_seen_or_repeated_in_the_batch_are_duplicates() -> None:
    tracker = tracker_with((BHP, [1, 2, 3]))
    batch = rows("trades", [("BHP", 2, P0, 0), ("BHP", 4, P0, 1), ("BHP", 4, P0, 2), ("BHP", 5, P0, 3)])
    plan = plan_batch({"trades": batch}, TPS, tracker, NOW_US, GRADING)
    assert seqs(plan.rows["trades"]) == [("BHP", 4), ("BHP", 5)]
    assert plan.duplicates["trades"] == 2


def test_a_gap_within_the_halt_threshold_is_recorded_and_the_rows_are_stored() -> None:
    tracker = tracker_with((BHP, [1]))
    plan = plan_batch({"trades": rows("trades", [("BHP", 50, P0, 0)])}, TPS, tracker, NOW_US, GRADING)
    assert [(g.key, g.first, g.last) for g in plan.detected] == [(BHP, 2, 49)]
    assert plan.halts == {}
    assert seqs(plan.rows["trades"]) == [("BHP", 50)]


def test_a_gap_past_the_halt_threshold_stops_its_partition_at_the_revealing_message() -> None:
    tracker = tracker_with((BHP, [1]), (CBA, [1]))
    batch = rows(
        "trades",
        [
            ("BHP", 2, P0, 20),
            ("BHP", 500, P0, 21),  # reveals 3..499: a halt
            ("CBA", 2, P1, 7),
            ("BHP", 3, P0, 22),  # in order, but past the halt in its partition: read again after the restart
            ("CBA", 3, P1, 8),
        ],
    )
    plan = plan_batch({"trades": batch}, TPS, tracker, NOW_US, GRADING)
    (halt,) = plan.halts.values()
    assert list(plan.halts) == [P0]
    assert halt.offset == 21
    assert (halt.gap.first, halt.gap.last) == (4, 499)
    assert seqs(plan.rows["trades"]) == [("BHP", 2), ("CBA", 2), ("CBA", 3)]
    assert [(g.first, g.last) for g in plan.detected] == [(4, 499)]  # recorded: the restart is the go-ahead
    assert plan.commit_offsets({P0: 23, P1: 9}) == {P0: 21, P1: 9}
    assert [plan.beyond_halt(P0, o) for o in (20, 21, 22)] == [False, True, True]
    assert not plan.beyond_halt(P1, 100)


def test_the_plan_is_made_again_when_a_later_data_type_halts() -> None:
    """Quotes are planned before trades; a halt found in trades makes the whole plan again, so the staged state
    of every data type is the final plan's, and nothing of the first attempt leaks into it."""
    tracker = tracker_with((BHP, [1]), (("quotes", "asx", "BHP"), [1]))
    quotes = rows("quotes", [("BHP", 2, Q0, 0), ("BHP", 3, Q0, 1)])
    trades = rows("trades", [("BHP", 2, P0, 0), ("BHP", 900, P0, 1)])
    plan = plan_batch({"quotes": quotes, "trades": trades}, TPS, tracker, NOW_US, GRADING)
    assert list(plan.halts) == [P0]
    assert seqs(plan.rows["quotes"]) == [("BHP", 2), ("BHP", 3)]
    assert seqs(plan.rows["trades"]) == [("BHP", 2)]
    assert [(g.key[0], g.first, g.last) for g in plan.detected] == [("trades", 3, 899)]
    assert [e.key for e in plan.txns["trades"].events] == []  # the halting gap is not staged, only recorded


def test_a_partition_whose_every_row_is_past_its_halt_plans_nothing() -> None:
    tracker = tracker_with((BHP, [1]))
    plan = plan_batch({"trades": rows("trades", [("BHP", 700, P0, 5)])}, TPS, tracker, NOW_US, GRADING)
    assert plan.halts[P0].offset == 5
    assert plan.rows["trades"].num_rows == 0
    assert "trades" not in plan.txns


def test_a_sessions_missing_head_never_halts() -> None:
    """The stream restarted its numbers (a later exchange time, a number below the top) at 500: 1..499 are the new
    session's missing head, recorded but never a halt, since the rows after it are in order."""
    tracker = tracker_with((BHP, list(range(1, 1001))))
    batch = rows("trades", [("BHP", 500, P0, 0), ("BHP", 501, P0, 1)], ts0=DAY1 + 10 * DAY_US // 24)
    plan = plan_batch({"trades": batch}, TPS, tracker, NOW_US, GRADING)
    assert plan.halts == {}
    assert [(g.first, g.last, g.head) for g in plan.detected] == [(1, 499, True)]
    assert seqs(plan.rows["trades"]) == [("BHP", 500), ("BHP", 501)]


def test_a_gap_left_by_shedding_never_halts() -> None:
    tracker = tracker_with((BHP, [1]))
    plan = plan_batch({"trades": rows("trades", [("BHP", 900, P0, 0)])}, TPS, tracker, NOW_US, GRADING, shed={BHP})
    assert plan.halts == {}
    assert [(g.first, g.last) for g in plan.detected] == [(2, 899)]


def test_late_numbers_fill_recorded_gaps_and_are_kept_until_the_table_says_it_has_them() -> None:
    tracker = tracker_with((BHP, [1, 10]))  # 2..9 recorded open
    batch = rows("trades", [("BHP", 11, P0, 0), ("BHP", 4, P0, 1), ("BHP", 6, P0, 2)])
    plan = plan_batch({"trades": batch}, TPS, tracker, NOW_US, GRADING)
    assert sorted((e.first, e.last) for e in plan.filled) == [(4, 4), (6, 6)]
    assert seqs(plan.late["trades"].table) == [("BHP", 4), ("BHP", 6)]
    fills, checked_at = plan.fills["trades"]
    assert seqs(fills) == [("BHP", 4), ("BHP", 6)]
    assert checked_at is None  # not looked up: the writer checks them against every file

    # the gap backfill stored 4 meanwhile (as of snapshot 42): it is a duplicate now; 6 stays a fill to re-check
    stored = np.array([seq == 4 for _, seq in seqs(plan.late["trades"].table)])
    plan.drop_stored("trades", stored, 42)
    assert seqs(plan.rows["trades"]) == [("BHP", 6), ("BHP", 11)]
    assert plan.duplicates["trades"] == 1
    fills, checked_at = plan.fills["trades"]
    assert seqs(fills) == [("BHP", 6)]
    assert checked_at == 42
    assert plan.late == {}


def test_late_numbers_none_of_which_are_stored_are_all_kept() -> None:
    tracker = tracker_with((BHP, [1, 10]))
    plan = plan_batch({"trades": rows("trades", [("BHP", 3, P0, 0)])}, TPS, tracker, NOW_US, GRADING)
    plan.drop_stored("trades", np.array([False]), 7)
    assert seqs(plan.rows["trades"]) == [("BHP", 3)]
    assert plan.duplicates["trades"] == 0
    assert seqs(plan.fills["trades"][0]) == [("BHP", 3)]


def test_two_sessions_in_one_batch_fall_in_their_own_sessions() -> None:
    """Yesterday's tail and today's restart in one batch (an ingester catching up across a daily reset), delivered
    out of order: planned in exchange-time order, no number of either is a duplicate of the other."""
    today = DAY1 + DAY_US
    table = arrow(
        "trades",
        [record("trades", "BHP", s, today + s * 1000) for s in (1, 2)]
        + [record("trades", "BHP", s, DAY1 + s * 1000) for s in (1, 2, 3)],
    )
    batch = KindRows("trades", table, np.zeros(5, dtype=np.int64), np.arange(5), np.arange(5))
    plan = plan_batch({"trades": batch}, TPS, SequenceTracker(DAY_US), today + DAY_US // 2, GRADING)
    assert plan.rows["trades"].num_rows == 5
    assert plan.duplicates["trades"] == 0


def test_rows_older_than_the_horizon_want_their_stream_days_loaded_first() -> None:
    tracker = SequenceTracker(DAY_US)
    tracker.horizon_us = DAY1 + 5 * DAY_US
    tracker.loaded_days[CBA] = {20_001}
    batch = rows(
        "trades",
        [
            ("BHP", 1, P0, 0),  # day 20000, before the horizon
            ("CBA", 1, P1, 0),
            ("BHP", 2, P0, 1),
        ],
    )
    cba_later = rows("trades", [("CBA", 1, P1, 1)], ts0=DAY1 + DAY_US)  # day 20001: loaded already
    live = rows("trades", [("BHP", 9, P0, 2)], ts0=DAY1 + 6 * DAY_US)
    assert history_wanted(tracker, {"trades": batch}) == {(BHP, 20_000), (CBA, 20_000)}
    assert history_wanted(tracker, {"trades": cba_later}) == set()
    assert history_wanted(tracker, {"trades": live}) == set()
