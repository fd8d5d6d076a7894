"""`k2 status` against the real platform: `k2 run` healthy (the book ingester's last commit, lag and unknown books
included), a partition halted on a gap, the API and the book ingester killed, then nothing running. Each check runs
`k2 status` as a user or a script does: a subprocess, its screen and exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.settings import Settings
from tests.support.ports import free_port
from tests.support.waits import wait_for

PROCESSES = ("broker", "ingester", "book-ingester", "api", "simulator-asx", "simulator-nyse", "simulator-binance")
TABLES = ("trades", "quotes", "sequence_gaps", "ohlcv_1m", "ohlcv_1d")
# A recorded Binance dump that jumps from trade id 3 to 1000: a gap of 996 numbers halts its partition.
HALTING_DUMP = [
    "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match",
    *(f"{n},100.00000000,0.01000000,1.00000000,{1732492800000 + n},true,true" for n in (1, 2, 3, 1000, 1001)),
]


def status(env: dict[str, str], *args: str) -> tuple[int, str, float]:
    """`k2 status ARGS`: (exit code, what it printed, seconds it took)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "k2_cli.main", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def status_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = status(env, "--json", *args)
    return code, json.loads(out)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env.update(
        K2_HOME=str(home),
        K2_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        K2_API_PORT=str(free_port()),
        K2_INGEST_METRICS_PORT=str(free_port()),
        K2_INGEST_BOOK_METRICS_PORT=str(free_port()),
        K2_SUPERVISOR_PORT=str(free_port()),
        K2_MAINTENANCE_DAGSTER_PORT=str(free_port()),
        K2_MAINTENANCE_DAGSTER_CODE_PORT=str(free_port()),
        K2_KAFKA_MAX_PARTITIONS="2",
        # A killed process stays down for the rest of the test: `k2 status` must see it down, not restarted.
        K2_SUPERVISOR_RESTART_BACKOFF_SECONDS="600",
        K2_SUPERVISOR_MAX_BACKOFF_SECONDS="600",
    )
    return env


def _table(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next((t for t in report["catalog"]["tables"] if t["name"] == name), {})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def test_status_names_what_runs_and_exits_non_zero_on_what_is_wrong(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home)
    # The catalog's tables exist before the processes start, as on every start but a fresh home's first: the
    # ingester and the API creating them at once can collide, and a crashed API would stay down here (backoff).
    catalog = open_catalog(Settings(home=home))
    ensure_tables(catalog, "market")
    catalog.close()
    run = subprocess.Popen(
        [sys.executable, "-m", "k2_cli.main", "run", "--no-dagster", "--rate", "20"],
        env=env,
        stdout=(home / "run.out").open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        # Healthy: every process, table and a lag figure on one screen; exit code 0.
        last: dict[str, Any] = {}

        def healthy() -> bool:
            code, last["report"] = status_json(env)
            return (
                code == 0
                and bool(last["report"]["lag"])
                and bool(_table(last["report"], "trades").get("snapshots"))
                and bool(_table(last["report"], "book_updates").get("rows"))  # the feeds' books are ingested too
                and last["report"]["book_ingester"] is not None
                and last["report"]["book_ingester"]["last_commit"] is not None
            )

        wait_for(healthy, timeout=90, interval=1.0)
        report = last["report"]
        assert report["ok"]
        assert report["problems"] == []
        assert [p["name"] for p in report["processes"]] == list(PROCESSES)
        assert all(p["up"] and p["pid"] and p["restarts"] == 0 for p in report["processes"])
        assert report["ingester"]["degradation_level"] == 0
        assert report["ingester"]["circuit_breaker"] == "closed"
        assert {lag["topic"] for lag in report["lag"]} >= {
            "market.equities.trades.asx",
            "market.crypto.trades.binance",
            "market.equities.books.asx",  # the book ingester's lag, as the ingester measures it
        }
        books = report["book_ingester"]
        assert books["error"] is None
        assert books["assigned_partitions"] > 0
        assert books["last_commit_age_seconds"] >= 0
        assert books["unknown_books"] == {}  # the feeds withhold no book updates
        assert all(lag["lag_seconds"] >= 0 for lag in report["lag"])
        trades = _table(report, "trades")
        assert trades["rows"] > 0
        assert trades["last_commit"] is not None
        assert report["catalog"]["open_gaps"] == {}
        code, screen, _ = status(env)
        assert code == 0, screen
        on_screen = ("market.equities.trades.asx", "consumer lag", "book ingester: last commit", "open gaps", "OK:")
        for name in (*PROCESSES, *TABLES, *on_screen):
            assert name in screen, f"{name!r} not on the screen:\n{screen}"

        # Run without `k2 run`'s endpoint (as under docker compose): the processes' own endpoints say the same.
        code, report = status_json({**env, "K2_SUPERVISOR_PORT": "0"}, "--no-dagster")
        assert code == 0, report["problems"]
        assert [p["name"] for p in report["processes"]] == ["broker", "ingester", "book-ingester", "api"]
        assert all(p["uptime_seconds"] for p in report["processes"] if p["name"] != "broker")

        # A gap of more than 100 numbers halts its partition: non-zero, and the partition is named.
        dump = tmp_path / "HALTUSDT-trades.csv"
        dump.write_text("\n".join(HALTING_DUMP) + "\n")
        subprocess.run(
            [sys.executable, "-m", "k2_cli.main", "replay-file", str(dump), "--symbol", "HALTUSDT", "--no-wait"],
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        )

        def halted() -> bool:
            code, report = status_json(env)
            return code == 1 and bool(report["ingester"]["halted_partitions"])

        wait_for(halted, timeout=60, interval=1.0)
        code, screen, _ = status(env)
        assert code == 1, screen
        assert "partition(s) halted on a sequence gap: market.crypto.trades.binance[" in " ".join(screen.split())
        assert "halt 1 (binance 1)" in screen, screen  # the open gap, by severity and exchange

        # kill -9 of the API and the book ingester: down at once, named, non-zero.
        sup = httpx.get(f"http://127.0.0.1:{env['K2_SUPERVISOR_PORT']}/health", timeout=5).json()
        os.kill(sup["processes"]["api"]["pid"], signal.SIGKILL)
        os.kill(sup["processes"]["book-ingester"]["pid"], signal.SIGKILL)
        code, screen, _ = status(env)
        assert code == 1, screen
        assert "api is down" in screen, screen
        assert "book-ingester is down" in screen, screen
        assert "book ingester: no /health answer" in screen, screen
    finally:
        children = _children(run.pid)
        run.send_signal(signal.SIGINT)
        assert run.wait(60) == 0
    wait_for(lambda: not any(_alive(pid) for pid in children), timeout=10)

    # Nothing running: exit 1 at once, saying so.
    code, screen, _ = status(env)
    assert code == 1, screen
    assert "K2 is not running" in screen, screen


def test_status_with_nothing_running_says_so_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    env = _env(home)
    code, screen, _ = status(env)
    assert code == 1, screen
    assert "K2 is not running: nothing answers" in " ".join(screen.split())
    code, report = status_json(env)
    assert not report["ok"]
    assert len(report["problems"]) == 1
    assert not home.exists()  # a status check creates no home, catalog or table
