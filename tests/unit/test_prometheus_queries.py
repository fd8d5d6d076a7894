"""Every PromQL expression we ship (alert rules, Grafana panels and variables) names only metrics that K2's code
defines (collected from prometheus_client's registry after importing the modules that define them) or that
Prometheus makes itself (`up`, ...). A renamed metric then fails here instead of leaving an empty panel."""

from __future__ import annotations

import importlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from k2_core.settings import REPO_ROOT
from tests.support.prometheus import dashboard_queries, dashboards, panels

ALERTS = REPO_ROOT / "config" / "prometheus" / "alerts.yml"
METRIC_MODULES = ("k2_stream.metrics", "k2_stream.book_metrics", "k2_api.observability")
# Made by Prometheus itself for every target.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"})
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"})
_KEYWORDS |= {"offset", "inf", "nan", "Inf", "NaN"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([^,)]+?)\s*(?:,[^)]*)?\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana `label_values(...)` variable query) selects."""
    grafana = _LABEL_VALUES.fullmatch(expr.strip())
    if grafana:
        expr = grafana.group(1)
    expr = _VARIABLES.sub("", expr)
    for pattern in (_STRINGS, _MATCHERS, _RANGES, _GROUPING):
        expr = pattern.sub(" ", expr)
    return {name for name in _IDENTIFIER.findall(expr) if name not in _KEYWORDS}


@cache
def code_metric_names() -> frozenset[str]:
    """Every sample name the code can expose, from the default registry (which also carries process_* and
    python_* metrics): a labelled metric not yet observed has no samples, so names come from family types."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
        names |= {sample.name for sample in family.samples}
    return frozenset(names)


def known_metrics() -> frozenset[str]:
    return code_metric_names() | SYNTHETIC


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


# --- the parser itself ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {"up"}),
        ('up{job="k2-ingester"} == 0', {"up"}),
        (
            "histogram_quantile(0.99, sum by (table, le) (rate(iceberg_write_duration_seconds_bucket[5m]))) > 1",
            {"iceberg_write_duration_seconds_bucket"},
        ),
        (
            'sum by (exchange) (rate(sequence_gaps_total{exchange=~"$exchange"}[$__rate_interval])) or vector(0)',
            {"sequence_gaps_total"},
        ),
        ("a_total / ignoring(le) b_count offset 5m", {"a_total", "b_count"}),
        ("label_values(sequence_gaps_total, exchange)", {"sequence_gaps_total"}),
        ('label_values(k2_messages_consumed_total{topic=~".+"}, topic)', {"k2_messages_consumed_total"}),
        ("max(k2_halted_partitions) > bool 1e3", {"k2_halted_partitions"}),
    ],
)
def test_metric_names_are_parsed_out_of_promql(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_code_metric_names_come_from_the_registry() -> None:
    names = code_metric_names()
    assert {"k2_messages_consumed_total", "http_requests_total", "iceberg_write_duration_seconds_bucket"} <= names
    assert "process_resident_memory_bytes" in names
    assert "no_such_metric_total" not in names


# --- what we ship -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_alerts_name_only_metrics_the_code_defines(rule: dict[str, Any]) -> None:
    names = metric_names(str(rule["expr"]))
    assert names
    assert names - known_metrics() == set()


def test_the_seed_alerts_watch_the_metrics_they_are_about() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    seed = {
        "KafkaConsumerLagHigh": "kafka_consumer_lag_seconds",
        "SequenceGapsHigh": "sequence_gaps_total",
        "IcebergWriteLatencyHigh": "iceberg_write_duration_seconds_bucket",
        "CircuitBreakerOpen": "circuit_breaker_state",
        "TradesQueryLatencyHigh": "http_request_duration_seconds_bucket",
        "IngesterDown": "up",
    }
    for name, metric in seed.items():
        assert metric in metric_names(str(rules[name]["expr"])), name
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description", "runbook"} <= set(rule["annotations"])


def test_the_four_dashboards_are_there() -> None:
    titles = {json.loads(path.read_text())["title"] for path in dashboards()}
    assert titles == {"K2 / System overview", "K2 / Exchange drill-down", "K2 / Query performance", "K2 / Resources"}


@pytest.mark.parametrize("path", dashboards(), ids=lambda path: path.stem)
def test_dashboard_panels_query_only_metrics_the_code_defines(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    queries = list(dashboard_queries(dashboard))
    assert queries
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{path.name} {where}: no metric in {expr!r}"
        assert names - known_metrics() == set(), f"{path.name} {where}: {expr!r}"


def test_dashboards_are_well_formed_and_use_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((REPO_ROOT / "config/grafana/provisioning/datasources/prometheus.yaml").read_text())
    uids = {source["uid"] for source in provisioned["datasources"]}
    loaded = [json.loads(path.read_text()) for path in dashboards()]
    assert len({d["uid"] for d in loaded}) == len(loaded)
    for dashboard in loaded:
        ids = [panel["id"] for panel in panels(dashboard["panels"])]
        assert len(ids) == len(set(ids)), dashboard["title"]
        for panel in panels(dashboard["panels"]):
            grid = panel["gridPos"]
            assert grid["x"] >= 0, panel["title"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] in uids, panel["title"]
                assert all(target["datasource"]["uid"] in uids for target in panel["targets"])
