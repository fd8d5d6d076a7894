"""`k2 run`: the whole embedded platform as a new user starts it, queried over HTTP, stopped with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from k2_core.settings import REPO_ROOT
from tests.support.ports import free_port
from tests.support.processes import k2_processes
from tests.support.waits import wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as stopped
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def _trade_count(api: str) -> int:
    try:
        resp = httpx.get(f"{api}/v1/trades", params={"symbol": "BHP", "exchange": "asx", "limit": 100000}, timeout=5)
    except httpx.HTTPError:
        return -1
    return int(resp.json()["count"]) if resp.status_code == 200 else -1


def _serves(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _start(home: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "k2_cli.main", "run", "--rate", "20", *args],
        env=env,
        stdout=(home / "run.out").open("ab"),
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> list[int]:
    children = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    return children


def test_k2_run_serves_trades_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    api_port, dagster_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env.update(
        K2_HOME=str(home),
        K2_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        K2_API_PORT=str(api_port),
        K2_INGEST_METRICS_PORT=str(free_port()),
        K2_INGEST_BOOK_METRICS_PORT=str(free_port()),
        K2_KAFKA_MAX_PARTITIONS="2",
        K2_MAINTENANCE_DAGSTER_PORT=str(dagster_port),
        K2_MAINTENANCE_DAGSTER_CODE_PORT=str(free_port()),
        K2_SUPERVISOR_PORT=str(free_port()),  # a K2 of the machine's own may hold the default
    )
    api = f"http://127.0.0.1:{api_port}"

    run = _start(home, env)
    try:
        wait_for(lambda: _trade_count(api) > 0, timeout=60)
        # Reference data was loaded before the processes started: every row of the shipped files.
        shipped = sum(len(f.read_text().splitlines()) - 1 for f in (REPO_ROOT / "config" / "instruments").glob("*.csv"))
        assert httpx.get(f"{api}/v1/instruments", timeout=10).json()["count"] == shipped
        wait_for(lambda: _serves(f"http://127.0.0.1:{dagster_port}/server_info"), timeout=120)
        # Dagster's own children too (its code servers): every one carries K2_HOME.
        wait_for(lambda: len(k2_processes(home)) > 10)
    finally:
        children = _stop(run)
    # broker, ingester, book ingester, api, three simulators, Dagster's code server, webserver and daemon
    assert len(children) == 10
    wait_for(lambda: not k2_processes(home), timeout=15)
    assert (home / "catalog.db").exists()

    # Started again on the same home, the broker is new and empty (a new cluster): the old offsets must not be
    # reused and the simulators' restarted sequence numbers are a new session, so new trades still land.
    again = _start(home, env, "--no-dagster")
    try:
        wait_for(lambda: _trade_count(api) > 0, timeout=60)
        first = _trade_count(api)
        wait_for(lambda: _trade_count(api) > first, timeout=60)
    finally:
        _stop(again)

    quiet = _start(home, env, "--no-simulators", "--no-dagster")
    try:
        wait_for(lambda: _trade_count(api) > 0, timeout=60)
        # Three starts on unchanged files: one load committed, two found nothing to do.
        loads = httpx.get(f"{api}/v1/snapshots", params={"table": "instruments"}, timeout=10).json()
        assert loads["count"] == 1
    finally:
        children = _stop(quiet)
    assert len(children) == 4  # broker, ingester, book ingester, api


def test_k2_run_refuses_to_start_on_a_bad_reference_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    bad = tmp_path / "instruments"
    bad.mkdir()
    (bad / "asx.csv").write_text("symbol,asset_class,currency,tick_size,lot_size\nBHP,equities,AUD,0.01,-1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env.update(
        K2_HOME=str(home),
        K2_INSTRUMENTS_DIR=str(bad),
        K2_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        K2_API_PORT=str(free_port()),
        K2_INGEST_METRICS_PORT=str(free_port()),
        K2_INGEST_BOOK_METRICS_PORT=str(free_port()),
        K2_MAINTENANCE_DAGSTER_PORT=str(free_port()),
        K2_MAINTENANCE_DAGSTER_CODE_PORT=str(free_port()),
        K2_SUPERVISOR_PORT=str(free_port()),
    )
    done = subprocess.run(
        [sys.executable, "-m", "k2_cli.main", "run", "--no-dagster"], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 1
    out = done.stdout.decode() + done.stderr.decode()
    assert "reference data not loaded" in out
    assert "asx.csv:2: lot_size: '-1' must be a positive decimal" in out
