"""`/v1/book`: an instrument's level-2 order book at a time, rebuilt from stored snapshots and updates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from k2_api.deps import ReaderDep
from k2_api.models import BookBarsResponse, BookResponse, BookSeriesResponse, ErrorResponse
from k2_api.params import End, Exchange, Symbol
from k2_core.read.book import validate_depth

Depth = Annotated[int | None, Query(description="Levels a side, 1-1000. Default: 10.")]

router = APIRouter(prefix="/v1", tags=["market data"], responses={400: {"model": ErrorResponse}})


@router.get("/book", response_model=BookResponse)
def book(
    reader: ReaderDep,
    symbol: Symbol,
    exchange: Exchange,
    at: Annotated[
        str | None, Query(description="ISO-8601 time the book is wanted at; no offset means UTC. Default: now.")
    ] = None,
    depth: Depth = None,
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
    depth: Depth = None,
) -> BookSeriesResponse:
    """Spread, mid, imbalance and depth of the book as a time series (`valid` false where the book is unknown)."""
    points = reader.book_series(symbol, exchange, start, end, every, depth)
    return BookSeriesResponse.model_validate(
        {
            "symbol": symbol,
            "exchange": exchange,
            "every": every,
            "depth": validate_depth(depth),
            "count": len(points),
            "data": [vars(p) for p in points],
        }
    )


@router.get("/book/bars", response_model=BookBarsResponse)
def book_bars(
    reader: ReaderDep,
    symbol: Symbol,
    exchange: Exchange,
    start: Annotated[str | None, Query(description="ISO-8601; the first bar is the one holding it. Required.")] = None,
    end: End = None,
    interval: Annotated[str, Query(description="Bar width, fixed: <N>s, <N>m, <N>h or <N>d (1s to 31d).")] = "1m",
    depth: Depth = None,
) -> BookBarsResponse:
    """The book as bars: mid open/high/low/close, time-weighted spread, imbalance and depth."""
    bars = reader.book_bars(symbol, exchange, start, end, interval, depth)
    return BookBarsResponse.model_validate(
        {
            "symbol": symbol,
            "exchange": exchange,
            "interval": interval,
            "depth": validate_depth(depth),
            "count": len(bars),
            "data": [vars(b) for b in bars],
        }
    )
