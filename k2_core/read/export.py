"""Writing query results as CSV, Arrow IPC stream, Parquet or NDJSON, whole or batch by batch.

Shared by the API (response bodies) and the CLI (`--output FILE` exports), so both write the same bytes.
CSV and NDJSON write decimals in plain fixed-point ("0.00000001", never Arrow's "1E-8") and times as ISO-8601
UTC; Arrow and Parquet keep the tables' own types (decimal128(18, 8), timestamp[us, UTC], a list as a list).
A CSV cell holds one value, so a list (a trade's `conditions`) is written as its JSON text, `["@","F"]`: unambiguous
whatever its items contain (a delimiter could be in one), and one `json.loads` away; a null list is an empty cell, an
empty list `[]`. NDJSON keeps it a JSON array.

An export's columns are its first page's. A later page may have fewer (a realtime listing whose window left the
tail's reach): its missing columns are written null. One with columns the export lacks is an error, never a quiet
loss: pages of one listing never gain columns (`k2_core.read.routing`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from types import TracebackType
from typing import BinaryIO, Literal

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from k2_core import duck
from k2_core.exceptions import QueryError
from k2_core.model.tables import conform

ExportFormat = Literal["csv", "arrow", "parquet", "ndjson"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("csv", "arrow", "parquet", "ndjson")


def csv_ready(table: pa.Table) -> pa.Table:
    """The same rows with decimals, dates and times as text and nested values (lists) as JSON text, ready for a CSV
    writer."""
    columns = []
    for column in table.schema:
        name = '"' + column.name.replace('"', '""') + '"'
        if pa.types.is_decimal(column.type) or pa.types.is_date(column.type):
            columns.append(f"CAST({name} AS VARCHAR) AS {name}")
        elif pa.types.is_timestamp(column.type):
            columns.append(f"strftime({name}, '%Y-%m-%dT%H:%M:%S.%fZ') AS {name}")
        elif pa.types.is_nested(column.type):
            columns.append(f"CAST(to_json({name}) AS VARCHAR) AS {name}")
        else:
            columns.append(name)
    with duck.connect() as con:
        con.register("rows", table)
        return con.sql(f"SELECT {', '.join(columns)} FROM rows").to_arrow_table()


def json_value(value: object) -> str:
    """`json.dumps(default=...)` for K2 values: decimals as fixed-point strings, times as ISO-8601 with Z."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_ready(value: object) -> object:
    """Any value a SQL answer can hold as JSON: K2's values as `json_value` writes them, nested values item by item,
    non-finite floats as their names (JSON has none), anything else (bytes, intervals, UUIDs) as its text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime) and value.tzinfo is None:  # DuckDB's TIMESTAMP: UTC by K2's convention
        return json_value(value.replace(tzinfo=UTC))
    if isinstance(value, Decimal | datetime | date):
        return json_value(value)
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


@contextmanager
def writable(fmt: str) -> Iterator[None]:
    """Around writing a SQL answer, which can hold any DuckDB type: one the format cannot carry (an interval in CSV or
    Parquet, a union or an empty map in Parquet, DuckDB's bignum, a date past Python's in JSON) is a `QueryError`
    naming the way out, not a failed request."""
    try:
        yield
    except (pa.ArrowException, OverflowError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise QueryError(
            f"sql: the answer cannot be written as {fmt} ({reason}); cast the column to VARCHAR, or ask for another "
            "format (json, csv, arrow, parquet)"
        ) from None


def json_rows(table: pa.Table) -> list[dict[str, object]]:
    """A SQL answer's rows as JSON values (`json_ready`); see `writable` for what cannot be."""
    with writable("JSON"):
        return [{key: json_ready(value) for key, value in row.items()} for row in table.to_pylist()]


def ndjson_lines(table: pa.Table | pa.RecordBatch) -> bytes:
    lines = [json.dumps(row, default=json_value, separators=(",", ":")) for row in table.to_pylist()]
    return ("\n".join(lines) + "\n").encode() if lines else b""


class Exporter:
    """Writes batches of one schema to a binary stream in one format; use as a context manager."""

    def __init__(self, sink: BinaryIO, fmt: ExportFormat, schema: pa.Schema) -> None:
        self.sink = sink
        self.fmt = fmt
        self.schema = schema.remove_metadata()
        self.rows = 0
        self._csv: pa_csv.CSVWriter | None = None
        self._ipc: pa.ipc.RecordBatchStreamWriter | None = None
        self._parquet: pq.ParquetWriter | None = None
        if fmt == "arrow":
            self._ipc = pa.ipc.new_stream(sink, self.schema)
        elif fmt == "parquet":
            self._parquet = pq.ParquetWriter(sink, self.schema, compression="zstd")

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        unknown = [name for name in table.column_names if name not in self.schema.names]
        if unknown:  # never dropped quietly (see the module's docstring)
            raise ValueError(f"a page has columns {unknown} the export's first page did not: {self.schema.names}")
        table = conform(table.replace_schema_metadata(None), self.schema)
        self.rows += table.num_rows
        if self._ipc is not None:
            self._ipc.write_table(table)
        elif self._parquet is not None:
            self._parquet.write_table(table)
        elif self.fmt == "ndjson":
            self.sink.write(ndjson_lines(table))
        else:
            text = csv_ready(table)
            if self._csv is None:
                self._csv = pa_csv.CSVWriter(self.sink, text.schema)
            self._csv.write_table(text)

    def close(self) -> None:
        if self.fmt == "csv" and self._csv is None:  # no rows: still write the header
            self._csv = pa_csv.CSVWriter(self.sink, csv_ready(self.schema.empty_table()).schema)
        for writer in (self._csv, self._ipc, self._parquet):
            if writer is not None:
                writer.close()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def to_bytes(table: pa.Table, fmt: ExportFormat) -> bytes:
    sink = io.BytesIO()
    with Exporter(sink, fmt, table.schema) as exporter:
        exporter.write(table)
    return sink.getvalue()
