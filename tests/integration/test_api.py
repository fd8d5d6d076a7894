"""The HTTP API over real Iceberg tables: FastAPI's TestClient for the routes, a real `python -m k2_api`
process for the server entry point."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from k2_api.main import create_app
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.model.tables import GAPS, QUOTES, TRADES
from k2_core.settings import Settings
from tests.support import factories
from tests.support import query_oracle as oracle
from tests.support.api import api_server
from tests.support.clients import local_client

SettingsFactory = Callable[..., Settings]  # the `make_settings` fixture (tests/conftest.py)

D1, D2, D3 = (datetime(2024, 1, day, tzinfo=UTC) for day in (1, 2, 3))


def trade(symbol: str, exchange: str, at: datetime, seq: int, price: str) -> dict[str, Any]:
    return factories.trade(
        symbol, seq, at, price, "0.5", exchange, side="buy", trade_id=f"t{seq}", ingestion_timestamp=D3
    )


TRADE_ROWS = [
    trade("BHP", "asx", D1 + timedelta(hours=10), 1, "45.1"),
    trade("BHP", "asx", D2 + timedelta(hours=10), 2, "45.12"),
    trade("BHP", "asx", D2 + timedelta(hours=10), 3, "45.12345678"),
    trade("BHP", "asx", D2 + timedelta(hours=11, microseconds=5), 4, "0"),
    trade("CBA", "asx", D2 + timedelta(hours=10), 5, "110"),
    trade("BHP", "nyse", D2 + timedelta(hours=10), 6, "58"),
    trade("BHP", "asx", D3 + timedelta(hours=10), 7, "46"),
]
QUOTE_ROW = factories.quote(
    "BHP", 1, D2 + timedelta(hours=9), "45.1", "45.12", "200", "0.00000001", ingestion_timestamp=D3
)
GAP_ROWS = [
    factories.gap(
        gap_id,
        status=status,
        detected_at=D1 + timedelta(minutes=minute),
        resolved_at=D2 if status == "filled" else None,
        attempts=2,
        reason="backfilled" if status == "filled" else None,
    )
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
    settings.query.tail_enabled = False  # no broker here; tests/integration/test_realtime.py covers the tail
    seed(settings)
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with local_client(create_app(settings)) as client:
        yield client


def message(response: httpx.Response) -> str:
    """One string from either body shape: ours ({"detail": "..."}) or FastAPI's 422 ({"detail": [{loc, msg}]})."""
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return detail
    return "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail)


@pytest.mark.parametrize("catalog", ["sqlite", "postgres", "rest"])
def test_trades_returns_the_window_with_exact_decimals(
    catalog: str, make_settings: SettingsFactory, request: pytest.FixtureRequest
) -> None:
    if catalog == "postgres":
        request.getfixturevalue("postgres_uri")
    settings = make_settings(catalog=catalog)
    seed(settings)
    with local_client(create_app(settings)) as client:
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


