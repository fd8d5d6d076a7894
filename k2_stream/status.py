"""A process's own HTTP endpoint: `/metrics` (Prometheus) and `/health`, served from a daemon thread beside its
main loop. The ingester reports its degradation level, breaker and halted partitions; `k2 run`'s supervisor its
processes. `/health` answers 503 when the breaker is open or the report's status is `down`."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are scraped every few seconds: not worth a log line each."""


def status_app(
    health: Callable[[], dict[str, Any]], registry: CollectorRegistry = REGISTRY
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/health":
            report = health()
            down = report.get("circuit_breaker") == "open" or report.get("status") == "down"
            status = "503 Service Unavailable" if down else "200 OK"
            body = json.dumps(report).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics(environ, start_response)

    return app


def serve_status(
    health: Callable[[], dict[str, Any]], host: str, port: int, registry: CollectorRegistry = REGISTRY
) -> WSGIServer:
    server = make_server(host, port, status_app(health, registry), server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="k2-status", daemon=True).start()
    return server
