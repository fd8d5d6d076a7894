"""Headless Debian Chromium (installed by `make system-deps`) driven by Playwright, on a network where the only host
is this machine: pages K2 points users to must work on a trading network without internet.

The page is opened as `http://k2.test:<port>`, a name the browser maps to 127.0.0.1, rather than as 127.0.0.1
itself: some UIs treat a loopback address specially, and users browse to a host name. Every other name fails to
resolve, and every request the page makes is recorded, so a test can say that none went anywhere else.
Playwright never downloads a browser here; it drives `/usr/bin/chromium`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from playwright.sync_api import Page, Request, sync_playwright

HOST = "k2.test"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND",
]


@dataclass
class OfflinePage:
    page: Page
    requests: list[str] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)  # refused by the page's own Content-Security-Policy

    def url(self, port: int, path: str) -> str:
        return f"http://{HOST}:{port}{path}"

    def escaped(self) -> list[str]:
        """Requests for anything not on k2.test (nor built by the page itself) that the page did not block."""
        own = ("blob", "data")
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme not in own and urlsplit(url).hostname != HOST and url not in self.blocked
        ]


@contextmanager
def offline_page(timeout_ms: float = 20_000) -> Iterator[OfflinePage]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian chromium is missing: run `make system-deps`"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_ms)
            offline = OfflinePage(page)

            def failed(request: Request) -> None:
                if request.failure == "csp":
                    offline.blocked.add(request.url)

            page.on("request", lambda request: offline.requests.append(request.url))
            page.on("requestfailed", failed)
            yield offline
        finally:
            browser.close()
