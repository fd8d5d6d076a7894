"""An `s3://` warehouse, as docker-compose runs it on MinIO: a real S3 server (SeaweedFS) holds the data and
metadata files, K2 reaches it only through `K2_S3_*` settings with credentials allowed nothing but the warehouse
bucket, and trades go in and come back out through k2_core (the catalog, the table definitions, the query engine's
remote read path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pyarrow import fs
from pydantic import SecretStr

from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.model.tables import TRADES
from k2_core.read.engine import QueryEngine
from k2_core.settings import S3Settings, Settings
from tests.support import factories
from tests.support.seaweedfs import S3Server, seaweedfs

BUCKET = "k2-lake"
AT = datetime(2024, 3, 4, 10, tzinfo=UTC)
ADMIN = ("k2-test-admin", "k2-test-admin-secret")  # creates the bucket, as minio-init does with MinIO's root user
K2_USER = ("k2-test-access", "k2-test-secret")  # K2's own credentials: the warehouse bucket only


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    """SeaweedFS on free local ports with the warehouse bucket created, stopped after the test."""
    with seaweedfs(tmp_path / "seaweedfs", ADMIN, K2_USER, BUCKET, tmp_path / "seaweedfs.log") as server:
        yield server


def rows(count: int) -> list[dict[str, Any]]:
    return [
        factories.trade(
            "BHP",
            seq,
            AT + timedelta(seconds=seq),
            Decimal("45.12345678") + seq,
            Decimal("0.00000001") * seq,
            trade_id=f"t{seq}",
            ingestion_timestamp=AT,
        )
        for seq in range(1, count + 1)
    ]


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_trades_round_trip_through_an_s3_warehouse(
    catalog: str, s3: S3Server, make_settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> None:
    if catalog == "postgres":
        request.getfixturevalue("postgres_uri")
    settings = make_settings(catalog=catalog)
    settings.catalog.warehouse = f"s3://{BUCKET}/warehouse"
    settings.s3 = S3Settings(endpoint=s3.endpoint, access_key_id=K2_USER[0], secret_access_key=SecretStr(K2_USER[1]))
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
    objects = s3.keys(*K2_USER, BUCKET)
    trades_prefix = f"{BUCKET}/warehouse/{settings.catalog.namespace}/trades/"
    assert any(k.startswith(trades_prefix + "data/") and k.endswith(".parquet") for k in objects)
    assert any(k.startswith(trades_prefix + "metadata/") and k.endswith(".metadata.json") for k in objects)


def test_the_s3_server_checks_credentials_and_bucket_scope(s3: S3Server) -> None:
    """What makes the round trip above meaningful: the server refuses a wrong secret, and K2's credentials reach
    only the warehouse bucket."""
    with pytest.raises(OSError, match="SIGNATURE_DOES_NOT_MATCH"):
        s3.filesystem(K2_USER[0], "not-the-secret").get_file_info(fs.FileSelector(BUCKET))
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        s3.filesystem(*K2_USER).create_dir("another-bucket")
    with s3.filesystem(*K2_USER).open_output_stream(f"{BUCKET}/probe.txt") as out:
        out.write(b"k2")
    assert s3.keys(*K2_USER, BUCKET) == [f"{BUCKET}/probe.txt"]


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
