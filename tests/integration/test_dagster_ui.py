"""The real Dagster webserver, started the way `k2 run` starts it, renders the K2 asset graph in headless Chromium
(Debian `chromium`, installed by `make system-deps`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from k2_core.settings import Settings
from k2_dagster.launcher import dagster_processes, webserver_url
from tests.conftest import free_port

ASSETS = ("trades", "quotes", "ohlcv_1m", "ohlcv_1d", "sequence_gaps")


@pytest.fixture
def webserver(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[str]:
    settings = make_settings()
    settings.maintenance.dagster_port = free_port()
    env = {**os.environ, "K2_HOME": str(settings.home), "K2_CATALOG_NAME": settings.catalog.name}
    web = dagster_processes(settings, env)[0]
    log = (tmp_path / "webserver.log").open("wb")
    proc = subprocess.Popen(
        web.argv, env=web.env, cwd=web.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = webserver_url(settings)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "webserver.log").read_text()
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
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def render(url: str, profile: Path) -> str:
    """The DOM after the JS app rendered (virtual time lets the page settle without wall-clock waits)."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian chromium is missing: run `make system-deps`"
    out = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


def test_webserver_shows_the_asset_graph(webserver: str, tmp_path: Path) -> None:
    # Global lineage collapses assets into their groups; each group's lineage shows its assets and neighbours.
    overview = render(f"{webserver}/asset-groups", tmp_path / "profile-overview")
    assert "market" in overview
    assert "bars" in overview
    market = render(f"{webserver}/locations/k2/asset-groups/market/lineage", tmp_path / "profile-market")
    bars = render(f"{webserver}/locations/k2/asset-groups/bars/lineage", tmp_path / "profile-bars")
    for name in ("trades", "quotes", "sequence_gaps"):
        assert name in market, name
    for name in ("ohlcv_1m", "ohlcv_1d"):
        assert name in bars, name
    catalog = render(f"{webserver}/assets", tmp_path / "profile-catalog")
    for name in ASSETS:
        assert name in catalog, name
