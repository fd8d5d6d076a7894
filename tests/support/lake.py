"""A real lake for tests, opened from Settings: tables appended to and read back through fresh handles, as another
process would see them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from k2_core.lake.catalog import ensure_table, ensure_tables, open_catalog
from k2_core.model.tables import GAPS, MARKET_TABLES, QUOTES, TRADES
from k2_core.settings import Settings
from k2_core.upkeep.ohlcv import OHLCV_TABLES
from tests.support.factories import gap, quote, trade


@dataclass
class Lake:
    settings: Settings
    catalog: Catalog
    tables: dict[str, Table]

    def table(self, name: str) -> Table:
        table = self.catalog.load_table((self.settings.catalog.namespace, name))
        return table

    def append(self, kind: str, rows: list[dict[str, Any]], properties: dict[str, str] | None = None) -> int:
        """Append rows as one snapshot through a fresh table handle; returns the snapshot id."""
        table = self.table(kind)
        table.append(MARKET_TABLES[kind].to_arrow(rows), snapshot_properties=properties or {})  # type: ignore[index]
        snapshot_id = table.metadata.current_snapshot_id
        assert snapshot_id is not None
        return snapshot_id

    def rows(self, name: str, snapshot_id: int | None = None) -> list[dict[str, Any]]:
        return self.table(name).scan(snapshot_id=snapshot_id).to_arrow().to_pylist()


def open_lake(settings: Settings) -> Lake:
    catalog = open_catalog(settings)
    tables = ensure_tables(catalog, settings.catalog.namespace)
    for table_def in OHLCV_TABLES.values():
        tables[table_def.name] = ensure_table(catalog, settings.catalog.namespace, table_def)
    return Lake(settings, catalog, tables)


def table_rows(settings: Settings, name: str) -> list[dict[str, Any]]:
    """All rows of a table; none while the ingester has not created it yet."""
    try:
        table = open_catalog(settings).load_table((settings.catalog.namespace, name))
    except NoSuchTableError:
        return []
    return table.scan().to_arrow().to_pylist()


SEED_DAY = datetime(2024, 1, 2, tzinfo=UTC)


def seed(settings: Settings) -> None:
    """A small lake for the API's security and fuzz tests: BHP on asx (3 trades, a quote, an open gap) and on nyse
    (2 trades), on SEED_DAY."""
    trades = [
        trade(
            "BHP",
            seq,
            SEED_DAY + timedelta(hours=1, seconds=seq),
            "45.12",
            "1",
            exchange,
            side="buy",
            trade_id=f"t{seq}",
            ingestion_timestamp=SEED_DAY + timedelta(hours=2),
        )
        for exchange, count in (("asx", 3), ("nyse", 2))
        for seq in range(1, count + 1)
    ]
    bid = quote(
        "BHP",
        1,
        SEED_DAY + timedelta(hours=1),
        "45.1",
        "45.2",
        "1",
        "1",
        ingestion_timestamp=SEED_DAY + timedelta(hours=2),
    )
    open_gap = gap(detected_at=SEED_DAY)
    catalog = open_catalog(settings)
    try:
        tables = ensure_tables(catalog, settings.catalog.namespace)
        tables["trades"].append(TRADES.to_arrow(trades))
        tables["quotes"].append(QUOTES.to_arrow([bid]))
        tables["sequence_gaps"].append(GAPS.to_arrow([open_gap]))
    finally:
        catalog.close()


def parquet_on_disk(table: Table) -> set[str]:
    """Every Parquet file under a local table's data directory, committed or not."""
    return {str(p) for p in (Path(urlparse(table.location()).path) / "data").rglob("*.parquet")}


def referenced(table: Table) -> set[str]:
    """The local paths of the data files the table's current snapshot references."""
    return {urlparse(task.file.file_path).path for task in table.scan().plan_files()}
