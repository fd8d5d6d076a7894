"""K2 on an Iceberg REST catalog (`K2_CATALOG_TYPE=rest`): a real REST server (SeaweedFS's, `iceberg_rest`), the
settings that reach it, what `k2 status` reads through it, and the clear refusals. The ingester's exactly-once path,
compaction and the API's reads run on it in test_ingest.py, test_compaction.py and test_api.py (parametrized)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from pydantic import SecretStr, ValidationError

from k2_cli.probes import read_catalog
from k2_core.exceptions import ConfigError
from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import CATALOG_FAILURES, open_catalog, rest_properties
from k2_core.lake.offsets import OffsetIndex
from k2_core.model.tables import TRADES
from k2_core.settings import CatalogSettings, Settings
from k2_core.upkeep.expiry import expire_snapshots, remove_orphans
from tests.support.factories import at, trade
from tests.support.fixtures import REST_ADMIN, REST_TABLE_BUCKET
from tests.support.lake import SEED_DAY, open_lake, seed, table_rows
from tests.support.ports import free_port
from tests.support.seaweedfs import S3Server


def test_k2_status_reads_the_tables_through_the_rest_catalog(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(catalog="rest")
    before = read_catalog(settings)  # the server is up, nothing is created yet: no table, and it says so
    assert before.reachable is True, before.error
    assert not any(t.exists for t in before.tables)

    seed(settings)
    state = read_catalog(settings)
    assert state.reachable is True, state.error
    assert state.uri == settings.catalog.rest_uri
    by_name = {t.name: t for t in state.tables}
    # what the status reports, against the rows read back through a fresh catalog handle
    assert by_name["trades"].rows == len(table_rows(settings, "trades"))
    assert by_name["quotes"].rows == len(table_rows(settings, "quotes"))
    assert by_name["trades"].last_operation == "append"
    gaps = [g for g in table_rows(settings, "sequence_gaps") if g["status"] == "open"]
    expected: dict[str, dict[str, int]] = {}
    for (severity, exchange), count in Counter((g["severity"], g["exchange"]) for g in gaps).items():
        expected.setdefault(severity, {})[exchange] = count
    assert state.open_gaps == expected
    assert all(r["exchange_timestamp"].date() == SEED_DAY.date() for r in table_rows(settings, "trades"))


def test_a_server_refusing_the_credentials_is_a_config_error_naming_it(
    make_settings: Callable[..., Settings], iceberg_rest: S3Server
) -> None:
    settings = make_settings(catalog="rest")
    settings.catalog.rest_credential = SecretStr("k2-rest-admin:not-the-secret")
    with pytest.raises(ConfigError, match=re.escape(f"REST catalog at {settings.catalog.rest_uri}")):
        open_catalog(settings)
    assert read_catalog(settings).reachable is False


def test_an_unreachable_server_is_a_catalog_failure_not_a_crash(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    settings.catalog = CatalogSettings(type="rest", rest_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CATALOG_FAILURES):
        open_catalog(settings)
    state = read_catalog(settings)
    assert state.reachable is False
    assert state.uri == settings.catalog.rest_uri


def test_rest_settings_come_from_k2_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "K2_CATALOG_TYPE": "rest",
        "K2_CATALOG_REST_URI": "http://catalog:8181",
        "K2_CATALOG_REST_CREDENTIAL": "k2:not-logged",
        "K2_CATALOG_REST_PROPERTIES": '{"scope": "PRINCIPAL_ROLE:ALL"}',
        "K2_CATALOG_WAREHOUSE": "s3://k2-tables",
        "K2_S3_ENDPOINT": "http://minio:9000",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert "not-logged" not in repr(settings)
    assert "not-logged" not in settings.model_dump_json()
    props = rest_properties(settings)
    assert props["uri"] == "http://catalog:8181"
    assert props["credential"] == "k2:not-logged"
    assert props["warehouse"] == "s3://k2-tables"
    assert props["scope"] == "PRINCIPAL_ROLE:ALL"
    assert props["s3.endpoint"] == "http://minio:9000"
    assert "token" not in props

    monkeypatch.delenv("K2_CATALOG_REST_URI")
    with pytest.raises(ValidationError, match="K2_CATALOG_REST_URI"):
        Settings()
    monkeypatch.setenv("K2_CATALOG_TYPE", "hive")
    with pytest.raises(ValidationError, match=r"catalog\.type"):
        Settings()


def test_expiry_and_orphan_removal_through_the_rest_catalog(
    make_settings: Callable[..., Settings], iceberg_rest: S3Server
) -> None:
    """The daily upkeep on the REST server's tables: expiry commits through the catalog and keeps the ingester's
    offsets chain; orphan removal lists and deletes in the S3 table bucket through the table's own FileIO."""
    settings = make_settings(catalog="rest")
    table = open_lake(settings).table("trades")
    writer = TableWriter(table, "ingester", "cluster-1", retries=3, backoff_seconds=0.05)
    topic, day = "market.equities.trades.asx", date(2026, 11, 20)
    snapshots = []
    for n in range(5):
        rows = [trade("BHP", 10 * n + i, at(day, 10 * n + i)) for i in range(1, 11)]
        snapshots.append(writer.append(TRADES.to_arrow(rows), {(topic, 0): 10 * n + 10}, {(topic, 0): 10 * n}))
    manifest_lists = {s.snapshot_id: s.manifest_list for s in table.metadata.snapshots}
    rows_now = sorted(r["exchange_sequence_number"] for r in table.scan().to_arrow().to_pylist())
    later = datetime.now(UTC) + timedelta(days=30)

    result = expire_snapshots(table, later, retention=timedelta(days=7), keep_last=1, retries=2, backoff_seconds=0.05)
    table = open_lake(settings).table("trades")
    assert sorted(result.expired) == sorted(snapshots[:-1])
    assert [s.snapshot_id for s in table.metadata.snapshots] == snapshots[-1:]
    assert OffsetIndex("cluster-1").refresh(table) == {(topic, 0): 50}

    # A stray object in the table's data folder (a write that never committed), besides what expiry released.
    live = table.scan().plan_files()
    needed = {t.file.file_path for t in live} | {table.metadata_location, table.current_snapshot().manifest_list}  # type: ignore[union-attr]
    # A data folder: SeaweedFS refuses even the bucket owner's writes under metadata/ (a set once picked one).
    stray = min(t.file.file_path for t in live).rsplit("/", 1)[0] + "/stray.parquet"
    with iceberg_rest.filesystem(*REST_ADMIN).open_output_stream(stray.removeprefix("s3://")) as out:
        out.write(b"never committed")
    before = set(iceberg_rest.keys(*REST_ADMIN, REST_TABLE_BUCKET))
    orphans = remove_orphans(table, later, min_age=timedelta(hours=1))
    after = set(iceberg_rest.keys(*REST_ADMIN, REST_TABLE_BUCKET))

    deleted = {d.removeprefix("s3://") for d in orphans.deleted}
    assert deleted == before - after
    assert stray.removeprefix("s3://") in deleted
    assert {manifest_lists[s].removeprefix("s3://") for s in result.expired} <= deleted
    assert {n.removeprefix("s3://") for n in needed} <= after
    assert sorted(r["exchange_sequence_number"] for r in table.scan().to_arrow().to_pylist()) == rows_now
