"""OHLCV bars, `trades` -> `ohlcv_1m` -> `ohlcv_1d`: the asset, the job that rebuilds a day (by hand for any day or
range of days), and the sensor that rebuilds every day whose trades changed."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    multi_asset,
)

from k2_core.lake.lineage import changes_since
from k2_core.model.days import day_key, parse_day
from k2_core.settings import MaintenanceSettings
from k2_core.upkeep.ohlcv import OHLCV_TABLES, BarsBuild, rebuild_day
from k2_core.upkeep.retention import thin_when_due
from k2_dagster.defs.market import DAILY, EXECUTOR, JOB_TAG, in_partitions, running_sensor, sensor_cursor, trades
from k2_dagster.defs.resources import IcebergResource

BARS_GROUP = "bars"


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
    """Both bar tables of a day from one read of one trades snapshot (k2_core.upkeep.ohlcv.rebuild_day). The
    sensor rebuilds today every few minutes: the bar tables are thinned as the ingesters thin theirs, each day's
    newest build kept, so their commits do not slow down with age."""
    m = iceberg.settings.maintenance
    bars_1m, bars_1d = iceberg.table(OHLCV_TABLES["1m"]), iceberg.table(OHLCV_TABLES["1d"])
    day = parse_day(context.partition_key)
    minute, daily = rebuild_day(
        iceberg.market("trades"), bars_1m, bars_1d, day, retries=m.commit_retries, backoff=m.retry_backoff_seconds
    )
    for table in (bars_1m, bars_1d):
        thin_when_due(table, iceberg.settings)
    yield _bars_result("ohlcv_1m", minute)
    yield _bars_result("ohlcv_1d", daily)


ohlcv_job = define_asset_job(
    "ohlcv_job",
    selection=AssetSelection.assets(ohlcv_bars),
    description="Rebuild one day of ohlcv_1m, then ohlcv_1d from the same trades snapshot.",
    tags={JOB_TAG: "ohlcv"},
    executor_def=EXECUTOR,
)


def rebuild_changed_days(context: SensorEvaluationContext, iceberg: IcebergResource) -> SensorResult | SkipReason:
    """Rebuild OHLCV for every day whose trades changed since the last tick."""
    cursor = sensor_cursor(context)
    now = datetime.now(UTC)
    table = iceberg.market("trades")
    current = table.metadata.current_snapshot_id
    if current is None or current == cursor.get("trades"):
        return SkipReason("no new trades snapshot")
    days = sorted(
        {day for change in changes_since(table, cursor.get("trades")) for day in change.days if in_partitions(day, now)}
    )
    requests = [RunRequest(partition_key=day_key(day), run_key=f"ohlcv:{day_key(day)}:{current}") for day in days]
    return SensorResult(run_requests=requests, cursor=json.dumps({"trades": current}))


def sensors(m: MaintenanceSettings) -> list[SensorDefinition]:
    return [running_sensor(rebuild_changed_days, "ohlcv_sensor", m.ohlcv_sensor_seconds, ohlcv_job)]


(ohlcv_sensor,) = sensors(MaintenanceSettings())
