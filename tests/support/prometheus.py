"""The Grafana dashboards K2 ships and the PromQL in them, for the checks against the code's metrics and against a
live Prometheus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from k2_core.settings import REPO_ROOT

DASHBOARDS = REPO_ROOT / "config" / "grafana" / "dashboards"


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))  # rows hold their panels when collapsed


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query-driven template variable."""
    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield f"panel {panel.get('title')!r}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            yield f"variable {variable['name']!r}", query["query"] if isinstance(query, dict) else query
