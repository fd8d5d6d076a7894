"""Reading historical files for tests: a whole file through a registered format, its chunks kept, and small sample
files written as their publishers write them (plain, zipped, gzipped)."""

from __future__ import annotations

import gzip
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from k2_core.ingest.formats import BadRow, Chunk, ReadOptions, file_format
from k2_core.model.tables import MARKET_TABLES

RECEIVED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class Read:
    """What reading one file gave: its chunks, and their rows and refusals taken together."""

    chunks: list[Chunk]

    @property
    def table(self) -> pa.Table:
        if not self.chunks:
            raise AssertionError("no chunks")
        return pa.concat_tables([chunk.table for chunk in self.chunks])

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [row for chunk in self.chunks for row in chunk.table.to_pylist()]

    @property
    def bad(self) -> list[BadRow]:
        return [row for chunk in self.chunks for row in chunk.bad]

    @property
    def ends(self) -> list[int]:
        return [chunk.end for chunk in self.chunks]

    def column(self, name: str) -> list[Any]:
        return [row[name] for row in self.rows]


def read(
    name: str,
    path: Path,
    *,
    exchange: str = "binance",
    symbol: str | None = None,
    chunk_rows: int = 1 << 20,
    mapping: Mapping[str, str] | None = None,
    time_unit: str | None = None,
    time_zone: str = "UTC",
) -> Read:
    fmt = file_format(name)
    options = ReadOptions(
        exchange=exchange,
        symbol=symbol,
        received=RECEIVED,
        chunk_rows=chunk_rows,
        mapping=dict(mapping or {}),
        time_unit=time_unit,
        time_zone=time_zone,
    )
    chunks = list(fmt.read(path, options))
    for chunk in chunks:
        assert chunk.kind == fmt.kind
        # the table's created columns, and the extra ones the format fills (in the table's order)
        schema = MARKET_TABLES[fmt.kind].arrow_schema_with(chunk.table.column_names)
        assert chunk.table.schema.equals(schema), chunk.table.schema
    return Read(chunks)


def write_zip(path: Path, member: str, data: str | bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return path


def write_gz(path: Path, data: str | bytes) -> Path:
    with gzip.open(path, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    return path
