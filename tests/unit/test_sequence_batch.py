"""observe_batch (whole runs at once, row by row only where needed) equals the per-row reference on random
streams with gaps, duplicates, reorders, session resets, recorded gaps and halting gaps."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from k2_core.sequence import VERDICT_CODES, GapEvent, SequenceTracker, SequenceTxn, StreamKey, observe_batch

DAY_US = 86_400_000_000
KEYS: list[StreamKey] = [("trades", "asx", "BHP"), ("trades", "asx", "CBA"), ("trades", "nyse", "IBM")]
NOW = 1_000_000


def reference(
    txn: SequenceTxn, rows: list[tuple[int, int, int]], halt_above: int | None
) -> tuple[list[int], tuple[int, GapEvent] | None]:
    codes = []
    for i, (k, seq, ts) in enumerate(rows):
        verdict, gap = txn.observe(KEYS[k], seq, ts, NOW)
        codes.append(VERDICT_CODES[verdict])
        if gap is not None and halt_above is not None and gap.missing > halt_above:
            return codes, (i, gap)
    return codes, None


def state(txn: SequenceTxn) -> dict[StreamKey, tuple[object, ...]]:
    return {k: astuple(v) for k, v in txn.staged.items()}


def stream(draw: st.DrawFn, start: int, length: int) -> list[int]:
    """Mostly consecutive numbers from `start`, with gaps, duplicates, reorders and an occasional reset to 1."""
    out = []
    seq = start
    for _ in range(length):
        event = draw(st.sampled_from(["next"] * 8 + ["gap", "big_gap", "dup", "back", "reset"]))
        if event == "gap":
            seq += draw(st.integers(2, 12))
        elif event == "big_gap":
            seq += draw(st.integers(50, 300))
        elif event == "dup" and out:
            out.append(draw(st.sampled_from(out)))
            continue
        elif event == "back" and out:
            out.append(max(1, seq - draw(st.integers(1, 20))))
            continue
        elif event == "reset":
            seq = 1
            out.append(seq)
            continue
        else:
            seq += 1
        out.append(seq)
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[list[tuple[int, int, int]]], list[tuple[int, int, int]], int | None]:
    """Earlier batches (committed one by one), then the batch under test, as (key index, seq, exchange ts)."""
    history: list[list[tuple[int, int, int]]] = []
    tops = {k: draw(st.integers(1, 5)) for k in range(len(KEYS))}
    ts = 1000
    for _ in range(draw(st.integers(0, 3))):
        batch = []
        for k in draw(st.lists(st.integers(0, len(KEYS) - 1), max_size=3, unique=True)):
            seqs = stream(draw, tops[k], draw(st.integers(1, 30)))
            tops[k] = max(seqs)
            for s in seqs:
                ts += draw(st.integers(0, 3))
                batch.append((k, s, ts))
        history.append(batch)
    rows = []
    for k in draw(st.lists(st.integers(0, len(KEYS) - 1), min_size=1, max_size=3, unique=True)):
        clean = draw(st.booleans())
        length = draw(st.integers(1, 40))
        if clean:
            first = tops[k] + 1 if draw(st.booleans()) else draw(st.integers(1, tops[k] + 3))
            seqs = list(range(first, first + length))
        else:
            seqs = stream(draw, tops[k], length)
        for s in seqs:
            ts += draw(st.integers(0, 3))
            rows.append((k, s, ts))
    halt_above = draw(st.one_of(st.none(), st.integers(20, 200)))
    return history, rows, halt_above


def run_both(
    history: list[list[tuple[int, int, int]]], rows: list[tuple[int, int, int]], halt_above: int | None
) -> None:
    trackers = [SequenceTracker(DAY_US), SequenceTracker(DAY_US)]
    for tracker in trackers:
        for batch in history:
            txn = tracker.begin()
            for k, seq, ts in sorted(batch):
                txn.observe(KEYS[k], seq, ts, NOW - 10)
            txn.commit()
    ordered = sorted(rows, key=lambda r: (r[0], r[1]))  # rows sorted by stream and number, as the ingester does
    ref_txn = trackers[0].begin()
    ref_codes, ref_halt = reference(ref_txn, ordered, halt_above)

    txn = trackers[1].begin()
    arr = np.array(ordered, dtype=np.int64).reshape(-1, 3)
    out = observe_batch(
        txn,
        KEYS,
        arr[:, 0],
        arr[:, 1],
        arr[:, 2],
        NOW,
        stops=None if halt_above is None else (lambda gap: gap.missing > halt_above),
    )
    if ref_halt is None:
        assert out.halt is None
        assert out.codes.tolist() == ref_codes
        assert state(txn) == state(ref_txn)
        assert [astuple(e) for e in txn.events] == [astuple(e) for e in ref_txn.events]
    else:
        assert out.halt is not None
        assert out.halt[0] == ref_halt[0]
        assert astuple(out.halt[1]) == astuple(ref_halt[1])
        assert out.codes[: ref_halt[0]].tolist() == ref_codes[: ref_halt[0]]
    # the tracker itself is untouched until commit (copy-on-write)
    assert {k: astuple(v) for k, v in trackers[0].streams.items()} == {
        k: astuple(v) for k, v in trackers[1].streams.items()
    }


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_batch_classification_equals_the_per_row_reference(
    scenario: tuple[list[list[tuple[int, int, int]]], list[tuple[int, int, int]], int | None],
) -> None:
    run_both(*scenario)


def test_a_clean_continuation_is_one_run_and_merges_only_on_commit() -> None:
    tracker = SequenceTracker(DAY_US)
    txn = tracker.begin()
    txn.observe(KEYS[0], 1, 1, NOW)
    txn.commit()
    txn = tracker.begin()
    seqs = np.arange(2, 1002, dtype=np.int64)
    out = observe_batch(txn, KEYS, np.zeros(1000, dtype=np.int64), seqs, seqs, NOW)
    assert (out.fast_streams, out.slow_streams) == (1, 0)
    assert not out.codes.any()
    assert tracker.streams[KEYS[0]].his == [1]  # not merged yet
    txn.commit()
    assert (tracker.streams[KEYS[0]].los, tracker.streams[KEYS[0]].his) == ([1], [1001])
    assert tracker.streams[KEYS[0]].top_ts == 1001


def test_a_stream_touching_a_recorded_gap_goes_row_by_row() -> None:
    tracker = SequenceTracker(DAY_US)
    tracker.load([(KEYS[0], 1, 10, NOW, 10), (KEYS[0], 21, 30, NOW, 30)], [(KEYS[0], 11, 20)])
    txn = tracker.begin()
    seqs = np.array([31, 32], dtype=np.int64)
    assert observe_batch(txn, KEYS, np.zeros(2, dtype=np.int64), seqs, seqs, NOW).fast_streams == 1
    txn = tracker.begin()
    seqs = np.array([11, 12], dtype=np.int64)
    out = observe_batch(txn, KEYS, np.zeros(2, dtype=np.int64), seqs, seqs, NOW)
    assert out.slow_streams == 1
    assert out.codes.tolist() == [2, 2]  # fills
    assert [(e.first, e.filled) for e in txn.events] == [(11, True), (12, True)]
