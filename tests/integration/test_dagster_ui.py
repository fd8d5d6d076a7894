"""The real Dagster webserver, started the way `k2 run` starts it, renders the K2 asset graph in headless Chromium
(Debian `chromium`, installed by `make system-deps`) that can reach no other host: the UI needs no internet (its
fonts and scripts are in the dagster-webserver wheel), and the test shows it asks for nothing outside."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from k2_core.settings import Settings
from k2_dagster.launcher import dagster_processes, webserver_url
from k2_stream.broker import wait_for_port
from tests.support.browser import offline_page
from tests.support.ports import free_port

ASSETS = ("trades", "quotes", "ohlcv_1m", "ohlcv_1d", "sequence_gaps")


@pytest.fixture
def webserver(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[str]:
    """The webserver as `k2 run` starts it: reading K2's definitions from the code server beside it."""
    settings = make_settings()
    settings.maintenance.dagster_port = free_port()
    settings.maintenance.dagster_code_port = free_port()
    env = {**os.environ, "K2_HOME": str(settings.home), "K2_CATALOG_NAME": settings.catalog.name}
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for p in dagster_processes(settings, env)[:2]:  # the code server, then the webserver
            log = (tmp_path / f"{p.name}.log").open("wb")
            proc = subprocess.Popen(
                p.argv, env=p.env, cwd=p.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            procs.append((p.name, proc))
            if p.name == "dagster-code-server":  # as `k2 run` and compose do: the webserver starts once it answers
                wait_for_port(settings.maintenance.dagster_code_host, settings.maintenance.dagster_code_port, 90)
        url = webserver_url(settings)
        deadline = time.monotonic() + 90
        while True:
            for name, proc in procs:
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "webserver did not come up"
            time.sleep(0.5)
        yield url
    finally:
        for _, proc in reversed(procs):  # each stopped whatever the other did (one gone already raises)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_webserver_shows_the_asset_graph_offline(webserver: str) -> None:
    port = urlsplit(webserver).port
    assert port is not None
    with offline_page() as browser:
        body = browser.page.locator("body")

        def show(path: str, *names: str) -> None:
            browser.page.goto(browser.url(port, path))
            for name in names:
                expect(body).to_contain_text(name)

        # Global lineage collapses assets into their groups; each group's lineage shows its assets and neighbours.
        show("/asset-groups", "market", "bars")
        show("/locations/k2/asset-groups/market/lineage", "trades", "quotes", "sequence_gaps")
        show("/locations/k2/asset-groups/bars/lineage", "ohlcv_1m", "ohlcv_1d")
        show("/assets", *ASSETS)
        # Pages that load code chunks of their own: those come from the wheel too.
        show("/assets/trades", "trades")
        show("/runs", "Runs")
        show("/jobs", "Jobs")
        assert browser.escaped() == []
