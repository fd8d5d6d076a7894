"""The K2 code location: `dagster dev -w workspace.yaml` (or `k2 run`) loads `defs` from here."""

from dagster import Definitions

from k2_dagster.defs.assets import ohlcv_1d, ohlcv_1m, quotes, sequence_gaps, trades
from k2_dagster.defs.checks import CHECKS
from k2_dagster.defs.jobs import JOBS
from k2_dagster.defs.resources import K2Settings, resources
from k2_dagster.defs.schedules import SCHEDULES
from k2_dagster.defs.sensors import SENSORS


def build_definitions(k2: K2Settings | None = None) -> Definitions:
    """The whole K2 definition set; `k2` pins the settings (tests), otherwise they come from the environment."""
    return Definitions(
        assets=[trades, quotes, ohlcv_1m, ohlcv_1d, sequence_gaps],
        asset_checks=CHECKS,
        jobs=JOBS,
        sensors=SENSORS,
        schedules=SCHEDULES,
        resources=resources(k2),
    )


defs = build_definitions()
