"""The HTTP API over real Iceberg tables: FastAPI's TestClient for the routes, a real `python -m k2_api`
process for the server entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from k2_api.main import create_app
from k2_core.catalog import ensure_tables, open_catalog
from k2_core.settings import REPO_ROOT, Settings
from k2_core.tables import GAPS, QUOTES, TRADES

SettingsFactory = Callable[..., Settings]  # the `make_settings` fixture (tests/conftest.py)

D1, D2, D3 = (datetime(2024, 1, day, tzinfo=UTC) for day in (1, 2, 3))


def trade(symbol: str, exchange: str, at: datetime, seq: int, price: str) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "exchange": exchange,
        "exchange_timestamp": at,
        "exchange_sequence_number": seq,
        "price": Decimal(price),
        "volume": Decimal("0.5"),
        "side": "buy",
        "trade_id": f"t{seq}",
        "ingestion_timestamp": D3,
    }


TRADE_ROWS = [
    trade("BHP", "asx", D1 + timedelta(hours=10), 1, "45.1"),
    trade("BHP", "asx", D2 + timedelta(hours=10), 2, "45.12"),
    trade("BHP", "asx", D2 + timedelta(hours=10), 3, "45.12345678"),
    trade("BHP", "asx", D2 + timedelta(hours=11, microseconds=5), 4, "0"),
    trade("CBA", "asx", D2 + timedelta(hours=10), 5, "110"),
    trade("BHP", "nyse", D2 + timedelta(hours=10), 6, "58"),
    trade("BHP", "asx", D3 + timedelta(hours=10), 7, "46"),
]
QUOTE_ROW = {
    "symbol": "BHP",
    "exchange": "asx",
    "exchange_timestamp": D2 + timedelta(hours=9),
    "exchange_sequence_number": 1,
    "bid_price": Decimal("45.1"),
    "bid_size": Decimal("200"),
    "ask_price": Decimal("45.12"),
    "ask_size": Decimal("0.00000001"),
    "ingestion_timestamp": D3,
}
GAP_ROWS = [
    {
        "gap_id": gap_id,
        "data_type": "trades",
        "exchange": "asx",
        "symbol": "BHP",
        "first_missing": 5,
        "last_missing": 6,
        "missing_count": 2,
        "severity": "warning",
        "status": status,
        "detected_at": D1 + timedelta(minutes=minute),
        "resolved_at": D2 if status == "filled" else None,
        "attempts": 2,
        "reason": "backfilled" if status == "filled" else None,
    }
    for gap_id, status, minute in (("g1", "open", 1), ("g2", "filled", 2))
]


def seed(settings: Settings) -> None:
    catalog = open_catalog(settings)
    try:
        tables = ensure_tables(catalog, settings.catalog.namespace)
        tables["trades"].append(TRADES.to_arrow(TRADE_ROWS))
        tables["quotes"].append(QUOTES.to_arrow([QUOTE_ROW]))
        tables["sequence_gaps"].append(GAPS.to_arrow(GAP_ROWS))
    finally:
        catalog.close()


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    settings = make_settings()
    seed(settings)
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def message(response: httpx.Response) -> str:
    """One string from either body shape: ours ({"detail": "..."}) or FastAPI's 422 ({"detail": [{loc, msg}]})."""
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return detail
    return "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail)


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_trades_returns_the_window_with_exact_decimals(
    catalog: str, make_settings: SettingsFactory, request: pytest.FixtureRequest
) -> None:
    if catalog == "postgres":
        request.getfixturevalue("postgres_uri")
    settings = make_settings(catalog=catalog)
    seed(settings)
    with TestClient(create_app(settings)) as client:
        response = client.get(
            "/v1/trades", params={"symbol": "BHP", "exchange": "asx", "start": "2024-01-02", "end": "2024-01-03"}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 3
    assert (body["symbol"], body["exchange"], body["limit"]) == ("BHP", "asx", settings.api.default_limit)
    assert (body["start"], body["end"]) == ("2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z")
    assert body["data"] == [
        {
            "symbol": "BHP",
            "exchange": "asx",
            "exchange_timestamp": "2024-01-02T10:00:00Z",
            "exchange_sequence_number": 2,
            "price": "45.12000000",
            "volume": "0.50000000",
            "side": "buy",
            "trade_id": "t2",
            "ingestion_timestamp": "2024-01-03T00:00:00Z",
        },
        {
            "symbol": "BHP",
            "exchange": "asx",
            "exchange_timestamp": "2024-01-02T10:00:00Z",
            "exchange_sequence_number": 3,
            "price": "45.12345678",
            "volume": "0.50000000",
            "side": "buy",
            "trade_id": "t3",
            "ingestion_timestamp": "2024-01-03T00:00:00Z",
        },
        {
            "symbol": "BHP",
            "exchange": "asx",
            "exchange_timestamp": "2024-01-02T11:00:00.000005Z",
            "exchange_sequence_number": 4,
            "price": "0.00000000",
            "volume": "0.50000000",
            "side": "buy",
            "trade_id": "t4",
            "ingestion_timestamp": "2024-01-03T00:00:00Z",
        },
    ]


def test_trades_limit_and_offset_times(client: TestClient) -> None:
    response = client.get(
        "/v1/trades",
        params={
            "symbol": "BHP",
            "exchange": "asx",
            "start": "2024-01-02T10:00:00+10:00",
            "end": "2024-01-04",
            "limit": 2,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["start"] == "2024-01-02T00:00:00Z"
    assert [row["trade_id"] for row in body["data"]] == ["t2", "t3"]
    assert (body["count"], body["limit"]) == (2, 2)


def test_trades_default_window_is_the_last_day(client: TestClient) -> None:
    before = datetime.now(UTC)
    body = client.get("/v1/trades", params={"symbol": "BHP", "exchange": "asx"}).json()
    start, end = datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"])
    assert end - start == timedelta(days=1)
    assert before <= end <= datetime.now(UTC)
    assert body["count"] == 0  # the seeded trades are from 2024


def test_the_widest_window_works(client: TestClient) -> None:
    params = {"symbol": "BHP", "exchange": "asx", "start": "0001-01-01", "end": "9999-12-31T23:59:59.999999"}
    response = client.get("/v1/trades", params=params)
    assert response.status_code == 200, response.text
    assert [row["trade_id"] for row in response.json()["data"]] == ["t1", "t2", "t3", "t4", "t7"]


def test_quotes(client: TestClient) -> None:
    response = client.get(
        "/v1/quotes", params={"symbol": "BHP", "exchange": "asx", "start": "2024-01-02", "end": "2024-01-03"}
    )
    assert response.status_code == 200, response.text
    [quote] = response.json()["data"]
    assert quote["exchange_timestamp"] == "2024-01-02T09:00:00Z"
    assert (quote["bid_price"], quote["bid_size"]) == ("45.10000000", "200.00000000")
    assert (quote["ask_price"], quote["ask_size"]) == ("45.12000000", "0.00000001")


def test_gaps_filters(client: TestClient) -> None:
    body = client.get("/v1/gaps").json()
    assert [g["gap_id"] for g in body["data"]] == ["g2", "g1"]
    assert body["count"] == 2
    filled = client.get("/v1/gaps", params={"exchange": "asx", "symbol": "BHP", "status": "filled"}).json()
    assert filled["data"] == [
        {
            "gap_id": "g2",
            "data_type": "trades",
            "exchange": "asx",
            "symbol": "BHP",
            "first_missing": 5,
            "last_missing": 6,
            "missing_count": 2,
            "severity": "warning",
            "status": "filled",
            "detected_at": "2024-01-01T00:02:00Z",
            "resolved_at": "2024-01-02T00:00:00Z",
            "attempts": 2,
            "reason": "backfilled",
        }
    ]
    assert (filled["exchange"], filled["symbol"], filled["status"]) == ("asx", "BHP", "filled")
    assert client.get("/v1/gaps", params={"exchange": "nyse"}).json()["count"] == 0


def test_health_reports_snapshots(client: TestClient, settings: Settings) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["catalog_reachable"] is True
    assert body["namespace"] == "market"
    catalog = open_catalog(settings)
    try:
        want = {name: catalog.load_table(("market", name)).metadata.current_snapshot_id for name in body["snapshots"]}
    finally:
        catalog.close()
    assert set(want) == {"trades", "quotes", "sequence_gaps"}
    assert body["snapshots"] == want
    assert all(isinstance(snapshot, int) for snapshot in want.values())


def test_health_is_503_when_the_catalog_is_gone(client: TestClient, settings: Settings) -> None:
    shutil.rmtree(settings.home)  # the SQLite catalog database and the warehouse both live here
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["catalog_reachable"]) == ("unavailable", False)
    assert body["error"]


BAD_REQUESTS = [
    ("/v1/trades", {"symbol": "BHP", "exchange": "lse"}, 400, "exchange must be one of asx, binance, nyse"),
    ("/v1/trades", {"symbol": "bhp", "exchange": "asx"}, 400, "symbol must be an uppercase ticker"),
    ("/v1/trades", {"symbol": "BHP;--", "exchange": "asx"}, 400, "symbol must be an uppercase ticker"),
    ("/v1/trades", {"symbol": "B" * 21, "exchange": "asx"}, 400, "symbol must be an uppercase ticker"),
    (
        "/v1/trades",
        {"symbol": "BHP", "exchange": "asx", "start": "2024-01-03", "end": "2024-01-02"},
        400,
        "start must be before end",
    ),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "start": "yesterday"}, 400, "start is not an ISO-8601 time"),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "end": "2024-02-30"}, 400, "end is not an ISO-8601 time"),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "end": "0001-01-01"}, 400, "end is too early"),
    (
        "/v1/trades",
        {"symbol": "BHP", "exchange": "asx", "start": "0001-01-01T00:00+01:00"},
        400,
        "start is out of range in UTC",
    ),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "limit": 0}, 400, "limit must be an integer between 1 and"),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "limit": 100_001}, 400, "limit must be an integer between"),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "limit": "ten"}, 422, "query.limit"),
    ("/v1/trades", {"exchange": "asx"}, 422, "query.symbol"),
    ("/v1/trades", {"symbol": "BHP"}, 422, "query.exchange"),
    ("/v1/quotes", {"symbol": "BHP", "exchange": "ASX"}, 400, "exchange must be one of"),
    (
        "/v1/quotes",
        {"symbol": "BHP", "exchange": "asx", "start": "2024-01-02", "end": "2024-01-02"},
        400,
        "start must be before end (start=2024-01-02T00:00:00+00:00, end=2024-01-02T00:00:00+00:00)",
    ),
    ("/v1/gaps", {"status": "closed"}, 400, "status must be one of open, filled, unrecoverable"),
    ("/v1/gaps", {"exchange": "lse"}, 400, "exchange must be one of"),
    ("/v1/gaps", {"symbol": "bhp"}, 400, "symbol must be an uppercase ticker"),
]


