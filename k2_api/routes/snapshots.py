"""`/v1/snapshots`: a table's commit log, for choosing an `as_of_snapshot` and auditing what each commit held."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from k2_api.deps import FormatDep, ReaderDep
from k2_api.formats import ALTERNATE_CONTENT
from k2_api.models import ErrorResponse, SnapshotsResponse
from k2_api.params import Cursor, Limit
from k2_api.render import page
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
    return page(SnapshotsResponse, result, fmt, response, table=table, limit=result.limit)
