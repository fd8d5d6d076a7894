"""Per-(data type, exchange, symbol) sequence tracking: dedup, gap detection and late fills in one structure.

A stream's state is the set of sequence numbers seen inside the dedup window, kept run-length encoded as sorted
disjoint islands `[lo, hi]`, plus the gaps already recorded. That makes dedup exact and memory O(islands):
a number inside an island is a duplicate; one above the top starts a gap if it skips; one below the top in a
recorded gap is a late fill. A number below everything known (before the first message K2 saw, or older than
the window) is accepted as new without inventing a gap, since K2 cannot know what came before its baseline.

Changes are staged in a `SequenceTxn` and merged only after the Iceberg commit succeeds, so a failed commit
leaves the tracker exactly as the table is.

`observe_batch` classifies a whole sorted micro-batch at once: a stream whose numbers in the batch are a clean
continuation of its top (consecutive, starting right above it, touching no recorded gap) is extended as one run
without looking at its rows; any other stream falls back to `SequenceTxn.observe` row by row, so the outcome is
the per-row reference's by construction (tests/unit/test_sequence_batch.py checks it on random streams).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

StreamKey = tuple[str, str, str]  # (data_type, exchange, symbol)


class Verdict(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    FILL = "fill"


@dataclass
class GapEvent:
    """A gap found (`detected`) or a recorded gap's numbers that arrived late (`filled`)."""

    key: StreamKey
    first: int
    last: int
    filled: bool = False

    @property
    def missing(self) -> int:
        return self.last - self.first + 1


@dataclass
class StreamState:
    # islands: parallel sorted lists, so bisect works on `los`; touched is the wall time (µs) an island last grew.
    los: list[int] = field(default_factory=list)
    his: list[int] = field(default_factory=list)
    touched: list[int] = field(default_factory=list)
    top_ts: int = 0  # exchange timestamp (µs) of the highest sequence number, to recognise a session reset
    recorded: list[tuple[int, int]] = field(default_factory=list)  # open recorded gaps, sorted

    def copy(self) -> StreamState:
        return StreamState(list(self.los), list(self.his), list(self.touched), self.top_ts, list(self.recorded))

    @property
    def top(self) -> int:
        return self.his[-1] if self.his else 0

    def contains(self, seq: int) -> bool:
        i = bisect.bisect_right(self.los, seq) - 1
        return i >= 0 and seq <= self.his[i]

    def add(self, seq: int, now_us: int) -> None:
        """Insert a number known not to be present, merging neighbouring islands."""
        i = bisect.bisect_right(self.los, seq) - 1
        joins_left = i >= 0 and self.his[i] == seq - 1
        joins_right = i + 1 < len(self.los) and self.los[i + 1] == seq + 1
        if joins_left and joins_right:
            self.his[i] = self.his[i + 1]
            del self.los[i + 1], self.his[i + 1], self.touched[i + 1]
            self.touched[i] = now_us
        elif joins_left:
            self.his[i] = seq
            self.touched[i] = now_us
        elif joins_right:
            self.los[i + 1] = seq
            self.touched[i + 1] = now_us
        else:
            self.los.insert(i + 1, seq)
            self.his.insert(i + 1, seq)
            self.touched.insert(i + 1, now_us)

    def recorded_gap_at(self, seq: int) -> int | None:
        for idx, (first, last) in enumerate(self.recorded):
            if first <= seq <= last:
                return idx
        return None

    def fill_recorded(self, seq: int) -> tuple[int, int] | None:
        """Remove `seq` from the recorded gap holding it; returns that gap as it was."""
        idx = self.recorded_gap_at(seq)
        if idx is None:
            return None
        first, last = self.recorded.pop(idx)
        parts = [(a, b) for a, b in ((first, seq - 1), (seq + 1, last)) if a <= b]
        self.recorded[idx:idx] = parts
        return first, last


class SequenceTracker:
    def __init__(self, window_us: int) -> None:
        self.window_us = window_us
        self.streams: dict[StreamKey, StreamState] = {}

    def begin(self) -> SequenceTxn:
        return SequenceTxn(self)

    def evict(self, now_us: int) -> int:
        """Forget islands not touched within the window; returns how many streams were dropped entirely."""
        cutoff = now_us - self.window_us
        dropped = 0
        for key in list(self.streams):
            st = self.streams[key]
            keep = [i for i, t in enumerate(st.touched) if t >= cutoff]
            if len(keep) == len(st.touched):
                continue
            if not keep:
                del self.streams[key]
                dropped += 1
                continue
            st.los = [st.los[i] for i in keep]
            st.his = [st.his[i] for i in keep]
            st.touched = [st.touched[i] for i in keep]
        return dropped

    def load(
        self,
        islands: Iterable[tuple[StreamKey, int, int, int, int]],
        recorded_open: Iterable[tuple[StreamKey, int, int]],
    ) -> None:
        """Replace the state with islands (key, lo, hi, touched_us, top_ts_us) rebuilt from the table and
        the open gaps recorded in `sequence_gaps`."""
        self.streams = {}
        for key, lo, hi, touched, top_ts in sorted(islands):
            st = self.streams.setdefault(key, StreamState())
            st.los.append(lo)
            st.his.append(hi)
            st.touched.append(touched)
            st.top_ts = top_ts
        for key, first, last in sorted(recorded_open):
            self.streams.setdefault(key, StreamState()).recorded.append((first, last))


