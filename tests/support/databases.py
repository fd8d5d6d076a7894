"""A PostgreSQL database of one's own on the shared server, for tests and benchmarks that load or lock what every
other catalog in the shared database also uses (the audit log, K2's tables)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy


@contextmanager
def private_database(server_uri: str, prefix: str = "k2_") -> Iterator[str]:
    """Create a database on the server of `server_uri` (a URI naming any existing database), yield its URI, and drop
    it (connections and all) on the way out."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(server_uri, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        try:
            yield server_uri.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
