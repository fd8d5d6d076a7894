"""`/v1/ohlcv`, `/v1/summary`, `/v1/latest`, `/v1/latest/all`: bars, a day's summary, the last trade of one symbol
and the last trade and quote of every instrument of an exchange."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status

from k2_api.deps import AsOfDep, FormatDep, ReaderDep
from k2_api.formats import ALTERNATE_CONTENT, provenance_headers
from k2_api.models import BarsResponse, ErrorResponse, LatestOnResponse, LatestResponse, SummaryResponse
from k2_api.params import Cursor, Day, End, Exchange, ExchangeSymbols, Start, Symbol
from k2_api.render import counted, page, provenance
from k2_core.model.bars import INTERVALS
from k2_core.read.params import validate_symbols

router = APIRouter(
    prefix="/v1", tags=["bars"], responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
)

Interval = Annotated[
    str,
    Query(
        description="Bar width for time bars, from 1s to 1mo: <N>s, <N>m, <N>h, <N>d, <N>w or 1mo (e.g. 30s, 5m, 4h, "
        f"1d, 1w, 1mo). {', '.join(INTERVALS)} at align=utc are also served from the precomputed 1m/1d tables."
    ),
]
Align = Annotated[
    str,
    Query(
        description="Where time bars start: utc (default; on the UTC epoch, weeks on Monday 00:00Z, months on the "
        "1st), exchange (the exchange's local time zone, DST-correct: 1d = a local calendar day, 1h on local hours), "
        "or session (anchored at each trading day's session open; bars only within session hours)."
    ),
]
Fill = Annotated[
    str,
    Query(
        description="Intervals without trades: none (default, no bar), previous (prices = previous close), null "
        "(null prices), linear (prices interpolated between the neighbouring closes). A filled bar has volume 0 and "
        "trade_count 0. Time bars only."
    ),
]
BarType = Annotated[
    str,
    Query(
        description="time (default), or tick / volume / dollar bars closing when trades / volume / notional reach "
        "`size` (the last bar may be incomplete: complete=false)."
    ),
]
Size = Annotated[
    str | None,
    Query(description="Threshold of tick (trades), volume (units) or dollar (price * volume) bars."),
]


@router.get("/ohlcv", response_model=BarsResponse, response_model_exclude_unset=True, responses=ALTERNATE_CONTENT)
def ohlcv(
    reader: ReaderDep,
    fmt: FormatDep,
    as_of: AsOfDep,
    response: Response,
    exchange: Exchange,
    symbol: ExchangeSymbols = None,
    interval: Interval = "1m",
    start: Start = None,
    end: End = None,
    limit: Annotated[int | None, Query(description="Maximum bars per page (1..max_limit). Default: max_limit.")] = None,
    cursor: Cursor = None,
    align: Align = "utc",
    fill: Fill = "none",
    bar_type: BarType = "time",
    size: Size = None,
) -> Any:
    """OHLCV, VWAP and trade count bars of one symbol, several, or every symbol of the exchange (by bar start then
    symbol); intervals without trades have no bar unless `fill` says otherwise."""
    wanted = validate_symbols(",".join(symbol)) if symbol else None
    options: dict[str, Any] = {"align": align, "fill": fill, "bar_type": bar_type, "size": size}
    if wanted is not None and len(wanted) == 1:
        result = reader.ohlcv(
            wanted[0], exchange, interval, start, end, limit=limit, cursor=cursor, as_of=as_of, **options
        )
    else:
        result = reader.ohlcv_many(
            wanted, exchange, interval, start, end, limit=limit, cursor=cursor, as_of=as_of, **options
        )
    assert result.window is not None
    assert result.limit is not None
    shown = ",".join(wanted) if wanted is not None else ""
    echo: dict[str, Any] = {"symbol": shown, "exchange": exchange, "interval": interval, "limit": result.limit}
    echo |= {k: v for k, v in options.items() if v not in (None, "utc", "none", "time")}
    return page(BarsResponse, result, fmt, response, start=result.window.start, end=result.window.end, **echo)


@router.get("/summary")
def summary(
    reader: ReaderDep, as_of: AsOfDep, response: Response, symbol: Symbol, exchange: Exchange, date: Day
) -> SummaryResponse:
    """One UTC day of one symbol: open, high, low, close, volume, VWAP and trade count."""
    result = reader.summary(symbol, exchange, date, as_of=as_of)
    response.headers.update(provenance_headers(result))
    counted(response, 1)
    return SummaryResponse.model_validate(result.table.to_pylist()[0] | provenance(result))


@router.get("/latest", response_model_exclude_unset=True)  # as /v1/trades: a column the snapshot lacks is left out
def latest(reader: ReaderDep, as_of: AsOfDep, response: Response, symbol: Symbol, exchange: Exchange) -> LatestResponse:
    """The last trade of one symbol in exchange order: its price, volume and time."""
    result = reader.latest(symbol, exchange, as_of=as_of)
    if result.table.num_rows == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"symbol {symbol} has no trades on {exchange} in this snapshot")
    response.headers.update(provenance_headers(result))
    counted(response, 1)
    return LatestResponse.model_validate({"data": result.table.to_pylist()[0]} | provenance(result))


@router.get("/latest/all", response_model=LatestOnResponse, responses=ALTERNATE_CONTENT)
def latest_on(
    reader: ReaderDep,
    fmt: FormatDep,
    as_of: AsOfDep,
    response: Response,
    exchange: Annotated[
        list[str],
        Query(
            description="Exchange code from the topic layout, e.g. asx; repeat it for several exchanges, read together "
            "(each needs its scopes)."
        ),
    ],
    symbol: ExchangeSymbols = None,
    kind: Annotated[
        list[str] | None,
        Query(
            description="Only this half: trades or quotes (the other half's columns are null, and only its table is "
            "read). Default: both."
        ),
    ] = None,
) -> Any:
    """The last trade and the last quote of every instrument of an exchange, of several, or of the symbols named
    there: one row per instrument, by exchange and symbol. A separate path, not a list form of /v1/latest, so that
    each path keeps one answer shape. With authentication on, this needs both the trades and the quotes scope of each
    exchange (or the scope of the `kind` asked for)."""
    symbols = ",".join(symbol) if symbol else None
    kinds = ",".join(kind) if kind else None
    result = reader.latest_on(exchange, symbols, kinds=kinds, as_of=as_of)
    return page(LatestOnResponse, result, fmt, response, exchange=",".join(sorted(set(exchange))))
