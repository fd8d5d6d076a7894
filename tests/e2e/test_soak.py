"""The platform as a user runs it, for minutes: `k2 run` with its simulators, Dagster and production logging,
every periodic path compressed by settings so that each one runs (ingester retention, every sensor and schedule,
compaction of a closed day, OHLCV rebuild, gap backfill from a recorded file, snapshot expiry, quality checks).
Every process stays up, trades keep landing, every Dagster run succeeds, and no log holds a traceback or an error.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from k2_core.lake.catalog import open_catalog
from k2_core.lake.lineage import day_files
from k2_core.settings import Settings
from tests.support.lake import table_rows
from tests.support.processes import Platform, k2_processes
from tests.support.waits import wait_for

SOAK_SECONDS = 120  # each every-minute schedule fires at least once, each sensor several times
SYMBOL = "LINKUSDT"  # not simulated: yesterday's history, loaded while the feeds run
ROWS = 12_000
MISSING = (range(3001, 3004), range(7001, 7006))  # small holes (warnings), recoverable from the recorded file
JOBS = ("ohlcv_job", "compaction_job", "gap_backfill_job", "maintenance_job", "quality_job")
RUNS_QUERY = "{ runsOrError { ... on Runs { results { runId jobName status } } } }"
# Log lines at error level that are expected in this scenario: none.
EXPECTED_ERRORS: tuple[str, ...] = ()


def _history(directory: Path) -> tuple[Path, Path]:
    """Yesterday's trades of one instrument: the file as a vendor delivered it (with holes), and complete."""
    start = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    header = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"
    missing = {i for r in MISSING for i in r}
    first_ms = int(start.timestamp() * 1000)
    lines = {i: f"{i},15.{i % 1000:03d},2.5,37.5,{first_ms + 250 * i},true,true" for i in range(1, ROWS + 1)}
    holes, complete = directory / f"{SYMBOL}-trades-holes.csv", directory / f"{SYMBOL}-trades-complete.csv"
    holes.write_text("\n".join([header, *(v for i, v in lines.items() if i not in missing)]) + "\n")
    complete.write_text("\n".join([header, *lines.values()]) + "\n")
    return holes, complete


def _runs(platform: Platform) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{platform.ports['dagster']}/graphql"
    resp = httpx.post(url, json={"query": RUNS_QUERY}, timeout=30)
    resp.raise_for_status()
    return list(resp.json()["data"]["runsOrError"]["results"])


# Dagster's daemon without a code server of its own started a fresh process loading K2 every minute; the old one,
# left without heartbeats, said this before it went. With the shared code server it never appears.
CODE_RELOADED = "No heartbeat received"


def _log_problems(logs: Path) -> list[str]:
    problems = []
    for path in sorted(logs.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines, start=1):
            where = f"{path.name}:{number}: {line[:400]}"
            if "Traceback" in line:
                # the whole traceback, so that a failure in CI says what went wrong
                problems.append("\n".join([where, *lines[number : number + 40]]))
            elif line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    problems.append(f"{where} (not JSON)")
                    continue
                if record.get("level") in ("error", "critical") and record.get("message") not in EXPECTED_ERRORS:
                    problems.append(where)
            elif " - ERROR - " in line or " - CRITICAL - " in line or CODE_RELOADED in line:  # Dagster's format
                problems.append(where)
    return problems


