"""`/v1/instruments`: reference data (`market.instruments`), as of the current load or a past one.

Who may read it: a caller who may read an exchange's trades or its quotes may read that exchange's instruments
(`k2_core.access.auth.instrument_exchanges`). Naming an exchange the caller may not read is a 403 naming the scope;
without `exchange`, the rows are narrowed to the exchanges the caller may read (none: 403).
"""

from __future__ import annotations

from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Depends, Query, Request, Response

from k2_api.deps import FormatDep, ReaderDep
from k2_api.formats import ALTERNATE_CONTENT, provenance_headers, table_response
from k2_api.models import ErrorResponse, InstrumentsResponse
from k2_api.render import counted
from k2_api.security import audit_params, authorize, scope_refused
from k2_core.access.auth import Principal, instrument_exchanges

router = APIRouter(
    prefix="/v1", tags=["reference data"], responses={400: {"model": ErrorResponse}, **ALTERNATE_CONTENT}
)


@router.get("/instruments", response_model=InstrumentsResponse)
def instruments(
    request: Request,
    reader: ReaderDep,
    fmt: FormatDep,
    response: Response,
    principal: Annotated[Principal, Depends(authorize)],
    exchange: Annotated[str | None, Query(description="Only this exchange, e.g. asx.")] = None,
    symbol: Annotated[str | None, Query(description="Only this uppercase ticker.")] = None,
    as_of_snapshot: Annotated[
        str | None, Query(description="Read as of this snapshot id (GET /v1/snapshots?table=instruments).")
    ] = None,
    as_of: Annotated[str | None, Query(description="Read as of this ISO-8601 time (the load current then).")] = None,
) -> Any:
    """Instruments: symbol, exchange, asset class, currency, tick and lot sizes, identifiers, listed dates, strict."""
    audit_params(request, exchange=exchange, symbol=symbol, as_of_snapshot=as_of_snapshot, as_of=as_of)
    # A caller let in without credentials (a direct loopback client, auth not required) reads as the CLI does.
    allowed = None if principal.method == "none" else instrument_exchanges(principal.scopes)
    if allowed is not None and exchange is not None and exchange not in allowed:
        scope = f"read:trades:{exchange}"
        raise scope_refused(
            request, scope, f"missing scope {scope} or read:quotes:{exchange} for the instruments of {exchange}"
        )
    if allowed is not None and not allowed:
        raise scope_refused(
            request, "read:trades:*", "missing scope read:trades:<exchange> or read:quotes:<exchange> for instruments"
        )
    result = reader.instruments(exchange, symbol, as_of_snapshot=as_of_snapshot, as_of=as_of)
    table = result.table
    if allowed is not None and exchange is None:
        table = table.filter(pc.is_in(table.column("exchange"), value_set=pa.array(sorted(allowed), pa.string())))
    headers = provenance_headers(result)
    if fmt != "json":
        return table_response(table, fmt, headers)
    response.headers.update(headers)
    rows = table.to_pylist()
    counted(response, len(rows))
    narrowed = sorted(allowed) if allowed is not None and exchange is None else None
    return InstrumentsResponse.model_validate(
        {
            "data": rows,
            "count": len(rows),
            "exchange": exchange,
            "symbol": symbol,
            "snapshot_id": result.snapshot_id,
            "exchanges": narrowed,
        }
    )
