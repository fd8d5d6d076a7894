"""What every historical-file reader hands on: chunks of rows in the market table's own Arrow schema, and the rows it
could not read, by their line (or record) number.

A reader is a generator over one source file. It does only what the file's format dictates (columns, units, sides,
decimals read exactly, timestamps to UTC microseconds) and reports, without stopping, every row it cannot turn into
a record: public dumps hold the odd broken row, and one should not cost the millions around it. The rules every
record must meet whatever its source (k2_core.model.records: time window, symbol, bounds) are applied by the
consumer (the replay's ingester, or `k2 import`), not here, so that they are written once.

Chunks are cut at fixed row counts (`ReadOptions.chunk_rows`) in file order, and `Chunk.end` says how many of the
file's rows (data rows, good or bad, not counting a header) precede the next chunk: a resumed import skips the
chunks it has already committed by that number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import Kind

DEFAULT_CHUNK_ROWS = 1 << 20


@dataclass(frozen=True)
class BadRow:
    """A row that was skipped, and why: `line` is the 1-based physical line of a text file (a header included), or
    the 1-based record number of a binary or columnar file."""

    line: int
    reason: str


@dataclass
class Chunk:
    """Rows of one data type, in `MARKET_TABLES[kind].arrow_schema` (every column, `ingestion_timestamp` included)
    plus the extra columns the format provides (`arrow_schema_with`: Databento's receive time and order counts), in
    file order, plus the rows of the same stretch of the file that could not be read."""

    kind: Kind
    table: pa.Table
    bad: list[BadRow] = field(default_factory=list)
    end: int = 0  # data rows of the file read so far, through this chunk (good and bad)


@dataclass(frozen=True)
class ReadOptions:
    """What the file itself does not say. `exchange` is always given (it names the topic or table partition);
    `symbol` only for formats whose rows do not carry one (Binance dumps: one symbol per file, named by the file).
    `received` is the `ingestion_timestamp` of every row read (a file's rows are received when K2 reads them).
    `mapping` and `time_unit` / `time_zone` are for the generic CSV/Parquet reader (`--map price=px,...`)."""

    exchange: str
    symbol: str | None = None
    received: datetime = field(default_factory=lambda: datetime.now(UTC))
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    mapping: Mapping[str, str] = field(default_factory=dict)
    time_unit: str | None = None  # s, ms, us, ns; None: the format's own, or detected
    time_zone: str = "UTC"  # for naive text timestamps in generic files


Reader = Callable[[Path, ReadOptions], Iterator[Chunk]]


@dataclass(frozen=True)
class FileFormat:
    """A named format: `k2 import --format NAME` and `k2 replay-file --format NAME`."""

    name: str
    kind: Kind
    read: Reader
    description: str  # one line: the source and its columns, for `--help` and the docs
    needs_symbol: bool = False  # rows carry no symbol: `--symbol` is required (or taken from the file name)


def empty(kind: Kind) -> pa.Table:
    return MARKET_TABLES[kind].arrow_schema.empty_table()
