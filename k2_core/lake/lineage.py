"""What each new Iceberg snapshot of a table changed, per day partition: the feed behind Dagster's lineage events,
the OHLCV trigger and the compaction trigger.

A snapshot's own changes are the entries of the manifests it wrote (`added_snapshot_id` is the snapshot), so only
those manifests are read, never the whole table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from pyiceberg.conversions import from_bytes
from pyiceberg.manifest import DataFile, ManifestContent, ManifestEntryStatus, ManifestFile
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.types import IntegerType

from k2_core.lake.offsets import OFFSETS_PROPERTY, WRITER_PROPERTY
from k2_core.model.days import EPOCH_DAY, from_partition_value

# Walking a chain longer than this in one call reports only the newest snapshots (a sensor that was off for days).
MAX_WALK = 1000


@dataclass
class DayChange:
    rows_added: int = 0
    files_added: int = 0
    rows_removed: int = 0
    files_removed: int = 0


@dataclass
class SnapshotChange:
    snapshot_id: int
    parent_id: int | None
    committed_at: datetime
    operation: str
    writer: str
    carries_offsets: bool
    days: dict[date, DayChange] = field(default_factory=dict)

    @property
    def rows_added(self) -> int:
        return sum(d.rows_added for d in self.days.values())


def new_snapshot_ids(table: Table, after: int | None, limit: int = MAX_WALK) -> list[int]:
    """Ids of the current chain's snapshots newer than `after`, oldest first, at most `limit` (the newest).
    `after=None`, or an id no longer on the chain (expired, rolled back), walks from the newest back."""
    ids: list[int] = []
    snapshot_id = table.metadata.current_snapshot_id
    while snapshot_id is not None and snapshot_id != after and len(ids) < limit:
        snapshot = table.metadata.snapshot_by_id(snapshot_id)
        if snapshot is None:
            break
        ids.append(snapshot_id)
        snapshot_id = snapshot.parent_snapshot_id
    ids.reverse()
    return ids


def _summary_int(snapshot: Snapshot, key: str) -> int:
    value = snapshot.summary.get(key) if snapshot.summary else None
    return int(value) if value else 0


def describe(table: Table, snapshot: Snapshot, manifests: list[ManifestFile] | None = None) -> SnapshotChange:
    """Rows and files each day partition gained and lost in this snapshot. `manifests` are the ones it wrote, if
    the caller already has them; otherwise its manifest list is read."""
    props = snapshot.summary.additional_properties if snapshot.summary else {}
    change = SnapshotChange(
        snapshot_id=snapshot.snapshot_id,
        parent_id=snapshot.parent_snapshot_id,
        committed_at=datetime.fromtimestamp(snapshot.timestamp_ms / 1000, tz=UTC),
        operation=str(snapshot.summary.operation.value) if snapshot.summary else "unknown",
        writer=props.get(WRITER_PROPERTY, ""),
        carries_offsets=OFFSETS_PROPERTY in props,
    )
    if manifests is None:
        manifests = [m for m in snapshot.manifests(table.io) if m.added_snapshot_id == snapshot.snapshot_id]
    for manifest in manifests:
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
            if entry.snapshot_id != snapshot.snapshot_id or len(entry.data_file.partition) == 0:
                continue
            value = entry.data_file.partition[0]
            if value is None:
                continue
            day = change.days.setdefault(from_partition_value(value), DayChange())
            if entry.status == ManifestEntryStatus.ADDED:
                day.rows_added += entry.data_file.record_count
                day.files_added += 1
            elif entry.status == ManifestEntryStatus.DELETED:
                day.rows_removed += entry.data_file.record_count
                day.files_removed += 1
    return change


def _own_manifests(table: Table, ids: list[int]) -> dict[int, list[ManifestFile] | None]:
    """The manifests each of `ids` wrote (None: read that snapshot's own list). Manifest lists hold every live
    manifest of the table, so reading one per new snapshot gets expensive; the newest list is read once and each
    snapshot's own manifests are picked from it. A snapshot whose manifests are no longer all there (a delete-only
    manifest is dropped by the next commit, merging rewrites small ones) falls back to its own list."""
    newest = table.metadata.snapshot_by_id(ids[-1])
    assert newest is not None  # new_snapshot_ids only returns ids it found
    wanted = set(ids)
    by_snapshot: dict[int, list[ManifestFile]] = {}
    for manifest in newest.manifests(table.io):
        if manifest.added_snapshot_id in wanted:
            by_snapshot.setdefault(manifest.added_snapshot_id, []).append(manifest)
    out: dict[int, list[ManifestFile] | None] = {}
    for snapshot_id in ids:
        snapshot = table.metadata.snapshot_by_id(snapshot_id)
        if snapshot is None:
            continue
        manifests = by_snapshot.get(snapshot_id, [])
        added = sum(m.added_files_count or 0 for m in manifests)
        deleted = sum(m.deleted_files_count or 0 for m in manifests)
        complete = added >= _summary_int(snapshot, "added-data-files")
        out[snapshot_id] = manifests if complete and deleted >= _summary_int(snapshot, "deleted-data-files") else None
    return out


def changes_since(table: Table, after: int | None, limit: int = MAX_WALK) -> list[SnapshotChange]:
    """`describe` for every snapshot `new_snapshot_ids` returns, oldest first."""
    ids = new_snapshot_ids(table, after, limit)
    if not ids:
        return []
    out = []
    for snapshot_id, manifests in _own_manifests(table, ids).items():
        snapshot = table.metadata.snapshot_by_id(snapshot_id)
        assert snapshot is not None
        out.append(describe(table, snapshot, manifests))
    return out


def files_added_since(
    table: Table,
    after: int | None,
    appends_only: bool = False,
    where: Callable[[Snapshot], bool] | None = None,
) -> list[DataFile] | None:
    """The data files the snapshots after `after` added (in the table's current metadata), or None when `after` is
    no longer on the current chain (expired, rolled back, or too far back): then only the whole table tells.
    What a writer checked at snapshot `after` needs re-checking against exactly these files before it commits.
    `appends_only`: only files of `append` snapshots, the ones that bring new rows (a compaction's rewrite brings
    the same rows again); `where`: only files of the snapshots it accepts (another writer's)."""
    ids = new_snapshot_ids(table, after)
    if not ids:
        return [] if table.metadata.current_snapshot_id == after else None
    first = table.metadata.snapshot_by_id(ids[0])
    if first is None or first.parent_snapshot_id != after:
        return None
    if where is not None:
        ids = [i for i in ids if where(_snapshot(table, i))]
        if not ids:
            return []
    files: list[DataFile] = []
    for snapshot_id, manifests in _own_manifests(table, ids).items():
        snapshot = table.metadata.snapshot_by_id(snapshot_id)
        assert snapshot is not None
        if appends_only and snapshot.summary is not None and snapshot.summary.operation.value != "append":
            continue
        if manifests is None:
            manifests = [m for m in snapshot.manifests(table.io) if m.added_snapshot_id == snapshot_id]
        for manifest in manifests:
            if manifest.content != ManifestContent.DATA:
                continue
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                if entry.snapshot_id == snapshot_id and entry.status == ManifestEntryStatus.ADDED:
                    files.append(entry.data_file)
    return files


def files_to_recheck(
    table: Table,
    after: int | None,
    appends_only: bool = False,
    where: Callable[[Snapshot], bool] | None = None,
) -> list[DataFile]:
    """The data files a writer that checked the table at snapshot `after` must check again before it commits: those
    `files_added_since` it (with the same filters), or every data file of the table when `after` has left the chain
    (expired, rolled back) and only the whole table tells."""
    added = files_added_since(table, after, appends_only=appends_only, where=where)
    return added if added is not None else [task.file for task in table.scan().plan_files()]


def _snapshot(table: Table, snapshot_id: int) -> Snapshot:
    snapshot = table.metadata.snapshot_by_id(snapshot_id)
    assert snapshot is not None  # new_snapshot_ids only returns ids it found
    return snapshot


def _day_range(manifest: ManifestFile) -> tuple[int, int] | None:
    """The range of day partition values (days since the epoch) a manifest's summary says it covers."""
    summary = manifest.partitions[0] if manifest.partitions else None
    if summary is None or summary.lower_bound is None or summary.upper_bound is None:
        return None
    low = from_bytes(IntegerType(), summary.lower_bound)
    high = from_bytes(IntegerType(), summary.upper_bound)
    return int(low), int(high)


def _data_entries(table: Table, keep: Callable[[int, int], bool]) -> Iterator[DataFile]:
    """Live data files of the current snapshot, opening only manifests whose day range `keep(low, high)` accepts."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return
    for manifest in snapshot.manifests(table.io):
        if manifest.content != ManifestContent.DATA:
            continue
        days = _day_range(manifest)
        if days is not None and not keep(*days):
            continue
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            yield entry.data_file


def partition_data_files(table: Table, day: date) -> list[DataFile]:
    """The data files whose day partition is `day` in the current snapshot, chosen by partition value only (a scan's
    row filter would also prune by column statistics, hiding a file whose rows do not belong to its partition)."""
    wanted = (day - EPOCH_DAY).days
    return [
        f
        for f in _data_entries(table, lambda low, high: low <= wanted <= high)
        if len(f.partition) and f.partition[0] == wanted
    ]


@dataclass(frozen=True)
class DayFiles:
    day: date
    files: int
    rows: int
    bytes: int


def day_files(table: Table, before: date | None = None) -> list[DayFiles]:
    """Data files, rows and bytes per day partition in the current snapshot (only days before `before` if given,
    without opening manifests of later days: today's many ingester manifests), oldest day first."""
    limit = (before - EPOCH_DAY).days if before is not None else None
    totals: dict[int, list[int]] = {}
    for f in _data_entries(table, lambda low, high: limit is None or low < limit):
        if not len(f.partition) or f.partition[0] is None:
            continue
        value = int(f.partition[0])
        if limit is not None and value >= limit:
            continue
        t = totals.setdefault(value, [0, 0, 0])
        t[0] += 1
        t[1] += f.record_count
        t[2] += f.file_size_in_bytes
    return [DayFiles(from_partition_value(v), *totals[v]) for v in sorted(totals)]
