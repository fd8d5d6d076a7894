"""`/v1/trades` and `/v1/quotes`: one symbol (or several) on one exchange over a time window, in exchange order, paged.

`symbol` may be repeated or a comma list: one symbol keeps the single-stream listing (`QueryEngine.fetch`), several
are one listing of all of them (`QueryEngine.fetch_many`), so a client asking for one symbol sees no change; without
`symbol`, every instrument of the exchange (`QueryEngine.fetch_exchange`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from k2_api.deps import AsOfDep, FormatDep, ReaderDep
from k2_api.formats import ALTERNATE_CONTENT
from k2_api.models import ErrorResponse, QuotesResponse, TradesResponse
from k2_api.params import Cursor, End, Exchange, ExchangeSymbols, Limit, Start
from k2_api.render import page
from k2_core.model.topics import Kind
from k2_core.read.engine import QueryEngine
from k2_core.read.params import AsOf, MarketQuery, validate_symbols
from k2_core.read.result import QueryResult

router = APIRouter(
    prefix="/v1",
    tags=["market data"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, **ALTERNATE_CONTENT},
)


def _read(
    reader: QueryEngine,
    kind: Kind,
    symbol: list[str] | None,
    exchange: str,
    start: str | None,
    end: str | None,
    limit: int | None,
    cursor: str | None,
    as_of: AsOf | None,
    with_quote: bool = False,
) -> tuple[MarketQuery, QueryResult]:
    """One symbol: the single-stream listing as it always was; several, or the whole exchange: the merged one."""
    wanted = validate_symbols(",".join(symbol)) if symbol else None
    if wanted is not None and len(wanted) == 1:
        query = reader.market_query(wanted[0], exchange, start, end, limit)
        return query, reader.fetch(kind, query, cursor=cursor, with_quote=with_quote, as_of=as_of)
    result = reader.fetch_many(
        kind, wanted, exchange, start, end, limit, cursor=cursor, with_quote=with_quote, as_of=as_of
    )
    assert result.window is not None
    assert result.limit is not None
    query = MarketQuery(",".join(wanted or ()), exchange, result.window.start, result.window.end, result.limit)
    return query, result


def _echo(query: MarketQuery) -> dict[str, Any]:
    return {
        "symbol": query.symbol or None,
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
    exchange: Exchange,
    symbol: ExchangeSymbols = None,
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
    """Trades of one symbol, several, or every one of an exchange in [start, end), oldest first."""
    query, result = _read(reader, "trades", symbol, exchange, start, end, limit, cursor, as_of, with_quote)
    return page(TradesResponse, result, fmt, response, **_echo(query))


@router.get("/quotes", response_model=QuotesResponse, response_model_exclude_unset=True)
def quotes(
    reader: ReaderDep,
    fmt: FormatDep,
    as_of: AsOfDep,
    response: Response,
    exchange: Exchange,
    symbol: ExchangeSymbols = None,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> Any:
    """Quotes of one symbol, several, or every one of an exchange in [start, end), oldest first."""
    query, result = _read(reader, "quotes", symbol, exchange, start, end, limit, cursor, as_of)
    return page(QuotesResponse, result, fmt, response, **_echo(query))
