"""The API's documentation pages, which `make run` points to, work in a browser that can reach no other host: the
real API process over HTTP, headless Chromium used as a person would use it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from k2_core.settings import Settings
from tests.support.browser import OfflinePage, offline_page
from tests.support.ports import free_port
from tests.support.processes import settings_env


@pytest.fixture
def api(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[int]:
    """`k2 api` as `k2 run` starts it (no realtime tail: no broker here); yields its port."""
    port = free_port()
    env = settings_env(make_settings()) | {
        "K2_API_HOST": "127.0.0.1",
        "K2_API_PORT": str(port),
        "K2_QUERY_TAIL_ENABLED": "false",
    }
    log_path = tmp_path / "api.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "k2_cli.main", "api"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser() -> Iterator[OfflinePage]:
    with offline_page() as page:
        yield page


def openapi(port: int) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=10).json()
    return document


def test_swagger_ui_lists_the_operations_and_try_it_out_answers(api: int, browser: OfflinePage) -> None:
    page = browser.page
    page.goto(browser.url(api, "/docs"))
    paths = page.locator(".opblock .opblock-summary-path")
    expect(paths.first).to_be_visible()
    assert sorted(paths.all_inner_texts()) == sorted(openapi(api)["paths"])

    health = page.locator(".opblock", has=page.locator(".opblock-summary-path", has_text="/health"))
    health.locator(".opblock-summary").click()
    health.get_by_role("button", name="Try it out").click()
    health.get_by_role("button", name="Execute").click()
    live = health.locator(".live-responses-table tr.response")
    expect(live.locator(".response-col_status")).to_have_text("200")
    expect(live.locator(".response-col_description pre").first).to_contain_text('"status": "ok"')

    assert browser.escaped() == []


def test_redoc_renders_every_operation(api: int, browser: OfflinePage) -> None:
    page = browser.page
    page.goto(browser.url(api, "/redoc"))
    content = page.locator(".api-content")
    expect(content.locator("h1").first).to_contain_text("K2 market data")
    expect(content.locator("h2").first).to_be_visible()
    paths = openapi(api)["paths"]
    summaries = {operation["summary"] for operations in paths.values() for operation in operations.values()}
    assert summaries <= set(content.locator("h2").all_inner_texts())
    # Each operation's endpoint box: its method, then its path.
    assert sorted(content.locator(".http-verb + span").all_inner_texts()) == sorted(
        path for path, operations in paths.items() for _ in operations
    )

    assert browser.escaped() == []
