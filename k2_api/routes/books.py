"""`/v1/book`: an instrument's level-2 order book at a time, rebuilt from stored snapshots and updates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from k2_api.deps import ReaderDep
from k2_api.models import BookResponse, BookSeriesResponse, ErrorResponse
from k2_api.params import End, Exchange, Symbol

router = APIRouter(prefix="/v1", tags=["market data"], responses={400: {"model": ErrorResponse}})


@router.get("/book", response_model=BookResponse)
def book(
    reader: ReaderDep,
    symbol: Symbol,
    exchange: Exchange,
    at: Annotated[
        str | None, Query(description="ISO-8601 time the book is wanted at; no offset means UTC. Default: now.")
    ] = None,
    depth: Annotated[int | None, Query(description="Levels a side, 1-1000. Default: 10.")] = None,
) -> BookResponse:
    """The book at `at`: `valid` false (with the reason, no levels) where a gap left it unknown."""
    answer = reader.book(symbol, exchange, at, depth)
    return BookResponse.model_validate(
        {
            **{name: getattr(answer, name) for name in BookResponse.model_fields if name not in ("bids", "asks")},
            "bids": [{"price": p, "size": s} for p, s in answer.bids],
            "asks": [{"price": p, "size": s} for p, s in answer.asks],
            "spread": answer.spread,
            "mid": answer.mid,
            "imbalance": answer.imbalance,
        }
    )


@router.get("/book/series", response_model=BookSeriesResponse)
def book_series(
    reader: ReaderDep,
    symbol: Symbol,
    exchange: Exchange,
    start: Annotated[str | None, Query(description="ISO-8601 first point; no offset means UTC.")] = None,
    end: End = None,
    every: Annotated[str, Query(description="Spacing of the points: 100ms, 1s, 1m, ...")] = "1s",
) -> BookSeriesResponse:
    """Spread, mid and imbalance of the book as a time series (`valid` false where the book is unknown)."""
    points = reader.book_series(symbol, exchange, start, end, every)
    return BookSeriesResponse.model_validate(
        {
            "symbol": symbol,
            "exchange": exchange,
            "every": every,
            "count": len(points),
            "data": [vars(p) for p in points],
        }
    )