@pytest.mark.slow
@pytest.mark.serial  # the whole platform for minutes: alone, so its timings are the platform's own
def test_the_platform_runs_every_periodic_path_for_minutes(tmp_path: Path) -> None:
    holes, complete = _history(tmp_path)
    every_minute = "* * * * *"
    platform = Platform(
        tmp_path / "home",
        K2_INGEST_RETENTION_EVERY_COMMITS="5",
        K2_INGEST_KEEP_SNAPSHOTS="5",
        K2_MAINTENANCE_SNAPSHOT_SENSOR_SECONDS="10",
        K2_MAINTENANCE_OHLCV_SENSOR_SECONDS="30",
        K2_MAINTENANCE_COMPACTION_SENSOR_SECONDS="15",
        K2_MAINTENANCE_BACKFILL_SENSOR_SECONDS="15",
        K2_MAINTENANCE_GAP_SWEEP_CRON=every_minute,
        K2_MAINTENANCE_MAINTENANCE_CRON=every_minute,
        K2_MAINTENANCE_QUALITY_CRON=every_minute,
        K2_MAINTENANCE_COMPACTION_MIN_FILES="2",
        K2_MAINTENANCE_BACKFILL_MIN_GAP_AGE_SECONDS="5",
        K2_MAINTENANCE_SNAPSHOT_RETENTION_HOURS="0.02",
        K2_MAINTENANCE_KEEP_LAST_SNAPSHOTS="5",
        K2_MAINTENANCE_RECORDED_FILES=json.dumps(
            [{"exchange": "binance", "symbol": SYMBOL, "path": str(complete), "format": "binance-trades"}]
        ),
    )
    # exactly as the README starts it, plus the settings above, and in the background as `nohup make run &` would
    # (SIGINT ignored: Dagster's processes, which take SIGTERM for SIGINT, once ignored the stop and were killed)
    platform.start("--rate", "40", sigint_ignored=True)
    settings = Settings(home=platform.home)
    try:
        wait_for(lambda: platform.trades("BHP", "asx") > 0, timeout=120)
        # yesterday's history arrives while the feeds run, in several batches: a closed day with many files
        replay = platform.run_k2(
            *("replay-file", str(holes), "-e", "binance", "--symbol", SYMBOL, "--rate", "2000"), timeout=300
        )
        assert replay.returncode == 0, replay.stdout + replay.stderr
        landed = [platform.trades("BHP", "asx")]
        deadline = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < deadline:
            time.sleep(30)
            landed.append(platform.trades("BHP", "asx"))
        health = platform.health()
        assert health is not None
        runs = _runs(platform)
        gaps = [g for g in table_rows(settings, "sequence_gaps") if g["symbol"] == SYMBOL]
        history = [r for r in table_rows(settings, "trades") if r["symbol"] == SYMBOL]
        trades = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
        closed = {d.day: d.files for d in day_files(trades, before=datetime.now(UTC).date())}
    finally:
        assert platform.stop() == 0, platform.out()
    wait_for(lambda: not k2_processes(platform.home), timeout=15)
    assert "did not stop within" not in platform.out(), platform.out()  # every process stopped on its signal

    # every process stayed up
    assert health["status"] == "ok", health
    assert {name: p["restarts"] for name, p in health["processes"].items() if p["restarts"]} == {}
    # trades kept landing (through the API, as a user sees them)
    assert all(b > a for a, b in itertools.pairwise(landed)), landed
    # every Dagster run that finished succeeded, and each kind of upkeep ran
    finished = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
    assert [r for r in finished if r["status"] != "SUCCESS"] == [], finished
    succeeded = {r["jobName"] for r in finished}
    assert set(JOBS) <= succeeded, (succeeded, runs)
    # the gaps in yesterday's file were found, then filled from the recorded file: the day is complete
    assert sorted((g["first_missing"], g["last_missing"]) for g in gaps if g["status"] != "filled") == [], gaps
    assert {(g["first_missing"], g["last_missing"]) for g in gaps} >= {(r.start, r.stop - 1) for r in MISSING}
    assert sorted(r["exchange_sequence_number"] for r in history) == list(range(1, ROWS + 1))
    # the closed day, written in many small batches, was compacted (a late backfill may add a file after that)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    assert closed.get(yesterday, 0) <= 2, closed
    # the ingester thinned its snapshots as it wrote (the retention pass that once crashed it)
    assert "snapshot retention applied" in (platform.home / "logs" / "ingester.log").read_text()
    problems = _log_problems(platform.home / "logs")
    print("\n\n".join(problems))  # shown in full with the failure; an assertion diff would be truncated
    assert problems == []
