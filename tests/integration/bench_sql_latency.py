"""Not collected by the suite: the median latency of a tiny SQL query, by run_sql and over HTTP; run it by hand
with `pytest -s tests/integration/bench_sql_latency.py` (the SQL worker processes were measured with it)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from k2_api.main import create_app
from k2_core.read.engine import QueryEngine
from k2_core.read.sql import SqlLimits, run_sql
from k2_core.settings import Settings
from tests.support.clients import local_client
from tests.support.lake import seed


def test_bench(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    settings.query.tail_enabled = False
    seed(settings)
    sql = "SELECT count(*) AS n FROM trades"
    with QueryEngine.from_settings(settings, cache=False) as engine:
        for _ in range(5):
            run_sql(engine, sql, limits=SqlLimits.from_settings(settings))
        times = []
        for _ in range(50):
            t = time.perf_counter()
            run_sql(engine, sql, limits=SqlLimits.from_settings(settings))
            times.append((time.perf_counter() - t) * 1000)
    with local_client(create_app(settings)) as client:
        for _ in range(5):
            client.post("/v1/sql", json={"sql": sql})
        http = []
        for _ in range(50):
            t = time.perf_counter()
            assert client.post("/v1/sql", json={"sql": sql}).status_code == 200
            http.append((time.perf_counter() - t) * 1000)
    print(
        f"\nrun_sql median {statistics.median(times):.2f} ms p90 {sorted(times)[44]:.2f}; "
        f"HTTP median {statistics.median(http):.2f} ms p90 {sorted(http)[44]:.2f}"
    )
