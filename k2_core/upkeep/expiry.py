"""Snapshot expiry and orphan-file removal: the storage side of table upkeep, which pyiceberg 0.12 leaves to us
(its `expire_snapshots` only edits metadata and it has no orphan removal).

Expiry removes snapshots older than the retention, but always keeps the newest `keep_last`, every branch or tag
head, and the ingester's resume chain: the snapshots from the current one back to the one holding the newest
committed offset of each Kafka partition (of the newest cluster). The ingester finds its offsets by walking that
parent chain, so a hole in it would lose them.

Orphan removal deletes files under the table's location that no live snapshot, manifest or metadata file refers
to: the files expiry released, and writes that never committed. Only Iceberg file types are considered, and only
files older than a minimum age, so a file written by an in-flight commit is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from pyarrow import fs as pafs
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2_core.exceptions import MaintenanceError
from k2_core.lake.offsets import CLUSTER_PROPERTY, OFFSETS_PROPERTY, decode_offsets
from k2_core.lake.retry import commit_with_retries
from k2_core.logging import get_logger
from k2_core.model.bars import DAY_PROPERTY
from k2_core.settings import ORPHAN_MIN_AGE_FLOOR_HOURS

log = get_logger(__name__)

ICEBERG_SUFFIXES = (".parquet", ".avro", ".metadata.json", ".puffin", ".stats")


@dataclass(frozen=True)
class ExpiryResult:
    table: str
    expired: list[int]
    retained: int
    offsets_chain: int  # snapshots kept because the ingester's resume walk needs them


@dataclass
class OrphanResult:
    table: str
    files_seen: int = 0
    referenced: int = 0
    deleted: list[str] = field(default_factory=list)
    too_young: int = 0


def offsets_chain(table: Table) -> set[int]:
    """The current chain's snapshots from the current one back to the oldest snapshot that holds some partition's
    newest committed offset (of the cluster the newest offsets belong to). Empty if no snapshot carries offsets."""
    chain: list[int] = []
    horizon = 0
    cluster: str | None = None
    seen: set[tuple[str, int]] = set()
    snapshot_id = table.metadata.current_snapshot_id
    while snapshot_id is not None:
        snapshot = table.metadata.snapshot_by_id(snapshot_id)
        if snapshot is None:
            break
        chain.append(snapshot_id)
        props = snapshot.summary.additional_properties if snapshot.summary else {}
        if OFFSETS_PROPERTY in props:
            cluster = cluster if cluster is not None else props.get(CLUSTER_PROPERTY)
            if props.get(CLUSTER_PROPERTY) == cluster:
                partitions = set(decode_offsets(props[OFFSETS_PROPERTY]))
                if partitions - seen:
                    horizon = len(chain)
                    seen |= partitions
        snapshot_id = snapshot.parent_snapshot_id
    return set(chain[:horizon])


def day_builds(table: Table) -> set[int]:
    """The newest snapshot of each day a bar table rebuilt: what a query reads to know what the day's bars were
    built from (k2_core.model.bars.day_source), kept however old, one per day. Empty for any other table."""
    newest: dict[str, Snapshot] = {}
    for snapshot in sorted(table.metadata.snapshots, key=lambda s: s.sequence_number or 0):
        day = snapshot.summary.additional_properties.get(DAY_PROPERTY) if snapshot.summary else None
        if day is not None:
            newest[day] = snapshot  # a later build of the day replaces it
    return {s.snapshot_id for s in newest.values()}


def plan_expiry(table: Table, now: datetime, retention: timedelta, keep_last: int) -> tuple[list[int], int]:
    """Snapshot ids to expire, and how many were kept only for the offsets chain."""
    snapshots = sorted(table.metadata.snapshots, key=lambda s: (s.timestamp_ms, s.sequence_number or 0))
    newest = {s.snapshot_id for s in snapshots[-keep_last:]} if keep_last else set()
    # branch and tag heads, and the bar tables' newest build of each day
    heads = {ref.snapshot_id for ref in table.metadata.refs.values()} | day_builds(table)
    chain = offsets_chain(table)
    cutoff_ms = int((now - retention).timestamp() * 1000)
    old = [s.snapshot_id for s in snapshots if s.timestamp_ms < cutoff_ms]
    expire = [s for s in old if s not in newest and s not in heads and s not in chain]
    held_for_offsets = sum(1 for s in old if s in chain and s not in newest and s not in heads)
    return expire, held_for_offsets


def expire_snapshots(
    table: Table,
    now: datetime,
    *,
    retention: timedelta,
    keep_last: int,
    retries: int,
    backoff_seconds: float,
    dry_run: bool = False,
) -> ExpiryResult:
    """Expire snapshots older than `retention` (metadata only: orphan removal reclaims their files). A dry run
    reports what would be expired and commits nothing."""
    held = 0

    def attempt(current: Table) -> list[int]:
        nonlocal held
        expire, held = plan_expiry(current, now, retention, keep_last)
        if not expire or dry_run:
            return expire
        try:
            current.maintenance.expire_snapshots().by_ids(expire).commit()
        except ValueError as exc:  # a snapshot vanished (a concurrent expiry): re-plan on the new metadata
            raise CommitFailedException(str(exc)) from exc
        return expire

    table.refresh()
    expired = commit_with_retries(table, attempt, retries=retries, backoff_seconds=backoff_seconds, what="expiry")
    retained = len(table.metadata.snapshots) - (len(expired) if dry_run else 0)
    result = ExpiryResult(".".join(table.name()), expired, retained, held)
    log.info(
        "snapshots expired",
        extra={
            "table": result.table,
            "expired": len(expired),
            "retained": result.retained,
            "offsets_chain": held,
            "dry_run": dry_run,
        },
    )
    return result


def _normalise(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return "file://" + parts.path
    return uri


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata reaches: metadata files (current and logged), statistics, and for every
    snapshot its manifest list, manifests and their live data and delete files."""
    meta = table.metadata
    refs = {table.metadata_location, *(entry.metadata_file for entry in meta.metadata_log)}
    refs.update(s.statistics_path for s in meta.statistics)
    refs.update(s.statistics_path for s in meta.partition_statistics)
    manifests_read: set[str] = set()
    for snapshot in meta.snapshots:
        refs.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            refs.add(manifest.manifest_path)
            if manifest.manifest_path in manifests_read:
                continue
            manifests_read.add(manifest.manifest_path)
            refs.update(e.data_file.file_path for e in manifest.fetch_manifest_entry(table.io, discard_deleted=True))
    return {_normalise(r) for r in refs}


