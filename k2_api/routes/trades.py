"""`/v1/trades` and `/v1/quotes`: one symbol on one exchange over a time window, in exchange order, paged."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from k2_api.deps import AsOfDep, FormatDep, ReaderDep
from k2_api.formats import ALTERNATE_CONTENT
from k2_api.models import ErrorResponse, QuotesResponse, TradesResponse
from k2_api.params import Cursor, End, Exchange, Limit, Start, Symbol
from k2_api.render import page
from k2_core.read.params import MarketQuery

router = APIRouter(
    prefix="/v1",
    tags=["market data"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, **ALTERNATE_CONTENT},
)


def _echo(query: MarketQuery) -> dict[str, Any]:
    return {
        "symbol": query.symbol,
        "exchange": query.exchange,
        "start": query.start,
        "end": query.end,
        "limit": query.limit,
    }


# Unset fields are left out: a row read from a snapshot without a column has no such field (k2_api.models).
@router.get("/trades", response_model=TradesResponse, response_model_exclude_unset=True)
def trades(
    reader: ReaderDep,
    fmt: FormatDep,
    as_of: AsOfDep,
    response: Response,
    symbol: Symbol,
    exchange: Exchange,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    cursor: Cursor = None,
    with_quote: Annotated[
        bool,
        Query(
            description="Attach the quote in force at each trade (latest at or before it). With authentication on, "
            "this needs the quotes scope of the exchange too (read:quotes:<exchange>)."
        ),
    ] = False,
) -> Any:
    """Trades of one symbol on one exchange in [start, end), oldest first."""
    query = reader.market_query(symbol, exchange, start, end, limit)
    result = reader.fetch("trades", query, cursor=cursor, with_quote=with_quote, as_of=as_of)
    return page(TradesResponse, result, fmt, response, **_echo(query))


@router.get("/quotes", response_model=QuotesResponse, response_model_exclude_unset=True)
def quotes(
    reader: ReaderDep,
    fmt: FormatDep,
    as_of: AsOfDep,
    response: Response,
    symbol: Symbol,
    exchange: Exchange,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> Any:
    """Quotes of one symbol on one exchange in [start, end), oldest first."""
    query = reader.market_query(symbol, exchange, start, end, limit)
    result = reader.fetch("quotes", query, cursor=cursor, as_of=as_of)
    return page(QuotesResponse, result, fmt, response, **_echo(query))
