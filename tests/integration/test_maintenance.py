"""Snapshot expiry and orphan removal on real Iceberg tables: retained snapshots stay readable (time travel), the
ingester's offsets chain is never expired, and only files no live snapshot references are deleted."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from pyiceberg.table import Table

from k2_core.exceptions import MaintenanceError
from k2_core.ingest.writer import TableWriter
from k2_core.lake.offsets import OffsetIndex
from k2_core.model.tables import TRADES
from k2_core.settings import MaintenanceSettings, Settings
from k2_core.upkeep.compaction import compact_day
from k2_core.upkeep.expiry import expire_snapshots, offsets_chain, remove_orphans
from tests.support.definitions import DAGSTER_OWNERS_BETA, definitions
from tests.support.factories import at, quote, trade
from tests.support.lake import Lake, open_lake

DAY = date(2026, 11, 20)
TOPIC = "market.equities.trades.asx"


def ingest(table: Table, writer: TableWriter, first: int, n: int, partition: int = 0) -> int:
    rows = [trade("BHP", s, at(DAY, s)) for s in range(first, first + n)]
    snapshot = writer.append(TRADES.to_arrow(rows), {(TOPIC, partition): first + n}, {(TOPIC, partition): first})
    assert snapshot is not None
    return snapshot


def snapshot_rows(table: Table, snapshot_id: int) -> list[int]:
    return sorted(r["exchange_sequence_number"] for r in table.scan(snapshot_id=snapshot_id).to_arrow().to_pylist())


def needed_files(table: Table) -> set[str]:
    """What a reader of each live snapshot opens, found through scans (not the module under test)."""
    needed = {table.metadata_location, *(e.metadata_file for e in table.metadata.metadata_log)}
    for snapshot in table.metadata.snapshots:
        needed.add(snapshot.manifest_list)
        needed.update(m.manifest_path for m in snapshot.manifests(table.io))
        needed.update(t.file.file_path for t in table.scan(snapshot_id=snapshot.snapshot_id).plan_files())
    return needed


def files_on_disk(table: Table) -> set[str]:
    root = Path(table.metadata.location.removeprefix("file://"))
    return {"file://" + str(p) for p in root.rglob("*") if p.is_file()}


def build_history(lake: Lake) -> tuple[Table, list[int], dict[int, list[int]]]:
    """Ingester appends with offsets, a compaction, one more ingester append, then a backfill-style append."""
    table = lake.table("trades")
    writer = TableWriter(table, "ingester", "cluster-1", retries=3, backoff_seconds=0.05)
    ids = [ingest(table, writer, 1 + 10 * i, 10) for i in range(5)]
    result = compact_day(table, TRADES, DAY, target_file_bytes=10**9, retries=2, backoff_seconds=0.05)
    assert result.snapshot_id is not None
    ids.append(result.snapshot_id)
    ids.append(ingest(table, writer, 51, 10))
    table.append(TRADES.to_arrow([trade("CBA", 1, at(DAY, 1))]), snapshot_properties={"k2.writer": "backfill"})
    ids.append(table.metadata.current_snapshot_id)  # type: ignore[arg-type]
    return table, ids, {s: snapshot_rows(table, s) for s in ids}


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_expiry_keeps_time_travel_and_orphan_removal_only_deletes_unreferenced(
    catalog: str, make_settings: Callable[..., Settings]
) -> None:
    lake = open_lake(make_settings(catalog=catalog))
    table, ids, rows_at = build_history(lake)
    pre_compaction_files = {t.file.file_path for t in table.scan(snapshot_id=ids[4]).plan_files()}
    assert len(pre_compaction_files) == 5
    later = datetime.now(UTC) + timedelta(days=30)  # every snapshot is now past the 7-day retention

    result = expire_snapshots(table, later, retention=timedelta(days=7), keep_last=1, retries=2, backoff_seconds=0.05)
    table = lake.table("trades")
    # Kept: the newest snapshot, and the chain back to the newest one carrying ingester offsets (ids[6]).
    assert sorted(result.expired) == sorted(ids[:6])
    assert {s.snapshot_id for s in table.metadata.snapshots} == {ids[6], ids[7]}
    assert result.offsets_chain == 1
    assert OffsetIndex("cluster-1").refresh(table) == {(TOPIC, 0): 61}
    for snapshot_id in (ids[6], ids[7]):
        assert snapshot_rows(table, snapshot_id) == rows_at[snapshot_id]  # time travel still works

    # Plant strays: an old unreferenced data file, a young one (maybe an in-flight write), and a non-Iceberg file.
    data_dir = Path(next(iter(pre_compaction_files)).removeprefix("file://")).parent
    old_stray, young_stray, notes = (
        data_dir / "stray-old.parquet",
        data_dir / "stray-young.parquet",
        data_dir / "notes.txt",
    )
    for path in (old_stray, young_stray):
        shutil.copy(next(iter(pre_compaction_files)).removeprefix("file://"), path)
    notes.write_text("not an Iceberg file")
    old = (later - timedelta(days=2)).timestamp()
    for path in (old_stray, notes):
        os.utime(path, (old, old))
    young = (later + timedelta(minutes=5)).timestamp()
    os.utime(young_stray, (young, young))

    needed = needed_files(table)
    before = files_on_disk(table)
    orphans = remove_orphans(table, later, min_age=timedelta(hours=1))
    after = files_on_disk(table)

    assert needed <= after  # nothing a live snapshot reads was touched
    assert set(orphans.deleted) == before - after
    assert pre_compaction_files <= set(orphans.deleted)  # released by expiry, now reclaimed
    assert "file://" + str(old_stray) in orphans.deleted
    assert young_stray.exists()
    assert notes.exists()
    assert orphans.too_young == 1
    assert not (set(orphans.deleted) & needed)
    for snapshot_id in (ids[6], ids[7]):
        assert snapshot_rows(lake.table("trades"), snapshot_id) == rows_at[snapshot_id]


def test_offsets_chain_reaches_every_partitions_newest_offsets(make_settings: Callable[..., Settings]) -> None:
    lake = open_lake(make_settings())
    table = lake.table("trades")
    writer = TableWriter(table, "ingester", "cluster-1", retries=3, backoff_seconds=0.05)
    p1 = ingest(table, writer, 1, 5, partition=1)  # the only snapshot of partition 1: the chain must reach it
    p0 = [ingest(table, writer, 10 + 5 * i, 5, partition=0) for i in range(3)]
    table.append(TRADES.to_arrow([trade("CBA", 1, at(DAY, 1))]))  # offset-less, newest
    newest = table.metadata.current_snapshot_id
    assert offsets_chain(table) == {newest, *p0, p1}

    later = datetime.now(UTC) + timedelta(days=30)
    result = expire_snapshots(table, later, retention=timedelta(days=7), keep_last=1, retries=2, backoff_seconds=0.05)
    assert result.expired == []
    assert OffsetIndex("cluster-1").refresh(lake.table("trades")) == {(TOPIC, 1): 6, (TOPIC, 0): 25}


def test_snapshots_inside_the_retention_are_kept(make_settings: Callable[..., Settings]) -> None:
    lake = open_lake(make_settings())
    for seq in range(1, 5):
        lake.append("trades", [trade("BHP", seq, at(DAY, seq))])
    table = lake.table("trades")
    result = expire_snapshots(
        table, datetime.now(UTC), retention=timedelta(days=7), keep_last=1, retries=2, backoff_seconds=0.05
    )
    assert result.expired == []
    assert len(lake.table("trades").metadata.snapshots) == 4


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
def test_maintenance_job_cleans_every_table(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    lake = open_lake(settings)
    build_history(lake)
    for seq in range(1, 4):
        lake.append("quotes", [quote("BHP", seq, at(DAY, seq))])
    settings.maintenance.snapshot_retention_hours = 1e-6
    settings.maintenance.keep_last_snapshots = 1
    settings.maintenance.orphan_min_age_hours = 1  # the floor: younger files may be in flight
    time.sleep(0.05)
    job = definitions(settings).resolve_job_def("maintenance_job")
    counts = {name: len(lake.table(name).metadata.snapshots) for name in ("trades", "quotes")}
    warehouse = settings.home / "warehouse"
    before = {p for p in warehouse.rglob("*") if p.is_file()}
    two_hours_ago = time.time() - 2 * 3600
    for path in before:  # the history was written two hours ago
        os.utime(path, (two_hours_ago, two_hours_ago))
    with dg.instance_for_test() as instance:
        dry = job.execute_in_process(instance=instance, run_config=_config(dry_run=True))
        assert dry.success
        assert {name: len(lake.table(name).metadata.snapshots) for name in counts} == counts
        assert {p for p in warehouse.rglob("*") if p.is_file()} == before
        run = job.execute_in_process(instance=instance, run_config=_config(dry_run=False))
    assert run.success
    assert {name: len(lake.table(name).metadata.snapshots) for name in counts} == {"trades": 2, "quotes": 1}
    deleted = before - {p for p in warehouse.rglob("*") if p.is_file()}  # (expiry itself wrote new metadata files)
    assert deleted
    assert run.output_for_node("expire_and_clean") == len(deleted)
    assert len(lake.rows("trades")) == 61
    assert len(lake.rows("quotes")) == 3


def _config(dry_run: bool) -> dict[str, Any]:
    return {"ops": {"expire_and_clean": {"config": {"dry_run": dry_run}}}}


def test_orphan_removal_refuses_an_age_below_the_floor(make_settings: Callable[..., Settings]) -> None:
    """F6: files written but not yet committed (a compaction in flight) are unreferenced; age is what protects them."""
    lake = open_lake(make_settings())
    build_history(lake)
    with pytest.raises(MaintenanceError, match="at least 1 h old"):
        remove_orphans(lake.table("trades"), datetime.now(UTC), min_age=timedelta(minutes=5))
    with pytest.raises(ValueError, match="orphan_min_age_hours must be at least 1"):
        MaintenanceSettings(orphan_min_age_hours=0)