class SequenceTxn:
    """Staged changes to a tracker: copy-on-write per stream, merged by `commit()`."""

    def __init__(self, tracker: SequenceTracker) -> None:
        self.tracker = tracker
        self.staged: dict[StreamKey, StreamState] = {}
        self.events: list[GapEvent] = []

    def _state(self, key: StreamKey) -> StreamState:
        st = self.staged.get(key)
        if st is None:
            base = self.tracker.streams.get(key)
            st = self.staged[key] = base.copy() if base is not None else StreamState()
        return st

    def observe(self, key: StreamKey, seq: int, exchange_ts_us: int, now_us: int) -> tuple[Verdict, GapEvent | None]:
        """Classify one number. A newly found gap is also returned, so the caller can grade it (and halt)."""
        st = self._state(key)
        top = st.top
        if top and seq == 1 and top > 1 and exchange_ts_us > st.top_ts:
            # The exchange restarted its sequence (new session): a new baseline, not a flood of duplicates.
            st = self.staged[key] = StreamState()
            top = 0
        if top == 0 or seq == top + 1:
            st.add(seq, now_us)
            st.top_ts = exchange_ts_us
            # A gap recorded before a crash can be closed by the replayed batch arriving in order.
            if st.recorded and seq <= st.recorded[-1][1] and st.fill_recorded(seq) is not None:
                self.events.append(GapEvent(key, seq, seq, filled=True))
                return Verdict.FILL, None
            return Verdict.NEW, None
        if seq > top + 1:
            gap = GapEvent(key, top + 1, seq - 1)
            already = (gap.first, gap.last) in st.recorded
            if not already:
                bisect.insort(st.recorded, (gap.first, gap.last))
                self.events.append(gap)
            st.add(seq, now_us)
            st.top_ts = exchange_ts_us
            return Verdict.NEW, None if already else gap
        if st.contains(seq):
            return Verdict.DUPLICATE, None
        st.add(seq, now_us)
        was = st.fill_recorded(seq)
        if was is None:
            return Verdict.NEW, None  # below the known baseline: new to K2, but no recorded gap to fill
        self.events.append(GapEvent(key, seq, seq, filled=True))
        return Verdict.FILL, None

    def extend_run(self, key: StreamKey, first: int, last: int, last_ts_us: int, now_us: int) -> bool:
        """Observe `first..last` (consecutive) as one run if that is a clean continuation of the stream: every
        number NEW, no gap, no fill, no session reset. Returns False, changing nothing, if it is not."""
        base = self.staged.get(key)
        if base is None:
            base = self.tracker.streams.get(key)
        top = base.top if base is not None else 0
        if first < 1 or (top and first != top + 1):
            return False
        if base is not None and base.recorded and max(last_gap for _, last_gap in base.recorded) >= first:
            return False
        st = self._state(key)
        if top:
            st.his[-1] = last
            st.touched[-1] = now_us
        else:
            st.los.append(first)
            st.his.append(last)
            st.touched.append(now_us)
        st.top_ts = last_ts_us
        return True

    def commit(self) -> None:
        self.tracker.streams.update(self.staged)
        self.staged = {}


VERDICT_CODES: dict[Verdict, int] = {Verdict.NEW: 0, Verdict.DUPLICATE: 1, Verdict.FILL: 2}
NEW, DUPLICATE, FILL = 0, 1, 2


@dataclass
class BatchVerdicts:
    """Per sorted row: 0 new, 1 duplicate, 2 fill (`VERDICT_CODES`). `halt` is the sorted position and the gap of
    the first newly found gap `stops` accepted: rows from it on were not observed (and the txn is to be dropped)."""

    codes: npt.NDArray[np.int8]
    halt: tuple[int, GapEvent] | None = None
    fast_streams: int = 0
    slow_streams: int = 0


def observe_batch(
    txn: SequenceTxn,
    keys: Sequence[StreamKey],
    key_idx: npt.NDArray[np.int64],
    seqs: npt.NDArray[np.int64],
    ts_us: npt.NDArray[np.int64],
    now_us: int,
    stops: Callable[[GapEvent], bool] | None = None,
) -> BatchVerdicts:
    """Classify rows sorted by (key_idx, seq, ...), `keys[key_idx[i]]` being row i's stream, as the per-row loop
    `txn.observe(...)` over them in that order would, stopping at the first new gap `stops` accepts."""
    n = len(seqs)
    out = BatchVerdicts(np.zeros(n, dtype=np.int8))
    if n == 0:
        return out
    starts = np.flatnonzero(np.diff(key_idx)) + 1
    bounds = np.concatenate(([0], starts, [n])).tolist()
    # breaks[i]: row i+1 does not continue row i within its stream
    breaks = np.concatenate(([0], np.cumsum((np.diff(seqs) != 1) & (np.diff(key_idx) == 0))))
    for g in range(len(bounds) - 1):
        lo, hi = bounds[g], bounds[g + 1]
        key = keys[int(key_idx[lo])]
        if breaks[hi - 1] == breaks[lo] and txn.extend_run(
            key, int(seqs[lo]), int(seqs[hi - 1]), int(ts_us[hi - 1]), now_us
        ):
            out.fast_streams += 1
            continue
        out.slow_streams += 1
        for i in range(lo, hi):
            verdict, gap = txn.observe(key, int(seqs[i]), int(ts_us[i]), now_us)
            out.codes[i] = VERDICT_CODES[verdict]
            if gap is not None and stops is not None and stops(gap):
                out.halt = (i, gap)
                return out
    return out
