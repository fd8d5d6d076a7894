from k2_core.sequence import GapEvent, SequenceTracker, Verdict

KEY = ("trades", "asx", "BHP")
DAY_US = 86_400_000_000


def observe_all(tracker: SequenceTracker, seqs: list[int], now: int = 0) -> list[tuple[Verdict, GapEvent | None]]:
    txn = tracker.begin()
    out = [txn.observe(KEY, s, exchange_ts_us=s, now_us=now) for s in seqs]
    txn.commit()
    return out


def test_in_order_sequence_is_all_new_without_gaps() -> None:
    tracker = SequenceTracker(DAY_US)
    out = observe_all(tracker, list(range(1, 101)))
    assert all(v is Verdict.NEW and g is None for v, g in out)
    st = tracker.streams[KEY]
    assert (st.los, st.his) == ([1], [100])


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
    assert tracker.streams[KEY].recorded == [(2, 4), (6, 9)]


def test_uncommitted_txn_leaves_tracker_untouched() -> None:
    tracker = SequenceTracker(DAY_US)
    observe_all(tracker, [1, 2, 3])
    txn = tracker.begin()
    txn.observe(KEY, 4, 4, 0)
    txn.observe(KEY, 9, 9, 0)
    # dropped without commit: the same numbers are new again
    txn2 = tracker.begin()
    assert txn2.observe(KEY, 4, 4, 0)[0] is Verdict.NEW
    assert tracker.streams[KEY].his == [3]


def test_recorded_gap_is_not_reported_again_after_reload() -> None:
    tracker = SequenceTracker(DAY_US)
    tracker.load([(KEY, 1, 50, 0, 50)], [(KEY, 51, 250)])
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


def test_numbers_below_baseline_are_new_without_a_gap() -> None:
    tracker = SequenceTracker(DAY_US)
    observe_all(tracker, [500, 501])
    out = observe_all(tracker, [300, 300])
    assert [v for v, _ in out] == [Verdict.NEW, Verdict.DUPLICATE]
    assert all(g is None for _, g in out)


def test_eviction_forgets_islands_outside_the_window() -> None:
    tracker = SequenceTracker(window_us=100)
    observe_all(tracker, [1, 2], now=0)
    observe_all(tracker, [10], now=1000)
    assert tracker.evict(now_us=1050) == 0
    assert tracker.streams[KEY].los == [10]
    assert tracker.evict(now_us=5000) == 1
    assert KEY not in tracker.streams