@pytest.mark.parametrize(("path", "params", "status", "text"), BAD_REQUESTS)
def test_bad_input_is_a_4xx_naming_the_parameter(
    client: TestClient, path: str, params: dict[str, Any], status: int, text: str
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert text in message(response)


def test_openapi_documents_routes_and_decimal_strings(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/health", "/v1/trades", "/v1/quotes", "/v1/gaps"}
    trades = spec["paths"]["/v1/trades"]["get"]
    assert trades["description"] == "Trades of one symbol on one exchange in [start, end), oldest first."
    assert "400" in trades["responses"]
    trade_schema = spec["components"]["schemas"]["Trade"]["properties"]
    assert trade_schema["price"]["type"] == "string"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_python_m_k2_api_serves_over_http(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "K2_HOME": str(settings.home),
        "K2_CATALOG_NAME": settings.catalog.name,
        "K2_API_HOST": "127.0.0.1",
        "K2_API_PORT": str(port),
    }
    log = (tmp_path / "api.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "k2_api"], env=env, cwd=REPO_ROOT, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.1)
        params = {"symbol": "BHP", "exchange": "asx", "start": "2024-01-02", "end": "2024-01-03"}
        response = httpx.get(f"{base}/v1/trades", params=params, timeout=10)
        assert response.status_code == 200
        assert [row["price"] for row in response.json()["data"]] == ["45.12000000", "45.12345678", "0.00000000"]
        bad = httpx.get(f"{base}/v1/trades", params=params | {"limit": 0}, timeout=10)
        assert bad.status_code == 400
        assert bad.json()["detail"].startswith("limit must be")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert '"component": "api"' in (tmp_path / "api.log").read_text()
