"""Schedules (UTC): the daily gap sweep, daily snapshot expiry and cleanup, and quality checks every 15 minutes
(by default: `K2_MAINTENANCE_*_CRON` sets each)."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from k2_core.settings import MaintenanceSettings
from k2_dagster.defs.jobs import gap_backfill_job, maintenance_job, quality_job


def build_schedules(m: MaintenanceSettings) -> list[ScheduleDefinition]:
    return [
        ScheduleDefinition(
            name="gap_sweep_schedule",
            job=gap_backfill_job,
            cron_schedule=m.gap_sweep_cron,
            execution_timezone="UTC",
            description="One backfill pass over every open gap the sensor's runs left (failed runs, skipped batches).",
            default_status=DefaultScheduleStatus.RUNNING,
        ),
        ScheduleDefinition(
            name="maintenance_schedule",
            job=maintenance_job,
            cron_schedule=m.maintenance_cron,
            execution_timezone="UTC",
            description="Expire snapshots past the retention on every table, then remove orphan files.",
            default_status=DefaultScheduleStatus.RUNNING,
        ),
        ScheduleDefinition(
            name="quality_schedule",
            job=quality_job,
            cron_schedule=m.quality_cron,
            execution_timezone="UTC",
            description="Data-quality checks on yesterday's and today's trades and quotes, and freshness.",
            default_status=DefaultScheduleStatus.RUNNING,
        ),
    ]


SCHEDULES = build_schedules(MaintenanceSettings())
gap_sweep_schedule, maintenance_schedule, quality_schedule = SCHEDULES
