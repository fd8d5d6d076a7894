"""observe_batch on random streams: equal to the per-row loop in the same order (the fast path changes nothing), and
equal to the truth of what a feed sent, whatever order and batches the rows arrive in (sessions, withheld numbers,
duplicates, reorders across batches and across session boundaries): every row sent is kept exactly once, and the
open gaps are exactly the numbers withheld inside each session."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
from hypothesis import given, note, settings
from hypothesis import strategies as st

from k2_core.ingest.sequence import (
    VERDICT_CODES,
    GapEvent,
    SequenceTracker,
    SequenceTxn,
    Session,
    StreamKey,
    Verdict,
    observe_batch,
)

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
    ordered = sorted(rows, key=lambda r: (r[0], r[2], r[1]))  # by stream, exchange time, number: as the ingester does
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


@settings(max_examples=150, deadline=None)
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
    session = tracker.streams[KEYS[0]].sessions[-1]
    assert session.his == [1]  # not merged yet
    txn.commit()
    session = tracker.streams[KEYS[0]].sessions[-1]
    assert (session.los, session.his, session.top_ts) == ([1], [1001], 1001)


def test_a_stream_touching_a_recorded_gap_goes_row_by_row() -> None:
    tracker = SequenceTracker(DAY_US)
    tracker.load([(KEYS[0], Session(1, [1, 21], [10, 30], [NOW, NOW], 30))], [(KEYS[0], (11, 20, 10, 21))])
    txn = tracker.begin()
    seqs = np.array([31, 32], dtype=np.int64)
    assert observe_batch(txn, KEYS, np.zeros(2, dtype=np.int64), seqs, seqs, NOW).fast_streams == 1
    txn = tracker.begin()
    seqs = np.array([11, 12], dtype=np.int64)
    out = observe_batch(txn, KEYS, np.zeros(2, dtype=np.int64), seqs, seqs, NOW)
    assert out.slow_streams == 1
    assert out.codes.tolist() == [2, 2]  # fills
    assert [(e.first, e.filled) for e in txn.events] == [(11, True), (12, True)]


# ---- against the truth of what the feed sent ------------------------------------------------------------------

Row = tuple[int, int, int]  # (key index, seq, exchange ts)


@st.composite
def feeds(draw: st.DrawFn) -> tuple[list[list[Row]], set[Row], dict[tuple[int, int], set[int]], list[list[int]]]:
    """Batches of rows as they arrive, the distinct rows sent, the numbers withheld per (key, session), and each
    stream's session start times. Each stream runs 1-3 sessions; every session after the first restarts at 1; the
    first starts anywhere (K2 sees it from its baseline). Times rise strictly across a session boundary."""
    sent: list[Row] = []
    withheld: dict[tuple[int, int], set[int]] = {}
    starts: list[list[int]] = []
    for k in range(draw(st.integers(1, len(KEYS)))):
        ts = draw(st.integers(1_000, 2_000))
        starts.append([])
        previous_top = 0
        for session in range(draw(st.integers(1, 3))):
            first = draw(st.integers(1, 50)) if session == 0 else 1
            # A later session runs no higher than the one before: then any of its rows, arriving first (reordered
            # across the restart), is recognisably a restart, not the continuation of a shorter session.
            length = draw(st.integers(1, 30 if session == 0 else previous_top))
            ts += draw(st.integers(1, 5))
            starts[k].append(ts)
            kept = draw(st.lists(st.booleans(), min_size=length, max_size=length))
            kept[draw(st.integers(0, length - 1))] = True  # at least one row of the session arrives
            withheld[(k, session)] = set()
            for i in range(length):
                ts += draw(st.integers(0, 2)) if i else 0
                if kept[i] or draw(st.booleans()):
                    sent.append((k, first + i, ts))
                    previous_top = first + i
                else:
                    withheld[(k, session)].add(first + i)
    arrival = list(sent)
    for _ in range(draw(st.integers(0, len(arrival)))):  # duplicates, resent a little later
        i = draw(st.integers(0, len(arrival) - 1))
        arrival.insert(min(len(arrival), i + draw(st.integers(0, 4))), arrival[i])
    session_of = {row: _session_index(starts[row[0]], row[2]) for row in sent}
    for _ in range(draw(st.integers(0, len(arrival)))):  # local reorders, across batches, within a session
        i = draw(st.integers(0, max(0, len(arrival) - 2)))
        a, b = arrival[i : i + 2] if i + 1 < len(arrival) else (arrival[i], arrival[i])
        # Sessions are hours apart: rows of two sessions of a stream never swap (their order is what tells them)
        if a[0] != b[0] or session_of[a] == session_of[b]:
            arrival[i : i + 2] = arrival[i : i + 2][::-1]
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(arrival) - 1)), max_size=6, unique=True)))
    batches = [arrival[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrival)], strict=True) if a < b]
    return batches, set(sent), withheld, starts


def _session_index(starts: list[int], ts: int) -> int:
    return max(i for i, start in enumerate(starts) if start <= ts)


def expected_open(sent: set[Row], withheld: dict[tuple[int, int], set[int]], starts: list[list[int]]) -> set[tuple]:
    """Withheld numbers K2 can know are missing: inside the first session between its lowest and highest number
    seen, and in every later session from 1 to its highest."""
    out = set()
    for (k, session), numbers in withheld.items():
        end = starts[k][session + 1] if session + 1 < len(starts[k]) else 10**12
        seen = [seq for kk, seq, ts in sent if kk == k and starts[k][session] <= ts < end]
        low = min(seen) if session == 0 else 1
        out |= {(k, session, n) for n in numbers if low < n < max(seen) or (session and n < max(seen))}
    return out


def open_numbers(tracker: SequenceTracker, starts: list[list[int]]) -> set[tuple]:
    out = set()
    for k, key in enumerate(KEYS):
        for s in tracker.streams.get(key, None).sessions if key in tracker.streams else []:
            session = max(i for i, start in enumerate(starts[k]) if start <= max(s.start_ts, starts[k][0]))
            out |= {(k, session, n) for first, last, _, _ in s.recorded for n in range(first, last + 1)}
    return out


def kept(tracker: SequenceTracker, batches: list[list[Row]], batch_path: bool) -> list[Row]:
    stored: list[Row] = []
    for batch in batches:
        txn = tracker.begin()
        if batch_path:
            ordered = sorted(batch, key=lambda r: (r[0], r[2], r[1]))
            arr = np.array(ordered, dtype=np.int64).reshape(-1, 3)
            codes = observe_batch(txn, KEYS, arr[:, 0], arr[:, 1], arr[:, 2], NOW).codes.tolist()
        else:  # one row at a time, in arrival order
            ordered = batch
            codes = [VERDICT_CODES[txn.observe(KEYS[k], seq, ts, NOW)[0]] for k, seq, ts in batch]
        stored.extend(r for r, code in zip(ordered, codes, strict=True) if code != VERDICT_CODES[Verdict.DUPLICATE])
        txn.commit()
    return stored


@settings(max_examples=150, deadline=None)
@given(feeds())
def test_every_row_sent_is_kept_once_and_the_open_gaps_are_what_was_withheld(
    feed: tuple[list[list[Row]], set[Row], dict[tuple[int, int], set[int]], list[list[int]]],
) -> None:
    batches, sent, withheld, starts = feed
    note(f"batches={batches} withheld={withheld} starts={starts}")
    for batch_path in (True, False):
        tracker = SequenceTracker(DAY_US)
        stored = kept(tracker, batches, batch_path)
        assert sorted(stored) == sorted(sent), "a row lost or kept twice"
        assert open_numbers(tracker, starts) == expected_open(sent, withheld, starts)
