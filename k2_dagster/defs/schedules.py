"""Schedules (UTC): the daily gap sweep, daily snapshot expiry and cleanup, and quality checks every 15 minutes."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from k2_dagster.defs.jobs import gap_backfill_job, maintenance_job, quality_job

gap_sweep_schedule = ScheduleDefinition(
    name="gap_sweep_schedule",
    job=gap_backfill_job,
    cron_schedule="15 1 * * *",
    execution_timezone="UTC",
    description="Daily: one backfill pass over every open gap the sensor's runs left (failed runs, skipped batches).",
    default_status=DefaultScheduleStatus.RUNNING,
)

maintenance_schedule = ScheduleDefinition(
    name="maintenance_schedule",
    job=maintenance_job,
    cron_schedule="45 2 * * *",
    execution_timezone="UTC",
    description="Daily: expire snapshots past the retention on every table, then remove orphan files.",
    default_status=DefaultScheduleStatus.RUNNING,
)

quality_schedule = ScheduleDefinition(
    name="quality_schedule",
    job=quality_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    description="Every 15 minutes: data-quality checks on yesterday's and today's trades and quotes, and freshness.",
    default_status=DefaultScheduleStatus.RUNNING,
)

SCHEDULES = [gap_sweep_schedule, maintenance_schedule, quality_schedule]