def test_the_widest_window_works(client: TestClient, settings: Settings) -> None:
    days = settings.query.max_range_days
    params = {
        "symbol": "BHP",
        "exchange": "asx",
        "start": "2023-12-01",
        "end": str(date(2023, 12, 1) + timedelta(days)),
    }
    response = client.get("/v1/trades", params=params)
    assert response.status_code == 200, response.text
    assert [row["trade_id"] for row in response.json()["data"]] == ["t1", "t2", "t3", "t4", "t7"]
    too_wide = client.get("/v1/trades", params={**params, "end": params["end"] + "T00:00:00.000001"})
    assert too_wide.status_code == 400
    assert too_wide.json()["detail"].startswith(f"end must be at most {days:g} days after start (range too large")


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
    assert set(want) == {"trades", "quotes", "sequence_gaps", "book_updates", "book_snapshots", "book_validity"}
    assert body["snapshots"] == want
    assert all(isinstance(want[name], int) for name in ("trades", "quotes", "sequence_gaps"))
    assert all(want[name] is None for name in ("book_updates", "book_snapshots", "book_validity"))  # nothing yet


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
    ("/v1/trades", {"symbol": "RIO", "exchange": "asx"}, 404, "symbol 'RIO' has no trades or quotes on exchange asx"),
    ("/v1/trades", {"symbol": "CBA", "exchange": "nyse"}, 404, "symbol 'CBA' has no trades or quotes on exchange nyse"),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "cursor": "garbage"}, 400, "cursor is not a cursor"),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "as_of_snapshot": "12"}, 400, "as_of_snapshot 12 is not a"),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "as_of_snapshot": "x"}, 400, "as_of_snapshot must be"),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "as_of": "soon"}, 400, "as_of is not an ISO-8601 time"),
    (
        "/v1/trades",
        {"symbol": "BHP", "exchange": "asx", "as_of": "2024-01-01", "as_of_snapshot": "1"},
        400,
        "as_of_snapshot and as_of are alternatives",
    ),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "format": "xml"}, 400, "format must be one of json, csv"),
    ("/v1/ohlcv", {"symbol": "BHP", "exchange": "asx", "interval": "2mo"}, 400, "interval must be at most one month"),
    (
        "/v1/ohlcv",
        {"symbol": "BHP", "exchange": "asx", "interval": "1s", "start": "2024-01-01", "end": "2024-01-10"},
        400,
        "interval 1s over",
    ),
    (
        "/v1/ohlcv",
        {"symbol": "BHP", "exchange": "asx", "start": "2024-01-03", "end": "2024-01-02"},
        400,
        "start must be before end",
    ),
    ("/v1/summary", {"symbol": "BHP", "exchange": "asx", "date": "2024-13-01"}, 400, "date must be a UTC date"),
    ("/v1/summary", {"symbol": "BHP", "exchange": "asx"}, 422, "query.date"),
    ("/v1/latest", {"symbol": "ZZZ", "exchange": "asx"}, 404, "symbol 'ZZZ' has no trades"),
    ("/v1/replay", {"symbol": "BHP", "exchange": "asx", "date": "x"}, 400, "date must be a UTC date"),
    ("/v1/replay", {"symbol": "bhp", "exchange": "asx", "date": "2024-01-02"}, 400, "symbol must be"),
    ("/v1/snapshots", {"table": "orders"}, 400, "table must be one of trades, quotes"),
    ("/v1/snapshots", {"table": "trades", "cursor": "e30"}, 400, "cursor is not a cursor this API issued"),
    (
        "/v1/trades",
        {"symbol": "BHP", "exchange": "asx", "start": "0001-01-01T00:00+01:00"},
        400,
        "start is out of range in UTC",
    ),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "limit": 0}, 400, "limit must be an integer between 1 and"),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "limit": 100_001}, 400, "limit must be an integer between"),
    ("/v1/trades", {"symbol": "BHP", "exchange": "asx", "limit": "ten"}, 422, "query.limit"),
    ("/v1/summary", {"exchange": "asx", "date": "2024-01-02"}, 422, "query.symbol"),
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
    assert {"/health", "/v1/trades", "/v1/quotes", "/v1/gaps"} <= set(spec["paths"])
    assert {"/v1/ohlcv", "/v1/summary", "/v1/latest", "/v1/replay", "/v1/snapshots"} <= set(spec["paths"])
    for path in ("/v1/trades", "/v1/quotes", "/v1/ohlcv", "/v1/snapshots", "/v1/gaps"):
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]
        assert {"application/json", "text/csv", "application/vnd.apache.parquet"} <= set(content), path
    assert "application/x-ndjson" in spec["paths"]["/v1/replay"]["get"]["responses"]["200"]["content"]
    trades = spec["paths"]["/v1/trades"]["get"]
    assert trades["description"] == (
        "Trades of one symbol, several, or every one of an exchange in [start, end), oldest first."
    )
    assert "400" in trades["responses"]
    trade_schema = spec["components"]["schemas"]["Trade"]["properties"]
    assert trade_schema["price"]["type"] == "string"


# --- issue 3: formats, paging, time travel, bars, replay, snapshots -------------------------------------------

WINDOW = {"symbol": "BHP", "exchange": "asx", "start": "2024-01-01", "end": "2024-01-04"}
BHP_ASX = [r for r in TRADE_ROWS if (r["symbol"], r["exchange"]) == ("BHP", "asx")]


