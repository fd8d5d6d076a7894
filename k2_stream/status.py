"""The ingester's own HTTP endpoint: `/metrics` (Prometheus) and `/health` (degradation level, breaker,
halted partitions), served from a daemon thread beside the consume loop."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are scraped every few seconds: not worth a log line each."""


def status_app(health: Callable[[], dict[str, Any]]) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/health":
            report = health()
            status = "503 Service Unavailable" if report.get("circuit_breaker") == "open" else "200 OK"
            body = json.dumps(report).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics(environ, start_response)

    return app


def serve_status(health: Callable[[], dict[str, Any]], host: str, port: int) -> WSGIServer:
    server = make_server(host, port, status_app(health), server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="k2-status", daemon=True).start()
    return server
