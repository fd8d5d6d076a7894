"""Independent readers agree with K2 across a schema change (issue 16): DuckDB's own Iceberg extension (1.4.4, offline,
in a venv of its own) and polars read a table whose day holds files of both schemas, from the catalog row's metadata
file, and find what K2's API answers: the new columns null for the rows written before, and time travel to before
the change reading the old columns only. Before and after K2 compacts the day. SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from k2_api.main import create_app
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import Kind
from k2_core.read.export import json_value
from k2_core.settings import Settings
from k2_core.upkeep.compaction import compact_day
from tests.support import query_oracle as oracle
from tests.support.clients import local_client
from tests.support.evolution import DAY, Changed, changed_lake, expected_after, expected_before
from tests.support.interop import duckdb_iceberg_scan, metadata_location

SettingsFactory = Callable[..., Settings]
KINDS: tuple[Kind, ...] = ("trades", "quotes")
PARAMS = {"symbol": "BHP", "exchange": "asx", "start": DAY.isoformat(), "end": (DAY + timedelta(days=1)).isoformat()}


@pytest.fixture(params=["sqlite", "postgres"])
def changed(request: pytest.FixtureRequest, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch) -> Changed:
    if request.param == "postgres":
        request.getfixturevalue("postgres_uri")
    # Plan with pyiceberg, as polars does anyway without its optional planner package (which would only be faster).
    monkeypatch.setenv("POLARS_ICEBERG_PLANNER", "pyiceberg")
    settings = make_settings(catalog=request.param)
    settings.query.tail_enabled = False
    settings.redis.enabled = False
    return changed_lake(settings)


def k2_answer(settings: Settings, kind: Kind, snapshot_id: int | None = None) -> tuple[pa.Table, list[dict[str, Any]]]:
    """K2's API answer, as Arrow and as JSON."""
    params = PARAMS | ({"as_of_snapshot": str(snapshot_id)} if snapshot_id is not None else {})
    with local_client(create_app(settings)) as client:
        arrow = client.get(f"/v1/{kind}", params=params | {"format": "arrow"})
        body = client.get(f"/v1/{kind}", params=params)
    assert arrow.status_code == body.status_code == 200, body.text
    return pa.ipc.open_stream(io.BytesIO(arrow.content)).read_all(), body.json()["data"]


def rows(table: pa.Table) -> list[dict[str, Any]]:
    """Python values in exchange order: what two readers' answers are compared by."""
    return oracle.in_order(table.to_pylist())


def as_json(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(row, default=json_value)) for row in values]


def agree(changed: Changed, kind: Kind, tmp_path: Path, snapshot_id: int | None, want: list[dict[str, Any]]) -> None:
    """DuckDB's Iceberg extension, polars (from the metadata file, and from the pyiceberg table) and K2's API read
    the same columns and rows, and they are `want`."""
    settings = changed.settings
    metadata = metadata_location(settings, MARKET_TABLES[kind].name)
    k2_arrow, k2_json = k2_answer(settings, kind, snapshot_id)
    by_duckdb = duckdb_iceberg_scan(metadata, tmp_path, snapshot_id)
    by_polars = pl.scan_iceberg(metadata, snapshot_id=snapshot_id).collect().to_arrow()
    by_polars_table = pl.scan_iceberg(changed.lake.table(kind), snapshot_id=snapshot_id).collect().to_arrow()
    names = list(want[0])
    for reader, table in (("duckdb-iceberg", by_duckdb), ("polars", by_polars), ("polars/pyiceberg", by_polars_table)):
        assert table.schema.names == names, reader
        assert rows(table) == rows(k2_arrow) == want, reader
    assert k2_json == as_json(rows(k2_arrow))


@pytest.mark.parametrize("kind", KINDS)
def test_independent_readers_agree_with_k2_across_the_change(kind: Kind, changed: Changed, tmp_path: Path) -> None:
    agree(changed, kind, tmp_path, None, expected_after(kind))
    agree(changed, kind, tmp_path, changed.before[kind], expected_before(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_independent_readers_agree_after_k2_compacts_the_day(kind: Kind, changed: Changed, tmp_path: Path) -> None:
    table = changed.lake.table(kind)
    compacted = compact_day(table, MARKET_TABLES[kind], DAY, target_file_bytes=1 << 27, retries=2, backoff_seconds=0.01)
    assert compacted.files_after == 1
    agree(changed, kind, tmp_path, None, expected_after(kind))
    agree(changed, kind, tmp_path, changed.before[kind], expected_before(kind))
