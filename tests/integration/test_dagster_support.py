"""Shared helpers for the Dagster / maintenance tests (no tests here): row factories, a real lake opened from
Settings, and the K2 Dagster definitions pinned to those settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import dagster as dg
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2_core.lake.catalog import ensure_table, ensure_tables, open_catalog
from k2_core.model.tables import MARKET_TABLES
from k2_core.settings import Settings
from k2_core.upkeep.ohlcv import OHLCV_TABLES
from k2_dagster.definitions import build_definitions
from k2_dagster.defs.resources import K2Settings, resources

# Dagster 1.13 itself passes the beta `owners` argument when it attaches resources to sensors.
DAGSTER_OWNERS_BETA = "ignore:Parameter `owners` of initializer:dagster.BetaWarning"


def at(day: date, seconds: float) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=UTC) + timedelta(seconds=seconds)


def trade(
    symbol: str,
    seq: int,
    ts: datetime,
    price: str | Decimal = "10",
    volume: str | Decimal = "1",
    exchange: str = "asx",
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "exchange": exchange,
        "exchange_timestamp": ts,
        "exchange_sequence_number": seq,
        "price": Decimal(price),
        "volume": Decimal(volume),
        "side": "buy" if seq % 2 else "sell",
        "trade_id": f"{exchange}-{symbol}-{seq}",
        "ingestion_timestamp": datetime.now(UTC),
    }


def quote(
    symbol: str,
    seq: int,
    ts: datetime,
    bid: str = "9.99",
    ask: str = "10.01",
    bid_size: str = "100",
    ask_size: str = "100",
    exchange: str = "asx",
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "exchange": exchange,
        "exchange_timestamp": ts,
        "exchange_sequence_number": seq,
        "bid_price": Decimal(bid),
        "bid_size": Decimal(bid_size),
        "ask_price": Decimal(ask),
        "ask_size": Decimal(ask_size),
        "ingestion_timestamp": datetime.now(UTC),
    }


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


def k2_resources(settings: Settings) -> dict[str, Any]:
    return resources(K2Settings.pinned(settings))


def definitions(settings: Settings) -> dg.Definitions:
    return build_definitions(K2Settings.pinned(settings))
