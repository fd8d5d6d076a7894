"""The FastAPI application factory and its server entry point.

HTTP status codes are decided here and in the routes only: k2_core raises `QueryError` for bad input and this
module turns it into a 400 (404 for an unknown symbol), so the query rules stay usable from Python and the CLI
without HTTP baggage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from importlib.metadata import version

import uvicorn
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from k2_api.docs import DOCS_URL, REDOC_URL, STATIC_URL, install_docs_policy
from k2_api.models import ErrorResponse
from k2_api.observability import install_observability
from k2_api.routes import ROUTERS
from k2_api.security import install_security
from k2_core.exceptions import QueryError, QueryTimeoutError, UnknownSymbolError
from k2_core.logging import configure_logging, get_logger
from k2_core.read.engine import QueryEngine
from k2_core.read.realtime import RealtimeBuffer
from k2_core.settings import Settings
from k2_stream.tail import TailConsumer

logger = get_logger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the catalog once per process (creating missing tables) rather than per request; a catalog that is
    down at startup fails the start, which an orchestrator can see and retry. With the realtime tail enabled,
    start the API's own Kafka consumer so the last minutes are served before the ingester commits them."""
    settings: Settings = app.state.settings
    realtime, tail = None, None
    if settings.query.tail_enabled:
        window = timedelta(seconds=settings.query.realtime_window_seconds)
        realtime = RealtimeBuffer(settings.query.tail_max_messages, retention=2 * window)
        tail = TailConsumer(settings, realtime)
        tail.start()
    app.state.realtime = realtime
    try:
        reader = QueryEngine.from_settings(settings, realtime=realtime)
    except BaseException:
        if tail is not None:
            tail.stop()
        raise
    app.state.reader = reader
    logger.info(
        "api started",
        extra={
            "catalog": settings.catalog.name,
            "namespace": settings.catalog.namespace,
            "warehouse": settings.warehouse,
            "realtime_tail": tail is not None,
        },
    )
    try:
        yield
    finally:
        if tail is not None:
            tail.stop()
        reader.close()


async def _query_error(request: Request, exc: Exception) -> JSONResponse:
    """Bad input is a 400, a symbol with no data a 404, a query past its time budget a 408; the message names the
    parameter (or the reason) either way."""
    code = status.HTTP_400_BAD_REQUEST
    if isinstance(exc, UnknownSymbolError):
        code = status.HTTP_404_NOT_FOUND
    elif isinstance(exc, QueryTimeoutError):
        code = status.HTTP_408_REQUEST_TIMEOUT
    logger.info("rejected query", extra={"path": request.url.path, "reason": str(exc), "status": code})
    return JSONResponse(status_code=code, content=ErrorResponse(detail=str(exc)).model_dump())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; tests pass their own `Settings`, a deployment takes them from `K2_*` variables. Its
    `/docs` and `/redoc` pages need no internet (see `k2_api.docs`)."""
    app = FastAPIOffline(
        docs_url=DOCS_URL,
        redoc_url=REDOC_URL,
        static_url=STATIC_URL,
        title="K2 market data",
        summary="Trades, quotes, bars, replay, snapshots and sequence gaps from K2's Iceberg tables and realtime tail.",
        version=version("k2"),
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings()
    app.add_exception_handler(QueryError, _query_error)
    install_security(app)
    install_observability(app)
    install_docs_policy(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def serve(settings: Settings | None = None) -> None:
    """Run the API under uvicorn on settings.api.host:settings.api.port with K2's JSON logging."""
    settings = settings or Settings()
    configure_logging("api", settings.log_level)
    # log_config=None: keep the JSON handler configured above instead of uvicorn's own formatters.
    # proxy_headers=False: the app sees the socket peer and reads proxy headers itself, trusting only
    # auth.trusted_proxies (k2_core.access.clients); uvicorn's own rewriting would hide the real peer.
    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )
