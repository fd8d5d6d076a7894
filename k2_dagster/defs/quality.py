"""Data quality of `trades` and `quotes`: the pandera rules of `k2_core.upkeep.quality`, one check per rule, plus
trade freshness during market hours, run together by `quality_job` every 15 minutes (by default). A failure reports
the offending row count and a sample of the rows."""

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSpec,
    AssetSelection,
    Config,
    MetadataValue,
    ScheduleDefinition,
    asset_check,
    define_asset_job,
    multi_asset_check,
)

from k2_core.model.days import day_key, parse_day, utc_today
from k2_core.model.topics import Kind
from k2_core.settings import MaintenanceSettings
from k2_core.upkeep.quality import RULES, Finding, check_day, freshness
from k2_dagster.defs.market import EXECUTOR, JOB_TAG, quotes, trades, utc_schedule
from k2_dagster.defs.resources import IcebergResource, KafkaResource


class QualityConfig(Config):
    """Days (YYYY-MM-DD, UTC) to check; none given: yesterday and today."""

    days: list[str] | None = None


def _days(config: QualityConfig, now: datetime) -> list[date]:
    if config.days:
        return sorted({parse_day(d) for d in config.days})
    today = utc_today(now)
    return [today - timedelta(days=1), today]


def _result(kind: Kind, rule: str, per_day: dict[date, Finding]) -> AssetCheckResult:
    findings = list(per_day.values())
    offending = sum(f.offending for f in findings)
    sample = [row for f in findings for row in f.sample][:5]
    return AssetCheckResult(
        asset_key=kind,
        check_name=f"{kind}_{rule}",
        passed=offending == 0,
        description=findings[0].description if findings else None,
        metadata={
            "offending_rows": offending,
            "rows_checked": sum(f.rows_checked for f in findings),
            "days": MetadataValue.json({day_key(d): f.offending for d, f in per_day.items()}),
            "sample": MetadataValue.json(sample),
        },
    )


def _quality_check(kind: Kind) -> AssetChecksDefinition:
    specs = [AssetCheckSpec(f"{kind}_{r.name}", asset=kind, description=r.description) for r in RULES[kind]]

    @multi_asset_check(name=f"{kind}_quality", specs=specs, description=f"pandera rules on {kind} day partitions")
    def _check(
        context: AssetCheckExecutionContext, config: QualityConfig, iceberg: IcebergResource
    ) -> Iterator[AssetCheckResult]:
        now = datetime.now(UTC)
        tolerance = timedelta(seconds=iceberg.settings.maintenance.future_tolerance_seconds)
        table = iceberg.market(kind)
        by_rule: dict[str, dict[date, Finding]] = {r.name: {} for r in RULES[kind]}
        for day in _days(config, now):
            for rule, finding in check_day(table, kind, day, now, tolerance).items():
                by_rule[rule][day] = finding
        for rule, per_day in by_rule.items():
            yield _result(kind, rule, per_day)

    return _check


trades_quality = _quality_check("trades")
quotes_quality = _quality_check("quotes")


@asset_check(asset="trades")
def trades_freshness(iceberg: IcebergResource, kafka: KafkaResource) -> AssetCheckResult:
    """During each exchange's market hours, its newest stored trade is at most the allowed lag old."""
    now = datetime.now(UTC)
    m = iceberg.settings.maintenance
    results = freshness(iceberg.market("trades"), m.market_hours, now, timedelta(seconds=m.freshness_max_lag_seconds))
    stale = [r for r in results if not r.passed]
    metadata: dict[str, Any] = {
        "stale_exchanges": len(stale),
        "exchanges": MetadataValue.json(
            [
                {
                    "exchange": r.exchange,
                    "market_open": r.market_open,
                    "newest_trade": r.newest.isoformat() if r.newest else None,
                    "lag_seconds": r.lag_seconds(now),
                    "passed": r.passed,
                }
                for r in results
            ]
        ),
        "max_lag_seconds": m.freshness_max_lag_seconds,
    }
    if stale:
        metadata["broker_reachable"] = kafka.cluster_id() is not None
    return AssetCheckResult(passed=not stale, metadata=metadata)


CHECKS = [trades_quality, quotes_quality, trades_freshness]

quality_job = define_asset_job(
    "quality_job",
    selection=AssetSelection.checks_for_assets(trades.key, quotes.key),
    description="Run every data-quality check on trades and quotes.",
    tags={JOB_TAG: "quality"},
    executor_def=EXECUTOR,
)


def schedules(m: MaintenanceSettings) -> list[ScheduleDefinition]:
    return [
        utc_schedule(
            "quality_schedule",
            quality_job,
            m.quality_cron,
            "Data-quality checks on yesterday's and today's trades and quotes, and freshness.",
        )
    ]


(quality_schedule,) = schedules(MaintenanceSettings())
