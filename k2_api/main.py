"""The FastAPI application factory and its server entry point.

HTTP status codes are decided here and in the routes only: k2_core raises `QueryError` for bad input and this
module turns it into a 400, so the query rules stay usable from Python and the CLI without HTTP baggage.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import uvicorn
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from k2_api.models import ErrorResponse
from k2_api.observability import install_observability
from k2_api.routes import ROUTERS
from k2_core.exceptions import QueryError
from k2_core.logging import configure_logging
from k2_core.query import QueryEngine
from k2_core.settings import Settings

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the catalog once per process (creating missing tables) rather than per request; a catalog that is
    down at startup fails the start, which an orchestrator can see and retry."""
    settings: Settings = app.state.settings
    reader = QueryEngine.from_settings(settings)
    app.state.reader = reader
    logger.info(
        "api started",
        extra={
            "catalog": settings.catalog.name,
            "namespace": settings.catalog.namespace,
            "warehouse": settings.warehouse,
        },
    )
    try:
        yield
    finally:
        reader.close()


async def _query_error(request: Request, exc: Exception) -> JSONResponse:
    logger.info("rejected query", extra={"path": request.url.path, "reason": str(exc)})
    return JSONResponse(status_code=status.HTTP_400_BAD_REQUEST, content=ErrorResponse(detail=str(exc)).model_dump())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; tests pass their own `Settings`, a deployment takes them from `K2_*` variables."""
    app = FastAPI(
        title="K2 market data",
        summary="Trades, quotes and sequence gaps from K2's Iceberg tables.",
        version=version("k2"),
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings()
    app.add_exception_handler(QueryError, _query_error)
    install_observability(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def serve(settings: Settings | None = None) -> None:
    """Run the API under uvicorn on settings.api.host:settings.api.port with K2's JSON logging."""
    settings = settings or Settings()
    configure_logging("api", settings.log_level)
    # log_config=None: keep the JSON handler configured above instead of uvicorn's own formatters.
    uvicorn.run(create_app(settings), host=settings.api.host, port=settings.api.port, log_config=None, access_log=False)
