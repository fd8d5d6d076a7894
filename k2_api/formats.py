"""Output formats of list endpoints: JSON (the default), CSV, Arrow IPC stream and Parquet.

Chosen by `format=` or, failing that, the Accept header. Non-JSON bodies carry the rows only; what JSON puts
beside them (sources, snapshot, next cursor, cache tier) travels in `K2-*` response headers, which JSON
responses carry too. CSV writes decimals in plain fixed-point ("0.00000001", never "1E-8") and times as
ISO-8601 UTC with microseconds; Arrow and Parquet keep the tables' own types (decimal128(18, 8),
timestamp[us, UTC]).
"""

from __future__ import annotations

import io
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from fastapi import Response

from k2_core.exceptions import QueryError
from k2_core.query import QueryResult

Format = Literal["json", "csv", "arrow", "parquet"]
FORMATS: tuple[Format, ...] = ("json", "csv", "arrow", "parquet")
MEDIA_TYPES: dict[Format, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
_ACCEPTED: dict[str, Format] = {
    "application/json": "json",
    "text/csv": "csv",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.arrow.file": "arrow",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
}
# For the OpenAPI document: what a 200 can carry besides JSON.
ALTERNATE_CONTENT: dict[int | str, dict[str, object]] = {
    200: {"content": {MEDIA_TYPES[f].split(";")[0]: {} for f in FORMATS if f != "json"}}
}


def negotiate(format_param: str | None, accept: str | None) -> Format:
    """`format=` wins; else the first Accept media type we serve, in the client's order; else JSON."""
    if format_param is not None:
        if format_param not in FORMATS:
            raise QueryError(f"format must be one of {', '.join(FORMATS)}; got {format_param!r}")
        return format_param
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in _ACCEPTED:
            return _ACCEPTED[media]
    return "json"


def provenance_headers(result: QueryResult) -> dict[str, str]:
    headers = {"K2-Sources": ",".join(result.sources)}
    if result.snapshot_id is not None:
        headers["K2-Snapshot-Id"] = str(result.snapshot_id)
    if result.next_cursor is not None:
        headers["K2-Next-Cursor"] = result.next_cursor
    if result.cached is not None:
        headers["K2-Cache"] = result.cached
    return headers


def table_response(table: pa.Table, fmt: Format, headers: dict[str, str]) -> Response:
    """The rows of `table` as a CSV, Arrow IPC stream or Parquet body (JSON goes through response models)."""
    table = table.replace_schema_metadata(None)
    if fmt == "csv":
        body = to_csv(table)
    elif fmt == "arrow":
        body = to_arrow_stream(table)
    elif fmt == "parquet":
        body = to_parquet(table)
    else:
        raise ValueError(f"{fmt} bodies are rendered by response models")
    return Response(content=body, media_type=MEDIA_TYPES[fmt], headers=headers)


def to_csv(table: pa.Table) -> bytes:
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
    with duckdb.connect() as con:
        con.sql("SET TimeZone = 'UTC'")
        con.register("rows", table)
        text = con.sql(f"SELECT {', '.join(columns)} FROM rows").to_arrow_table()
    sink = io.BytesIO()
    pa_csv.write_csv(text, sink)
    return sink.getvalue()


def to_arrow_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def to_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
