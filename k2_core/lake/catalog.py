"""The only module that opens an Iceberg catalog: pyiceberg's SQL catalog (`K2_CATALOG_TYPE=sql`, the default) or its
REST catalog (`rest`). Everything else in K2 sees a `Catalog` and the failures in `CATALOG_FAILURES`, whichever it is.

Tables are created on first use, idempotently and safely when several processes start at the same instant on an empty
catalog (`k2 run` starts the ingester and the API together, a deployment starts many ingesters): pyiceberg's SQL
catalog creates its own tables and namespaces check-then-insert, so the loser of such a race gets a database error
that here means "someone else just created it"; a REST server answers 409, which pyiceberg raises as "already exists".
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    BadRequestError,
    CommitFailedException,
    ForbiddenError,
    NamespaceAlreadyExistsError,
    OAuthError,
    RESTError,
    TableAlreadyExistsError,
    UnauthorizedError,
)
from pyiceberg.table import Table
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from k2_core.exceptions import CommitConflictError, ConfigError
from k2_core.logging import get_logger
from k2_core.model.tables import ALL_TABLES, TABLE_PROPERTIES, TableDef
from k2_core.settings import Settings

log = get_logger(__name__)

# What reading or committing through either catalog raises when the catalog or the storage behind it fails (not a
# bug, not a conflict): the SQL database's errors, a REST server's error answers (pyiceberg's `RESTError`, 4xx and
# 5xx, `CommitStateUnknownException` included), and the network or file system (`OSError`, which `requests`' and
# pyarrow's errors are).
CATALOG_FAILURES: tuple[type[Exception], ...] = (OSError, SQLAlchemyError, RESTError)


def open_catalog(settings: Settings) -> Catalog:
    if settings.catalog.type == "rest":
        return _open_rest(settings)
    warehouse = settings.warehouse
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    uri = settings.catalog_uri.get_secret_value()
    if uri.startswith("sqlite:"):
        settings.home.mkdir(parents=True, exist_ok=True)
    # An object-store warehouse needs the FileIO's endpoint and credentials (pyiceberg reads them from here).
    io = settings.s3.fileio_properties() if warehouse.startswith(("s3://", "s3a://")) else {}
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            return SqlCatalog(settings.catalog.name, uri=uri, warehouse=warehouse, **io)
        except (OperationalError, ProgrammingError, IntegrityError) as exc:
            # another process created the catalog's tables between pyiceberg's check and its CREATE: look again
            if attempt == _CREATE_ATTEMPTS - 1 or not _already_exists(exc):
                raise
            log.info("catalog tables created concurrently, opening again", extra={"error": str(exc).splitlines()[0]})
    raise AssertionError("unreachable")


def rest_properties(settings: Settings) -> dict[str, str]:
    """The RestCatalog properties for these settings, secrets revealed (hand them only to pyiceberg). The S3 FileIO
    settings go along whether or not the warehouse names S3: the server decides where tables live, and credentials
    it vends for a table override these."""
    c = settings.catalog
    props = {**settings.s3.fileio_properties(), **c.rest_properties, "uri": c.rest_uri}
    if c.warehouse:
        props["warehouse"] = c.warehouse
    if credential := c.rest_credential.get_secret_value():
        props["credential"] = credential
    if token := c.rest_token.get_secret_value():
        props["token"] = token
    return props


def _open_rest(settings: Settings) -> RestCatalog:
    """pyiceberg's REST catalog. It asks the server for its configuration (and a token) at once, so a server that
    refuses K2's credentials or warehouse is a `ConfigError` at startup, naming the URL. An unreachable server raises
    what an unreachable database does (an `OSError`, one of `CATALOG_FAILURES`): it may be back soon."""
    try:
        return RestCatalog(settings.catalog.name, **rest_properties(settings))
    except (BadRequestError, UnauthorizedError, ForbiddenError, OAuthError) as exc:
        raise ConfigError(
            f"cannot open the Iceberg REST catalog at {settings.catalog.rest_uri}: {type(exc).__name__}: {exc}"
        ) from exc


_CREATE_ATTEMPTS = 3


def _already_exists(exc: Exception) -> bool:
    """A database's way of saying that what we were creating exists (SQLite's message, PostgreSQL's duplicates)."""
    text = str(exc).lower()
    return isinstance(exc, IntegrityError) or "already exists" in text or "duplicate" in text


# Set at creation only: Iceberg upgrades a table's format by its own procedure, not by a property.
_CREATE_ONLY = {"format-version"}


def ensure_table(catalog: Catalog, namespace: str, table_def: TableDef) -> Table:
    """The table, created if missing. An existing table gets K2's current `TABLE_PROPERTIES` (commit retries,
    manifest merging, metadata log, row groups): a table created by an older K2 would otherwise keep the old ones."""
    identifier = (namespace, table_def.name)
    if catalog.table_exists(identifier):
        return _with_current_properties(_with_current_schema(catalog.load_table(identifier), table_def))
    with contextlib.suppress(NamespaceAlreadyExistsError, IntegrityError):  # IntegrityError: created concurrently
        catalog.create_namespace(namespace)
    try:
        return catalog.create_table(
            identifier,
            schema=table_def.schema,
            partition_spec=table_def.partition_spec,
            sort_order=table_def.sort_order,
            properties=TABLE_PROPERTIES,
        )
    except TableAlreadyExistsError:  # another process created it between our check and create
        return catalog.load_table(identifier)


def _with_current_schema(table: Table, table_def: TableDef, attempts: int = 5) -> Table:
    """Bring a table created by an older K2 to K2's definition, by name, in one schema change: add the optional
    columns it lacks and widen the types K2 widened (a decimal's precision). Concurrent starters either find the
    change made or make it; re-running changes nothing."""
    for _ in range(attempts):
        have = {f.name: f.field_type for f in table.schema().fields}
        if all(have.get(f.name) == f.field_type for f in table_def.schema.fields):
            return table
        try:
            with table.update_schema() as update:
                update.union_by_name(table_def.schema)
            return table
        except CommitFailedException:  # another process changed the table first: look again
            table.refresh()
    raise CommitConflictError(f"could not add the new columns of {table_def.name}: commits kept conflicting")


def _with_current_properties(table: Table, attempts: int = 5) -> Table:
    for _ in range(attempts):
        stale = {k: v for k, v in TABLE_PROPERTIES.items() if k not in _CREATE_ONLY and table.properties.get(k) != v}
        if not stale:
            return table
        try:
            with table.transaction() as txn:
                txn.set_properties(stale)
            return table
        except CommitFailedException:  # another writer committed first (perhaps the same upgrade): look again
            table.refresh()
    log.warning("table properties not updated: commits kept conflicting", extra={"table": str(table.name())})
    return table


def ensure_tables(catalog: Catalog, namespace: str) -> dict[str, Table]:
    return {t.name: ensure_table(catalog, namespace, t) for t in ALL_TABLES}
