"""`/v1/snapshots`: a table's commit log, for choosing an `as_of_snapshot` and auditing what each commit held."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from k2_api.deps import FormatDep, ReaderDep
from k2_api.formats import ALTERNATE_CONTENT, provenance_headers, table_response
from k2_api.models import ErrorResponse, SnapshotsResponse
from k2_api.params import Cursor, Limit
from k2_api.render import counted
from k2_core.read.snapshots import SNAPSHOT_TABLES

router = APIRouter(prefix="/v1", tags=["time travel"], responses={400: {"model": ErrorResponse}, **ALTERNATE_CONTENT})


@router.get("/snapshots", response_model=SnapshotsResponse)
def snapshots(
    reader: ReaderDep,
    fmt: FormatDep,
    response: Response,
    table: Annotated[str, Query(description=f"One of {', '.join(SNAPSHOT_TABLES)}.")] = "trades",
    limit: Limit = None,
    cursor: Cursor = None,
) -> Any:
    """A table's snapshots, newest first: time, operation, rows added and the Kafka offsets each covered."""
    result = reader.snapshots(table, limit=limit, cursor=cursor)
    headers = provenance_headers(result)
    if fmt != "json":
        return table_response(result.table, fmt, headers)
    response.headers.update(headers)
    rows = result.table.to_pylist()
    counted(response, len(rows))
    body = {"table": table, "count": len(rows), "limit": result.limit, "next_cursor": result.next_cursor, "data": rows}
    return SnapshotsResponse.model_validate(body)
