"""The K2 code location: `dagster dev -w workspace.yaml` (or `k2 run`) loads `defs` from here."""

from dagster import Definitions

from k2_core.settings import Settings
from k2_dagster.defs.assets import ohlcv_bars, quotes, sequence_gaps, trades
from k2_dagster.defs.checks import CHECKS
from k2_dagster.defs.jobs import JOBS
from k2_dagster.defs.resources import K2Settings, resources
from k2_dagster.defs.schedules import build_schedules
from k2_dagster.defs.sensors import build_sensors


def build_definitions(k2: K2Settings | None = None) -> Definitions:
    """The whole K2 definition set; `k2` pins the settings (tests), otherwise they come from the environment (read
    here, when the code location loads, only for the schedules' crons and the sensors' intervals)."""
    maintenance = (k2.get() if k2 is not None else Settings()).maintenance
    return Definitions(
        assets=[trades, quotes, ohlcv_bars, sequence_gaps],
        asset_checks=CHECKS,
        jobs=JOBS,
        sensors=build_sensors(maintenance),
        schedules=build_schedules(maintenance),
        resources=resources(k2),
    )


defs = build_definitions()
