"""The read-only SQL endpoint's cost: a tiny query's latency through `run_sql` and over HTTP (each query runs in a
worker process, `k2_core.read.sqlworker`), and how long the budgets take to refuse the two queries that once overran
them (a 4 GB `repeat`, a 100M-row `count(DISTINCT ...)`).

    .venv/bin/python -m bench.sql_latency [--reps 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from k2_api.main import create_app
from k2_core.read.engine import QueryEngine
from k2_core.read.sql import SqlLimits, run_sql
from k2_core.settings import Settings
from tests.support.clients import local_client
from tests.support.lake import seed

TINY = "SELECT count(*) AS n FROM trades"
OVERRUNS = {
    "repeat_4gb": "SELECT length(repeat('x', 4000000000)) AS n",
    "distinct_100m": "SELECT count(DISTINCT x || repeat('y', 200)) AS n "
    "FROM (SELECT unnest(generate_series(1, 100000000)) AS x)",
}


def timed(call: Callable[[], object], reps: int) -> list[float]:
    for _ in range(5):  # warm-up: the first call starts a worker
        call()
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return times


def describe(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    return f"{name:<16} median {statistics.median(times):7.2f} ms   p90 {ordered[int(len(ordered) * 0.9)]:7.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home) / "k2home")
        settings.query.tail_enabled = False
        seed(settings)
        limits = SqlLimits.from_settings(settings)
        with QueryEngine.from_settings(settings, cache=False) as engine:
            print(describe("run_sql", timed(lambda: run_sql(engine, TINY, limits=limits), args.reps)))
        with local_client(create_app(settings)) as client:
            print(describe("POST /v1/sql", timed(lambda: client.post("/v1/sql", json={"sql": TINY}), args.reps)))
            for name, sql in OVERRUNS.items():
                began = time.perf_counter()
                answer = client.post("/v1/sql", json={"sql": sql})
                took = time.perf_counter() - began
                reason = answer.json().get("detail", "")[:80]
                print(f"{name:<16} refused {answer.status_code} in {took:.2f} s: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
