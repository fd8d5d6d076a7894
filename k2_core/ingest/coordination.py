"""Coordinated commits (issue 19): many workers' data files committed by one committer per table, exactly once.

The pattern of Iceberg's Kafka Connect sink and Redpanda: workers write data files in parallel and hand them in,
with each partition's offset range [start, end), as a `CommitRequest`; the committer commits the files of many
requests in one snapshot, whose summary holds every partition's offset (the same `k2.kafka.offsets` the
independent writer records, so resuming is unchanged). Commits stop scaling with the number of writers: one
optimistic commit per round instead of one per worker batch, racing each other.

Fencing is by offsets, against the table (the only state that survives every process):
* a range is accepted only if its `start` is the offset the table holds for the partition (or the partition is new
  to the table); a zombie worker (its partition moved to another) starts behind the stored offset and is refused,
  and of a new owner racing a zombie over the same range the first one committed wins and the other is refused;
* offsets only move forward: the summary carries the stored offset of every partition, raised only by accepted
  ranges (apache/iceberg #17551 lost data when a zombie coordinator rewound offsets: here a stale committer's
  round is checked against the table at commit time, and a range's `start` must equal what is stored);
* each snapshot names the requests it holds (`k2.commit.requests`): a request handed in again (the worker's
  timeout, or a new committer re-reading requests its failed predecessor had committed) gets its first verdict,
  COMMITTED, again; it is never committed twice.

Dedup holds across kinds of writers as in the independent design (k2_core.ingest.writer): a worker plans its rows
against one snapshot (`planned_at`), and `k2 import` or the gap backfill may store some of the same rows before the
committer commits them. Each attempt re-checks a request's rows against the files such writers added since
(usually none: a walk of the snapshot chain, no file read); a request with rows stored meanwhile is refused, and its
worker plans the batch again from the table, where dedup drops them.

A request is all or nothing: one refused range refuses it. A refused request's files are not in the table; the
worker deletes them only when the committer says they are certainly uncommitted (the request id is in no snapshot
still on the chain and no data file of the table has their paths: `files_certain_uncommitted`); otherwise they are
left to orphan-file cleanup, which never touches a referenced file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pyiceberg.io.pyarrow import parquet_file_to_data_file
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from sqlalchemy.exc import SQLAlchemyError

from k2_core.exceptions import WriteError
from k2_core.ingest.dedup import keys_in, keys_in_files
from k2_core.lake.data_files import decode_data_file
from k2_core.lake.files import append_files
from k2_core.lake.lineage import files_to_recheck
from k2_core.lake.offsets import OffsetIndex, TopicPartition, by_ingester_of, summary_properties
from k2_core.lake.retry import commit_with_retries
from k2_core.logging import get_logger

log = get_logger(__name__)

REQUESTS_PROPERTY = "k2.commit.requests"


@dataclass(frozen=True)
class CommitRequest:
    """One worker batch for one table: its uncommitted data files and, per partition, the offsets [start, end) it
    covers. `generation` is the worker's assignment generation (logged; the fence is the offsets)."""

    request_id: str
    worker: str
    generation: int
    table: str
    ranges: Mapping[TopicPartition, tuple[int, int]]
    files: Sequence[str]
    topic_ids: Mapping[str, str] = field(default_factory=dict)
    # The files' Iceberg entries as the worker wrote them (k2_core.lake.data_files): the committer reads no footer
    # for a file whose entry came along.
    data_files: Sequence[Mapping[str, Any]] = ()
    # The snapshot the worker planned its rows against (None: an empty table); with `recheck`, rows another kind of
    # writer stored after it refuse the request.
    planned_at: int | None = None
    recheck: bool = False
    # The table schema the files were written in: a request whose table changed its schema since is refused, and its
    # worker writes the batch again in the new columns (as the independent writer rewrites its files).
    schema_id: int | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {
                "type": "request",
                "request_id": self.request_id,
                "worker": self.worker,
                "generation": self.generation,
                "table": self.table,
                "ranges": [[t, p, s, e] for (t, p), (s, e) in sorted(self.ranges.items())],
                "files": list(self.files),
                "topic_ids": dict(self.topic_ids),
                "data_files": list(self.data_files),
                "planned_at": self.planned_at,
                "recheck": self.recheck,
                "schema_id": self.schema_id,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: Mapping[str, object]) -> CommitRequest:
        ranges = raw["ranges"]
        if not isinstance(ranges, list):
            raise ValueError("ranges must be a list")
        return cls(
            request_id=str(raw["request_id"]),
            worker=str(raw["worker"]),
            generation=int(str(raw["generation"])),
            table=str(raw["table"]),
            ranges={(str(t), int(p)): (int(s), int(e)) for t, p, s, e in ranges},
            files=[str(f) for f in raw["files"]],  # type: ignore[attr-defined]
            topic_ids={str(k): str(v) for k, v in raw.get("topic_ids", {}).items()},  # type: ignore[attr-defined]
            data_files=tuple(dict(d) for d in raw.get("data_files", [])),  # type: ignore[attr-defined]
            planned_at=None if raw.get("planned_at") is None else int(str(raw["planned_at"])),
            recheck=bool(raw.get("recheck", False)),
            schema_id=None if raw.get("schema_id") is None else int(str(raw["schema_id"])),
        )