@pytest.mark.parametrize("path", ["/v1/trades", "/v1/ohlcv", "/v1/snapshots", "/v1/gaps"])
def test_every_list_endpoint_speaks_csv_arrow_and_parquet(client: TestClient, path: str) -> None:
    params = {"table": "trades"} if path == "/v1/snapshots" else {} if path == "/v1/gaps" else WINDOW
    as_json = client.get(path, params=params).json()["data"]
    for fmt, media in (
        ("csv", "text/csv"),
        ("arrow", "application/vnd.apache.arrow.stream"),
        ("parquet", "application/vnd.apache.parquet"),
    ):
        by_param = client.get(path, params={**params, "format": fmt})
        by_accept = client.get(path, params=params, headers={"Accept": f"{media}, application/json;q=0.5"})
        assert by_param.status_code == by_accept.status_code == 200, by_param.text
        assert by_param.headers["content-type"].startswith(media)
        assert by_param.content == by_accept.content
        if fmt == "arrow":
            table = pa.ipc.open_stream(by_param.content).read_all()
        elif fmt == "parquet":
            table = pq.read_table(io.BytesIO(by_param.content))
        else:
            table = pa_csv.read_csv(
                io.BytesIO(by_param.content),
                convert_options=pa_csv.ConvertOptions(
                    strings_can_be_null=False, column_types={n: pa.string() for n in as_json[0]}
                ),
            )
        assert table.num_rows == len(as_json)
        if fmt != "csv":
            assert [str(v) for v in table.column(next(iter(as_json[0]))).to_pylist()] == [
                str(r[next(iter(as_json[0]))]) for r in as_json
            ]
    if path == "/v1/trades":
        csv_rows = pa_csv.read_csv(
            io.BytesIO(client.get(path, params={**params, "format": "csv"}).content),
            convert_options=pa_csv.ConvertOptions(column_types={"price": pa.string()}),
        ).to_pylist()
        assert [r["price"] for r in csv_rows] == [r["price"] for r in as_json]  # exact decimal text, "0.00000000" too


def test_pages_follow_the_cursor_in_json_and_headers(client: TestClient) -> None:
    first = client.get("/v1/trades", params={**WINDOW, "limit": 2})
    body = first.json()
    assert [r["trade_id"] for r in body["data"]] == ["t1", "t2"]
    assert body["next_cursor"] == first.headers["K2-Next-Cursor"]
    assert body["sources"] == ["iceberg"]
    assert first.headers["K2-Sources"] == "iceberg"
    second = client.get("/v1/trades", params={**WINDOW, "limit": 2, "cursor": body["next_cursor"], "format": "csv"})
    assert [r["trade_id"] for r in pa_csv.read_csv(io.BytesIO(second.content)).to_pylist()] == ["t3", "t4"]
    last = client.get("/v1/trades", params={**WINDOW, "limit": 2, "cursor": second.headers["K2-Next-Cursor"]}).json()
    assert [r["trade_id"] for r in last["data"]] == ["t7"]
    assert last["next_cursor"] is None
    moved = client.get("/v1/trades", params={**WINDOW, "end": "2024-01-05", "cursor": body["next_cursor"]})
    assert moved.status_code == 400
    assert moved.json()["detail"].startswith("cursor belongs to a different query")


def test_time_travel_over_http(client: TestClient, settings: Settings) -> None:
    before = client.get("/v1/snapshots", params={"table": "trades"}).json()["data"][0]
    catalog = open_catalog(settings)
    try:
        extra = trade("BHP", "asx", D2 + timedelta(hours=12), 8, "47")
        catalog.load_table(("market", "trades")).append(TRADES.to_arrow([extra]))
    finally:
        catalog.close()
    now = client.get("/v1/trades", params=WINDOW).json()
    then = client.get("/v1/trades", params={**WINDOW, "as_of_snapshot": before["snapshot_id"]}).json()
    at_time = client.get("/v1/trades", params={**WINDOW, "as_of": before["committed_at"]}).json()
    assert len(now["data"]) == len(then["data"]) + 1
    assert (
        then["data"]
        == at_time["data"]
        == client.get("/v1/trades", params=WINDOW | {"as_of_snapshot": str(before["snapshot_id"])}).json()["data"]
    )
    assert then["snapshot_id"] == before["snapshot_id"] != now["snapshot_id"]
    log = client.get("/v1/snapshots", params={"table": "trades"}).json()
    assert [s["snapshot_id"] for s in log["data"]][1] == before["snapshot_id"]
    assert log["data"][0]["added_records"] == 1
    assert log["data"][0]["is_current"]
    paged = client.get("/v1/snapshots", params={"table": "trades", "limit": 1}).json()
    rest = client.get("/v1/snapshots", params={"table": "trades", "limit": 1, "cursor": paged["next_cursor"]}).json()
    assert [paged["data"][0]["snapshot_id"], rest["data"][0]["snapshot_id"]] == [s["snapshot_id"] for s in log["data"]]


