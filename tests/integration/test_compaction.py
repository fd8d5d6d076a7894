"""Compaction of a closed day on real Iceberg tables: rows kept and clustered by instrument, files reduced, a
concurrent append that lands mid-compaction survives, offsets stay out of the compaction snapshot; the sensor and job
drive it."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.table import Table

from k2_core.exceptions import CompactionError
from k2_core.ingest.writer import TableWriter
from k2_core.lake.lineage import day_files
from k2_core.lake.offsets import OFFSETS_PROPERTY, OffsetIndex
from k2_core.model.days import day_filter
from k2_core.model.tables import TRADES
from k2_core.settings import Settings
from k2_core.upkeep.compaction import _verify, compact_day
from k2_dagster.defs.upkeep import compaction_sensor
from tests.support.definitions import DAGSTER_OWNERS_BETA, definitions, k2_resources
from tests.support.factories import at, trade
from tests.support.lake import Lake, open_lake

DAY = date(2026, 11, 20)
TOPIC = "market.equities.trades.asx"


def batches(day: date, count: int, size: int, first_seq: int = 1) -> list[list[dict[str, Any]]]:
    """`count` micro-batches of interleaved symbols, each batch's rows later than the previous batch's."""
    out = []
    seq = first_seq
    for b in range(count):
        rows = []
        for i in range(size):
            symbol = ("BHP", "CBA", "CSL")[i % 3]
            rows.append(trade(symbol, seq, at(day, 60 * b + i * 0.5), price=f"{40 + i % 9}.{b:02d}"))
            seq += 1
        out.append(rows)
    return out


def ingest(table: Table, writer: TableWriter, rows: list[dict[str, Any]], partition: int, offset: int) -> int:
    """Append like the ingester: one snapshot carrying the next offset of the partition it covered."""
    snapshot = writer.append(
        TRADES.to_arrow(rows), {(TOPIC, partition): offset + len(rows)}, {(TOPIC, partition): offset}
    )
    assert snapshot is not None
    return snapshot


def keys(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return sorted((r["symbol"], r["exchange_sequence_number"]) for r in rows)


def day_rows(lake: Lake, day: date, snapshot_id: int | None = None) -> list[dict[str, Any]]:
    table = lake.table("trades")
    return table.scan(row_filter=day_filter("exchange_timestamp", day), snapshot_id=snapshot_id).to_arrow().to_pylist()


def file_paths(table: Table, day: date, snapshot_id: int | None = None) -> set[str]:
    scan = table.scan(row_filter=day_filter("exchange_timestamp", day), snapshot_id=snapshot_id)
    return {t.file.file_path for t in scan.plan_files()}


@pytest.mark.parametrize("catalog", ["sqlite", "postgres", "rest"])
def test_compaction_keeps_rows_and_order_while_a_concurrent_append_lands(
    catalog: str, make_settings: Callable[..., Settings]
) -> None:
    lake = open_lake(make_settings(catalog=catalog))
    table = lake.table("trades")
    writer = TableWriter(table, "ingester-a", "cluster-1", retries=3, backoff_seconds=0.05)
    offset = 0
    for rows in batches(DAY, 12, 60):
        ingest(table, writer, rows, 0, offset)
        offset += len(rows)
    next_day = DAY + timedelta(days=1)
    ingest(table, writer, batches(next_day, 1, 30, first_seq=10_000)[0], 1, 0)
    before = {d.day: d for d in day_files(table)}
    assert before[DAY].files == 12
    next_day_files = file_paths(table, next_day)
    original = day_rows(lake, DAY)

    # Late trades for the day, committed by another ingester process between the rewrite and its commit.
    late = batches(DAY, 1, 9, first_seq=50_000)[0]
    raced: list[int] = []

    def concurrent_append() -> None:
        other = open_lake(lake.settings).table("trades")
        other_writer = TableWriter(other, "ingester-b", "cluster-1", retries=3, backoff_seconds=0.05)
        other_writer.committed_offsets()
        raced.append(ingest(other, other_writer, late, 0, offset))

    result = compact_day(
        table,
        TRADES,
        DAY,
        target_file_bytes=before[DAY].bytes // 3,  # about three files
        retries=4,
        backoff_seconds=0.05,
        before_commit=concurrent_append,
    )

    lake_table = lake.table("trades")
    after = {d.day: d for d in day_files(lake_table)}
    assert result.files_before == 12
    assert 2 <= result.files_written <= 4
    assert after[DAY].files == result.files_written + 1 == result.files_after  # + the concurrent append's file
    assert after[DAY].rows == len(original) + len(late)
    assert keys(day_rows(lake, DAY)) == keys(original + late)
    assert file_paths(lake_table, next_day) == next_day_files  # another day is never rewritten

    # The commit really had to retry past the concurrent append, and carries no offsets of its own.
    compaction = lake_table.metadata.snapshot_by_id(result.snapshot_id)  # type: ignore[arg-type]
    assert compaction is not None
    assert compaction.parent_snapshot_id == raced[0]
    assert compaction.summary is not None
    assert compaction.summary.operation.value == "overwrite"
    assert OFFSETS_PROPERTY not in compaction.summary.additional_properties
    assert OffsetIndex("cluster-1").refresh(lake_table) == {(TOPIC, 0): offset + len(late), (TOPIC, 1): 30}

    # Every rewritten file is clustered by instrument and in exchange order within it, and the files do not overlap
    # in that order: one instrument's rows sit in adjacent row groups, whatever the day's interleaving was.
    rewritten = file_paths(lake_table, DAY) - file_paths(lake_table, DAY, snapshot_id=raced[0])
    assert len(rewritten) == result.files_written
    columns = ["symbol", "exchange", "exchange_timestamp", "exchange_sequence_number"]
    ranges = []
    for path in rewritten:
        with lake_table.io.new_input(path).open() as stream:
            data = pq.read_table(stream, columns=columns).to_pylist()
        order = [tuple(r[c] for c in columns) for r in data]
        assert order == sorted(order)
        ranges.append((order[0], order[-1]))
    ranges.sort()
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))
    assert len({r[0][0] for r in ranges}) > 1  # three interleaved symbols now start different files

    # Time travel to before the compaction still reads the original files.
    assert keys(day_rows(lake, DAY, snapshot_id=raced[0])) == keys(original + late)


def test_compaction_abandons_a_day_someone_else_rewrote(make_settings: Callable[..., Settings]) -> None:
    lake = open_lake(make_settings())
    for rows in batches(DAY, 6, 20):
        lake.append("trades", rows)
    table = lake.table("trades")
    original = keys(day_rows(lake, DAY))
    ours: list[str] = []

    def rival_compaction() -> None:
        ours.extend(p for p in _data_files_on_disk(lake) if p not in file_paths(lake.table("trades"), DAY))
        compact_day(lake.table("trades"), TRADES, DAY, target_file_bytes=10**9, retries=2, backoff_seconds=0.05)

    with pytest.raises(CompactionError, match="rewritten by someone else"):
        compact_day(
            table, TRADES, DAY, target_file_bytes=10**9, retries=2, backoff_seconds=0.05, before_commit=rival_compaction
        )
    assert keys(day_rows(lake, DAY)) == original
    assert day_files(lake.table("trades"))[0].files == 1  # the rival's single file
    assert ours  # our rewrite had written a file ...
    assert not set(ours) & set(_data_files_on_disk(lake))  # ... and removed it again


def _data_files_on_disk(lake: Lake) -> list[str]:
    root = lake.settings.home / "warehouse"
    return ["file://" + str(p) for p in root.rglob("*.parquet")]


def test_verification_refuses_a_rewrite_that_lost_or_changed_a_key() -> None:
    ts = datetime(2026, 11, 20, 1, tzinfo=UTC)
    source = pa.table(
        {
            "exchange": ["asx", "asx"],
            "symbol": ["BHP", "BHP"],
            "exchange_sequence_number": [1, 2],
            "exchange_timestamp": pa.array([ts, ts], pa.timestamp("us", tz="UTC")),
        }
    )
    changed = source.set_column(2, "exchange_sequence_number", pa.array([1, 3], pa.int64()))
    files: list[Any] = [type("F", (), {"record_count": 2})()]
    _verify(source, source, 2, files)  # identical: accepted
    with pytest.raises(CompactionError, match="key set changed"):
        _verify(source, changed, 2, files)
    with pytest.raises(CompactionError, match="row count changed"):
        _verify(source, source.slice(0, 1), 2, files)


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
def test_sensor_compacts_closed_days_only_and_the_job_runs_by_hand(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    settings.maintenance.compaction_min_files = 4
    lake = open_lake(settings)
    today = datetime.now(UTC).date()
    for rows in batches(DAY, 6, 10):
        lake.append("trades", rows)
    for rows in batches(DAY - timedelta(days=1), 3, 10, first_seq=5000):  # closed, but only 3 files
        lake.append("trades", rows)
    for rows in batches(today, 6, 10, first_seq=9000):  # today's partition is still being written
        lake.append("trades", rows)
    resources = k2_resources(settings)

    with dg.build_sensor_context(cursor=None, resources=resources) as ctx:
        result = compaction_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    requests = result.run_requests or []
    assert [r.partition_key for r in requests] == [DAY.isoformat()]
    assert requests[0].run_config == {"ops": {"compact_day_partition": {"config": {"tables": ["trades"]}}}}

    job = definitions(settings).resolve_job_def("compaction_job")
    with dg.instance_for_test() as instance:
        run = job.execute_in_process(
            partition_key=requests[0].partition_key, run_config=requests[0].run_config, instance=instance
        )
    assert run.success
    assert run.output_for_node("compact_day_partition") == 5  # 6 files -> 1
    files = {d.day: d.files for d in day_files(lake.table("trades"))}
    assert files == {DAY: 1, DAY - timedelta(days=1): 3, today: 6}

    with dg.build_sensor_context(cursor=result.cursor, resources=resources) as ctx:
        again = compaction_sensor(ctx)  # the compaction's own snapshot is new, but nothing is due any more
    assert isinstance(again, dg.SensorResult)
    assert not again.run_requests
    with dg.build_sensor_context(cursor=again.cursor, resources=resources) as ctx:
        idle = compaction_sensor(ctx)
    assert isinstance(idle, dg.SensorResult)
    assert not idle.run_requests
    assert idle.skip_reason is not None
