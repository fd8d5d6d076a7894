"""`/v1/gaps`: sequence gaps the ingester recorded, for operators deciding what to backfill."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from k2_api.deps import FormatDep, ReaderDep
from k2_api.formats import ALTERNATE_CONTENT, table_response
from k2_api.models import ErrorResponse, GapsResponse
from k2_api.render import counted

router = APIRouter(prefix="/v1", tags=["operations"], responses={400: {"model": ErrorResponse}, **ALTERNATE_CONTENT})


@router.get("/gaps", response_model=GapsResponse)
def gaps(
    reader: ReaderDep,
    fmt: FormatDep,
    response: Response,
    exchange: Annotated[str | None, Query(description="Only this exchange, e.g. asx.")] = None,
    symbol: Annotated[str | None, Query(description="Only this uppercase ticker.")] = None,
    status: Annotated[str | None, Query(description="Only gaps in this state: open, filled or unrecoverable.")] = None,
) -> Any:
    """Sequence gaps, newest first, optionally narrowed by exchange, symbol and status."""
    table = reader.gaps(exchange=exchange, symbol=symbol, status=status)
    if fmt != "json":
        return table_response(table, fmt, {"K2-Sources": "iceberg"})
    rows = table.to_pylist()
    counted(response, len(rows))
    return GapsResponse.model_validate(
        {"data": rows, "count": len(rows), "exchange": exchange, "symbol": symbol, "status": status}
    )