def _list_files(table: Table, location: str) -> list[tuple[str, int]]:
    """(uri, mtime in ns) of every file under `location`, through the table's own FileIO (same credentials)."""
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        raise MaintenanceError(
            f"orphan removal needs pyiceberg's PyArrowFileIO, {table.name()} uses {type(io).__name__}"
        )
    scheme, netloc, root = PyArrowFileIO.parse_location(location, io.properties)
    filesystem = io.fs_by_scheme(scheme, netloc)
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    out = []
    for info in filesystem.get_file_info(selector):
        if info.type == pafs.FileType.File:
            out.append((f"{scheme}://{info.path}", info.mtime_ns or 0))
    return out


def remove_orphans(table: Table, now: datetime, *, min_age: timedelta, dry_run: bool = False) -> OrphanResult:
    """Delete Iceberg files under the table's location that no live metadata refers to and that are older than
    `min_age`. Lists first, then reads the newest metadata, so a file committed meanwhile counts as referenced."""
    if min_age < timedelta(hours=ORPHAN_MIN_AGE_FLOOR_HOURS):
        raise MaintenanceError(
            f"orphan files must be at least {ORPHAN_MIN_AGE_FLOOR_HOURS:g} h old to be removed (asked {min_age}): a "
            "younger unreferenced file may belong to a commit or compaction still in flight"
        )
    location = table.metadata.location
    if not location:
        raise MaintenanceError(f"{table.name()} has no location")
    listed = _list_files(table, location)
    table.refresh()
    refs = referenced_files(table)
    cutoff_ns = int((now - min_age).timestamp() * 1_000_000_000)
    result = OrphanResult(".".join(table.name()), files_seen=len(listed))
    for uri, mtime_ns in listed:
        normalised = _normalise(uri)
        if normalised in refs:
            result.referenced += 1
            continue
        if not normalised.endswith(ICEBERG_SUFFIXES):
            continue
        if mtime_ns > cutoff_ns:
            result.too_young += 1
            continue
        if not dry_run:
            table.io.delete(uri)
        result.deleted.append(uri)
    log.info(
        "orphan files removed",
        extra={
            "table": result.table,
            "files_seen": result.files_seen,
            "deleted": len(result.deleted),
            "too_young": result.too_young,
            "dry_run": dry_run,
        },
    )
    return result
