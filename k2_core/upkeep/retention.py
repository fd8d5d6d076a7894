"""Snapshot retention as part of normal operation: checkpoint tags, then expiry, so metadata stays small at any age.

pyiceberg's commit cost grows with the size of a table's metadata (an append copies it at least once and writes it out
whole), and a busy ingester commits once a second or more. So the snapshots are thinned as the table is written,
keeping time travel where it is promised:

* every commit of the newest `keep_last` snapshots (the last minutes of an active table);
* one **hourly checkpoint** (tag `k2-hour-YYYYMMDDTHH`: the current snapshot when the hour was first seen) for the
  last `hourly_hours` hours, and one **daily checkpoint** (tag `k2-day-YYYYMMDD`) for `daily_hours` hours (the
  snapshot retention, `K2_MAINTENANCE_SNAPSHOT_RETENTION_HOURS`); older checkpoint tags are removed;
* the ingester's resume chain (`k2_core.upkeep.expiry.offsets_chain`) and every branch or tag head.

Everything else is expired with `k2_core.upkeep.expiry.expire_snapshots` (the Dagster job's expiry: it never removes a
tag head or the offsets chain). Time travel to a moment between checkpoints reads the checkpoint before it (the
snapshot log loses expired entries with them). Expiry only edits metadata: the Dagster maintenance job's orphan
removal reclaims the released files after its minimum age, so a reader mid-scan never loses a file.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.refs import SnapshotRefType

from k2_core.exceptions import K2Error
from k2_core.lake.retry import commit_with_retries
from k2_core.logging import get_logger
from k2_core.settings import Settings
from k2_core.upkeep.expiry import expire_snapshots, plan_expiry

log = get_logger(__name__)

HOUR_TAG = "k2-hour-"
DAY_TAG = "k2-day-"


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 20
    hourly_hours: float = 6.0
    daily_hours: float = 7 * 24.0

    @classmethod
    def of(cls, settings: Settings) -> RetentionPolicy:
        """The policy of every writer that thins its own commits."""
        return cls(keep_last=settings.ingest.keep_snapshots, daily_hours=settings.maintenance.snapshot_retention_hours)


@dataclass(frozen=True)
class RetentionResult:
    tagged: list[str]
    untagged: list[str]
    expired: int
    retained: int


def _tag_time(name: str) -> datetime | None:
    try:
        if name.startswith(HOUR_TAG):
            return datetime.strptime(name.removeprefix(HOUR_TAG), "%Y%m%dT%H").replace(tzinfo=UTC)
        if name.startswith(DAY_TAG):
            return datetime.strptime(name.removeprefix(DAY_TAG), "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return None


def plan_tags(table: Table, now: datetime, policy: RetentionPolicy) -> tuple[dict[str, int], list[str]]:
    """Checkpoint tags to create (name -> the current snapshot) and K2 checkpoint tags past their window."""
    current = table.metadata.current_snapshot_id
    refs = table.metadata.refs
    create: dict[str, int] = {}
    if current is not None:
        for name in (f"{HOUR_TAG}{now:%Y%m%dT%H}", f"{DAY_TAG}{now:%Y%m%d}"):
            if name not in refs:
                create[name] = current
    remove = []
    for name, ref in refs.items():
        if ref.snapshot_ref_type != SnapshotRefType.TAG:
            continue
        at = _tag_time(name)
        if at is None:
            continue
        window = policy.hourly_hours if name.startswith(HOUR_TAG) else policy.daily_hours
        if at < now - timedelta(hours=window):
            remove.append(name)
    return create, remove


def apply_retention(
    table: Table, now: datetime, policy: RetentionPolicy, *, retries: int = 8, backoff_seconds: float = 0.2
) -> RetentionResult:
    """Tag this hour's and day's checkpoints, drop tags past their window, then expire every snapshot that is
    neither among the newest `keep_last`, nor a tag or branch head, nor in the ingester's offsets chain."""
    created: list[str] = []
    removed: list[str] = []

    def retag(current: Table) -> None:
        create, remove = plan_tags(current, now, policy)
        if not create and not remove:
            return
        manage = current.manage_snapshots()
        for name, snapshot_id in create.items():
            manage = manage.create_tag(snapshot_id, name)
        for name in remove:
            manage = manage.remove_tag(name)
        try:
            manage.commit()
        except ValueError as exc:  # a tag created meanwhile by another process: re-plan on the new metadata
            raise CommitFailedException(str(exc)) from exc
        created[:] = list(create)
        removed[:] = remove

    table.refresh()
    commit_with_retries(table, retag, retries=retries, backoff_seconds=backoff_seconds, what="checkpoint tags")
    # retention 0: age alone keeps nothing; the newest keep_last, heads and the offsets chain are what stays
    result = expire_snapshots(
        table, now, retention=timedelta(0), keep_last=policy.keep_last, retries=retries, backoff_seconds=backoff_seconds
    )
    if created or removed:
        log.info("checkpoint tags", extra={"table": result.table, "created": created, "removed": removed})
    return RetentionResult(created, removed, len(result.expired), result.retained)


K = TypeVar("K", bound=str)


class RetentionCadence(Generic[K]):
    """Every `every` appends to a table, thin its snapshots (`apply_retention`), so commit latency stays flat
    at any table age. Best effort, after the checkpoint: the batch is already committed. Tables are named by the
    caller's keys (a data type, a table name)."""

    def __init__(self, tables: Mapping[K, Table], every: int, policy: RetentionPolicy) -> None:
        self.tables = tables
        self.every = every
        self.policy = policy
        self._appends: dict[K, int] = defaultdict(int)

    @classmethod
    def of(cls, tables: Mapping[K, Table], settings: Settings, enabled: bool = True) -> RetentionCadence[K]:
        """The cadence and policy the settings give every writer that thins its own commits (`enabled=False`: one
        that leaves it to another process)."""
        every = settings.ingest.retention_every_commits if enabled else 0
        return cls(tables, every, RetentionPolicy.of(settings))

    def appended(self, kinds: Iterable[K]) -> None:
        if not self.every:
            return
        for kind in kinds:
            self._appends[kind] += 1
            if not self._appends[kind] % self.every:
                thin(self.tables[kind], self.policy, kind)


def thin(table: Table, policy: RetentionPolicy, name: str) -> RetentionResult | None:
    """`apply_retention`, best effort and logged, for a writer whose own commit is already done."""
    started = time.perf_counter()
    try:
        result = apply_retention(table, datetime.now(UTC), policy)
    except K2Error as exc:
        log.warning("snapshot retention failed; retried later", extra={"table": name, "error": str(exc)})
        return None
    log.info(
        "snapshot retention applied",
        extra={
            "table": name,
            "expired": result.expired,
            "retained": result.retained,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return result


def thin_when_due(table: Table, settings: Settings) -> RetentionResult | None:
    """For a writer that keeps no count of its commits (each Dagster run builds once): thin `table` once at least
    `K2_INGEST_RETENTION_EVERY_COMMITS` of its snapshots could go, so it holds no more than under a cadence."""
    every = settings.ingest.retention_every_commits
    if not every:
        return None
    policy = RetentionPolicy.of(settings)
    expirable, _ = plan_expiry(table, datetime.now(UTC), timedelta(0), policy.keep_last)
    if len(expirable) < every:
        return None
    return thin(table, policy, ".".join(table.name()))
