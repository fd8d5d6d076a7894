"""The coordinated committer (k2_core.ingest.coordination) against real Iceberg tables: many workers' files in one
snapshot, fenced by the table's offsets, offsets that only move forward, requests committed at most once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlparse

import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import parquet_file_to_data_file
from pyiceberg.table import Table
from pyiceberg.types import StringType

from k2_core.ingest.coordination import CommitRequest, Committer, Outcome, Verdict, decode_message
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.lake.data_files import encode_data_file
from k2_core.lake.files import write_files
from k2_core.lake.offsets import OffsetIndex
from k2_core.model.tables import TRADES
from k2_core.settings import Settings
from tests.support import factories
from tests.support.lake import parquet_on_disk, referenced

TOPIC = "market.equities.trades.asx"
CLUSTER = "cluster-1"
T0 = datetime(2026, 11, 26, 9, tzinfo=UTC)


def batch(table: Table, worker: str, seqs: range) -> tuple[pa.Table, list[str]]:
    """A worker's rows (its own symbol) written as uncommitted data files, as a coordinated worker writes them."""
    data = trade_rows(worker, seqs)
    return data, [f.file_path for f in write_files(table, data)]


def trade_rows(worker: str, seqs: Iterable[int]) -> pa.Table:
    """Trades of the worker's symbol, each at a time its number fixes: the same number is the same row (dedup's key)."""
    now = datetime.now(UTC)
    rows = [
        factories.trade(worker, s, T0 + timedelta(seconds=s), "45.1", Decimal(1), side="buy", trade_id=f"{worker}{s}",
                        ingestion_timestamp=now)
        for s in seqs
    ]  # fmt: skip
    return TRADES.sort(TRADES.to_arrow(rows))


def request(table: Table, worker: str, partition: int, start: int, end: int, rid: str) -> CommitRequest:
    _, files = batch(table, worker, range(start + 1, end + 1))  # sequence numbers follow the offsets
    return CommitRequest(rid, worker, 1, "trades", {(TOPIC, partition): (start, end)}, files)


def paths(req: CommitRequest) -> set[str]:
    return {urlparse(f).path for f in req.files}


def stored(table: Table) -> list[tuple[str, int]]:
    table.refresh()
    return sorted((r["symbol"], r["exchange_sequence_number"]) for r in table.scan().to_arrow().to_pylist())


def expected(*ranges: tuple[str, int, int]) -> list[tuple[str, int]]:
    """The rows the oracle says are stored: each accepted (worker, start, end) once."""
    return sorted((w, s) for w, start, end in ranges for s in range(start + 1, end + 1))


