"""Table upkeep, as op jobs since they rewrite or clean tables rather than produce an asset: compaction of a closed day
partition (launched by its sensor, or by hand for any day or range of days), and snapshot expiry with orphan-file
removal on every table (daily, or by hand with `dry_run`)."""

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dagster import (
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Output,
    RunRequest,
    ScheduleDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    job,
    op,
)

from k2_core.lake.lineage import day_files
from k2_core.model.days import day_key, parse_day, utc_today
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import KINDS
from k2_core.settings import MaintenanceSettings
from k2_core.upkeep.compaction import compact_day, needs_compaction
from k2_core.upkeep.expiry import expire_snapshots, remove_orphans
from k2_dagster.defs.market import DAILY, EXECUTOR, JOB_TAG, running_sensor, sensor_cursor, utc_schedule
from k2_dagster.defs.resources import IcebergResource

# ---- compaction ------------------------------------------------------------------------------------------------


class CompactionConfig(Config):
    """Tables to compact for the run's day partition."""

    tables: list[str] = list(KINDS)  # noqa: RUF012 - pydantic copies field defaults


@op
def compact_day_partition(
    context: OpExecutionContext, config: CompactionConfig, iceberg: IcebergResource
) -> Output[int]:
    """Rewrite the day's small files of each table into files near the target size, verified, one snapshot each."""
    day = parse_day(context.partition_key)
    m = iceberg.settings.maintenance
    unknown = sorted(set(config.tables) - set(MARKET_TABLES))
    if unknown:
        raise Failure(f"unknown tables {unknown}; compaction works on {sorted(MARKET_TABLES)}")
    summary: dict[str, dict[str, Any]] = {}
    for name in config.tables:
        table_def = MARKET_TABLES[name]  # type: ignore[index]
        result = compact_day(
            iceberg.table(table_def),
            table_def,
            day,
            target_file_bytes=m.compaction_target_file_bytes,
            retries=m.commit_retries,
            backoff_seconds=m.retry_backoff_seconds,
        )
        summary[name] = {
            "files_before": result.files_before,
            "files_written": result.files_written,
            "files_after": result.files_after,
            "rows": result.rows,
            "bytes_before": result.bytes_before,
            "bytes_written": result.bytes_written,
            "snapshot_id": str(result.snapshot_id),
            "skipped": result.skipped,
        }
        context.log.info(f"{name} {context.partition_key}: {summary[name]}")
    files_removed = sum(s["files_before"] - s["files_after"] for s in summary.values() if not s["skipped"])
    return Output(files_removed, metadata={"tables": MetadataValue.json(summary)})


@job(partitions_def=DAILY, tags={JOB_TAG: "compaction"}, executor_def=EXECUTOR)
def compaction_job() -> None:
    """Compact a closed day partition of trades and quotes (launched by the compaction sensor or by hand)."""
    compact_day_partition()


def compact_closed_days(context: SensorEvaluationContext, iceberg: IcebergResource) -> SensorResult | SkipReason:
    """Compact closed days (before today, UTC) holding more than the configured number of small files."""
    cursor = sensor_cursor(context)
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


# ---- snapshot expiry and orphan files --------------------------------------------------------------------------


class MaintenanceConfig(Config):
    """`dry_run` reports the snapshots that would expire and the orphan files that are unreferenced now, and changes
    nothing."""

    dry_run: bool = False


@op
def expire_and_clean(context: OpExecutionContext, config: MaintenanceConfig, iceberg: IcebergResource) -> Output[int]:
    """Expire old snapshots of every K2 table, then delete files no live snapshot references."""
    m = iceberg.settings.maintenance
    now = datetime.now(UTC)
    summary: dict[str, dict[str, Any]] = {}
    deleted = 0
    for table in iceberg.all_tables():
        expiry = expire_snapshots(
            table,
            now,
            retention=timedelta(hours=m.snapshot_retention_hours),
            keep_last=m.keep_last_snapshots,
            retries=m.commit_retries,
            backoff_seconds=m.retry_backoff_seconds,
            dry_run=config.dry_run,
        )
        orphans = remove_orphans(table, now, min_age=timedelta(hours=m.orphan_min_age_hours), dry_run=config.dry_run)
        deleted += len(orphans.deleted)
        summary[expiry.table] = {
            "snapshots_expired": len(expiry.expired),
            "snapshots_retained": expiry.retained,
            "kept_for_ingester_offsets": expiry.offsets_chain,
            "orphans_deleted": len(orphans.deleted),
            "unreferenced_too_young": orphans.too_young,
        }
        context.log.info(f"{expiry.table}: {summary[expiry.table]}")
    return Output(deleted, metadata={"tables": MetadataValue.json(summary), "dry_run": config.dry_run})


@job(tags={JOB_TAG: "maintenance"}, executor_def=EXECUTOR)
def maintenance_job() -> None:
    """Snapshot expiry (retention, keep-last, ingester offsets chain kept) and orphan-file removal on every table."""
    expire_and_clean()


def sensors(m: MaintenanceSettings) -> list[SensorDefinition]:
    return [running_sensor(compact_closed_days, "compaction_sensor", m.compaction_sensor_seconds, compaction_job)]


def schedules(m: MaintenanceSettings) -> list[ScheduleDefinition]:
    return [
        utc_schedule(
            "maintenance_schedule",
            maintenance_job,
            m.maintenance_cron,
            "Expire snapshots past the retention on every table, then remove orphan files.",
        )
    ]


(compaction_sensor,) = sensors(MaintenanceSettings())
(maintenance_schedule,) = schedules(MaintenanceSettings())
