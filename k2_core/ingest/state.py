"""The sequence state kept right: the tracker, and the snapshot of each table it matches.

The tracker is derived from the tables, never stored on the side (k2_core.ingest.dedup), so what matters is knowing
which snapshot it is right as of. After a rebalance or a failed write it is caught up from there (reading only the
files other writers committed since), and read again whole only the first time or when that snapshot has left the
chain. Our own commit keeps it right without a read, unless another writer committed in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2_core.ingest.dedup import OpenGaps, already_stored, catch_up, load_history, rebuild, to_us
from k2_core.ingest.plan import BatchPlan
from k2_core.ingest.sequence import SequenceTracker, SequenceTxn, StreamKey
from k2_core.logging import get_logger
from k2_core.model.topics import Kind

log = get_logger(__name__)

AGE_OUT_EVERY_SECONDS = 60.0


class SequenceState:
    def __init__(self, tables: Mapping[Kind, Table], open_gaps: Callable[[], OpenGaps], window_us: int) -> None:
        self.tracker = SequenceTracker(window_us)
        self.tables = tables
        self._open_gaps = open_gaps
        self._at: dict[Kind, int | None] | None = None  # the snapshot per table the tracker is right as of
        # Per table, the snapshot the tracker is right as of for this writer's own streams: past `_at` by the peers'
        # snapshots since (ingesters of other partitions, hence other streams), never past another kind of writer's.
        self._own: dict[Kind, int | None] = {}
        self.stale = False  # another kind of writer (an import) committed since: catch up before the next plan
        self._aged_out_at = time.monotonic()

    def at(self, kind: Kind) -> int | None:
        """The snapshot of `kind`'s table a plan is right as of for this writer's streams, where each commit's
        re-check starts (None before the first sync, or an empty table). It follows this writer's commits past
        peers' snapshots; the whole tracker stays right as of an older one (`_at`), from which a rebalance catches
        up with the peers' rows (their partitions may become ours)."""
        if self._at is None:
            return None
        return self._own[kind] if kind in self._own else self._at.get(kind)

    def sync(self) -> None:
        """Make the tracker match the tables: catch up with what other writers committed since it was right (a
        rebalance, a failed write, an import), or, the first time or when that snapshot has expired, read the whole
        window."""
        self.stale = False
        open_gaps = self._open_gaps()
        if self._at is not None:
            rows = catch_up(self.tracker, self.tables, self._at, open_gaps)
            if rows is not None:
                self._at = {kind: t.metadata.current_snapshot_id for kind, t in self.tables.items()}
                self._own = {}
                log.info("sequence state caught up", extra={"keys_read": rows, "streams": len(self.tracker.streams)})
                return
        for table in self.tables.values():
            table.refresh()
        at = {kind: t.metadata.current_snapshot_id for kind, t in self.tables.items()}
        rows = rebuild(self.tracker, self.tables, open_gaps, datetime.now(UTC))
        self._at, self._own = at, {}
        log.info("sequence state rebuilt", extra={"keys_read": rows, "streams": len(self.tracker.streams)})

    def load_history(self, wanted: set[tuple[StreamKey, int]]) -> None:
        """Load stream-days from before the horizon (`k2_core.ingest.plan.history_wanted`) before planning."""
        rows = load_history(self.tracker, self.tables, wanted, self._open_gaps(), datetime.now(UTC))
        log.info("history loaded for older rows", extra={"stream_days": len(wanted), "keys_read": rows})

    def settle_late(self, plan: BatchPlan) -> None:
        """Look the plan's late numbers up in their tables: the gap backfill (or an import) may have stored them since
        the state was built, and may yet until the commit, which re-checks from the snapshot looked at here. Late
        numbers are rare, so this narrow read is cheap."""
        for kind in list(plan.late):
            stored, checked_at = already_stored(self.tables[kind], plan.late[kind].table)
            plan.drop_stored(kind, stored, checked_at)

    def committed(
        self,
        kind: Kind,
        txn: SequenceTxn | None,
        snapshot_id: int | None,
        foreign: Callable[[Snapshot], bool] | None = None,
        written_to: Table | None = None,
    ) -> None:
        """`kind`'s rows are committed (as `snapshot_id`; None if there were none to write): merge what the plan
        staged. The state stays right as of our snapshot when nobody committed between (its parent is the state's
        snapshot); when only peers did (ingesters of other partitions, hence other streams: not `foreign`), it is
        right as of our snapshot for our own streams (`at`), and the next catch-up reads what the peers added (and
        our rows again: harmless). When one of the snapshots between is `foreign` (another kind of writer's, whose rows
        may be any stream's), the state is `stale`: the caller catches up before planning again. `at` moving on past
        peers matters: each commit's re-check starts there, so one left behind would make every commit walk further
        back, and read every file of the table once it expired. `written_to`: the table object the writer committed
        through, when it is not the state's own (another thread's)."""
        table = written_to or self.tables[kind]
        if self._at is not None and snapshot_id is not None:
            snapshot = table.metadata.snapshot_by_id(snapshot_id)
            if snapshot is not None and snapshot.parent_snapshot_id == self._at.get(kind):
                self._at[kind] = snapshot_id
                self._own.pop(kind, None)
            elif snapshot is not None and foreign is not None:
                if self._any_between(table, kind, snapshot, foreign):
                    self.stale = True
                else:
                    self._own[kind] = snapshot_id
        if txn is not None:
            txn.commit()

    def _any_between(self, table: Table, kind: Kind, snapshot: Snapshot, test: Callable[[Snapshot], bool]) -> bool:
        """Whether `test` accepts a snapshot between the state's and `snapshot` (all of them, if the state's left the
        chain: then the next sync reads the window again anyway)."""
        known = self.at(kind)
        parent = snapshot.parent_snapshot_id
        while parent is not None and parent != known:
            between = table.metadata.snapshot_by_id(parent)
            if between is None:
                return True
            if test(between):
                return True
            parent = between.parent_snapshot_id
        return parent != known

    def age_out(self, now: datetime) -> None:
        """At most once a minute, let sessions and loaded days older than the window leave the tracker."""
        if time.monotonic() - self._aged_out_at < AGE_OUT_EVERY_SECONDS:
            return
        self._aged_out_at = time.monotonic()
        dropped = self.tracker.evict(to_us(now))
        if dropped:
            log.info("sequence state aged out", extra={"sessions": dropped, "streams": len(self.tracker.streams)})
