"""Output formats of list endpoints: JSON (the default), CSV, Arrow IPC stream and Parquet.

Chosen by `format=` or, failing that, the Accept header. Non-JSON bodies carry the rows only (written by
`k2_core.read.export`, as CLI exports are); what JSON puts beside them (sources, snapshot, next cursor, cache tier)
travels in `K2-*` response headers, which JSON responses carry too.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from fastapi import Response

from k2_core.exceptions import QueryError
from k2_core.read.export import to_bytes
from k2_core.read.result import QueryResult

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
# How many rows a response carries, set where it is built for the audit log, which takes it off (k2_api.security):
# counting them there would mean parsing every body again.
ROW_COUNT = "K2-Row-Count"
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
    if fmt == "json":
        raise ValueError("JSON bodies are rendered by response models")
    headers = {**headers, ROW_COUNT: str(table.num_rows)}
    return Response(content=to_bytes(table, fmt), media_type=MEDIA_TYPES[fmt], headers=headers)
