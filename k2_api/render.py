"""Turning a `QueryResult` into an HTTP response: a response model for JSON, a table body otherwise, and the
provenance headers (`K2-Sources`, `K2-Snapshot-Id`, `K2-Next-Cursor`, `K2-Cache`) either way."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Response
from pydantic import BaseModel

from k2_api.formats import ROW_COUNT, Format, provenance_headers, table_response
from k2_core.read.result import QueryResult

M = TypeVar("M", bound=BaseModel)


def provenance(result: QueryResult) -> dict[str, Any]:
    return {"sources": list(result.sources), "snapshot_id": result.snapshot_id, "cached": result.cached}


def counted(response: Response, rows: int) -> None:
    """Say how many rows a JSON answer carries, for the audit log (table bodies say it in `table_response`)."""
    response.headers[ROW_COUNT] = str(rows)


def page(model: type[M], result: QueryResult, fmt: Format, response: Response, **echo: Any) -> M | Response:
    """One page of rows in the negotiated format; `echo` adds the resolved query parameters to JSON bodies."""
    headers = provenance_headers(result)
    if fmt != "json":
        return table_response(result.table, fmt, headers)
    response.headers.update(headers)
    rows = result.table.to_pylist()
    counted(response, len(rows))
    body = {"data": rows, "count": len(rows), "next_cursor": result.next_cursor, **provenance(result), **echo}
    return model.model_validate(body)
