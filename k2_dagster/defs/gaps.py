"""Sequence gaps and their backfill: materializing `sequence_gaps` is one backfill pass. The sensor launches a run per
batch of open gaps old enough for late numbers to have arrived first; the daily sweep catches what its runs left
(failed runs, skipped batches)."""

import hashlib
import json
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    Config,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    ScheduleDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
)

from k2_core.model.tables import GAPS
from k2_core.settings import MaintenanceSettings
from k2_core.upkeep.backfill import backfill, open_gaps
from k2_dagster.defs.market import (
    EXECUTOR,
    JOB_TAG,
    MARKET_GROUP,
    quotes,
    running_sensor,
    sensor_cursor,
    trades,
    utc_schedule,
)
from k2_dagster.defs.resources import IcebergResource, RecoveryResource


class BackfillConfig(Config):
    """Which gaps one pass works on: the listed ids, or (none listed) every open gap old enough."""

    gap_ids: list[str] | None = None


@asset(deps=[trades, quotes], group_name=MARKET_GROUP, kinds={"iceberg"})
def sequence_gaps(
    context: AssetExecutionContext, config: BackfillConfig, iceberg: IcebergResource, recovery: RecoveryResource
) -> MaterializeResult:
    """Sequence gaps (Iceberg market.sequence_gaps): a backfill pass recovers missing numbers and closes gaps."""
    m = iceberg.settings.maintenance
    report = backfill(
        {"trades": iceberg.market("trades"), "quotes": iceberg.market("quotes")},
        iceberg.table(GAPS),
        recovery.resolver(),
        datetime.now(UTC),
        max_attempts=m.backfill_max_attempts,
        min_age=timedelta(seconds=m.backfill_min_gap_age_seconds),
        limit=len(config.gap_ids) if config.gap_ids else m.backfill_batch_size,
        retries=m.commit_retries,
        backoff_seconds=m.retry_backoff_seconds,
        gap_ids=config.gap_ids,
    )
    for outcome in report.outcomes:
        context.log.info(
            f"gap {outcome.gap_id}: {outcome.status}, recovered {outcome.recovered}, written {outcome.written}, "
            f"already stored {outcome.already_stored}, still missing {outcome.still_missing}"
            + (f" ({outcome.reason})" if outcome.reason else "")
        )
    return MaterializeResult(
        metadata={
            "gaps_processed": len(report.outcomes),
            "filled": report.filled,
            "unrecoverable": report.unrecoverable,
            "still_open": report.still_open,
            "rows_written": sum(report.rows_written.values()),
            "outcomes": MetadataValue.json(
                [
                    {
                        "gap_id": o.gap_id,
                        "status": o.status,
                        "recovered": o.recovered,
                        "written": o.written,
                        "already_stored": o.already_stored,
                        "still_missing": o.still_missing,
                        "reason": o.reason,
                        "sources": o.sources,
                    }
                    for o in report.outcomes[:200]
                ]
            ),
        }
    )


gap_backfill_job = define_asset_job(
    "gap_backfill_job",
    selection=AssetSelection.assets(sequence_gaps),
    description="One backfill pass over open sequence gaps.",
    tags={JOB_TAG: "gap_backfill"},
    executor_def=EXECUTOR,
)


def backfill_open_gaps(context: SensorEvaluationContext, iceberg: IcebergResource) -> SensorResult | SkipReason:
    """Launch a backfill run per batch of open sequence gaps (each gap attempt gets its own run)."""
    cursor = sensor_cursor(context)
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


def sensors(m: MaintenanceSettings) -> list[SensorDefinition]:
    return [running_sensor(backfill_open_gaps, "gap_backfill_sensor", m.backfill_sensor_seconds, gap_backfill_job)]


def schedules(m: MaintenanceSettings) -> list[ScheduleDefinition]:
    return [
        utc_schedule(
            "gap_sweep_schedule",
            gap_backfill_job,
            m.gap_sweep_cron,
            "One backfill pass over every open gap the sensor's runs left (failed runs, skipped batches).",
        )
    ]


(gap_backfill_sensor,) = sensors(MaintenanceSettings())
(gap_sweep_schedule,) = schedules(MaintenanceSettings())