@pytest.fixture(params=["sqlite", "postgres"])
def trades(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Callable[[], Table]:
    settings = make_settings(catalog=request.param)
    ensure_tables(open_catalog(settings), "market")
    return lambda: open_catalog(settings).load_table("market.trades")  # each caller its own catalog, as a process


def test_two_workers_commit_in_one_snapshot_with_every_offset(trades: Callable[[], Table]) -> None:
    committer = Committer(trades(), "committer-1", CLUSTER)
    a, b = trades(), trades()
    verdicts = committer.commit([request(a, "A", 0, 0, 5, "a1"), request(b, "B", 1, 0, 3, "b1")])
    assert [v.outcome for v in verdicts] == [Outcome.COMMITTED, Outcome.COMMITTED]
    assert verdicts[0].snapshot_id == verdicts[1].snapshot_id is not None
    table = trades()
    assert len(table.snapshots()) == 1
    assert OffsetIndex(CLUSTER).refresh(table) == {(TOPIC, 0): 5, (TOPIC, 1): 3}
    # the next round: each worker's next range starts where the table holds its partition
    committer.commit([request(a, "A", 0, 5, 7, "a2"), request(b, "B", 1, 3, 4, "b2")])
    assert stored(table) == expected(("A", 0, 7), ("B", 0, 4))
    assert OffsetIndex(CLUSTER).refresh(table) == {(TOPIC, 0): 7, (TOPIC, 1): 4}


def test_a_zombie_is_rejected_and_nothing_of_it_is_stored(trades: Callable[[], Table]) -> None:
    committer = Committer(trades(), "committer-1", CLUSTER)
    old, new = trades(), trades()
    committer.commit([request(old, "old", 0, 0, 4, "o1")])
    # the partition moved to `new`, which resumed from the table (4) and committed on; `old` does not know yet
    committer.commit([request(new, "new", 0, 4, 8, "n1")])
    zombie = request(old, "zombie", 0, 4, 6, "o2")  # old's next batch, from where it thought it was
    (verdict,) = committer.commit([zombie])
    assert verdict.outcome is Outcome.REJECTED
    assert "already committed past" in verdict.reason
    assert verdict.stored == {(TOPIC, 0): 8}  # where the worker would resume
    assert verdict.files_certain_uncommitted
    table = trades()
    assert stored(table) == expected(("old", 0, 4), ("new", 4, 8))
    assert OffsetIndex(CLUSTER).refresh(table) == {(TOPIC, 0): 8}
    assert not paths(zombie) & referenced(table)


def test_a_new_owner_racing_a_zombie_over_one_range_commits_it_once(trades: Callable[[], Table]) -> None:
    committer = Committer(trades(), "committer-1", CLUSTER)
    committer.commit([request(trades(), "A", 0, 0, 3, "a1")])
    zombie = request(trades(), "Z", 0, 3, 6, "z")
    owner = request(trades(), "A", 0, 3, 6, "a2")
    verdicts = committer.commit([zombie, owner])  # the same range twice in one round: the first one handed in wins
    assert [v.outcome for v in verdicts] == [Outcome.COMMITTED, Outcome.REJECTED]
    assert verdicts[1].files_certain_uncommitted
    assert not paths(owner) & referenced(trades())
    table = trades()
    assert stored(table) == expected(("A", 0, 3), ("Z", 3, 6))
    assert OffsetIndex(CLUSTER).refresh(table) == {(TOPIC, 0): 6}


def test_a_request_handed_in_again_is_committed_once(trades: Callable[[], Table]) -> None:
    first = Committer(trades(), "committer-1", CLUSTER)
    req = request(trades(), "A", 0, 0, 5, "a1")
    (committed,) = first.commit([req])
    # a new committer (the first failed after its commit, before the control topic said so) re-reads the request
    second = Committer(trades(), "committer-2", CLUSTER)
    (again,) = second.commit([req, request(trades(), "B", 1, 0, 2, "b1")])[:1]
    assert again.outcome is Outcome.COMMITTED
    assert again.snapshot_id == committed.snapshot_id
    # a worker that timed out hands its request in again: both copies may land in one round
    twice = request(trades(), "B", 1, 2, 4, "b2")
    verdicts = second.commit([twice, twice])
    assert [v.outcome for v in verdicts] == [Outcome.COMMITTED, Outcome.COMMITTED]
    assert verdicts[0].snapshot_id == verdicts[1].snapshot_id is not None
    assert stored(trades()) == expected(("A", 0, 5), ("B", 0, 4))


def test_offsets_never_move_back_and_partitions_not_in_a_round_are_carried(trades: Callable[[], Table]) -> None:
    committer = Committer(trades(), "committer-1", CLUSTER)
    committer.commit([request(trades(), "A", 0, 0, 10, "a1"), request(trades(), "B", 1, 0, 10, "b1")])
    stale = Committer(trades(), "committer-stale", CLUSTER)  # a zombie committer, its table object long stale
    verdicts = stale.commit([request(trades(), "A", 0, 2, 4, "rewind"), request(trades(), "B", 1, 10, 12, "b2")])
    assert [v.outcome for v in verdicts] == [Outcome.REJECTED, Outcome.COMMITTED]
    table = trades()
    assert OffsetIndex(CLUSTER).refresh(table) == {(TOPIC, 0): 10, (TOPIC, 1): 12}
    assert table.current_snapshot() is not None
    summary = table.current_snapshot().summary  # type: ignore[union-attr]
    assert summary is not None
    assert '"0":10' in summary.additional_properties["k2.kafka.offsets"]  # carried, not only the round's partitions


def test_a_gap_or_an_empty_range_is_rejected(trades: Callable[[], Table]) -> None:
    committer = Committer(trades(), "committer-1", CLUSTER)
    committer.commit([request(trades(), "A", 0, 0, 3, "a1")])
    skip = request(trades(), "A", 0, 5, 7, "skip")
    empty = CommitRequest("empty", "A", 1, "trades", {(TOPIC, 0): (3, 3)}, [])
    verdicts = committer.commit([skip, empty])
    assert [v.outcome for v in verdicts] == [Outcome.REJECTED, Outcome.REJECTED]
    assert "would skip" in verdicts[0].reason
    table = trades()
    assert stored(table) == expected(("A", 0, 3))
    assert parquet_on_disk(table) - referenced(table) == paths(skip)  # the worker deletes them, not the committer


def test_rows_an_import_stored_after_the_plan_refuse_the_request(trades: Callable[[], Table]) -> None:
    """A worker planned A 4..6 against the table as it was; `k2 import` then stored A 5 (a snapshot of another kind
    of writer). Committing the request would store A 5 twice: it is refused, its files certainly uncommitted, and
    the worker's batch planned again (without A 5) commits. Peers' snapshots since the plan are not read at all,
    and an import of other rows does not refuse anything."""
    committer = Committer(trades(), "committer-1", CLUSTER)
    committer.commit([request(trades(), "A", 0, 0, 3, "a1")])
    planned_at = trades().metadata.current_snapshot_id
    committer.commit([request(trades(), "B", 1, 0, 2, "b1")])  # a peer's batch lands after the plan
    late = replace(request(trades(), "A", 0, 3, 6, "a2"), planned_at=planned_at, recheck=True)
    (verdict,) = committer.commit([late])  # no import yet: nothing to re-check, nothing read
    assert verdict.outcome is Outcome.COMMITTED
    assert committer.last_round.rechecked == 0

    planned_at = trades().metadata.current_snapshot_id
    imported, _ = batch(trades(), "A", range(8, 9))  # A 8, by `k2 import` (its snapshot carries no offsets)
    trades().append(imported)
    other, _ = batch(trades(), "C", range(1, 3))  # rows of no worker's batch
    trades().append(other)
    clash = replace(request(trades(), "A", 0, 6, 9, "a3"), planned_at=planned_at, recheck=True)  # A 7..9
    fine = replace(request(trades(), "B", 1, 2, 4, "b2"), planned_at=planned_at, recheck=True)
    verdicts = committer.commit([clash, fine])
    assert [v.outcome for v in verdicts] == [Outcome.REJECTED, Outcome.COMMITTED]
    assert "1 of its rows were stored meanwhile by an import or the gap backfill" in verdicts[0].reason
    assert verdicts[0].files_certain_uncommitted
    assert verdicts[0].stored == {(TOPIC, 0): 6}  # where the worker plans again from
    assert committer.last_round.rechecked == 2
    table = trades()
    assert not paths(clash) & referenced(table)
    # the worker's second plan drops A 8 (stored) and hands in A 7 and 9 for the same offsets
    data = trade_rows("A", (7, 9))
    again = CommitRequest("a4", "A", 1, "trades", {(TOPIC, 0): (6, 9)}, [f.file_path for f in write_files(table, data)],
                          planned_at=table.metadata.current_snapshot_id, recheck=True)  # fmt: skip
    (verdict,) = committer.commit([again])
    assert verdict.outcome is Outcome.COMMITTED
    assert stored(trades()) == sorted([*expected(("A", 0, 9), ("B", 0, 4)), ("C", 1), ("C", 2)])


def test_files_written_before_a_schema_change_are_refused_and_written_again(trades: Callable[[], Table]) -> None:
    """Every file committed after a schema change has the changed columns: a request written in the old schema is
    refused (its files certainly uncommitted); written again in the new one, it commits."""
    committer = Committer(trades(), "committer-1", CLUSTER)
    table = trades()
    old = replace(request(table, "A", 0, 0, 3, "a1"), schema_id=table.metadata.current_schema_id)
    with trades().update_schema() as update:  # another worker's batch brought a new optional column
        update.add_column("venue_flag", StringType())
    (verdict,) = committer.commit([old])
    assert verdict.outcome is Outcome.REJECTED
    assert "schema changed" in verdict.reason
    assert verdict.files_certain_uncommitted
    table = trades()
    new = replace(request(table, "A", 0, 0, 3, "a2"), schema_id=table.metadata.current_schema_id)
    assert new.schema_id != old.schema_id
    (verdict,) = committer.commit([new])
    assert verdict.outcome is Outcome.COMMITTED
    assert stored(trades()) == expected(("A", 0, 3))


def test_messages_round_trip() -> None:
    req = CommitRequest("r", "w", 3, "trades", {(TOPIC, 2): (5, 9)}, ["file:///x.parquet"], {TOPIC: "id"},
                        planned_at=42, recheck=True, schema_id=3)  # fmt: skip
    verdict = Verdict("r", "w", Outcome.REJECTED, None, "why", {(TOPIC, 2): 7}, True)
    assert decode_message(req.encode()) == req
    assert decode_message(verdict.encode()) == verdict
    assert decode_message(b"not json") is None
    assert decode_message(b'{"type": "other"}') is None


def test_file_entries_sent_along_are_committed_without_reading_a_footer(trades: Callable[[], Table]) -> None:
    """A worker sends each file's Iceberg entry with its request: the committer reads no footer, and what it
    commits is what the footers say (the oracle: pyiceberg reading each committed file back). An entry for another
    partition spec is not used: that file's footer is read."""
    table = trades()
    committer = Committer(trades(), "committer-1", CLUSTER)
    days = [datetime(2026, 11, 25, 23, 59, tzinfo=UTC), datetime(2026, 11, 26, 0, 1, tzinfo=UTC)]
    rows = [factories.trade("A", s, days[s % 2], f"45.{s}", Decimal(s)) for s in range(1, 9)]
    written = write_files(table, TRADES.sort(TRADES.to_arrow(rows)))
    assert len(written) == 2  # one file a day
    spec = table.metadata.default_spec_id
    entries = [encode_data_file(f, spec) for f in written]
    assert all(e is not None for e in entries)
    req = CommitRequest("a1", "A", 1, "trades", {(TOPIC, 0): (0, 8)}, [f.file_path for f in written],
                        data_files=[e for e in entries if e is not None])  # fmt: skip
    (verdict,) = committer.commit([req])
    assert verdict.outcome is Outcome.COMMITTED
    assert committer.last_round.files == 2
    assert committer.last_round.footers_read == 0
    table = trades()
    committed = {task.file.file_path: task.file for task in table.scan().plan_files()}
    assert set(committed) == set(req.files)
    for path, entry in committed.items():
        footer = parquet_file_to_data_file(table.io, table.metadata, path)
        for name in ("partition", "record_count", "file_size_in_bytes", "column_sizes", "value_counts",
                     "null_value_counts", "nan_value_counts", "lower_bounds", "upper_bounds"):  # fmt: skip
            assert getattr(entry, name) == getattr(footer, name), name
    assert stored(table) == expected(("A", 0, 8))
    # an entry for a partition spec the table does not have (it changed since the worker wrote the file)
    more = write_files(table, TRADES.sort(TRADES.to_arrow([factories.trade("A", 9, days[1], "45.9", Decimal(1))])))
    stale = [e for f in more if (e := encode_data_file(f, 99)) is not None]
    (verdict,) = committer.commit(
        [CommitRequest("a2", "A", 1, "trades", {(TOPIC, 0): (8, 9)}, [f.file_path for f in more], data_files=stale)]
    )
    assert verdict.outcome is Outcome.COMMITTED
    assert committer.last_round.footers_read == 1
    assert stored(trades()) == expected(("A", 0, 9))
