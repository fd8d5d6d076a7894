"""API observability: RED metrics per route template, a correlation id per request, and `/metrics`.

`ObservabilityMiddleware` is pure ASGI (no response buffering, streaming-safe). Endpoints are labelled with the
matched route's template (`/v1/trades`), never the raw path, so label cardinality is bounded by the route table;
requests that match no route share the label `UNMATCHED`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from k2_core.logging import REQUEST_ID, get_logger

logger = get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED = "<unmatched>"
# A caller's id is echoed into logs and headers: accept only short, log-safe ids; anything else gets a new one.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Routes whose successful requests are logged at DEBUG: scrapers and probes would drown the INFO log.
QUIET_ENDPOINTS = frozenset({"/metrics", "/health"})

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests served, by route template", ["method", "endpoint", "status_code"]
)
HTTP_ERRORS = Counter(
    "http_request_errors_total",
    "HTTP requests that failed: client_error (4xx), server_error (5xx), or the unhandled exception's type",
    ["method", "endpoint", "error_type"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency, from the request's arrival to the last body byte sent",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0),
)


def request_id_from(scope: Scope) -> str:
    """The caller's `X-Request-ID` when it is a sane token, else a new uuid4 hex."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def endpoint_of(scope: Scope) -> str:
    """The route template Starlette matched (it stores the route in the scope while routing)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


def error_type_of(status_code: int) -> str | None:
    if status_code >= 500:
        return "server_error"
    if status_code >= 400:
        return "client_error"
    return None


class ObservabilityMiddleware:
    """Counts, times and correlates every HTTP request; other ASGI traffic (lifespan, websockets) passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        token = REQUEST_ID.set(request_id)
        began = time.perf_counter()
        status_code = 500
        error_type: str | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Starlette's outermost error middleware turns this into a 500 after we re-raise; count it here,
            # and log it while the request id is still in context.
            status_code, error_type = 500, type(exc).__name__
            logger.exception("unhandled error", extra={"method": scope["method"], "path": scope["path"]})
            raise
        finally:
            elapsed = time.perf_counter() - began
            self._record(scope, status_code, error_type or error_type_of(status_code), elapsed)
            REQUEST_ID.reset(token)

    @staticmethod
    def _record(scope: Scope, status_code: int, error_type: str | None, elapsed: float) -> None:
        method: str = scope["method"]
        endpoint = endpoint_of(scope)
        HTTP_REQUESTS.labels(method, endpoint, str(status_code)).inc()
        HTTP_DURATION.labels(method, endpoint).observe(elapsed)
        if error_type is not None:
            HTTP_ERRORS.labels(method, endpoint, error_type).inc()
        quiet = endpoint in QUIET_ENDPOINTS and status_code < 400
        fields: dict[str, Any] = {
            "method": method,
            "path": scope["path"],
            "endpoint": endpoint,
            "status_code": status_code,
            "duration_ms": round(elapsed * 1000, 2),
        }
        logger.log(logging.DEBUG if quiet else logging.INFO, "http request", extra=fields)


metrics_router = APIRouter()


@metrics_router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus exposition of this process's metrics."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def install_observability(app: FastAPI) -> None:
    """Add the RED-metrics / correlation-id middleware and the `/metrics` route to `app`."""
    app.add_middleware(ObservabilityMiddleware)
    app.include_router(metrics_router)
