"""Level-2 books: K2's own snapshot of each active instrument's book at every minute mark
(k2_core.upkeep.book_snapshots), so a rebuild of a book at any time replays at most a minute of updates."""

from datetime import UTC, datetime, timedelta

from dagster import AssetSelection, MaterializeResult, ScheduleDefinition, asset, define_asset_job

from k2_core.model.tables import BOOK_SNAPSHOTS, BOOK_UPDATES, BOOK_VALIDITY
from k2_core.settings import MaintenanceSettings
from k2_core.upkeep.book_snapshots import write_k2_snapshots
from k2_dagster.defs.market import EXECUTOR, JOB_TAG, MARKET_GROUP, utc_schedule
from k2_dagster.defs.resources import IcebergResource


@asset(name="book_snapshots", group_name=MARKET_GROUP, kinds={"iceberg"})
def k2_book_snapshots(iceberg: IcebergResource) -> MaterializeResult:
    """Book snapshots (Iceberg market.book_snapshots): K2 writes each active instrument's book at every minute mark."""
    m = iceberg.settings.maintenance
    now = datetime.now(UTC)
    report = write_k2_snapshots(
        iceberg.table(BOOK_SNAPSHOTS),
        iceberg.table(BOOK_UPDATES),
        iceberg.table(BOOK_VALIDITY),
        now - timedelta(minutes=m.book_snapshot_lookback_minutes),
        now,
        now,
        retries=m.commit_retries,
        backoff_seconds=m.retry_backoff_seconds,
    )
    return MaterializeResult(
        metadata={
            "instruments": report.instruments,
            "minute_marks": report.marks,
            "snapshots_written": report.written,
            "marks_unknown": report.unknown,
        }
    )


book_snapshots_job = define_asset_job(
    "book_snapshots_job",
    selection=AssetSelection.assets(k2_book_snapshots),
    description="K2's own book snapshot of every active instrument at each recent minute mark.",
    tags={JOB_TAG: "book_snapshots"},
    executor_def=EXECUTOR,
)


def schedules(m: MaintenanceSettings) -> list[ScheduleDefinition]:
    return [
        utc_schedule(
            "book_snapshots_schedule",
            book_snapshots_job,
            m.book_snapshot_cron,
            "K2 snapshots of the books at every minute mark since the last run, so a rebuild replays at most a minute.",
        )
    ]


(book_snapshots_schedule,) = schedules(MaintenanceSettings())