class Outcome(StrEnum):
    COMMITTED = "committed"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Verdict:
    """The committer's answer to one request. `stored`: the table's offsets of the request's partitions when it
    was judged (where a refused worker resumes). `files_certain_uncommitted`: a refused request's files are in no
    snapshot, so the worker may delete them."""

    request_id: str
    worker: str
    outcome: Outcome
    snapshot_id: int | None = None
    reason: str = ""
    stored: Mapping[TopicPartition, int] = field(default_factory=dict)
    files_certain_uncommitted: bool = False

    def encode(self) -> bytes:
        return json.dumps(
            {
                "type": "verdict",
                "request_id": self.request_id,
                "worker": self.worker,
                "outcome": self.outcome.value,
                "snapshot_id": self.snapshot_id,
                "reason": self.reason,
                "stored": [[t, p, o] for (t, p), o in sorted(self.stored.items())],
                "files_certain_uncommitted": self.files_certain_uncommitted,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: Mapping[str, object]) -> Verdict:
        snapshot = raw.get("snapshot_id")
        return cls(
            request_id=str(raw["request_id"]),
            worker=str(raw["worker"]),
            outcome=Outcome(str(raw["outcome"])),
            snapshot_id=None if snapshot is None else int(str(snapshot)),
            reason=str(raw.get("reason", "")),
            stored={(str(t), int(p)): int(o) for t, p, o in raw.get("stored", [])},  # type: ignore[attr-defined]
            files_certain_uncommitted=bool(raw.get("files_certain_uncommitted", False)),
        )


def decode_message(value: bytes) -> CommitRequest | Verdict | None:
    """A control-topic message; None for one that is neither (logged: a control topic is K2's own)."""
    try:
        raw = json.loads(value)
        kind = raw.get("type")
        if kind == "request":
            return CommitRequest.decode(raw)
        if kind == "verdict":
            return Verdict.decode(raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("unreadable control message", extra={"error": str(exc)})
        return None
    log.warning("unknown control message", extra={"type": str(kind)})
    return None


def judge(request: CommitRequest, stored: Mapping[TopicPartition, int]) -> str:
    """Why `request` must be refused given the offsets `stored` (committed, plus those accepted earlier in the same
    round); "" when it may be committed."""
    for (topic, partition), (start, end) in sorted(request.ranges.items()):
        held = stored.get((topic, partition))
        if end <= start:
            return f"{topic}[{partition}]: empty or reversed range [{start}, {end})"
        if held is not None and start != held:
            verb = "already committed past" if start < held else "would skip"
            return f"{topic}[{partition}]: the table holds offset {held}; the range [{start}, {end}) {verb} it"
    return ""


def _schema_changed(table: Table, request: CommitRequest) -> str:
    """Why `request`'s files must be written again: the table's schema changed since (every file committed after a
    change has the changed columns); "" when it did not."""
    current = table.metadata.current_schema_id
    if not request.files or request.schema_id is None or request.schema_id == current:
        return ""
    return (
        f"the table's schema changed (from {request.schema_id} to {current}) since its files were written: write again"
    )


class RequestIndex:
    """The request ids recorded in the snapshots on a table's chain, refreshed incrementally (as OffsetIndex is)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}  # request id -> snapshot that committed it
        self.snapshot_id: int | None = None

    def refresh(self, table: Table) -> dict[str, int]:
        current = table.metadata.current_snapshot_id
        found: dict[str, int] = {}
        snapshot_id, reached = current, False
        while snapshot_id is not None:
            if snapshot_id == self.snapshot_id:
                reached = True
                break
            snapshot = table.metadata.snapshot_by_id(snapshot_id)
            if snapshot is None:
                break
            props = snapshot.summary.additional_properties if snapshot.summary else {}
            for request_id in json.loads(props.get(REQUESTS_PROPERTY) or "[]"):
                found.setdefault(request_id, snapshot_id)
            snapshot_id = snapshot.parent_snapshot_id
        self.ids = {**self.ids, **found} if reached else found
        self.snapshot_id = current
        return self.ids


@dataclass
class RoundStats:
    """What one `Committer.commit` round did and where its time went: reading the data files' footers (once per
    request) and committing (manifests, metadata file, catalog row; summed over attempts). For the committer's
    metrics and the scale-out simulation's profile: they tell whether the committer itself is the ceiling."""

    requests: int = 0
    committed: int = 0
    rejected: int = 0
    files: int = 0
    footers_read: int = 0  # files whose entry did not come with the request
    rechecked: int = 0  # requests whose rows were read to re-check them against another kind of writer's files
    attempts: int = 0
    read_seconds: float = 0.0
    commit_seconds: float = 0.0
    seconds: float = 0.0


class Committer:
    """The one committer of one table. `commit` judges a round of requests against the table and commits every
    accepted one's files in one snapshot; on a conflict with another writer it re-reads the table and judges again."""

    def __init__(
        self,
        table: Table,
        committer_id: str,
        cluster_id: str,
        retries: int = 8,
        backoff_seconds: float = 0.02,
    ) -> None:
        self.table = table
        self.committer_id = committer_id
        self.cluster_id = cluster_id
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.offsets = OffsetIndex(cluster_id)
        self.requests = RequestIndex()
        self._data_files: dict[str, list[DataFile]] = {}
        self.last_round = RoundStats()

    def commit(self, requests: Iterable[CommitRequest]) -> list[Verdict]:
        """One verdict per request, in order. Raises `WriteError` / `CommitConflictError` when the table cannot be
        committed to: nothing of the round is then committed (hand it in again)."""
        pending = list(requests)
        try:
            self.table.refresh()
        except (OSError, SQLAlchemyError) as exc:
            raise WriteError(f"cannot refresh {self.table.name()}: {exc}") from exc
        for request in pending:
            ids = request.topic_ids
            if ids and any(self.offsets.topic_ids.get(t) != i for t, i in ids.items()):
                self.offsets.set_topic_ids({**self.offsets.topic_ids, **ids})
        verdicts: list[Verdict] = []
        stats = RoundStats(requests=len(pending))

        def attempt(table: Table) -> list[Verdict]:
            nonlocal verdicts
            stats.attempts += 1
            stored = dict(self.offsets.refresh(table))
            committed = self.requests.refresh(table)
            foreign: dict[int | None, list[DataFile]] = {}  # by planned_at: what other kinds of writers added since
            position = dict(stored)
            accepted: list[CommitRequest] = []
            verdicts = []
            for request in pending:
                if request.request_id in committed:
                    verdicts.append(self._verdict(request, Outcome.COMMITTED, stored, committed[request.request_id]))
                    continue
                if any(request.request_id == r.request_id for r in accepted):  # handed in twice in one round
                    verdicts.append(self._verdict(request, Outcome.COMMITTED, stored))
                    continue
                reason = (
                    judge(request, position)
                    or _schema_changed(table, request)
                    or self._stored_meanwhile(table, request, foreign, stats)
                )
                if reason:
                    certain = not self._any_in_table(table, request)
                    verdicts.append(self._verdict(request, Outcome.REJECTED, position, reason=reason, certain=certain))
                    continue
                accepted.append(request)
                position.update({tp: end for tp, (_, end) in request.ranges.items()})
                verdicts.append(self._verdict(request, Outcome.COMMITTED, stored))
            if not accepted:
                return verdicts
            began = time.perf_counter()
            files = [f for request in accepted for f in self._files(table, request, stats)]
            stats.read_seconds += time.perf_counter() - began
            stats.files = len(files)
            topic_ids = {t: i for request in accepted for t, i in request.topic_ids.items()}
            # every partition's offset, never lower than stored
            props = summary_properties(position, self.cluster_id, self.committer_id, topic_ids)
            props[REQUESTS_PROPERTY] = json.dumps(sorted(r.request_id for r in accepted), separators=(",", ":"))
            began = time.perf_counter()
            try:
                snapshot_id = append_files(table, files, props)
            finally:
                stats.commit_seconds += time.perf_counter() - began
            ids = {r.request_id for r in accepted}
            return [
                Verdict(v.request_id, v.worker, v.outcome, snapshot_id, v.reason, v.stored)
                if v.request_id in ids
                else v
                for v in verdicts
            ]

        started = time.perf_counter()
        result = commit_with_retries(
            self.table,
            attempt,
            retries=self.retries,
            backoff_seconds=self.backoff_seconds,
            what="coordinated commit",
            full_jitter=True,
        )
        for request in pending:
            self._data_files.pop(request.request_id, None)
        stats.committed = sum(v.outcome is Outcome.COMMITTED for v in result)
        stats.rejected = len(result) - stats.committed
        stats.seconds = time.perf_counter() - started
        self.last_round = stats
        log.info(
            "coordinated commit",
            extra={
                "table": str(self.table.name()),
                "requests": len(pending),
                "committed": stats.committed,
                "rejected": [v.request_id for v in result if v.outcome is Outcome.REJECTED],
                "files": stats.files,
                "rechecked": stats.rechecked,
                "attempts": stats.attempts,
                "read_s": round(stats.read_seconds, 3),
                "commit_s": round(stats.commit_seconds, 3),
                "seconds": round(stats.seconds, 3),
            },
        )
        return result

    def _verdict(
        self,
        request: CommitRequest,
        outcome: Outcome,
        stored: Mapping[TopicPartition, int],
        snapshot_id: int | None = None,
        reason: str = "",
        certain: bool = False,
    ) -> Verdict:
        if outcome is Outcome.REJECTED:
            log.warning(
                "commit request rejected",
                extra={"request": request.request_id, "worker": request.worker, "generation": request.generation,
                       "reason": reason},
            )  # fmt: skip
        held = {tp: stored[tp] for tp in request.ranges if tp in stored}
        return Verdict(request.request_id, request.worker, outcome, snapshot_id, reason, held, certain)

    def _stored_meanwhile(
        self, table: Table, request: CommitRequest, foreign: dict[int | None, list[DataFile]], stats: RoundStats
    ) -> str:
        """Why `request` must be planned again: some of its rows were stored by another kind of writer (`k2 import`,
        the gap backfill) after the snapshot it was planned against; "" when none were. `foreign` caches, per
        planned-at snapshot, the files those writers added since (in one attempt)."""
        if not request.recheck or not request.files:
            return ""
        if request.planned_at not in foreign:
            foreign[request.planned_at] = files_to_recheck(
                table, request.planned_at, appends_only=True, where=lambda s: not by_ingester_of(s, self.cluster_id)
            )
        if not foreign[request.planned_at]:
            return ""
        stats.rechecked += 1
        try:
            rows = keys_in(table, request.files)
            found = int(keys_in_files(table, foreign[request.planned_at], rows).sum())
        except OSError as exc:
            raise WriteError(f"cannot re-check the rows of request {request.request_id}: {exc}") from exc
        if not found:
            return ""
        return f"{found} of its rows were stored meanwhile by an import or the gap backfill: plan again"

    def _files(self, table: Table, request: CommitRequest, stats: RoundStats) -> list[DataFile]:
        """The request's data files as Iceberg entries (once per request): the entries the worker sent when they
        are for the table's current partition spec, else read from the files' Parquet footers."""
        if request.request_id not in self._data_files:
            carried = self._carried(table, request)
            stats.footers_read += sum(path not in carried for path in request.files)
            try:
                self._data_files[request.request_id] = [
                    entry if (entry := carried.get(path)) is not None
                    else parquet_file_to_data_file(table.io, table.metadata, path)
                    for path in request.files
                ]  # fmt: skip
            except OSError as exc:
                raise WriteError(f"cannot read the data files of request {request.request_id}: {exc}") from exc
        return self._data_files[request.request_id]

    def _carried(self, table: Table, request: CommitRequest) -> dict[str, DataFile]:
        """The entries that came with the request, by path; those for another partition spec (it changed since the
        worker wrote them) or naming no file of the request are left out (their footers are read instead)."""
        found: dict[str, DataFile] = {}
        paths = set(request.files)
        for raw in request.data_files:
            try:
                entry = decode_data_file(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable data file entry", extra={"request": request.request_id, "error": str(exc)})
                continue
            if entry.file_path in paths and entry.spec_id == table.metadata.default_spec_id:
                found[entry.file_path] = entry
        return found

    def _any_in_table(self, table: Table, request: CommitRequest) -> bool:
        """Whether any of a refused request's files is a data file of the table (then none may be deleted)."""
        if not request.files:
            return False
        paths = set(request.files)
        return any(task.file.file_path in paths for task in table.scan().plan_files())
