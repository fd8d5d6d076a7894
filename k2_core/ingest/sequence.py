"""Per-(data type, exchange, symbol) sequence tracking: sessions, dedup, gap detection and late fills in one structure.

Exchanges restart their sequence numbers (daily, or when a feed handler restarts), so a number means something only
inside its **session**. Sessions are told apart by exchange time: read in exchange-time order, a stream's numbers
rise within a session, and a number that does not exceed the session's highest while the exchange time has moved
past that number's time starts the next session (a feed that resends a message resends its time too). A row belongs
to the session whose time it falls in, whatever order the rows arrive in, so a batch that holds yesterday's tail and
today's restart (an ingester catching up after downtime across a daily reset) keeps both, and old numbers never
open a false gap in the new session. (Within a session, exchange time does not go back as numbers rise.)

Each session keeps the numbers seen as run-length encoded islands `[lo, hi]` (dedup exact, memory O(islands)), the
exchange time of its highest number, and its own open gaps. A number inside an island is a duplicate; one above the
session's highest starts a gap if it skips; one below it in a recorded gap is a late fill; one below everything the
session holds is new without a gap (K2 cannot know what came before its baseline). A session that begins while K2
is watching the stream (not the first one K2 sees) records its missing head `1..first-1` as a gap: a feed that lost
its seq 1 loses nothing more, and says so. Head gaps are graded like any gap but never halt a partition: the rows
after them are in order.

The tracker holds every session whose rows have exchange times from `horizon_us` on (rebuilt from the tables) and
whole stream-days before it that were loaded on demand (`k2_core.ingest.dedup.load_history`): a replay or import of
history is checked against what the tables hold for those days, however long ago it was stored. Sessions and days
older than the horizon age out (`evict`).

Changes are staged in a `SequenceTxn` and merged only after the Iceberg commit succeeds, so a failed commit leaves
the tracker exactly as the table is. `observe_batch` classifies a whole micro-batch sorted by (stream, exchange
time, number): a stream whose rows continue its newest session cleanly is extended as one run without looking at
its rows; any other stream goes row by row through `SequenceTxn.observe`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

StreamKey = tuple[str, str, str]  # (data_type, exchange, symbol)
DAY_US = 86_400_000_000


class Verdict(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    FILL = "fill"


@dataclass
class GapEvent:
    """A gap found (`detected`) or a recorded gap's numbers that arrived late (`filled`). `window_end` is the
    exchange time (µs) of the number that revealed the gap and names the session it belongs to; `window_start`
    that of the number before it (None for a session's missing head). `head`: missing numbers at the start of what K2
    held of the session (its first numbers, or those between an older number that arrived late and the rest): such
    a gap never halts, the rows around it being in order."""

    key: StreamKey
    first: int
    last: int
    filled: bool = False
    window_start: int | None = None
    window_end: int | None = None
    head: bool = False

    @property
    def missing(self) -> int:
        return self.last - self.first + 1


# An open gap of a session: (first, last, window_start_us or None, window_end_us or None).
Recorded = tuple[int, int, int | None, int | None]


@dataclass
class Session:
    start_ts: int  # exchange time (µs) of the earliest row seen in it
    los: list[int] = field(default_factory=list)  # islands: parallel sorted lists, so bisect works on `los`
    his: list[int] = field(default_factory=list)
    touched: list[int] = field(default_factory=list)  # wall time (µs) an island last grew
    top_ts: int = 0  # the latest exchange time (µs) seen in it
    recorded: list[Recorded] = field(default_factory=list)  # open gaps, sorted

    def copy(self) -> Session:
        return Session(
            self.start_ts, list(self.los), list(self.his), list(self.touched), self.top_ts, list(self.recorded)
        )

    @property
    def top(self) -> int:
        return self.his[-1] if self.his else 0

    @property
    def lowest(self) -> int:
        return self.los[0] if self.los else 0

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

    def add_range(self, lo: int, hi: int, now_us: int) -> None:
        """Unite `lo..hi` with the islands (some of it may be present already)."""
        i = bisect.bisect_left(self.his, lo - 1)  # first island that ends at or after lo - 1
        j = bisect.bisect_right(self.los, hi + 1)  # islands before j start at or before hi + 1
        if i < j:  # they touch or overlap lo..hi: one island replaces them
            lo, hi = min(lo, self.los[i]), max(hi, self.his[j - 1])
        del self.los[i:j], self.his[i:j], self.touched[i:j]
        self.los.insert(i, lo)
        self.his.insert(i, hi)
        self.touched.insert(i, now_us)

    def unite(self, other: Session) -> None:
        """Take in another view of this session: its numbers, times and open gaps."""
        for lo, hi, touched in zip(other.los, other.his, other.touched, strict=True):
            self.add_range(lo, hi, touched)
        for gap in other.recorded:
            if gap not in self.recorded:
                bisect.insort(self.recorded, gap, key=lambda g: g[0])
        self.start_ts = min(self.start_ts, other.start_ts)
        self.top_ts = max(self.top_ts, other.top_ts)

    def recorded_at(self, seq: int) -> int | None:
        for idx, gap in enumerate(self.recorded):
            if gap[0] <= seq <= gap[1]:
                return idx
        return None

    def fill_recorded(self, seq: int) -> Recorded | None:
        """Remove `seq` from the recorded gap holding it; returns that gap as it was."""
        idx = self.recorded_at(seq)
        if idx is None:
            return None
        gap = self.recorded.pop(idx)
        first, last, start, end = gap
        parts = [(a, b, start, end) for a, b in ((first, seq - 1), (seq + 1, last)) if a <= b]
        self.recorded[idx:idx] = parts
        return gap

    def record(self, gap: GapEvent) -> bool:
        """Add a detected gap; False if it was already recorded (found again after a crash)."""
        if any(g[0] == gap.first and g[1] == gap.last for g in self.recorded):
            return False
        bisect.insort(self.recorded, (gap.first, gap.last, gap.window_start, gap.window_end), key=lambda g: g[0])
        return True


@dataclass
class StreamState:
    sessions: list[Session] = field(default_factory=list)  # sorted by start_ts

    def copy(self) -> StreamState:
        return StreamState([s.copy() for s in self.sessions])

    @property
    def newest(self) -> Session | None:
        return self.sessions[-1] if self.sessions else None

    def insert(self, session: Session) -> None:
        bisect.insort(self.sessions, session, key=lambda s: s.start_ts)

    def merge(self, loaded: Session) -> None:
        """Add a session read from the table. One that is part of a session held already is united with it (their
        numbers' union is exact and idempotent): it overlaps it in time (seen partly, as the horizon moved or a day
        was loaded), or continues it with no restart between (rows another writer committed, a day loaded next to
        one held)."""
        starts = [s.start_ts for s in self.sessions]
        i = bisect.bisect_right(starts, loaded.start_ts)
        before = self.sessions[i - 1] if i > 0 else None
        after = self.sessions[i] if i < len(self.sessions) else None
        for held in (before, after):
            if held is not None and loaded.start_ts <= held.top_ts and held.start_ts <= loaded.top_ts:
                held.unite(loaded)
                return
        if before is not None and loaded.lowest > before.top:
            before.unite(loaded)
        elif after is not None and after.lowest > loaded.top:
            after.unite(loaded)
        else:
            self.insert(loaded)
            return
        self.sessions.sort(key=lambda s: s.start_ts)


class SequenceTracker:
    def __init__(self, window_us: int) -> None:
        self.window_us = window_us
        self.streams: dict[StreamKey, StreamState] = {}
        # Rows with exchange times from here on are all in `streams`; before it, only the days in `loaded_days`.
        self.horizon_us = 0
        self.loaded_days: dict[StreamKey, set[int]] = {}

    def begin(self) -> SequenceTxn:
        return SequenceTxn(self)

    def covers(self, key: StreamKey, ts_us: int) -> bool:
        """Whether what the tables hold for this stream at this exchange time is in the tracker."""
        return ts_us >= self.horizon_us or ts_us // DAY_US in self.loaded_days.get(key, ())

    def evict(self, now_us: int) -> int:
        """Move the horizon to `now - window` and forget sessions wholly before it that nothing touched within the
        window, with the days loaded for them (a later row of those days loads them again from the table).
        Returns how many sessions were dropped."""
        self.horizon_us = max(self.horizon_us, now_us - self.window_us)
        idle_since = now_us - self.window_us
        dropped = 0
        for key in list(self.streams):
            st = self.streams[key]
            gone = [s for s in st.sessions if s.top_ts < self.horizon_us and max(s.touched, default=0) < idle_since]
            if not gone:
                continue
            dropped += len(gone)
            st.sessions = [s for s in st.sessions if s not in gone]
            days = self.loaded_days.get(key)
            if days:
                for s in gone:
                    days.difference_update(range(s.start_ts // DAY_US, s.top_ts // DAY_US + 1))
            if not st.sessions:
                del self.streams[key]
        return dropped

    def load(
        self, sessions: Iterable[tuple[StreamKey, Session]], recorded_open: Iterable[tuple[StreamKey, Recorded]]
    ) -> None:
        """Replace the state with sessions rebuilt from the table (every row from `horizon_us` on) and the open gaps
        recorded in `sequence_gaps`."""
        self.streams = {}
        self.loaded_days = {}
        self.add_sessions(sessions, recorded_open)

    def replace_recorded(self, recorded_open: Iterable[tuple[StreamKey, Recorded]]) -> None:
        """Set every session's open gaps to those `sequence_gaps` holds now (another writer filled or found some)."""
        for st in self.streams.values():
            for session in st.sessions:
                session.recorded = []
        self.add_sessions((), recorded_open)

    def add_sessions(
        self, sessions: Iterable[tuple[StreamKey, Session]], recorded_open: Iterable[tuple[StreamKey, Recorded]]
    ) -> None:
        """Merge sessions read from the table (history loaded on demand) and their open gaps into the state."""
        for key, session in sessions:
            self.streams.setdefault(key, StreamState()).merge(session)
        for key, gap in recorded_open:
            st = self.streams.get(key)
            if st is None or not st.sessions:
                continue
            owner = _session_of_gap(st, gap)
            if owner is not None and gap not in owner.recorded:
                bisect.insort(owner.recorded, gap, key=lambda g: g[0])


def _session_of_gap(st: StreamState, gap: Recorded) -> Session | None:
    """The session a recorded gap belongs to: the one its revealing number's exchange time falls in (a gap recorded
    before sessions were tracked has no window and goes to the newest session whose numbers surround it)."""
    first, last, _, end = gap
    if end is not None:
        i = bisect.bisect_right([s.start_ts for s in st.sessions], end) - 1
        return st.sessions[max(i, 0)]
    for session in reversed(st.sessions):
        if session.lowest < first and (last < session.top or not session.recorded):
            return session
    return st.sessions[-1]


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

    def _session(self, st: StreamState, key: StreamKey, seq: int, ts: int) -> tuple[Session, GapEvent | None]:
        """The session the row belongs to, started (with its head gap, if K2 saw the session before it) if new."""
        if not st.sessions:
            session = Session(ts)
            st.insert(session)
            return session, None
        i = bisect.bisect_right([s.start_ts for s in st.sessions], ts) - 1
        if i < 0:  # earlier than every session K2 holds
            first = st.sessions[0]
            if seq < first.lowest:
                first.start_ts = ts  # the same session, from before K2's baseline
                return first, None
            session = Session(ts)
            st.insert(session)
            if first.lowest > 1:  # the session K2 saw first has a predecessor after all: its head is missing
                head = GapEvent(key, 1, first.lowest - 1, window_start=None, window_end=first.start_ts, head=True)
                if first.record(head):
                    self.events.append(head)
            return session, None
        current = st.sessions[i]
        if ts > current.top_ts and seq <= current.top:
            # the numbers went back after the session's last row: the exchange restarted them
            later = st.sessions[i + 1] if i + 1 < len(st.sessions) else None
            if later is not None and seq < later.lowest:  # the next session's first numbers, arriving after it
                later.start_ts = ts
                return later, None
            session = Session(ts)
            st.insert(session)
            if seq == 1:
                return session, None
            head = GapEvent(key, 1, seq - 1, window_start=None, window_end=ts, head=True)
            session.record(head)
            self.events.append(head)
            return session, head
        return current, None

    def observe(self, key: StreamKey, seq: int, exchange_ts_us: int, now_us: int) -> tuple[Verdict, GapEvent | None]:
        """Classify one number. A newly found gap is also returned, so the caller can grade it (and halt)."""
        st = self._state(key)
        s, head = self._session(st, key, seq, exchange_ts_us)
        if not s.his:  # a session's first number
            s.add(seq, now_us)
            s.top_ts = exchange_ts_us
            return Verdict.NEW, head
        top = s.top
        if seq == top + 1:
            s.add(seq, now_us)
            s.top_ts = max(s.top_ts, exchange_ts_us)
            # A gap recorded before a crash can be closed by the replayed batch arriving in order.
            if s.recorded and seq <= s.recorded[-1][1] and (was := s.fill_recorded(seq)) is not None:
                self.events.append(GapEvent(key, seq, seq, filled=True, window_start=was[2], window_end=was[3]))
                return Verdict.FILL, None
            return Verdict.NEW, None
        if seq > top + 1:
            gap = GapEvent(key, top + 1, seq - 1, window_start=s.top_ts, window_end=exchange_ts_us)
            fresh = s.record(gap)
            if fresh:
                self.events.append(gap)
            s.add(seq, now_us)
            s.top_ts = max(s.top_ts, exchange_ts_us)
            return Verdict.NEW, gap if fresh else None
        if s.contains(seq):
            return Verdict.DUPLICATE, None
        lowest, start_ts = s.lowest, s.start_ts
        s.add(seq, now_us)
        s.start_ts = min(s.start_ts, exchange_ts_us)
        was = s.fill_recorded(seq)
        if was is not None:
            self.events.append(GapEvent(key, seq, seq, filled=True, window_start=was[2], window_end=was[3]))
            return Verdict.FILL, None
        if seq < lowest - 1:
            # below what K2 had of the session: the numbers up to it are missing now that an older one arrived
            below = GapEvent(key, seq + 1, lowest - 1, window_start=exchange_ts_us, window_end=start_ts, head=True)
            s.record(below)
            self.events.append(below)
            return Verdict.NEW, below
        return Verdict.NEW, None

    def extend_run(self, key: StreamKey, first: int, last: int, first_ts_us: int, last_ts_us: int, now_us: int) -> bool:
        """Observe `first..last` (consecutive, exchange times first_ts..last_ts) as one run if that is a clean
        continuation of the stream's newest session: every number NEW, no gap, no fill, no new session. Returns
        False, changing nothing, if it is not."""
        base = self.staged.get(key) or self.tracker.streams.get(key)
        newest = base.newest if base is not None else None
        if first < 1:
            return False
        if newest is None or not newest.his:
            if base is not None and base.sessions:
                return False
            st = self._state(key)
            session = Session(first_ts_us, [first], [last], [now_us], last_ts_us)
            st.insert(session)
            return True
        if first != newest.top + 1 or first_ts_us < newest.top_ts:
            return False
        if newest.recorded and max(g[1] for g in newest.recorded) >= first:
            return False
        s = self._state(key).sessions[-1]
        s.his[-1] = last
        s.touched[-1] = now_us
        s.top_ts = last_ts_us
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
    """Classify rows sorted by (key_idx, exchange time, seq, ...), `keys[key_idx[i]]` being row i's stream, as the
    per-row loop `txn.observe(...)` over them in that order would, stopping at the first new gap `stops` accepts."""
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
            key, int(seqs[lo]), int(seqs[hi - 1]), int(ts_us[lo]), int(ts_us[hi - 1]), now_us
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
