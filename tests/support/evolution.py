"""A market table across a schema change, for tests of everything that reads one: the table gains the columns version 2
of the feeds adds (`k2_core.model.tables.EXTRA_COLUMNS`), by name and optional, as the ingester adds them when data
first carries them, and rows are appended in whichever schema the table has, so a day can hold files of both.

`evolve` is K2's own evolution (`k2_core.lake.evolution`), so the readers are tested on tables shaped as K2's writers
shape them; `append` writes rows in whichever columns the table has at the time, as an older writer would.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pyarrow as pa
from pyiceberg.table import Table

from k2_core.lake.evolution import evolve as evolve_table
from k2_core.model.tables import EXTRA_COLUMNS, MARKET_TABLES, arrow_schema_of
from k2_core.model.topics import Kind
from k2_core.settings import Settings
from tests.support.factories import at, quote, trade
from tests.support.lake import Lake, open_lake

RECEIVED_AFTER = timedelta(microseconds=250)  # ts_recv: when the capture host got the record, after the exchange time

# The version-2 columns by table, as their names.
EXTRA_NAMES: dict[Kind, tuple[str, ...]] = {
    kind: tuple(f.name for f in fields) for kind, fields in EXTRA_COLUMNS.items()
}


def evolve(table: Table, kind: Kind) -> Table:
    """Add `EXTRA_COLUMNS[kind]` to `table` as K2's writers do (`k2_core.lake.evolution.evolve`: one commit of its
    own, no snapshot); a column the table has already is left alone."""
    evolve_table(table, MARKET_TABLES[kind], EXTRA_NAMES[kind], writer="test")
    return table


def append(table: Table, kind: Kind, rows: Sequence[dict[str, Any]]) -> int:
    """Append `rows` as one snapshot in the table's current schema (fields a row lacks are null, a field the table
    has no column for is an error); returns the snapshot id."""
    schema = arrow_schema_of(table.schema())
    unknown = {name for row in rows for name in row} - set(schema.names)
    if unknown:
        raise ValueError(f"table {table.name()} has no columns {sorted(unknown)}: evolve it first")
    table.append(MARKET_TABLES[kind].sort(pa.Table.from_pylist(list(rows), schema=schema)))
    snapshot_id = table.metadata.current_snapshot_id
    assert snapshot_id is not None
    return snapshot_id


def v2_trade_fields(seq: int, ts: datetime) -> dict[str, Any]:
    """Values for the version-2 trade columns, different per trade (one id left null, as feeds do)."""
    return {
        "ts_recv": ts + RECEIVED_AFTER,
        "conditions": ["@", "F"] if seq % 2 else ["T"],
        "buyer_order_id": f"B{seq}",
        "seller_order_id": None if seq % 3 == 0 else f"S{seq}",
    }


def v2_quote_fields(seq: int, ts: datetime) -> dict[str, Any]:
    """Values for the version-2 quote columns."""
    return {
        "bid_count": seq % 5 + 1,
        "ask_count": seq % 7,
        "ts_recv": ts + RECEIVED_AFTER,
    }


# --- a lake across the change: what the reader tests share ----------------------------------------------------------

DAY = date(2026, 11, 20)
V1_SEQS = range(1, 13)  # stored before the change
V2_SEQS = range(13, 25)  # stored after it, with the new columns filled


def v1_trade(seq: int) -> dict[str, Any]:
    return trade(
        "BHP", seq, at(DAY, 60 * seq), f"{40 + seq}.125", f"{seq}.5", ingestion_timestamp=at(DAY, 60 * seq + 1)
    )


def v2_trade(seq: int) -> dict[str, Any]:
    row = v1_trade(seq)
    return row | v2_trade_fields(seq, row["exchange_timestamp"])


def v1_quote(seq: int) -> dict[str, Any]:
    ts = at(DAY, 60 * seq - 30)  # half a minute before the trade of the same number
    return quote("BHP", seq, ts, f"{39 + seq}.5", f"{40 + seq}.5", ingestion_timestamp=ts + timedelta(seconds=1))


def v2_quote(seq: int) -> dict[str, Any]:
    row = v1_quote(seq)
    return row | v2_quote_fields(seq, row["exchange_timestamp"])


@dataclass(frozen=True)
class Changed:
    """A lake whose trades and quotes changed schema between two commits on the same day."""

    lake: Lake
    before: dict[Kind, int]  # the last snapshot before the change, per table
    after: dict[Kind, int]  # the first (and current) snapshot after it

    @property
    def settings(self) -> Settings:
        return self.lake.settings


def with_nulls(row: dict[str, Any], kind: Kind) -> dict[str, Any]:
    """A row stored before the change, as it reads after: the new columns null."""
    return row | dict.fromkeys(EXTRA_NAMES[kind])


def expected_after(kind: Kind) -> list[dict[str, Any]]:
    """Every row of the changed lake as read after the change, in exchange order."""
    old, new = (v1_trade, v2_trade) if kind == "trades" else (v1_quote, v2_quote)
    return [with_nulls(old(s), kind) for s in V1_SEQS] + [new(s) for s in V2_SEQS]


def expected_before(kind: Kind) -> list[dict[str, Any]]:
    old = v1_trade if kind == "trades" else v1_quote
    return [old(s) for s in V1_SEQS]


def changed_lake(settings: Settings) -> Changed:
    """Trades and quotes of BHP on asx on DAY: V1_SEQS committed in two snapshots of the version-1 schema (two files),
    then each table evolved and V2_SEQS committed with the new columns, so the day holds files of both schemas."""
    lake = open_lake(settings)
    before: dict[Kind, int] = {}
    after: dict[Kind, int] = {}
    for kind, old, new in (("trades", v1_trade, v2_trade), ("quotes", v1_quote, v2_quote)):
        half = len(V1_SEQS) // 2
        lake.append(kind, [old(s) for s in V1_SEQS[:half]])
        before[kind] = lake.append(kind, [old(s) for s in V1_SEQS[half:]])
        time.sleep(0.01)  # commits in different milliseconds, so time travel can tell them apart
        table = evolve(lake.table(kind), kind)
        after[kind] = append(table, kind, [new(s) for s in V2_SEQS])
    return Changed(lake, before, after)
