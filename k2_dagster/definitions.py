"""The K2 code location: `dagster dev -w workspace.yaml` (or `k2 run`) loads `defs` from here."""

import warnings

from dagster import BetaWarning, Definitions, ScheduleDefinition, SensorDefinition

from k2_core.settings import MaintenanceSettings, Settings
from k2_dagster.defs import bars, books, gaps, market, quality, reference, upkeep
from k2_dagster.defs.resources import K2Settings, resources

# Dagster 1.13 passes its own beta `owners` argument when it attaches resources to sensors, and says so in every
# process that loads the definitions (the code server and each run): nothing K2 does, nothing an operator can act on.
warnings.filterwarnings("ignore", message="Parameter `owners` of initializer", category=BetaWarning)


def build_sensors(m: MaintenanceSettings) -> list[SensorDefinition]:
    """Every domain's sensors, each looking as often as `K2_MAINTENANCE_*_SENSOR_SECONDS` says."""
    return [*market.sensors(m), *bars.sensors(m), *upkeep.sensors(m), *gaps.sensors(m)]


def build_schedules(m: MaintenanceSettings) -> list[ScheduleDefinition]:
    """Every domain's schedules (UTC), each on the cron `K2_MAINTENANCE_*_CRON` sets."""
    return [*gaps.schedules(m), *upkeep.schedules(m), *quality.schedules(m), *books.schedules(m)]


def build_definitions(k2: K2Settings | None = None) -> Definitions:
    """The whole K2 definition set; `k2` pins the settings (tests), otherwise they come from the environment (read
    here, when the code location loads, only for the schedules' crons and the sensors' intervals)."""
    maintenance = (k2.get() if k2 is not None else Settings()).maintenance
    return Definitions(
        assets=[
            market.trades,
            market.quotes,
            bars.ohlcv_bars,
            gaps.sequence_gaps,
            reference.instruments,
            books.k2_book_snapshots,
        ],
        asset_checks=quality.CHECKS,
        jobs=[
            bars.ohlcv_job,
            gaps.gap_backfill_job,
            quality.quality_job,
            upkeep.compaction_job,
            upkeep.maintenance_job,
            books.book_snapshots_job,
        ],
        sensors=build_sensors(maintenance),
        schedules=build_schedules(maintenance),
        resources=resources(k2),
    )


defs = build_definitions()
