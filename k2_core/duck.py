"""One in-memory DuckDB database per process; each query gets its own cursor; SQL literals for the values K2 inlines.

Opening a DuckDB database costs tens of milliseconds (more than a typical K2 query), a cursor a fraction of one.
A cursor is a separate connection to the shared database: temporary views and registered Arrow tables are its
own, so concurrent queries on different threads never see each other's names.
"""

from __future__ import annotations

import threading
from datetime import datetime

import duckdb

_lock = threading.Lock()
_database: duckdb.DuckDBPyConnection | None = None


def connect() -> duckdb.DuckDBPyConnection:
    """A fresh cursor whose timestamptz values come back labelled UTC, whatever the host's zone; close it (or use
    it as a context manager) when done."""
    global _database
    with _lock:
        if _database is None:
            _database = duckdb.connect()
            # Iceberg data files are immutable, so their Parquet footers can be kept: a one-symbol read of a
            # compacted day otherwise spends as long re-reading footers as reading its rows.
            _database.sql("SET GLOBAL parquet_metadata_cache = true")
            _database.sql("SET GLOBAL TimeZone = 'UTC'")
        cursor = _database.cursor()
    cursor.sql("SET enable_progress_bar = false")  # it would draw on a CLI user's terminal (a per-connection option)
    return cursor


def sql_text(value: str) -> str:
    """A string literal. Only for SQL DuckDB cannot take parameters in (view definitions, a list of files)."""
    return "'" + value.replace("'", "''") + "'"


def sql_time(moment: datetime) -> str:
    """A timestamptz literal, for the same cases; values come from validated datetimes, never raw input."""
    return f"TIMESTAMPTZ '{moment.isoformat()}'"
