"""`POST /v1/sql`: one read-only DuckDB query over K2's tables (`k2_core.read.sql` validates, pins and runs it)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from k2_api.deps import FormatDep, ReaderDep, SettingsDep
from k2_api.formats import ALTERNATE_CONTENT, table_response
from k2_api.models import ErrorResponse, SqlRequest, SqlResponse
from k2_api.render import counted
from k2_api.security import audit_params, authorize, scope_refused
from k2_core.access.auth import Principal, readable_exchanges
from k2_core.exceptions import ScopeError
from k2_core.read.export import json_rows, writable
from k2_core.read.sql import SqlLimits, run_sql
from k2_core.read.sqlworker import SqlBusyError

router = APIRouter(
    prefix="/v1",
    tags=["market data"],
    responses={
        400: {"model": ErrorResponse, "description": "The SQL is refused (the reason is named) or failed"},
        408: {"model": ErrorResponse, "description": "The query ran past K2_QUERY_SQL_TIMEOUT_SECONDS"},
        503: {
            "model": ErrorResponse,
            "description": "Every SQL worker stayed busy (K2_QUERY_SQL_WORKERS); see Retry-After",
        },
        **ALTERNATE_CONTENT,
    },
)


@router.post("/sql", response_model=SqlResponse)
def sql(
    body: SqlRequest,
    request: Request,
    reader: ReaderDep,
    settings: SettingsDep,
    fmt: FormatDep,
    response: Response,
    principal: Annotated[Principal, Depends(authorize)],
) -> Any:
    """Run one read-only SQL query over trades, quotes, ohlcv_1m, ohlcv_1d and sequence_gaps, each pinned to one
    snapshot and narrowed to the exchanges the caller's scopes allow."""
    audit_params(request, sql=body.sql, as_of_snapshot=body.as_of_snapshot)
    # A caller let in without credentials (a direct loopback client, auth not required) reads as the CLI does.
    readable = None if principal.method == "none" else partial(readable_exchanges, principal.scopes)
    try:
        result = run_sql(
            reader,
            body.sql,
            limits=SqlLimits.from_settings(settings),
            as_of_snapshot=body.as_of_snapshot,
            readable=readable,
        )
    except ScopeError as exc:
        raise scope_refused(request, exc.scope, str(exc)) from None
    except SqlBusyError as exc:  # the server's capacity, not this caller's rate: 503, not 429
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": str(exc.retry_after)}
        ) from None
    headers = {"K2-Sources": "iceberg"}
    headers.update({f"K2-Snapshot-{name}": str(sid) for name, sid in result.snapshots.items() if sid is not None})
    if fmt != "json":
        with writable(fmt):
            return table_response(result.table, fmt, headers)
    response.headers.update(headers)
    rows = json_rows(result.table)
    counted(response, len(rows))
    return SqlResponse(data=rows, count=len(rows), snapshots=result.snapshots, exchanges=result.exchanges)
