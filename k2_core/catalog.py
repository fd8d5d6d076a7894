"""The only module that opens an Iceberg catalog. Tables are created on first use, idempotently."""

from __future__ import annotations

import contextlib
from pathlib import Path

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError
from pyiceberg.table import Table

from k2_core.settings import Settings
from k2_core.tables import ALL_TABLES, TABLE_PROPERTIES, TableDef


def open_catalog(settings: Settings) -> Catalog:
    warehouse = settings.warehouse
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    if settings.catalog_uri.startswith("sqlite:"):
        settings.home.mkdir(parents=True, exist_ok=True)
    # An object-store warehouse needs the FileIO's endpoint and credentials (pyiceberg reads them from here).
    io = settings.s3.fileio_properties() if warehouse.startswith(("s3://", "s3a://")) else {}
    return SqlCatalog(settings.catalog.name, uri=settings.catalog_uri, warehouse=warehouse, **io)


def ensure_table(catalog: Catalog, namespace: str, table_def: TableDef) -> Table:
    identifier = (namespace, table_def.name)
    if catalog.table_exists(identifier):
        return catalog.load_table(identifier)
    with contextlib.suppress(NamespaceAlreadyExistsError):
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


def ensure_tables(catalog: Catalog, namespace: str) -> dict[str, Table]:
    return {t.name: ensure_table(catalog, namespace, t) for t in ALL_TABLES}
