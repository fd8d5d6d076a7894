"""`/v1/trades` and `/v1/quotes`: one symbol on one exchange over a time window, oldest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from k2_api.deps import ReaderDep
from k2_api.models import ErrorResponse, QuotesResponse, TradesResponse
from k2_core.query import QueryEngine
from k2_core.topics import Kind

router = APIRouter(prefix="/v1", tags=["market data"], responses={400: {"model": ErrorResponse}})

# Times are strings, not `datetime`, so that k2_core applies the one parsing rule (naive = UTC) for every client.
Symbol = Annotated[str, Query(description="Uppercase ticker, e.g. BHP, BRK.B, BTCUSDT.")]
Exchange = Annotated[str, Query(description="Exchange code from the topic layout, e.g. asx.")]
Start = Annotated[
    str | None, Query(description="Inclusive ISO-8601 start; no offset means UTC. Default: end minus one day.")
]
End = Annotated[str | None, Query(description="Exclusive ISO-8601 end; no offset means UTC. Default: now.")]
Limit = Annotated[int | None, Query(description="Maximum rows (1..max_limit). Default: the server's default_limit.")]


def _market(
    reader: QueryEngine, kind: Kind, symbol: str, exchange: str, start: str | None, end: str | None, limit: int | None
) -> dict[str, Any]:
    query = reader.market_query(symbol, exchange, start, end, limit)
    rows = reader.read(kind, query).to_pylist()
    return {
        "data": rows,
        "count": len(rows),
        "symbol": query.symbol,
        "exchange": query.exchange,
        "start": query.start,
        "end": query.end,
        "limit": query.limit,
    }


@router.get("/trades")
def trades(
    reader: ReaderDep,
    symbol: Symbol,
    exchange: Exchange,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
) -> TradesResponse:
    """Trades of one symbol on one exchange in [start, end), oldest first."""
    return TradesResponse.model_validate(_market(reader, "trades", symbol, exchange, start, end, limit))


@router.get("/quotes")
def quotes(
    reader: ReaderDep,
    symbol: Symbol,
    exchange: Exchange,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
) -> QuotesResponse:
    """Quotes of one symbol on one exchange in [start, end), oldest first."""
    return QuotesResponse.model_validate(_market(reader, "quotes", symbol, exchange, start, end, limit))
