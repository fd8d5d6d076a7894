"""K2's own tables (`api_keys`, `audit_log`) in the catalog database, beside pyiceberg's.

The catalog database (K2_CATALOG_URI: SQLite under K2_HOME by default, or PostgreSQL) is already the one piece
of state every K2 deployment has and backs up, so credentials and the audit trail live there too. Times are
stored as UTC; SQLite hands them back naive, so every read goes through `utc`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, MetaData, create_engine
from sqlalchemy.exc import SQLAlchemyError

from k2_core.logging import get_logger
from k2_core.settings import Settings

log = get_logger(__name__)

METADATA = MetaData()


def catalog_engine(settings: Settings) -> Engine:
    """An engine on the catalog database; the caller disposes of it."""
    return _engine(settings)


def access_engine(settings: Settings) -> Engine:
    """A small engine of its own on the catalog database, for API key lookups or audit writes (`K2_AUDIT_POOL_*`):
    whatever floods one pool never waits in another's queue. The caller disposes of it."""
    pool = settings.audit
    return _engine(
        settings, pool_size=pool.pool_size, max_overflow=pool.max_overflow, pool_timeout=pool.pool_timeout_seconds
    )


def _engine(settings: Settings, **pool: float) -> Engine:
    uri = settings.catalog_uri.get_secret_value()
    if uri.startswith("sqlite:"):
        settings.home.mkdir(parents=True, exist_ok=True)
    return create_engine(uri, pool_pre_ping=True, **pool)


def create_tables(engine: Engine, *names: str) -> None:
    """Create the named K2 tables if missing; two processes racing to create one is not an error."""
    tables = [METADATA.tables[name] for name in names]
    try:
        METADATA.create_all(engine, tables=tables, checkfirst=True)
    except SQLAlchemyError as exc:  # PostgreSQL: the other creator won between our check and our CREATE
        log.info("table creation raced, re-checking", extra={"tables": names, "error": str(exc).splitlines()[0]})
        METADATA.create_all(engine, tables=tables, checkfirst=True)


def utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
