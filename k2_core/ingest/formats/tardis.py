"""Tardis.dev downloadable CSV files (docs.tardis.dev, "Downloadable CSV files"): one file per exchange, data type,
symbol and day, usually gzip-compressed (binance_trades_2024-01-02_BTCUSDT.csv.gz), comma-separated, never quoted,
with a header row; times are microseconds since the epoch, UTC.

- trades: exchange, symbol, timestamp, local_timestamp, id, side, price, amount. side is the aggressor's: buy, sell
  or unknown. An exchange that gives no trade id leaves id empty.
- quotes: exchange, symbol, timestamp, local_timestamp, ask_amount, ask_price, bid_price, bid_amount. A side of the
  book that is empty leaves its cells empty: such a row is refused (a K2 quote has both sides).

Columns are found by their header name, so an extra or reordered column does not matter; a missing one is a
SourceError. Rows carry their own symbol, upper-cased (btcusdt -> BTCUSDT). The `exchange` column is Tardis's own
naming (binance-futures, deribit, ...), not K2's: the exchange is the one the import names (`ReadOptions.exchange`),
and the column is not read. `timestamp` (the exchange's time) is the exchange time; `local_timestamp` (Tardis's
arrival time) is not kept.

Sequence numbers: Tardis rows have none K2 could trust to be contiguous per instrument, so a row is numbered by its
ordinal within its (symbol, UTC day) among the file's good rows (k2_core.ingest.formats.ordinals); a trade without
an id takes that number as its trade id.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path

import pyarrow as pa

from k2_core.exceptions import SourceError
from k2_core.ingest.formats import register
from k2_core.ingest.formats.base import Chunk, FileFormat, ReadOptions
from k2_core.ingest.formats.blocks import TextBlock
from k2_core.ingest.formats.delimited import Layout, read_delimited
from k2_core.ingest.formats.fields import DecimalField, EpochTimeField, Field, SideField, SymbolField, TextField
from k2_core.model.topics import Kind

TRADES_HEADER = ("exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount")
QUOTES_HEADER = (
    "exchange",
    "symbol",
    "timestamp",
    "local_timestamp",
    "ask_amount",
    "ask_price",
    "bid_price",
    "bid_amount",
)

# The fields read, by the header name of their column.
TRADE_FIELDS: Mapping[str, Field] = {
    "symbol": SymbolField("symbol", "symbol"),
    "timestamp": EpochTimeField("exchange_timestamp", "timestamp", unit="us"),
    "id": TextField("trade_id", "id"),
    "side": SideField("side", "side"),
    "price": DecimalField("price", "price"),
    "amount": DecimalField("volume", "amount"),
}
QUOTE_FIELDS: Mapping[str, Field] = {
    "symbol": SymbolField("symbol", "symbol"),
    "timestamp": EpochTimeField("exchange_timestamp", "timestamp", unit="us"),
    "ask_amount": DecimalField("ask_size", "ask amount", positive=False, missing="ask amount is empty (no ask)"),
    "ask_price": DecimalField("ask_price", "ask price", missing="ask price is empty (no ask)"),
    "bid_price": DecimalField("bid_price", "bid price", missing="bid price is empty (no bid)"),
    "bid_amount": DecimalField("bid_size", "bid amount", positive=False, missing="bid amount is empty (no bid)"),
}


def _keep(values: Mapping[str, pa.Array]) -> dict[str, pa.Array]:
    return dict(values)


def sniff(name: str, fields: Mapping[str, Field], path: Path, block: TextBlock) -> tuple[Layout, bool]:
    header = [column.strip() for column in block.line(block.first_line).split(",")]
    missing = [column for column in fields if column not in header]
    if missing:
        raise SourceError(
            f"{path}: not a Tardis {name} file: its first line has no {', '.join(missing)} column "
            f"(a {name} file's header is {','.join(TRADES_HEADER if name == 'trades' else QUOTES_HEADER)})"
        )
    positions = sorted(header.index(column) for column in fields)  # fields in file order: the first wrong is told
    by_position = {header.index(column): spec for column, spec in fields.items()}
    return Layout(len(header), tuple(by_position[p] for p in positions), tuple(positions), _keep), True


def _read(kind: Kind, fields: Mapping[str, Field], path: Path, options: ReadOptions) -> Iterator[Chunk]:
    return read_delimited(path, options, kind, partial(sniff, kind, fields, path))


def read_trades(path: Path, options: ReadOptions) -> Iterator[Chunk]:
    """tardis-trades."""
    return _read("trades", TRADE_FIELDS, path, options)


def read_quotes(path: Path, options: ReadOptions) -> Iterator[Chunk]:
    """tardis-quotes."""
    return _read("quotes", QUOTE_FIELDS, path, options)


register(
    FileFormat(
        "tardis-trades",
        "trades",
        read_trades,
        "Tardis.dev trades CSV (.csv or .csv.gz): exchange, symbol, timestamp, local_timestamp, id, side, price, "
        "amount",
    )
)
register(
    FileFormat(
        "tardis-quotes",
        "quotes",
        read_quotes,
        "Tardis.dev quotes CSV (.csv or .csv.gz): exchange, symbol, timestamp, local_timestamp, ask_amount, ask_price, "
        "bid_price, bid_amount",
    )
)