def test_ohlcv_summary_and_latest(client: TestClient) -> None:
    bars = client.get("/v1/ohlcv", params={**WINDOW, "interval": "1h"}).json()
    want = oracle.bars(BHP_ASX, "1h")
    assert [(b["bar_start"], b["open"], b["close"], b["vwap"], b["trade_count"]) for b in bars["data"]] == [
        (
            w["bar_start"].isoformat().replace("+00:00", "Z"),
            format(w["open"], ".8f"),
            format(w["close"], ".8f"),
            format(w["vwap"], ".8f"),
            w["trade_count"],
        )
        for w in want
    ]
    assert (bars["interval"], bars["count"], bars["sources"]) == ("1h", len(want), ["iceberg"])
    summary = client.get("/v1/summary", params={"symbol": "BHP", "exchange": "asx", "date": "2024-01-02"}).json()
    day = oracle.day_summary(BHP_ASX, date(2024, 1, 2))
    assert (summary["open"], summary["high"], summary["low"], summary["close"]) == tuple(
        format(day[k], ".8f") for k in ("open", "high", "low", "close")
    )
    assert (summary["volume"], summary["vwap"], summary["trade_count"]) == (
        format(day["volume"], ".8f"),
        format(day["vwap"], ".8f"),
        3,
    )
    empty = client.get("/v1/summary", params={"symbol": "BHP", "exchange": "asx", "date": "2023-06-01"}).json()
    assert (empty["trade_count"], empty["volume"], empty["open"], empty["vwap"]) == (0, "0.00000000", None, None)
    latest = client.get("/v1/latest", params={"symbol": "BHP", "exchange": "asx"})
    assert latest.json()["data"]["trade_id"] == "t7"
    assert latest.headers["K2-Sources"] == "iceberg"
    again = client.get("/v1/latest", params={"symbol": "BHP", "exchange": "asx"})
    assert (again.json()["cached"], again.headers["K2-Cache"]) == ("lru", "lru")


def test_with_quote_attaches_the_quote_in_force(client: TestClient) -> None:
    rows = client.get("/v1/trades", params={**WINDOW, "with_quote": "true"}).json()["data"]
    assert rows[0]["trade_id"] == "t1"
    assert rows[0]["bid_price"] is None
    assert all(r["bid_price"] == "45.10000000" and r["ask_size"] == "0.00000001" for r in rows[1:])
    assert rows[1]["quote_timestamp"] == "2024-01-02T09:00:00Z"


def test_replay_streams_ndjson_in_exchange_order(client: TestClient) -> None:
    with client.stream(
        "GET", "/v1/replay", params={"symbol": "BHP", "exchange": "asx", "date": "2024-01-02"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert response.headers["K2-Sources"] == "iceberg"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [r["trade_id"] for r in lines] == ["t2", "t3", "t4"]
    assert lines[2]["price"] == "0.00000000"
    assert lines[2]["exchange_timestamp"] == "2024-01-02T11:00:00.000005Z"
    quotes = client.get(
        "/v1/replay", params={"symbol": "BHP", "exchange": "asx", "date": "2024-01-02", "kind": "quotes"}
    )
    assert [json.loads(line)["bid_size"] for line in quotes.text.splitlines()] == ["200.00000000"]


def test_python_m_k2_api_serves_over_http(settings: Settings, tmp_path: Path) -> None:
    with api_server(settings, tmp_path / "api.log") as base:
        params = {"symbol": "BHP", "exchange": "asx", "start": "2024-01-02", "end": "2024-01-03"}
        response = httpx.get(f"{base}/v1/trades", params=params, timeout=10)
        assert response.status_code == 200
        assert [row["price"] for row in response.json()["data"]] == ["45.12000000", "45.12345678", "0.00000000"]
        bad = httpx.get(f"{base}/v1/trades", params=params | {"limit": 0}, timeout=10)
        assert bad.status_code == 400
        assert bad.json()["detail"].startswith("limit must be")
    assert '"component": "api"' in (tmp_path / "api.log").read_text()
