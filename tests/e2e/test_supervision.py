"""`k2 run` keeps the platform up and stops it whole: a killed ingester comes back and resumes exactly once while
a replay runs; SIGTERM and SIGHUP stop everything like Ctrl-C, a second signal at once; a process that cannot
stay up makes it give up, saying why."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.support.dumps import write_binance_trades
from tests.support.lake import table_rows
from tests.support.ports import port_free
from tests.support.processes import Platform, k2_processes
from tests.support.waits import wait_for

DAY = datetime(2024, 11, 25, tzinfo=UTC)  # the dumps' day: trade i at i - 1 ms after midnight


def _gone(platform: Platform) -> None:
    """No process of the platform left, every port free."""
    wait_for(lambda: not k2_processes(platform.home), timeout=15)
    assert all(port_free(port) for port in platform.ports.values()), platform.ports


# One handler for every stop signal (k2_cli.supervisor); Dagster's processes and their children stopping with the rest
# is test_platform's ctrl-c, so these run without Dagster (it takes most of a start).
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_every_process(tmp_path: Path, sig: signal.Signals) -> None:
    platform = Platform(tmp_path / "home").start("--rate", "20", "--no-dagster")
    try:
        wait_for(lambda: platform.trades("BHP", "asx") > 0, timeout=90)
        running = k2_processes(platform.home)
    finally:
        code = platform.stop(sig)
    assert code == 0, platform.out()
    assert f"stopping ({sig.name})" in platform.out()
    assert len(running) >= 6  # broker, ingester, api, three feeds
    _gone(platform)


def test_a_second_signal_kills_what_is_left_at_once(tmp_path: Path) -> None:
    platform = Platform(tmp_path / "home", K2_SUPERVISOR_STOP_TIMEOUT_SECONDS="300")
    platform.start("--no-dagster", "--no-simulators")
    assert platform.proc is not None
    wait_for(platform.api_up, timeout=90)
    api = platform.process("api")["pid"]
    os.kill(api, signal.SIGSTOP)  # a process that will not stop by itself
    try:
        platform.proc.send_signal(signal.SIGTERM)
        time.sleep(4)
        assert platform.proc.poll() is None  # waiting for the API (up to 300 s)
        platform.proc.send_signal(signal.SIGTERM)
        assert platform.proc.wait(15) == 0
    finally:
        platform.stop()
    _gone(platform)


def test_kill_9_of_the_ingester_during_a_replay_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    platform = Platform(tmp_path / "home", K2_SUPERVISOR_RESTART_BACKOFF_SECONDS="0.5")
    platform.start("--no-dagster", "--no-simulators")
    rows = 60_000
    dump = write_binance_trades(tmp_path / "BTCUSDT-trades.csv", range(1, rows + 1), DAY, step_ms=1)
    try:
        wait_for(lambda: platform.process("ingester")["uptime_seconds"] > 3, timeout=60)
        command = ["replay-file", str(dump), "-e", "binance", "--symbol", "BTCUSDT", "--rate", "3000"]
        replay = subprocess.Popen(
            [sys.executable, "-m", "k2_cli.main", *command, "--wait-timeout", "240"],
            env=platform.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        api = platform.process("api")
        for kill in range(3):
            # the ingester is back (restarted and consuming) before each kill
            wait_for(lambda k=kill: platform.process("ingester")["restarts"] == k, timeout=60)
            time.sleep(4)
            os.kill(platform.process("ingester")["pid"], signal.SIGKILL)
        out, _ = replay.communicate(timeout=300)
        assert replay.returncode == 0, out
        assert f"{rows:,} produced, {rows:,} committed" in out
        ingester = platform.process("ingester")
        assert ingester["up"]
        assert ingester["restarts"] == 3
        assert platform.process("api")["pid"] == api["pid"]  # the API kept serving throughout
        assert platform.trades("BTCUSDT", "binance", start="2024-11-25", end="2024-11-26") == rows
    finally:
        assert platform.stop() == 0
    stored = table_rows_of(platform)
    assert sorted(stored) == list(range(1, rows + 1))  # each row exactly once
    assert platform.out().count("ingester exited with code -9") == 3
    _gone(platform)


def table_rows_of(platform: Platform) -> list[int]:
    from k2_core.settings import Settings

    settings = Settings(home=platform.home)
    return [r["exchange_sequence_number"] for r in table_rows(settings, "trades")]


def test_a_process_that_cannot_stay_up_makes_k2_run_give_up(tmp_path: Path) -> None:
    platform = Platform(
        tmp_path / "home",
        K2_SUPERVISOR_RESTART_BACKOFF_SECONDS="0.2",
        K2_SUPERVISOR_MAX_FAST_FAILURES="2",
        K2_CATALOG_URI="postgresql+psycopg://nobody@127.0.0.1:1/none",  # nothing listens there
    )
    assert platform.proc is None
    platform.proc = subprocess.Popen(
        [sys.executable, "-m", "k2_cli.main", "run", "--no-dagster", "--no-simulators"],
        env=platform.env,
        stdout=platform.output.open("ab"),
        stderr=subprocess.STDOUT,
    )
    assert platform.proc.wait(120) == 1
    out = platform.out()
    assert "giving up:" in out
    assert "exited 2 times in a row" in out
    assert "all K2 processes stopped" in out
    _gone(platform)


def test_k2_run_in_coordinated_mode_starts_the_committer_and_stores_a_replay_once(tmp_path: Path) -> None:
    """K2_INGEST_COMMIT_MODE=coordinated: `k2 run` starts a committer beside the ingester, which hands it every
    batch; the committer commits them (every snapshot is its own), reports on /metrics, and stops with the rest."""
    platform = Platform(tmp_path / "home", K2_INGEST_COMMIT_MODE="coordinated")
    platform.start("--no-dagster", "--no-simulators")
    rows = 3000
    dump = write_binance_trades(tmp_path / "BTCUSDT-trades.csv", range(1, rows + 1), DAY, step_ms=1)
    try:
        wait_for(lambda: platform.process("committer")["up"] and platform.process("ingester")["up"], timeout=60)
        command = ["replay-file", str(dump), "-e", "binance", "--symbol", "BTCUSDT", "--rate", "3000"]
        replay = platform.run_k2(*command, "--wait-timeout", "240")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert f"{rows:,} produced, {rows:,} committed" in replay.stdout + replay.stderr
        metrics = httpx.get(f"http://127.0.0.1:{platform.ports['committer']}/metrics", timeout=5).text
        status = platform.run_k2("status", "--no-dagster")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "committer: elected" in status.stdout
        assert re.search(r"committer\s+up", status.stdout), status.stdout
    finally:
        assert platform.stop() == 0
    assert sorted(table_rows_of(platform)) == list(range(1, rows + 1))  # each row exactly once
    writers = trades_writers(platform)
    assert writers
    assert all(w.startswith("committer-") for w in writers), writers  # the ingester committed nothing itself
    assert "k2_committer_elected 1.0" in metrics
    committed = [line for line in metrics.splitlines() if line.startswith("k2_committer_requests_total{")]
    assert any('outcome="committed"' in line and 'table="trades"' in line for line in committed), committed
    _gone(platform)


def trades_writers(platform: Platform) -> list[str]:
    from k2_core.lake.catalog import open_catalog
    from k2_core.lake.offsets import WRITER_PROPERTY
    from k2_core.settings import Settings

    settings = Settings(home=platform.home)
    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    return [s.summary.additional_properties.get(WRITER_PROPERTY, "") for s in table.snapshots() if s.summary]
