"""An `s3://` warehouse, as docker-compose runs it on MinIO: a real S3-API server process (moto's server) holds
the data and metadata files, K2 reaches it only through `K2_S3_*` settings, and trades go in and come back out
through k2_core (the catalog, the table definitions, the query engine's remote read path)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from pydantic import SecretStr

from k2_core.catalog import ensure_tables, open_catalog
from k2_core.query import QueryEngine
from k2_core.settings import S3Settings, Settings
from k2_core.tables import TRADES
from tests.conftest import free_port
from tests.e2e.support import wait_for

BUCKET = "k2-lake"
AT = datetime(2024, 3, 4, 10, tzinfo=UTC)
# moto accepts any credentials; these only prove that K2 passes them through.
ACCESS_KEY, SECRET_KEY = "k2-test-access", "k2-test-secret"


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """A real S3-API server process on a free local port, stopped after the test."""
    port = free_port()
    with (tmp_path / "s3.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
        )
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{endpoint}/moto-api/", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, timeout=30, interval=0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "symbol": "BHP",
            "exchange": "asx",
            "exchange_timestamp": AT + timedelta(seconds=seq),
            "exchange_sequence_number": seq,
            "price": Decimal("45.12345678") + seq,
            "volume": Decimal("0.00000001") * seq,
            "side": "buy" if seq % 2 else "sell",
            "trade_id": f"t{seq}",
            "ingestion_timestamp": AT,
        }
        for seq in range(1, count + 1)
    ]


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_trades_round_trip_through_an_s3_warehouse(
    catalog: str, s3_endpoint: str, make_settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> None:
    if catalog == "postgres":
        request.getfixturevalue("postgres_uri")
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    settings = make_settings(catalog=catalog)
    settings.catalog.warehouse = f"s3://{BUCKET}/warehouse"
    settings.s3 = S3Settings(endpoint=s3_endpoint, access_key_id=ACCESS_KEY, secret_access_key=SecretStr(SECRET_KEY))
    written = rows(25)

    cat = open_catalog(settings)
    try:
        tables = ensure_tables(cat, settings.catalog.namespace)
        tables["trades"].append(TRADES.to_arrow(written[:10]))
        tables["trades"].append(TRADES.to_arrow(written[10:]))
        scanned = cat.load_table((settings.catalog.namespace, "trades")).scan().to_arrow()
        with QueryEngine(cat, settings.catalog.namespace) as engine:
            query = engine.market_query("BHP", "asx", AT, AT + timedelta(hours=1), 1000)
            served = engine.read("trades", query)
    finally:
        cat.close()

    key = ("exchange_sequence_number", "price", "volume", "side")
    expected = sorted(tuple(r[k] for k in key) for r in written)
    assert sorted(tuple(r[k] for k in key) for r in scanned.to_pylist()) == expected
    assert [tuple(r[k] for k in key) for r in served.to_pylist()] == expected  # in exchange order

    # The files really are in the bucket: metadata and Parquet data under the warehouse prefix.
    objects = [
        o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for o in page["Contents"]
    ]
    trades_prefix = f"warehouse/{settings.catalog.namespace}/trades/"
    assert any(k.startswith(trades_prefix + "data/") and k.endswith(".parquet") for k in objects)
    assert any(k.startswith(trades_prefix + "metadata/") and k.endswith(".metadata.json") for k in objects)


def test_s3_settings_come_from_k2_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "K2_CATALOG_WAREHOUSE": "s3://k2-lake/warehouse",
        "K2_S3_ENDPOINT": "http://minio:9000",
        "K2_S3_ACCESS_KEY_ID": "k2",
        "K2_S3_SECRET_ACCESS_KEY": "not-logged",
        "K2_S3_REGION": "ap-southeast-2",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.warehouse == "s3://k2-lake/warehouse"
    assert "not-logged" not in repr(settings)
    assert settings.s3.fileio_properties() == {
        "s3.endpoint": "http://minio:9000",
        "s3.region": "ap-southeast-2",
        "s3.access-key-id": "k2",
        "s3.secret-access-key": "not-logged",
        "s3.force-virtual-addressing": "false",
    }
