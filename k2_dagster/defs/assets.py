"""The asset graph: `trades`, `quotes` (written by the stream ingester) -> `ohlcv_1m` -> `ohlcv_1d`, plus
`sequence_gaps`, whose materialization is a backfill pass."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetExecutionContext,
    AssetSpec,
    Config,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)

from k2_core.model.days import day_key, parse_day
from k2_core.model.tables import GAPS
from k2_core.upkeep.backfill import backfill
from k2_core.upkeep.ohlcv import OHLCV_TABLES, BarsBuild, rebuild_day
from k2_dagster.defs.resources import IcebergResource, RecoveryResource

# Day partitions (UTC), today's included: bars of the running day are rebuilt as its trades land.
PARTITIONS_START = "2017-01-01"
DAILY = DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1, timezone="UTC")
MARKET_GROUP = "market"
BARS_GROUP = "bars"

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


def _bars_result(asset_key: str, build: BarsBuild) -> MaterializeResult:
    return MaterializeResult(
        asset_key=asset_key,
        metadata={
            "day": day_key(build.day),
            "bars": build.bars,
            "trades": build.trades,
            "source_trades_snapshot_id": MetadataValue.text(str(build.source_snapshot_id)),
            "snapshot_id": MetadataValue.text(str(build.snapshot_id)),
        },
    )


@multi_asset(
    specs=[
        AssetSpec(
            "ohlcv_1m",
            deps=[trades],
            description="One-minute OHLCV bars (Iceberg market.ohlcv_1m), the day rebuilt from its trades in one "
            "snapshot.",
            partitions_def=DAILY,
            group_name=BARS_GROUP,
            kinds={"iceberg"},
        ),
        AssetSpec(
            "ohlcv_1d",
            deps=["ohlcv_1m"],
            description="Daily OHLCV bars (Iceberg market.ohlcv_1d), from the trades snapshot the day's minute bars "
            "used, checked to roll up from them exactly.",
            partitions_def=DAILY,
            group_name=BARS_GROUP,
            kinds={"iceberg"},
        ),
    ],
)
def ohlcv_bars(context: AssetExecutionContext, iceberg: IcebergResource) -> Iterator[MaterializeResult]:
    """Both bar tables of a day from one read of one trades snapshot (k2_core.upkeep.ohlcv.rebuild_day)."""
    m = iceberg.settings.maintenance
    minute, daily = rebuild_day(
        iceberg.market("trades"),
        iceberg.table(OHLCV_TABLES["1m"]),
        iceberg.table(OHLCV_TABLES["1d"]),
        parse_day(context.partition_key),
        retries=m.commit_retries,
        backoff=m.retry_backoff_seconds,
    )
    yield _bars_result("ohlcv_1m", minute)
    yield _bars_result("ohlcv_1d", daily)


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
