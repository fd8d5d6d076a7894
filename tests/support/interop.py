"""Independent readers of K2's tables, for the interoperability tests: DuckDB's own Iceberg extension (in a venv of its
own, `make install`, run as a separate process) and polars. Neither goes through K2's read path: they are given what
any outside tool has, the catalog row's metadata file."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy

from k2_core.settings import REPO_ROOT, Settings

DUCKDB_ICEBERG = REPO_ROOT / "tests" / "support" / "duckdb_iceberg"
DUCKDB_ICEBERG_PYTHON = DUCKDB_ICEBERG / ".venv" / "bin" / "python"


def metadata_location(settings: Settings, table: str) -> str:
    """The table's current metadata file, read straight from the SQL catalog's `iceberg_tables` row (as another
    engine pointed at the catalog database would), not through pyiceberg."""
    engine = sqlalchemy.create_engine(settings.catalog_uri.get_secret_value())
    try:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    sqlalchemy.text(
                        "SELECT metadata_location FROM iceberg_tables "
                        "WHERE catalog_name = :catalog AND table_namespace = :namespace AND table_name = :table"
                    ),
                    {"catalog": settings.catalog.name, "namespace": settings.catalog.namespace, "table": table},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def local(uri: str) -> str:
    """A file:// URI as a path."""
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme == "file" else uri


def duckdb_iceberg_scan(metadata: str, workdir: Path, snapshot_id: int | None = None) -> pa.Table:
    """The table as DuckDB 1.4.4's Iceberg extension reads it (`iceberg_scan` of the metadata file, at `snapshot_id`
    if given), through a Parquet file its process writes."""
    assert DUCKDB_ICEBERG_PYTHON.exists(), f"{DUCKDB_ICEBERG_PYTHON} is missing: run `make install`"
    out = workdir / f"duckdb-iceberg-{snapshot_id or 'current'}.parquet"
    command = [str(DUCKDB_ICEBERG_PYTHON), str(DUCKDB_ICEBERG / "scan.py"), local(metadata), str(out)]
    if snapshot_id is not None:
        command += ["--snapshot-id", str(snapshot_id)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return pq.read_table(out)
