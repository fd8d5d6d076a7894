"""The API's documentation pages work without internet.

`create_app` builds its app with `fastapi_offline.FastAPIOffline`: `/docs` (Swagger UI) and `/redoc` load their
JavaScript and CSS from that installed wheel, served under `STATIC_URL`, instead of FastAPI's default CDN (FastAPI
documents this as self-hosting the docs assets). ReDoc 2 still asks cdn.redoc.ly for the small logo beside its
"API docs by Redocly" link, and hides it when that fails. `DocsPolicy` sends a Content-Security-Policy with the
docs pages that confines them to their own origin, so the browser never contacts another host, with or without
internet.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
STATIC_URL = "/static-offline-docs"  # where the bundled assets are mounted (fastapi_offline's default)
# Inline scripts and styles: FastAPI's page templates start the UIs inline; ReDoc styles itself at run time.
# eval and blob: workers: ReDoc compiles schemas and runs its search in a worker it builds from a blob.
SAME_ORIGIN_ONLY = "default-src 'self' 'unsafe-inline' 'unsafe-eval' data: blob:"


class DocsPolicy:
    """Adds `SAME_ORIGIN_ONLY` as the Content-Security-Policy of the documentation pages; pure ASGI."""

    def __init__(self, app: ASGIApp, pages: frozenset[str]) -> None:
        self.app = app
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.pages:
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                headers.append((b"content-security-policy", SAME_ORIGIN_ONLY.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_policy)


def install_docs_policy(app: FastAPI) -> None:
    """Call in `create_app` on the app `FastAPIOffline` built with `DOCS_URL` and `REDOC_URL`."""
    pages = {DOCS_URL, REDOC_URL, app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(DocsPolicy, pages=frozenset(p for p in pages if p))
