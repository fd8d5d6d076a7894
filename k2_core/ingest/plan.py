"""Batch planning: what a micro-batch stores, what it drops as duplicates, which gaps it reveals or fills, and where
a partition must stop.

The plan is a pure function of the decoded rows and the sequence state: it reads the tracker, stages every change
in one `SequenceTxn` per data type (merged only after the data commit), and touches no table and no broker, so its
rules are tested without either (tests/unit/test_plan.py). The caller does the two reads around it: the stream-days
`history_wanted` names are loaded into the tracker before planning, and the late numbers the plan found are looked
up in the table (`BatchPlan.drop_stored`), since the gap backfill may have stored them since the state was built.

A gap past the halt threshold stops its partition at the message that revealed it: the rows of that partition from
there on are left out and the plan is made again without them (a row left out may have revealed another gap or
filled one), until no new halt is found. A halted partition commits up to the halting message; the operator's
restart is the go-ahead to pass the gap, which is recorded like any other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from k2_core.ingest.gaps import HALT, GapGrading
from k2_core.ingest.sequence import (
    DAY_US,
    DUPLICATE,
    FILL,
    GapEvent,
    SequenceTracker,
    SequenceTxn,
    StreamKey,
    observe_batch,
)
from k2_core.lake.offsets import TopicPartition
from k2_core.model.topics import Kind

Int64Array = npt.NDArray[np.int64]
_NO_CUT = np.iinfo(np.int64).max


def _int64(column: pa.ChunkedArray) -> Int64Array:
    return np.asarray(column.cast(pa.int64()), dtype=np.int64)


def stream_index(kind: Kind, table: pa.Table) -> tuple[list[StreamKey], Int64Array]:
    """The distinct (kind, exchange, symbol) streams of `table`, sorted, and each row's index into them: sorting
    by the index sorts by stream without comparing strings per row."""
    if table.num_rows == 0:
        return [], np.zeros(0, dtype=np.int64)
    # Each column encoded alone (a handful of distinct values), then the pairs numbered: no string built per row.
    exchanges = pc.dictionary_encode(table.column("exchange")).combine_chunks()
    symbols = pc.dictionary_encode(table.column("symbol")).combine_chunks()
    width = len(symbols.dictionary)
    pairs = np.asarray(exchanges.indices, dtype=np.int64) * width + np.asarray(symbols.indices, dtype=np.int64)
    codes, inverse = np.unique(pairs, return_inverse=True)
    exchange_names, symbol_names = exchanges.dictionary.to_pylist(), symbols.dictionary.to_pylist()
    found = [(kind, exchange_names[c // width], symbol_names[c % width]) for c in codes.tolist()]
    order = sorted(range(len(found)), key=found.__getitem__)
    rank = np.empty(len(found), dtype=np.int64)
    rank[order] = np.arange(len(found))
    keys = [cast(StreamKey, found[i]) for i in order]
    return keys, rank[inverse.reshape(-1)]


@dataclass
class KindRows:
    """The valid rows of one data type in a batch (unsorted, in the table's Arrow schema) and, per row, its partition
    (index into the batch's partitions), offset and position in the batch. The columns the plan sorts by are read
    once here, however often a halt makes the plan start again."""

    kind: Kind
    table: pa.Table
    tp_codes: Int64Array
    offsets: Int64Array
    positions: Int64Array
    keys: list[StreamKey] = field(init=False)
    key_idx: Int64Array = field(init=False)
    seqs: Int64Array = field(init=False)
    times: Int64Array = field(init=False)  # exchange time, µs

    def __post_init__(self) -> None:
        self.keys, self.key_idx = stream_index(self.kind, self.table)
        self.seqs = _int64(self.table.column("exchange_sequence_number"))
        self.times = _int64(self.table.column("exchange_timestamp"))


class Halt(NamedTuple):
    """Where a partition stops (the offset of the message that revealed the gap) and the gap."""

    offset: int
    gap: GapEvent


class LateRows(NamedTuple):
    """Rows filling recorded gaps, and where each is in its data type's planned rows."""

    table: pa.Table
    at: Int64Array


@dataclass
class BatchPlan:
    rows: dict[Kind, pa.Table] = field(default_factory=dict)  # to append, per data type (unsorted)
    duplicates: dict[Kind, int] = field(default_factory=lambda: defaultdict(int))
    detected: list[GapEvent] = field(default_factory=list)  # gaps to record before the data commit
    filled: list[GapEvent] = field(default_factory=list)  # numbers of recorded gaps that arrived late
    halts: dict[TopicPartition, Halt] = field(default_factory=dict)
    txns: dict[Kind, SequenceTxn] = field(default_factory=dict)  # merge each after its table's commit
    late: dict[Kind, LateRows] = field(default_factory=dict)  # not looked up in the table yet
    # Rows filling recorded gaps, per data type, and the snapshot they were found not stored at (None: never
    # looked up, so the writer checks them against every file).
    fills: dict[Kind, tuple[pa.Table, int | None]] = field(default_factory=dict)
    fast_streams: int = 0  # streams classified as one run
    slow_streams: int = 0  # streams classified row by row

    def take_events(self) -> None:
        """Once the plan is final: the gaps its staged changes found and the numbers they filled, and the halting
        gaps, which are recorded too (restarting the ingester is the operator's go-ahead to pass them)."""
        for txn in self.txns.values():
            self.detected.extend(e for e in txn.events if not e.filled)
            self.filled.extend(e for e in txn.events if e.filled)
        self.detected.extend(halt.gap for halt in self.halts.values())

    def drop_stored(self, kind: Kind, stored: npt.NDArray[np.bool_], checked_at: int | None) -> None:
        """`stored`: which of `late[kind]` the table holds as of snapshot `checked_at` (the gap backfill wrote them
        since the state was built). They become duplicates; the rest stay fills, which the writer re-checks against
        what is committed after `checked_at`."""
        late = self.late.pop(kind)
        if stored.any():
            keep = np.ones(self.rows[kind].num_rows, dtype=np.bool_)
            keep[late.at[stored]] = False
            self.rows[kind] = self.rows[kind].filter(pa.array(keep))
            self.duplicates[kind] += int(stored.sum())
        self.fills[kind] = (late.table.filter(pa.array(~stored)), checked_at)

    def beyond_halt(self, tp: TopicPartition, offset: int) -> bool:
        """Whether a message is past its partition's halt: it is read again after the restart, so nothing of it
        (not even its dead letter) is committed now."""
        halt = self.halts.get(tp)
        return halt is not None and offset >= halt.offset

    def commit_offsets(self, next_offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The next offset to commit per partition: a halted one up to its halting message, which is read again."""
        return {**next_offsets, **{tp: halt.offset for tp, halt in self.halts.items()}}


def halts_partition(gap: GapEvent, grading: GapGrading, shed: Collection[StreamKey] = ()) -> bool:
    """A newly found gap past the halt threshold stops its partition, unless it is a session's missing head (the rows
    after it are in order) or K2's own doing (numbers it shed under load: they are in the DLQ, to replay)."""
    return not gap.head and grading(gap.missing) == HALT and gap.key not in shed


def history_wanted(tracker: SequenceTracker, rows: Mapping[Kind, KindRows]) -> set[tuple[StreamKey, int]]:
    """The stream-days (stream, day number) to load before planning: rows older than the tracker's horizon (a replay
    or import of history) are checked against what the tables hold for their days. Live rows never need this."""
    wanted: set[tuple[StreamKey, int]] = set()
    for r in rows.values():
        old = np.flatnonzero(r.times < tracker.horizon_us)
        if old.size == 0:
            continue
        days = r.times[old] // DAY_US
        # a few stream-days however many rows: one int64 per (stream, day), its distinct values (days >= 0: 1970 on)
        pairs = np.unique(r.key_idx[old] << 32 | days)
        for k, day in zip((pairs >> 32).tolist(), (pairs & 0xFFFFFFFF).tolist(), strict=True):
            key = r.keys[k]
            if not tracker.covers(key, day * DAY_US):
                wanted.add((key, day))
    return wanted


def plan_batch(
    rows: Mapping[Kind, KindRows],
    tps: Sequence[TopicPartition],
    tracker: SequenceTracker,
    now_us: int,
    grading: GapGrading,
    shed: Collection[StreamKey] = (),
) -> BatchPlan:
    """Classify every row (`observe_batch`: whole runs at once, row by row only for streams that need it) in the
    per-row order: data type, stream, exchange time, sequence, offset, position. `tps[rows.tp_codes[i]]` is row i's
    partition; `shed` the streams shed under load since their last gap was recorded."""
    halts: dict[TopicPartition, Halt] = {}
    while True:
        plan = BatchPlan(halts=halts)
        for kind in sorted(rows):
            found = _classify(plan, rows[kind], tps, tracker, now_us, lambda g: halts_partition(g, grading, shed))
            if found is not None:
                tp, halt = found
                halts[tp] = Halt(min(halt.offset, halts[tp].offset), halt.gap) if tp in halts else halt
                break
        else:
            plan.take_events()
            return plan


def _classify(
    plan: BatchPlan,
    rows: KindRows,
    tps: Sequence[TopicPartition],
    tracker: SequenceTracker,
    now_us: int,
    halting: Callable[[GapEvent], bool],
) -> tuple[TopicPartition, Halt] | None:
    """Plan one data type's rows into `plan`; returns the new halt instead if one was found."""
    kind, table = rows.kind, rows.table
    selected = np.arange(table.num_rows)
    if plan.halts:
        cut = np.array([plan.halts[tp].offset if tp in plan.halts else _NO_CUT for tp in tps], dtype=np.int64)
        selected = np.flatnonzero(rows.offsets < cut[rows.tp_codes])
    # per stream in exchange-time order, so rows of two sessions in one batch fall in their own sessions
    order = selected[
        np.lexsort(
            (
                rows.positions[selected],
                rows.offsets[selected],
                rows.seqs[selected],
                rows.times[selected],
                rows.key_idx[selected],
            )
        )
    ]
    if order.size == 0:
        plan.rows[kind] = table.slice(0, 0)
        return None
    txn = plan.txns[kind] = tracker.begin()
    verdicts = observe_batch(
        txn,
        rows.keys,
        rows.key_idx[order],
        rows.seqs[order],
        rows.times[order],
        now_us,
        stops=halting,
    )
    if verdicts.halt is not None:
        at, gap = verdicts.halt
        row = order[at]
        return tps[rows.tp_codes[row]], Halt(int(rows.offsets[row]), gap)
    keep = np.zeros(table.num_rows, dtype=np.bool_)
    keep[order[verdicts.codes != DUPLICATE]] = True
    plan.rows[kind] = table if keep.all() else table.filter(pa.array(keep))
    plan.duplicates[kind] += int(order.size - keep.sum())
    late = order[verdicts.codes == FILL]
    if late.size:
        at = (np.cumsum(keep) - 1)[late]  # where each late row is among the kept ones
        plan.late[kind] = LateRows(table.take(pa.array(late)), at)
        plan.fills[kind] = (plan.late[kind].table, None)
    plan.fast_streams += verdicts.fast_streams
    plan.slow_streams += verdicts.slow_streams
    return None
