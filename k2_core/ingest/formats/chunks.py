"""Rows made into the market table's own Arrow schema, and cut into chunks of exactly `chunk_rows` data rows.

A format hands on only the columns it knows (`FORMAT_COLUMNS`); `assemble` fills in the rest the same way for every
format: the exchange and receive time from the options, the symbol from the options when rows carry none, the
sequence number from `DayOrdinals` when the format has none of its own, the side as unknown and the trade id as the
sequence number when the file has neither. `Chunker` then cuts the rows at fixed counts of data rows (good and bad)
in file order, so that a resumed import can skip the chunks it has committed by `Chunk.end`, whatever the blocks the
file was read in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2_core.exceptions import ConfigError
from k2_core.ingest.formats.base import BadRow, Chunk, ReadOptions, empty
from k2_core.ingest.formats.fields import TEXT, TIMESTAMP
from k2_core.ingest.formats.ordinals import DayOrdinals
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import Kind

# The columns a format may hand on (exchange_timestamp in µs since the epoch, int64); the others are filled in.
FORMAT_COLUMNS: Mapping[Kind, frozenset[str]] = {
    "trades": frozenset(
        {"symbol", "exchange_timestamp", "exchange_sequence_number", "price", "volume", "side", "trade_id"}
    ),
    "quotes": frozenset(
        {"symbol", "exchange_timestamp", "exchange_sequence_number", "bid_price", "bid_size", "ask_price", "ask_size"}
    ),
}


def _constant(value: object, size: int, type_: pa.DataType) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), size)


def assemble(
    kind: Kind,
    columns: Mapping[str, pa.Array],
    options: ReadOptions,
    ordinals: DayOrdinals,
    symbol: str | None = None,
) -> pa.Table:
    """The rows of `columns` (what the format knows; `symbol` when its rows carry none) as a table in
    `MARKET_TABLES[kind].arrow_schema`."""
    unknown = set(columns) - FORMAT_COLUMNS[kind]
    if unknown:
        raise ValueError(f"a {kind} format handed on columns it may not: {sorted(unknown)}")
    micros = columns["exchange_timestamp"]
    size = len(micros)
    symbols = columns.get("symbol")
    if symbols is None:
        if symbol is None:
            raise ValueError("rows without a symbol need one from the options")
        symbols = _constant(symbol, size, TEXT)
        named: pa.Array | str = symbol
    else:
        named = symbols
    sequence = columns.get("exchange_sequence_number")
    if sequence is None:
        sequence = pa.array(ordinals.number(named, micros.to_numpy()), pa.int64())
    full = dict(columns)
    full.update(
        symbol=symbols.cast(TEXT),
        exchange=_constant(options.exchange, size, TEXT),
        exchange_timestamp=micros.cast(pa.int64()).view(TIMESTAMP),
        exchange_sequence_number=sequence,
        ingestion_timestamp=_constant(options.received, size, TIMESTAMP),
    )
    if kind == "trades":
        numbered = sequence.cast(TEXT)
        trade_id = columns.get("trade_id")
        full["trade_id"] = numbered if trade_id is None else pc.if_else(pc.equal(trade_id, ""), numbered, trade_id)
        full["side"] = columns.get("side", _constant("unknown", size, TEXT))
    schema = MARKET_TABLES[kind].arrow_schema
    return pa.Table.from_arrays([full[f.name].cast(f.type) for f in schema], schema=schema)


@dataclass
class _Piece:
    table: pa.Table
    lines: np.ndarray  # of the table's rows
    bad: list[BadRow]
    data_lines: np.ndarray  # of every data row, good or bad, in order
    bad_lines: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.bad_lines = np.fromiter((row.line for row in self.bad), np.int64, len(self.bad))


class Chunker:
    """Collects rows in file order and hands them on in chunks of exactly `size` data rows (the last one fewer)."""

    def __init__(self, kind: Kind, size: int) -> None:
        if size < 1:
            raise ConfigError(f"chunk_rows must be at least 1, got {size}")
        self._kind = kind
        self._size = size
        self._pieces: deque[_Piece] = deque()
        self._pending = 0
        self._end = 0

    def add(self, table: pa.Table, lines: np.ndarray, bad: list[BadRow], data_lines: np.ndarray) -> Iterator[Chunk]:
        """`table` holds the good rows on `lines`; `data_lines` are the lines of the good and the bad rows."""
        if len(data_lines):
            self._pieces.append(_Piece(table, lines, bad, data_lines))
            self._pending += len(data_lines)
        while self._pending >= self._size:
            yield self._cut(self._size)

    def finish(self) -> Iterator[Chunk]:
        if self._pending:
            yield self._cut(self._pending)

    def _cut(self, rows: int) -> Chunk:
        tables: list[pa.Table] = []
        bad: list[BadRow] = []
        needed = rows
        while needed:
            piece = self._pieces[0]
            if len(piece.data_lines) <= needed:
                self._pieces.popleft()
                tables.append(piece.table)
                bad.extend(piece.bad)
                needed -= len(piece.data_lines)
                continue
            last = piece.data_lines[needed - 1]
            good = int(np.searchsorted(piece.lines, last, side="right"))
            broken = int(np.searchsorted(piece.bad_lines, last, side="right"))
            tables.append(piece.table.slice(0, good))
            bad.extend(piece.bad[:broken])
            self._pieces[0] = _Piece(
                piece.table.slice(good), piece.lines[good:], piece.bad[broken:], piece.data_lines[needed:]
            )
            needed = 0
        self._pending -= rows
        self._end += rows
        table = pa.concat_tables(tables) if tables else empty(self._kind)
        return Chunk(self._kind, table, bad, self._end)
