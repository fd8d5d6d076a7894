"""`/v1/gaps`: sequence gaps the ingester recorded, for operators deciding what to backfill."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from k2_api.deps import ReaderDep
from k2_api.models import ErrorResponse, GapsResponse

router = APIRouter(prefix="/v1", tags=["operations"], responses={400: {"model": ErrorResponse}})


@router.get("/gaps")
def gaps(
    reader: ReaderDep,
    exchange: Annotated[str | None, Query(description="Only this exchange, e.g. asx.")] = None,
    symbol: Annotated[str | None, Query(description="Only this uppercase ticker.")] = None,
    status: Annotated[str | None, Query(description="Only gaps in this state: open, filled or unrecoverable.")] = None,
) -> GapsResponse:
    """Sequence gaps, newest first, optionally narrowed by exchange, symbol and status."""
    rows = reader.gaps(exchange=exchange, symbol=symbol, status=status).to_pylist()
    return GapsResponse.model_validate(
        {"data": rows, "count": len(rows), "exchange": exchange, "symbol": symbol, "status": status}
    )
