"""Jobs: OHLCV per day, gap backfill, quality checks (asset jobs), and the two table-upkeep jobs (op jobs, since
they rewrite or clean tables rather than produce an asset): compaction of a day partition and snapshot expiry with
orphan removal. Each can be launched by hand from the UI (compaction and OHLCV for any day or range of days)."""

from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetSelection,
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Output,
    define_asset_job,
    in_process_executor,
    job,
    op,
)

from k2_core.model.days import parse_day
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import KINDS
from k2_core.upkeep.compaction import compact_day
from k2_core.upkeep.expiry import expire_snapshots, remove_orphans
from k2_dagster.defs.assets import DAILY, ohlcv_bars, quotes, sequence_gaps, trades
from k2_dagster.defs.resources import IcebergResource

JOB_TAG = "k2/job"
# Each job is one or two steps of I/O-bound work: running them in the run's own process saves a Python start (and
# K2's imports) per step, which is most of a small run's cost on a busy machine.
EXECUTOR = in_process_executor

ohlcv_job = define_asset_job(
    "ohlcv_job",
    selection=AssetSelection.assets(ohlcv_bars),
    description="Rebuild one day of ohlcv_1m, then ohlcv_1d from the same trades snapshot.",
    tags={JOB_TAG: "ohlcv"},
    executor_def=EXECUTOR,
)

gap_backfill_job = define_asset_job(
    "gap_backfill_job",
    selection=AssetSelection.assets(sequence_gaps),
    description="One backfill pass over open sequence gaps.",
    tags={JOB_TAG: "gap_backfill"},
    executor_def=EXECUTOR,
)

quality_job = define_asset_job(
    "quality_job",
    selection=AssetSelection.checks_for_assets(trades.key, quotes.key),
    description="Run every data-quality check on trades and quotes.",
    tags={JOB_TAG: "quality"},
    executor_def=EXECUTOR,
)


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


JOBS = (ohlcv_job, gap_backfill_job, quality_job, compaction_job, maintenance_job)
