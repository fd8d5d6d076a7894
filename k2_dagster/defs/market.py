"""The market tables the stream ingester writes, `trades` and `quotes`: every other domain maintains them, so what
the domains share lives here too (the day partitions, the job tag and executor, the sensor cursor).

`iceberg_snapshot_sensor` makes each new trades/quotes snapshot an asset event per day partition it touched (a
materialization when data landed, an observation for rewrites such as compaction), so the UI shows what the
ingester, backfill and compaction did without Dagster running the ingester.
"""

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetMaterialization,
    AssetObservation,
    AssetSpec,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    JobDefinition,
    MetadataValue,
    ScheduleDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    in_process_executor,
    sensor,
)

from k2_core.lake.lineage import SnapshotChange, changes_since
from k2_core.model.days import day_key, parse_day, utc_today
from k2_core.model.topics import KINDS
from k2_core.settings import MaintenanceSettings
from k2_dagster.defs.resources import IcebergResource

# Day partitions (UTC), today's included: bars of the running day are rebuilt as its trades land.
PARTITIONS_START = "2017-01-01"
DAILY = DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1, timezone="UTC")
FIRST_PARTITION = parse_day(PARTITIONS_START)
MARKET_GROUP = "market"

JOB_TAG = "k2/job"
# Each job is one or two steps of I/O-bound work: running them in the run's own process saves a Python start (and
# K2's imports) per step, which is most of a small run's cost on a busy machine.
EXECUTOR = in_process_executor

trades = AssetSpec(
    "trades",
    description="Trades as the stream ingester commits them (Iceberg market.trades, day-partitioned).",
    partitions_def=DAILY,
    group_name=MARKET_GROUP,
    kinds={"iceberg"},
    metadata={"writer": "k2 ingest (exactly-once Kafka -> Iceberg)"},
)
quotes = AssetSpec(
    "quotes",
    description="Quotes as the stream ingester commits them (Iceberg market.quotes, day-partitioned).",
    partitions_def=DAILY,
    group_name=MARKET_GROUP,
    kinds={"iceberg"},
    metadata={"writer": "k2 ingest (exactly-once Kafka -> Iceberg)"},
)


def sensor_cursor(context: SensorEvaluationContext) -> dict[str, Any]:
    """What a sensor saw on its last tick (snapshot ids, as JSON), so an idle tick costs one metadata read."""
    return json.loads(context.cursor) if context.cursor else {}


def in_partitions(day: date, now: datetime) -> bool:
    return FIRST_PARTITION <= day <= utc_today(now)


def _events(kind: str, change: SnapshotChange, now: datetime) -> list[AssetMaterialization | AssetObservation]:
    # Appends (ingester, backfill) land new data; overwrites (compaction) and deletes only rewrite or remove it.
    adds_data = change.operation == "append"
    out: list[AssetMaterialization | AssetObservation] = []
    for day, d in sorted(change.days.items()):
        if not in_partitions(day, now):
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
    cursor = sensor_cursor(context)
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


if TYPE_CHECKING:  # what `define_asset_job` returns; dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

    AnyJob = JobDefinition | UnresolvedAssetJobDefinition


def running_sensor(fn: Callable[..., Any], name: str, seconds: int, job: "AnyJob | None" = None) -> SensorDefinition:
    """Every K2 sensor runs from the start: a platform that stores gaps but never backfills them is worse than none."""
    return sensor(name=name, job=job, minimum_interval_seconds=seconds, default_status=DefaultSensorStatus.RUNNING)(fn)


def utc_schedule(name: str, job: "AnyJob", cron: str, description: str) -> ScheduleDefinition:
    """Every K2 schedule runs from the start, in UTC like the day partitions it works on."""
    return ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        description=description,
        default_status=DefaultScheduleStatus.RUNNING,
    )


def sensors(m: MaintenanceSettings) -> list[SensorDefinition]:
    return [running_sensor(record_snapshots, "iceberg_snapshot_sensor", m.snapshot_sensor_seconds)]


# Built with the settings of the importing process, for tests and tools that want the sensor itself; the code
# location builds its own from the settings it loads (`k2_dagster.definitions`).
(iceberg_snapshot_sensor,) = sensors(MaintenanceSettings())
