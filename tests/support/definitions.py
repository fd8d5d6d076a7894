"""The K2 Dagster definitions and resources pinned to a test's Settings, as the code location builds them."""

from __future__ import annotations

from typing import Any

import dagster as dg

from k2_core.settings import Settings
from k2_dagster.definitions import build_definitions
from k2_dagster.defs.resources import K2Settings, resources

# Dagster 1.13 itself passes the beta `owners` argument when it attaches resources to sensors.
DAGSTER_OWNERS_BETA = "ignore:Parameter `owners` of initializer:dagster.BetaWarning"


def k2_resources(settings: Settings) -> dict[str, Any]:
    return resources(K2Settings.pinned(settings))


def definitions(settings: Settings) -> dg.Definitions:
    return build_definitions(K2Settings.pinned(settings))
