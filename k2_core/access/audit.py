"""The audit log: who read what, when, and how many rows it got, in the catalog database's `audit_log` table.

The API appends one row per request to a protected route before the response leaves: data is never served
without its audit row. A streamed response is recorded as it starts and its row count filled in when it ends
(or when the client goes away). Refusals that cost nothing to send (401, 429, a 403 with auth off) are
summarised per client instead (`k2_core.access.refusals`). Rows older than `audit.retention_days` are pruned by
the API. `k2 audit tail` reads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from k2_core.exceptions import AuditError
from k2_core.lake.sqldb import METADATA, create_tables, utc

MAX_PARAMS_CHARS = 2000
MAX_ROUTE_CHARS = 200

AUDIT_LOG = Table(
    "audit_log",
    METADATA,
    # INTEGER PRIMARY KEY is SQLite's auto-increment; BIGSERIAL-like elsewhere.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("principal", String(300), nullable=False),
    Column("auth", String(16), nullable=False),
    Column("method", String(10), nullable=False),
    Column("route", String(MAX_ROUTE_CHARS), nullable=False),
    Column("params", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("rows", BigInteger, nullable=True),
    Column("duration_ms", Float, nullable=False),
    Column("client", String(100), nullable=True),
    Column("request_id", String(128), nullable=True),
)


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    principal: str  # who: `key:<id>:<name>`, `jwt:<sub>`, or `anonymous` (auth off or no credentials)
    auth: str  # api_key, jwt, none
    method: str
    route: str  # the route template, e.g. /v1/trades
    params: dict[str, Any]  # the query and path parameters as sent
    status: int
    rows: int | None  # rows returned; None when unknown (refused, or a stream still running)
    duration_ms: float
    client: str | None = None
    request_id: str | None = None
    id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(engine, AUDIT_LOG.name)

    def append(self, entry: AuditEntry, max_params_chars: int = MAX_PARAMS_CHARS) -> int:
        """Append one entry and return its id; any database failure is an `AuditError`."""
        params = json.dumps(entry.params, sort_keys=True, default=str)
        if len(params) > max_params_chars:
            params = params[: max_params_chars - 3] + "..."
        values = {**entry.as_dict(), "params": params, "principal": entry.principal[:300]}
        values.pop("id")
        try:
            with self.engine.begin() as conn:
                result = conn.execute(insert(AUDIT_LOG).values(**values))
                key = result.inserted_primary_key
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot append to audit_log: {str(exc).splitlines()[0]}") from exc
        return int(key[0]) if key is not None else -1

    def finish(self, entry_id: int, rows: int | None, duration_ms: float) -> None:
        """Complete a streamed response's entry once the stream has ended."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(AUDIT_LOG).where(AUDIT_LOG.c.id == entry_id).values(rows=rows, duration_ms=duration_ms)
                )
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot update audit_log entry {entry_id}: {str(exc).splitlines()[0]}") from exc

    def prune(self, before: datetime, batch: int = 5000) -> int:
        """Delete the entries older than `before`, `batch` at a time (short transactions beside the appends);
        returns how many went."""
        old = select(AUDIT_LOG.c.id).where(AUDIT_LOG.c.at < before).order_by(AUDIT_LOG.c.id).limit(batch)
        deleted = 0
        try:
            while True:
                with self.engine.begin() as conn:
                    ids = list(conn.execute(old).scalars())
                    if ids:
                        conn.execute(delete(AUDIT_LOG).where(AUDIT_LOG.c.id.in_(ids)))
                deleted += len(ids)
                if len(ids) < batch:
                    return deleted
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot prune audit_log: {str(exc).splitlines()[0]}") from exc

    def tail(self, n: int = 20, after_id: int | None = None) -> list[AuditEntry]:
        """The last `n` entries, oldest first; with `after_id`, the (first `n`) entries after that one."""
        query = select(AUDIT_LOG)
        if after_id is None:
            query = query.order_by(AUDIT_LOG.c.id.desc()).limit(n)
        else:
            query = query.where(AUDIT_LOG.c.id > after_id).order_by(AUDIT_LOG.c.id).limit(n)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read audit_log: {str(exc).splitlines()[0]}") from exc
        entries = [_entry(row) for row in rows]
        return entries if after_id is not None else entries[::-1]


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=utc(row["at"]),
        principal=row["principal"],
        auth=row["auth"],
        method=row["method"],
        route=row["route"],
        params=_params(row["params"]),
        status=row["status"],
        rows=row["rows"],
        duration_ms=row["duration_ms"],
        client=row["client"],
        request_id=row["request_id"],
    )


def _params(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:  # cut at MAX_PARAMS_CHARS
        return {"truncated": text}
    return value if isinstance(value, dict) else {"value": value}
