"""The sequence tracker on hand-made streams: dedup, gaps, late fills, and sessions told apart by exchange time
(issue 12's F1 and F2 cases among them)."""

from __future__ import annotations

from k2_core.ingest.sequence import DAY_US, GapEvent, SequenceTracker, Session, Verdict

KEY = ("trades", "asx", "BHP")
DAY1, DAY2 = 20_000 * DAY_US, 20_001 * DAY_US  # two exchange days (µs), the second's numbers restart


def observe_all(
    tracker: SequenceTracker, rows: list[tuple[int, int]] | list[int], now: int = 0
) -> list[tuple[Verdict, GapEvent | None]]:
    """Observe (seq, exchange ts) rows in this order, committed at the end; a bare number is its own time."""
    txn = tracker.begin()
    out = [txn.observe(KEY, *(r if isinstance(r, tuple) else (r, r)), now_us=now) for r in rows]
    txn.commit()
    return out


def day(start: int, seqs: range) -> list[tuple[int, int]]:
    return [(s, start + s * 1_000_000) for s in seqs]


def sessions(tracker: SequenceTracker) -> list[tuple[list[int], list[int], list[tuple[int, int]]]]:
    return [(s.los, s.his, [(g[0], g[1]) for g in s.recorded]) for s in tracker.streams[KEY].sessions]


def test_in_order_sequence_is_all_new_without_gaps() -> None:
    tracker = SequenceTracker(DAY_US)
    out = observe_all(tracker, list(range(1, 101)))
    assert all(v is Verdict.NEW and g is None for v, g in out)
    assert sessions(tracker) == [([1], [100], [])]


def test_duplicates_are_detected_and_gaps_reported_once() -> None:
    tracker = SequenceTracker(DAY_US)
    out = observe_all(tracker, [1, 2, 2, 3, 7, 7, 8])
    verdicts = [v for v, _ in out]
    assert verdicts == [
        Verdict.NEW,
        Verdict.NEW,
        Verdict.DUPLICATE,
        Verdict.NEW,
        Verdict.NEW,
        Verdict.DUPLICATE,
        Verdict.NEW,
    ]
    gaps = [g for _, g in out if g is not None]
    assert [(g.first, g.last, g.missing) for g in gaps] == [(4, 6, 3)]


def test_late_arrival_fills_part_of_a_recorded_gap() -> None:
    tracker = SequenceTracker(DAY_US)
    observe_all(tracker, [1, 10])
    txn = tracker.begin()
    assert txn.observe(KEY, 5, 5, 0) == (Verdict.FILL, None)
    assert txn.observe(KEY, 5, 5, 0) == (Verdict.DUPLICATE, None)
    assert [(e.first, e.last, e.filled) for e in txn.events] == [(5, 5, True)]
    txn.commit()
    assert sessions(tracker)[0][2] == [(2, 4), (6, 9)]


def test_uncommitted_txn_leaves_tracker_untouched() -> None:
    tracker = SequenceTracker(DAY_US)
    observe_all(tracker, [1, 2, 3])
    txn = tracker.begin()
    txn.observe(KEY, 4, 4, 0)
    txn.observe(KEY, 9, 9, 0)
    # dropped without commit: the same numbers are new again
    txn2 = tracker.begin()
    assert txn2.observe(KEY, 4, 4, 0)[0] is Verdict.NEW
    assert sessions(tracker) == [([1], [3], [])]


def test_recorded_gap_is_not_reported_again_after_reload() -> None:
    tracker = SequenceTracker(DAY_US)
    tracker.load([(KEY, Session(1, [1], [50], [0], 50))], [(KEY, (51, 250, 50, 251))])
    txn = tracker.begin()
    assert txn.observe(KEY, 251, 251, 0) == (Verdict.NEW, None)
    assert txn.observe(KEY, 20, 20, 0)[0] is Verdict.DUPLICATE


def test_session_reset_starts_a_new_baseline() -> None:
    tracker = SequenceTracker(DAY_US)
    observe_all(tracker, [1, 2, 3])
    txn = tracker.begin()
    assert txn.observe(KEY, 1, exchange_ts_us=1_000, now_us=0) == (Verdict.NEW, None)
    # a replayed old seq 1 (older timestamp) is still a duplicate
    assert txn.observe(KEY, 1, exchange_ts_us=1, now_us=0)[0] is Verdict.DUPLICATE


def test_numbers_below_baseline_are_new_and_only_what_lies_between_is_a_gap() -> None:
    tracker = SequenceTracker(DAY_US)
    observe_all(tracker, [500, 501])  # no gap below the first number K2 sees
    out = observe_all(tracker, [499, 300, 300])
    assert [v for v, _ in out] == [Verdict.NEW, Verdict.NEW, Verdict.DUPLICATE]
    [gap] = [g for _, g in out if g is not None]
    assert (gap.first, gap.last, gap.head) == (301, 498, True)  # known missing now; a head gap never halts


def test_yesterdays_tail_and_todays_restart_in_one_batch_keep_both() -> None:
    """F1: an ingester catching up after downtime across a daily reset, in exchange-time order."""
    tracker = SequenceTracker(DAY_US)
    out = observe_all(tracker, day(DAY1, range(1, 61)) + day(DAY2, range(1, 51)))
    assert [v for v, _ in out] == [Verdict.NEW] * 110
    assert [g for _, g in out if g is not None] == []
    assert sessions(tracker) == [([1], [60], []), ([1], [50], [])]


