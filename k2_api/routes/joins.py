"""`/v1/asof`, `/v1/window`, `/v1/markouts`: trades joined on time to quotes (or trades), each a thin shell over
`QueryEngine.asof_join`, `window_join` and `markouts` (the rules: `k2_core.read.timejoins`). They carry trades' and
quotes' columns, so with authentication on they need both scopes of every exchange named (`k2_api.security.POLICY`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from k2_api.deps import AsOfDep, FormatDep, ReaderDep
from k2_api.formats import ALTERNATE_CONTENT
from k2_api.models import AsofResponse, ErrorResponse, MarkoutsResponse, WindowResponse
from k2_api.params import Cursor, End, Exchange, ExchangeSymbols, Limit, Start, Symbol
from k2_api.render import page
from k2_core.read.result import QueryResult

router = APIRouter(
    prefix="/v1",
    tags=["joins on time"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, **ALTERNATE_CONTENT},
)

RightSymbol = Annotated[
    str | None, Query(description="The instrument to join to (default: the trades' own), e.g. RIO.")
]
RightExchange = Annotated[
    str | None,
    Query(description="Its exchange (default: the trades'). With authentication on, its scopes are needed too."),
]
_SPAN = "A duration: 500ms, 2s, 5m, 1h (units us, ms, s, m, h, d), at most 1d."


def _echo(symbol: str | None, exchange: str, result: QueryResult) -> dict[str, Any]:
    assert result.window is not None
    return {
        "symbol": symbol,
        "exchange": exchange,
        "start": result.window.start,
        "end": result.window.end,
        "limit": result.limit,
    }


@router.get("/asof", response_model=AsofResponse, response_model_exclude_unset=True)
def asof(
    reader: ReaderDep,
    fmt: FormatDep,
    as_of: AsOfDep,
    response: Response,
    exchange: Exchange,
    symbol: Annotated[
        str | None,
        Query(
            description="Uppercase ticker of the trades. Omitted: every trade of the exchange, each joined to its own "
            "instrument's quotes (or trades), by time then symbol; right_symbol must then be omitted too."
        ),
    ] = None,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    cursor: Cursor = None,
    right_symbol: RightSymbol = None,
    right_exchange: RightExchange = None,
    right_kind: Annotated[str, Query(description="quotes (default) or trades: what to join to.")] = "quotes",
    direction: Annotated[
        str,
        Query(
            description="backward: latest at or before; forward: first at or after; nearest: closer (tie: backward)."
        ),
    ] = "backward",
    tolerance: Annotated[str | None, Query(description=f"Farthest match kept, boundary included. {_SPAN}")] = None,
) -> Any:
    """Each trade of one symbol (or of every one of the exchange) in [start, end) joined as of its time to a quote (or
    trade) of an instrument."""
    result = reader.asof_join(
        symbol, exchange, start, end, limit, right_symbol=right_symbol, right_exchange=right_exchange,
        right_kind=right_kind, direction=direction, tolerance=tolerance, cursor=cursor, as_of=as_of,
    )  # fmt: skip
    return page(AsofResponse, result, fmt, response, **_echo(symbol, exchange, result))


@router.get("/window", response_model=WindowResponse)
def window(
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
    before: Annotated[str, Query(description=f"Window start before each trade. {_SPAN}")] = "1s",
    after: Annotated[str, Query(description=f"Window end after each trade. {_SPAN}")] = "1s",
    prevailing: Annotated[
        bool,
        Query(description="kdb+ wj: also count the quote in force at t - before (default: wj1, quotes inside only)."),
    ] = False,
    right_symbol: RightSymbol = None,
    right_exchange: RightExchange = None,
) -> Any:
    """Each trade of one symbol with statistics of the quotes timed in [t - before, t + after] (kdb+ wj1, or wj)."""
    result = reader.window_join(
        symbol, exchange, start, end, limit, before=before, after=after, prevailing=prevailing,
        right_symbol=right_symbol, right_exchange=right_exchange, cursor=cursor, as_of=as_of,
    )  # fmt: skip
    return page(WindowResponse, result, fmt, response, **_echo(symbol, exchange, result))


@router.get("/markouts", response_model=MarkoutsResponse)
def markouts(
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
    horizons: Annotated[str, Query(description=f"Comma list of horizons. Each: {_SPAN}")] = "1s,5s,60s",
) -> Any:
    """Markouts of trades: the mid in force at t + h for each horizon h, and (mid - price) signed by the trade's side,
    in price units and in basis points."""
    symbols = ",".join(symbol) if symbol else None
    result = reader.markouts(symbols, exchange, start, end, limit, horizons=horizons, cursor=cursor, as_of=as_of)
    return page(MarkoutsResponse, result, fmt, response, **_echo(symbols or "*", exchange, result))
