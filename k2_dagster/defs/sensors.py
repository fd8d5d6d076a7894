"""Sensors: each keeps a cursor of what it has seen in Iceberg and returns `SkipReason` when nothing changed.

- `iceberg_snapshot_sensor`: every new trades/quotes snapshot becomes an asset event per day partition it touched
  (a materialization when data landed, an observation for rewrites such as compaction), with snapshot id and rows.
- `ohlcv_sensor`: a day whose trades changed gets its OHLCV rebuilt.
- `compaction_sensor`: a closed day with too many small files gets compacted.
- `gap_backfill_sensor`: open gaps, in batches, get a backfill run each.
"""

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dagster import (
    AssetMaterialization,
    AssetObservation,
    DefaultSensorStatus,
    MetadataValue,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from k2_core.lake.lineage import SnapshotChange, changes_since, day_files
from k2_core.model.days import day_key, parse_day, utc_today
from k2_core.model.tables import GAPS, MARKET_TABLES
from k2_core.model.topics import KINDS
from k2_core.settings import MaintenanceSettings
from k2_core.upkeep.backfill import open_gaps
from k2_core.upkeep.compaction import needs_compaction
from k2_dagster.defs.assets import PARTITIONS_START
from k2_dagster.defs.jobs import compaction_job, gap_backfill_job, ohlcv_job
from k2_dagster.defs.resources import IcebergResource

FIRST_PARTITION = parse_day(PARTITIONS_START)


def _cursor(context: SensorEvaluationContext) -> dict[str, int | None]:
    return json.loads(context.cursor) if context.cursor else {}


def _in_partitions(day: date, now: datetime) -> bool:
    return FIRST_PARTITION <= day <= utc_today(now)


def _events(kind: str, change: SnapshotChange, now: datetime) -> list[AssetMaterialization | AssetObservation]:
    # Appends (ingester, backfill) land new data; overwrites (compaction) and deletes only rewrite or remove it.
    adds_data = change.operation == "append"
    out: list[AssetMaterialization | AssetObservation] = []
    for day, d in sorted(change.days.items()):
        if not _in_partitions(day, now):
            continue
        metadata: dict[str, Any] = {
            "snapshot_id": MetadataValue.text(str(change.snapshot_id)),
            "operation": change.operation,
            "writer": change.writer or "ingester",
            "rows_added": d.rows_added,
            "files_added": d.files_added,
            "rows_removed": d.rows_removed,
            "files_removed": d.files_removed,
            "committed_at": MetadataValue.timestamp(change.committed_at),
            "carries_kafka_offsets": change.carries_offsets,
        }
        event_type = AssetMaterialization if adds_data else AssetObservation
        out.append(event_type(asset_key=kind, partition=day_key(day), metadata=metadata))
    return out


def record_snapshots(context: SensorEvaluationContext, iceberg: IcebergResource) -> SensorResult | SkipReason:
    """Record each new trades/quotes Iceberg snapshot as an asset event of the day partitions it touched."""
    cursor = _cursor(context)
    now = datetime.now(UTC)
    events: list[AssetMaterialization | AssetObservation] = []
    new_cursor = dict(cursor)
    for kind in KINDS:
        table = iceberg.market(kind)
        for change in changes_since(table, cursor.get(kind)):
            events.extend(_events(kind, change, now))
        new_cursor[kind] = table.metadata.current_snapshot_id
    if new_cursor == cursor:
        return SkipReason("no new trades or quotes snapshots")
    return SensorResult(asset_events=events, cursor=json.dumps(new_cursor))


def rebuild_changed_days(context: SensorEvaluationContext, iceberg: IcebergResource) -> SensorResult | SkipReason:
    """Rebuild OHLCV for every day whose trades changed since the last tick."""
    cursor = _cursor(context)
    now = datetime.now(UTC)
    table = iceberg.market("trades")
    current = table.metadata.current_snapshot_id
    if current is None or current == cursor.get("trades"):
        return SkipReason("no new trades snapshot")
    days = sorted(
        {
            day
            for change in changes_since(table, cursor.get("trades"))
            for day in change.days
            if _in_partitions(day, now)
        }
    )
    requests = [RunRequest(partition_key=day_key(day), run_key=f"ohlcv:{day_key(day)}:{current}") for day in days]
    return SensorResult(run_requests=requests, cursor=json.dumps({"trades": current}))


def compact_closed_days(context: SensorEvaluationContext, iceberg: IcebergResource) -> SensorResult | SkipReason:
    """Compact closed days (before today, UTC) holding more than the configured number of small files."""
    cursor = _cursor(context)
    m = iceberg.settings.maintenance
    today = utc_today(datetime.now(UTC))
    due: dict[date, list[str]] = {}
    new_cursor: dict[str, int | None] = {}
    for kind in KINDS:
        table = iceberg.table(MARKET_TABLES[kind])
        new_cursor[kind] = table.metadata.current_snapshot_id
        if new_cursor[kind] == cursor.get(kind):
            continue
        for day in day_files(table, before=today):
            if needs_compaction(day, m.compaction_target_file_bytes, m.compaction_min_files):
                due.setdefault(day.day, []).append(kind)
    if not due:
        return SensorResult(skip_reason=SkipReason("no closed day needs compaction"), cursor=json.dumps(new_cursor))
    requests = [
        RunRequest(
            partition_key=day_key(day),
            run_key=f"compact:{day_key(day)}:{'+'.join(kinds)}:{'+'.join(str(new_cursor[k]) for k in kinds)}",
            run_config={"ops": {"compact_day_partition": {"config": {"tables": kinds}}}},
        )
        for day, kinds in sorted(due.items())
    ]
    return SensorResult(run_requests=requests, cursor=json.dumps(new_cursor))


def backfill_open_gaps(context: SensorEvaluationContext, iceberg: IcebergResource) -> SensorResult | SkipReason:
    """Launch a backfill run per batch of open sequence gaps (each gap attempt gets its own run)."""
    cursor = _cursor(context)
    m = iceberg.settings.maintenance
    gaps_table = iceberg.table(GAPS)
    snapshot = gaps_table.metadata.current_snapshot_id
    if snapshot == cursor.get("snapshot") and not cursor.get("waiting"):
        return SkipReason("sequence_gaps unchanged")
    now = datetime.now(UTC)
    min_age = timedelta(seconds=m.backfill_min_gap_age_seconds)
    every_open = open_gaps(gaps_table, now, min_age=timedelta(0), limit=1_000_000)
    ready = [g for g in every_open if g["detected_at"] <= now - min_age]
    new_cursor = json.dumps({"snapshot": snapshot, "waiting": len(every_open) - len(ready)})
    if not ready:
        return SensorResult(skip_reason=SkipReason("no open gap old enough to backfill"), cursor=new_cursor)
    requests = []
    size = m.backfill_batch_size
    for start in range(0, len(ready), size):
        batch = ready[start : start + size]
        ids = [g["gap_id"] for g in batch]
        digest = hashlib.sha256(json.dumps([[g["gap_id"], g["attempts"]] for g in batch]).encode()).hexdigest()[:16]
        requests.append(
            RunRequest(
                run_key=f"gaps:{digest}",
                run_config={"ops": {"sequence_gaps": {"config": {"gap_ids": ids}}}},
                tags={"k2/gaps": str(len(ids))},
            )
        )
    return SensorResult(run_requests=requests, cursor=new_cursor)


def build_sensors(m: MaintenanceSettings) -> list[SensorDefinition]:
    """The sensors, each looking as often as `K2_MAINTENANCE_*_SENSOR_SECONDS` says."""
    running = DefaultSensorStatus.RUNNING
    return [
        sensor(
            name="iceberg_snapshot_sensor", minimum_interval_seconds=m.snapshot_sensor_seconds, default_status=running
        )(record_snapshots),
        sensor(
            name="ohlcv_sensor", job=ohlcv_job, minimum_interval_seconds=m.ohlcv_sensor_seconds, default_status=running
        )(rebuild_changed_days),
        sensor(
            name="compaction_sensor",
            job=compaction_job,
            minimum_interval_seconds=m.compaction_sensor_seconds,
            default_status=running,
        )(compact_closed_days),
        sensor(
            name="gap_backfill_sensor",
            job=gap_backfill_job,
            minimum_interval_seconds=m.backfill_sensor_seconds,
            default_status=running,
        )(backfill_open_gaps),
    ]


SENSORS = build_sensors(MaintenanceSettings())
iceberg_snapshot_sensor, ohlcv_sensor, compaction_sensor, gap_backfill_sensor = SENSORS
