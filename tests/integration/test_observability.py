"""API observability over a real Iceberg catalog: RED metrics labelled by route template, the X-Request-ID
round trip, the id on every JSON log line of its request (including lines logged from the threadpool), /metrics."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from k2_api.main import create_app
from k2_api.observability import UNMATCHED
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.logging import JsonFormatter
from k2_core.model.tables import TRADES
from k2_core.settings import Settings
from tests.support import factories
from tests.support.clients import local_client

SettingsFactory = Callable[..., Settings]
AT = datetime(2024, 1, 2, 10, tzinfo=UTC)
TRADES_PARAMS = {"symbol": "BHP", "exchange": "asx", "start": "2024-01-02", "end": "2024-01-03"}


@pytest.fixture
def client(make_settings: SettingsFactory) -> Iterator[TestClient]:
    settings = make_settings()
    catalog = open_catalog(settings)
    try:
        rows = [
            factories.trade("BHP", seq, AT, "45.1", Decimal(1), side="buy", trade_id=f"t{seq}", ingestion_timestamp=AT)
            for seq in (1, 2, 3)
        ]
        ensure_tables(catalog, settings.catalog.namespace)["trades"].append(TRADES.to_arrow(rows))
    finally:
        catalog.close()
    with local_client(create_app(settings)) as client:
        yield client


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """K2's JSON formatter on the root logger, as `configure_logging` installs it, into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter("api"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(previous_level)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_and_timed_by_route_template(client: TestClient) -> None:
    ok = {"method": "GET", "endpoint": "/v1/trades", "status_code": "200"}
    bad = {"method": "GET", "endpoint": "/v1/trades", "status_code": "400"}
    timed = {"method": "GET", "endpoint": "/v1/trades"}
    before_ok, before_bad = sample("http_requests_total", **ok), sample("http_requests_total", **bad)
    before_count = sample("http_request_duration_seconds_count", **timed)
    before_errors = sample("http_request_errors_total", method="GET", endpoint="/v1/trades", error_type="client_error")
    before_unmatched = sample("http_requests_total", method="GET", endpoint=UNMATCHED, status_code="404")

    for _ in range(3):
        assert client.get("/v1/trades", params=TRADES_PARAMS).json()["count"] == 3
    assert client.get("/v1/trades", params={**TRADES_PARAMS, "start": "not-a-time"}).status_code == 400
    assert client.get("/v1/no/such/route/12345").status_code == 404

    assert sample("http_requests_total", **ok) - before_ok == 3
    assert sample("http_requests_total", **bad) - before_bad == 1
    assert sample("http_request_duration_seconds_count", **timed) - before_count == 4
    errors = sample("http_request_errors_total", method="GET", endpoint="/v1/trades", error_type="client_error")
    assert errors - before_errors == 1
    # Unknown paths share one label: the raw path never becomes a label value.
    assert sample("http_requests_total", method="GET", endpoint=UNMATCHED, status_code="404") - before_unmatched == 1
    endpoints = {
        s.labels["endpoint"] for m in REGISTRY.collect() if m.name == "http_requests" for s in m.samples if s.labels
    }
    assert not any("12345" in e for e in endpoints)


def test_metrics_route_serves_the_prometheus_exposition(client: TestClient) -> None:
    client.get("/health")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {"http_requests", "http_request_errors", "http_request_duration_seconds"} <= set(families)
    health = [s for s in families["http_requests"].samples if s.labels.get("endpoint") == "/health"]
    assert health
    assert sum(s.value for s in health) >= 1


def test_request_id_is_echoed_or_made_and_logged_on_every_line(client: TestClient, json_log: io.StringIO) -> None:
    given = client.get("/v1/trades", params=TRADES_PARAMS, headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = client.get("/v1/trades", params=TRADES_PARAMS)
    made_id = made.headers["x-request-id"]
    assert len(made_id) == 32
    int(made_id, 16)  # uuid4 hex
    unsafe = client.get("/health", headers={"X-Request-ID": 'x"\n{"level": "forged"}'})
    assert unsafe.headers["x-request-id"] != 'x"\n{"level": "forged"}'
    assert len(unsafe.headers["x-request-id"]) == 32

    lines: list[dict[str, Any]] = [json.loads(line) for line in json_log.getvalue().splitlines()]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_id.setdefault(line.get("request_id", ""), []).append(line)
    # The first request runs the query (the engine logs it from a worker thread); the second, identical one may be
    # answered from the result cache. Both get the middleware's access line.
    assert "query" in {line["message"] for line in by_id["abc-123"]}
    for request_id in ("abc-123", made_id):
        access = next(line for line in by_id[request_id] if line["message"] == "http request")
        assert access["endpoint"] == "/v1/trades"
        assert access["status_code"] == 200
        assert access["component"] == "api"
        assert access["duration_ms"] >= 0
    # Nothing the server logged escaped without an id (the test client's own httpx lines are not the server's).
    assert [line for line in by_id.get("", []) if line["logger"].startswith("k2_")] == []