def test_a_restart_inside_a_batch_after_committed_state_keeps_every_new_row() -> None:
    tracker = SequenceTracker(DAY_US)
    observe_all(tracker, day(DAY1, range(1, 11)))
    out = observe_all(tracker, day(DAY1, range(11, 61)) + day(DAY2, range(1, 51)))
    assert [v for v, _ in out] == [Verdict.NEW] * 100
    out = observe_all(tracker, day(DAY2, range(51, 71)))
    assert [v for v, _ in out] == [Verdict.NEW] * 20
    assert sessions(tracker) == [([1], [60], []), ([1], [70], [])]


def test_yesterdays_old_numbers_never_open_a_gap_in_todays_session() -> None:
    """F1: old 990..1000 then new 1..50: the reset must not turn old 990 into a gap 51..989 (a halt)."""
    tracker = SequenceTracker(DAY_US)
    out = observe_all(tracker, day(DAY1, range(990, 1001)) + day(DAY2, range(1, 51)))
    assert [g for _, g in out if g is not None] == []
    # the same rows again, in arrival order scrambled: all duplicates, still no gap
    again = observe_all(tracker, day(DAY2, range(1, 51)) + day(DAY1, range(990, 1001)))
    assert {v for v, _ in again} == {Verdict.DUPLICATE}
    assert [g for _, g in again if g is not None] == []


def test_a_session_whose_first_number_never_arrived_records_its_head_and_keeps_its_rows() -> None:
    """F2: yesterday 1..5000, today 2..3000 (seq 1 lost, dead-lettered or shed)."""
    tracker = SequenceTracker(DAY_US)
    observe_all(tracker, day(DAY1, range(1, 5001)))
    out = observe_all(tracker, day(DAY2, range(2, 3001)))
    assert [v for v, _ in out] == [Verdict.NEW] * 2999
    [head] = [g for _, g in out if g is not None]
    assert (head.first, head.last, head.head, head.window_start) == (1, 1, True, None)
    assert head.window_end == DAY2 + 2 * 1_000_000
    # seq 1 arriving late fills the head of today's session, not yesterday's duplicate
    late = observe_all(tracker, [(1, DAY2 + 1_000_000)])
    assert late[0][0] is Verdict.FILL


def test_the_first_session_k2_sees_has_no_head_gap() -> None:
    tracker = SequenceTracker(DAY_US)
    out = observe_all(tracker, day(DAY1, range(3_000_001, 3_000_100)))
    assert [g for _, g in out if g is not None] == []


def test_recorded_gaps_belong_to_their_session_and_survive_a_reset() -> None:
    tracker = SequenceTracker(DAY_US)
    observe_all(tracker, day(DAY1, [*range(1, 20), *range(30, 61)]))  # gap 20..29 in yesterday's session
    observe_all(tracker, day(DAY2, range(1, 40)))  # today's session covers 20..29: no fill there
    assert sessions(tracker) == [([1, 30], [19, 60], [(20, 29)]), ([1], [39], [])]
    out = observe_all(tracker, [(25, DAY1 + 25 * 1_000_000)])  # yesterday's late 25
    assert out[0][0] is Verdict.FILL
    assert sessions(tracker)[0][2] == [(20, 24), (26, 29)]


def test_horizon_and_loaded_days_say_what_the_tracker_covers() -> None:
    tracker = SequenceTracker(window_us=DAY_US)
    tracker.horizon_us = DAY2
    assert tracker.covers(KEY, DAY2 + 5)
    assert not tracker.covers(KEY, DAY1 + 5)
    tracker.loaded_days[KEY] = {DAY1 // DAY_US}
    assert tracker.covers(KEY, DAY1 + 5)
    assert not tracker.covers(("trades", "asx", "CBA"), DAY1 + 5)


def test_eviction_forgets_old_idle_sessions_and_their_loaded_days() -> None:
    tracker = SequenceTracker(window_us=DAY_US)
    observe_all(tracker, day(DAY1, range(1, 5)), now=DAY1)
    observe_all(tracker, day(DAY2, range(1, 3)), now=DAY2)
    tracker.loaded_days[KEY] = {DAY1 // DAY_US}
    assert tracker.evict(now_us=DAY2) == 0  # yesterday's session still inside the window
    assert tracker.evict(now_us=DAY2 + DAY_US + 10**6) == 1
    assert [s.start_ts for s in tracker.streams[KEY].sessions] == [DAY2 + 1_000_000]
    assert tracker.loaded_days[KEY] == set()
    assert tracker.horizon_us == DAY2 + 10**6


def test_sessions_read_again_from_the_table_unite_with_what_is_held() -> None:
    tracker = SequenceTracker(DAY_US)
    observe_all(tracker, day(DAY1, range(100, 201)))
    held = tracker.streams[KEY].sessions[0]
    tracker.add_sessions([(KEY, Session(DAY1, [1, 150], [120, 260], [0, 0], DAY1 + 260 * 1_000_000))], [])
    assert len(tracker.streams[KEY].sessions) == 1
    assert (held.los, held.his, held.start_ts) == ([1], [260], DAY1)
