"""SQL queries run in worker processes (`k2_core.read.sqlworker`), so the budgets DuckDB cannot enforce itself hold:
the queries the fuzz found overrunning (one huge scalar, one list being built) are refused by the worker's memory
cap; one deaf to DuckDB's interrupt is killed past the time budget, answered 408, logged once and its worker
replaced, while the API goes on answering; a worker that dies is answered as a memory refusal and replaced; and the
pool caps how many SQL queries run at once (503 with Retry-After beyond the queue wait)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest

from k2_api.main import create_app
from k2_core.exceptions import QueryError, QueryTimeoutError
from k2_core.logging import JsonFormatter
from k2_core.read.engine import QueryEngine
from k2_core.read.sql import SqlLimits, run_sql
from k2_core.read.sqlworker import SqlBusyError, SqlWorkerPool, shared_pool
from k2_core.settings import QuerySettings, Settings, parse_bytes
from tests.support.clients import local_client
from tests.support.factories import trade
from tests.support.lake import SEED_DAY, open_lake, seed

SettingsFactory = Callable[..., Settings]
COUNT = "SELECT count(*) AS n FROM trades"
# One scalar call DuckDB does not interrupt: sorting a 30-million-element list runs tens of seconds.
DEAF = "SELECT len(list_sort(list_reverse(generate_series(1, 30000000)))) AS n"
# An endless query over trades that DuckDB does interrupt: past a 0.5 s budget, a 408 and the worker kept.
ENDLESS = "WITH RECURSIVE t(n) AS (SELECT count(*) FROM trades UNION ALL SELECT n + 1 FROM t) SELECT max(n) AS n FROM t"


def small_lake(make_settings: SettingsFactory, **query: Any) -> Settings:
    settings = make_settings()
    settings.query.tail_enabled = False
    settings.query.sql_timeout_seconds = 0.5
    settings.query.sql_memory_limit = "256MB"
    for name, value in query.items():
        setattr(settings.query, name, value)
    seed(settings)
    return settings


def wait_busy(pool: SqlWorkerPool, count: int) -> None:
    """Until `count` queries hold a worker of `pool` (bounded, so a broken pool fails the test instead of hanging)."""
    for _ in range(3000):
        if pool.busy >= count and len(pool.pids()) >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"the pool never had {count} busy workers")


def test_the_fuzz_overruns_are_refused_by_the_memory_cap(make_settings: SettingsFactory) -> None:
    """Both once ran far past 256 MB / 0.5 s (4 GB and 50 s; 9 s); the worker's rlimit stops them at once."""
    settings = small_lake(make_settings)
    with local_client(create_app(settings)) as client:
        for sql in (
            "SELECT length(repeat('x', 4000000000)) AS n",
            "SELECT count(DISTINCT x || repeat('y', 200)) AS n "
            "FROM (SELECT unnest(generate_series(1, 100000000)) AS x)",
        ):
            # Before the worker processes, the first answered 200 after 50 s and 4 GB. How long a refusal takes
            # is bench/sql_latency.py's business, not a test's.
            answer = client.post("/v1/sql", json={"sql": sql})
            assert answer.status_code in (400, 408), answer.text
            if answer.status_code == 400:
                assert "memory budget (256MB, K2_QUERY_SQL_MEMORY_LIMIT)" in answer.json()["detail"]
            healthy = client.post("/v1/sql", json={"sql": COUNT})
            assert healthy.status_code == 200
            assert healthy.json()["data"] == [{"n": 5}]


def test_a_query_deaf_to_the_interrupt_is_killed_and_its_worker_replaced(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = small_lake(make_settings, sql_memory_limit="2GB", sql_workers=2)
    limits = SqlLimits.from_settings(settings)
    pool = shared_pool(limits.workers)
    outcome: list[BaseException] = []

    def deaf() -> None:
        with QueryEngine.from_settings(settings, cache=False) as engine:
            try:
                run_sql(engine, DEAF, limits=limits)
            except QueryError as exc:
                outcome.append(exc)

    with local_client(create_app(settings)) as client, caplog.at_level(logging.WARNING, "k2_core.read.sqlworker"):
        assert client.post("/v1/sql", json={"sql": COUNT}).status_code == 200
        thread = threading.Thread(target=deaf)
        thread.start()
        wait_busy(pool, 1)
        before = set(pool.pids())
        # While the deaf query runs (and is killed), the API answers: another route, and SQL on the other worker.
        assert client.get("/health").status_code == 200
        assert client.post("/v1/sql", json={"sql": COUNT}).json()["data"] == [{"n": 5}]
        thread.join(60)
        assert not thread.is_alive()
        [refused] = outcome
        assert isinstance(refused, QueryTimeoutError)
        assert "interrupted after 0.5 s" in str(refused)
        assert "worker process was killed" in str(refused)
        after = client.post("/v1/sql", json={"sql": COUNT})
        assert after.status_code == 200
        assert after.json()["data"] == [{"n": 5}]
        assert len(before - set(pool.pids())) == 1  # the killed worker is gone, another took its slot
    [killed] = [r for r in caplog.records if r.getMessage() == "sql worker killed"]
    line = json.loads(JsonFormatter("api").format(killed))
    assert line["level"] == "warning"
    assert line["reason"] == "time budget"
    assert line["sql"] == DEAF
    assert line["timeout_seconds"] == 0.5


def test_a_worker_that_dies_is_a_memory_refusal_and_is_replaced(make_settings: SettingsFactory) -> None:
    """The kernel's OOM killer would end a worker with SIGKILL; the caller gets the memory budget's 400."""
    settings = small_lake(make_settings, sql_memory_limit="2GB", sql_timeout_seconds=60)
    limits = SqlLimits.from_settings(settings)
    pool = SqlWorkerPool(1)
    outcome: list[BaseException] = []

    def deaf(engine: QueryEngine) -> None:
        try:
            run_sql(engine, DEAF, limits=limits, pool=pool)
        except QueryError as exc:
            outcome.append(exc)

    try:
        with QueryEngine.from_settings(settings, cache=False) as engine:
            thread = threading.Thread(target=deaf, args=(engine,))
            thread.start()
            wait_busy(pool, 1)
            [pid] = pool.pids()
            os.kill(pid, signal.SIGKILL)
            thread.join(60)
            [refused] = outcome
            assert "ran out of its memory budget (2GB, K2_QUERY_SQL_MEMORY_LIMIT)" in str(refused)
            assert "killed by signal 9" in str(refused)
            assert run_sql(engine, COUNT, limits=limits, pool=pool).table.to_pylist() == [{"n": 5}]
            assert pool.pids() != [pid]
    finally:
        pool.close()


def test_the_memory_cap_is_the_workers_not_the_servers(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused inside the worker (an allocation past its rlimit fails), which lives on to answer the next query; the
    worker's environment holds none of the caller's K2 settings (a catalog password would be one)."""
    monkeypatch.setenv("K2_SQLWORKER_CANARY", "must-not-reach-the-worker")
    settings = small_lake(make_settings)
    limits = SqlLimits.from_settings(settings)
    pool = SqlWorkerPool(1)
    try:
        with QueryEngine.from_settings(settings, cache=False) as engine:
            run_sql(engine, COUNT, limits=limits, pool=pool)
            [pid] = pool.pids()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"K2_SQLWORKER_CANARY" not in environ
            assert b"must-not-reach-the-worker" not in environ
            for sql in ("SELECT length(repeat('x', 4000000000)) AS n", "SELECT repeat('x', 1000000000) AS x"):
                with pytest.raises(QueryError, match=r"memory budget \(256MB"):
                    run_sql(engine, sql, limits=limits, pool=pool)
            assert run_sql(engine, COUNT, limits=limits, pool=pool).table.to_pylist() == [{"n": 5}]
            assert pool.pids() == [pid]
    finally:
        pool.close()


def test_sql_beyond_the_workers_waits_then_is_a_503(make_settings: SettingsFactory) -> None:
    settings = small_lake(make_settings, sql_workers=1, sql_queue_seconds=0.2, sql_timeout_seconds=3)
    limits = SqlLimits.from_settings(settings)
    pool = shared_pool(1)
    endless = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) AS n FROM t"
    outcome: list[BaseException] = []

    def hold() -> None:
        with QueryEngine.from_settings(settings, cache=False) as engine:
            try:
                run_sql(engine, endless, limits=limits)
            except QueryError as exc:
                outcome.append(exc)

    with local_client(create_app(settings)) as client:
        thread = threading.Thread(target=hold)
        thread.start()
        wait_busy(pool, 1)
        busy = client.post("/v1/sql", json={"sql": COUNT})
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "3"
        assert "all 1 SQL workers are busy (K2_QUERY_SQL_WORKERS)" in busy.json()["detail"]
        assert client.get("/health").status_code == 200
        thread.join(60)
        assert isinstance(outcome[0], QueryTimeoutError)
        assert client.post("/v1/sql", json={"sql": COUNT}).status_code == 200


def test_no_more_queries_wait_than_there_are_workers(make_settings: SettingsFactory) -> None:
    """With one worker busy and one query waiting, the next is turned away at once, whatever its queue wait."""
    settings = small_lake(make_settings, sql_timeout_seconds=3, sql_queue_seconds=60)
    limits = SqlLimits.from_settings(settings)
    pool = SqlWorkerPool(1)
    endless = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) AS n FROM t"
    outcome: list[Any] = []

    def query(engine: QueryEngine, sql: str) -> None:
        try:
            outcome.append(run_sql(engine, sql, limits=limits, pool=pool).table.to_pylist())
        except QueryError as exc:
            outcome.append(exc)

    try:
        with QueryEngine.from_settings(settings, cache=False) as engine:
            running = threading.Thread(target=query, args=(engine, endless))
            running.start()
            wait_busy(pool, 1)
            waiting = threading.Thread(target=query, args=(engine, COUNT))
            waiting.start()
            for _ in range(3000):
                if pool.waiting:
                    break
                time.sleep(0.01)
            with pytest.raises(SqlBusyError, match="all 1 SQL workers are busy") as refused:
                run_sql(engine, COUNT, limits=limits, pool=pool)
            assert refused.value.retry_after == 3
            running.join(60)
            waiting.join(60)
            [timed_out] = [o for o in outcome if isinstance(o, QueryTimeoutError)]
            assert [o for o in outcome if o is not timed_out] == [[{"n": 5}]]  # the one that waited got its turn
    finally:
        pool.close()


def test_memory_limit_setting_must_be_a_size() -> None:
    assert parse_bytes("256MB") == 256_000_000
    assert parse_bytes("2GiB") == 2 * 1024**3
    assert parse_bytes("1.5 GB") == 1_500_000_000
    with pytest.raises(pydantic.ValidationError, match="not a size DuckDB reads"):
        QuerySettings(sql_memory_limit="lots")


def test_a_warm_sandbox_answers_only_what_its_job_may_see(make_settings: SettingsFactory) -> None:
    """One worker keeps the sandbox of its last answer warm for a job over the same views (`warm_key`): a narrower
    scope, a later snapshot, rows of a job's own and a query that ran out of time must each get their own rows,
    whatever ran on that worker before."""
    settings = small_lake(make_settings)
    limits = SqlLimits.from_settings(settings)
    pool = SqlWorkerPool(1)
    by_exchange = "SELECT exchange, count(*) AS n FROM trades GROUP BY exchange ORDER BY exchange"
    lake = open_lake(settings)

    def counts(engine: QueryEngine, **extra: Any) -> dict[str, int]:
        rows = run_sql(engine, by_exchange, limits=limits, pool=pool, **extra).table.to_pylist()
        return {row["exchange"]: row["n"] for row in rows}

    def asx_only(_scope: str) -> frozenset[str]:
        return frozenset({"asx"})

    try:
        with QueryEngine.from_settings(settings, cache=False) as engine:
            first = lake.table("trades").metadata.current_snapshot_id
            stored = Counter(row["exchange"] for row in lake.rows("trades"))
            assert counts(engine) == stored
            assert counts(engine) == stored  # the same job again: the warm sandbox, the same answer
            assert counts(engine, readable=asx_only) == {"asx": stored["asx"]}
            assert counts(engine) == stored
            more = [
                trade("RIO", seq, SEED_DAY + timedelta(hours=3, seconds=seq), "99.5", "2", "nyse")
                for seq in range(1, 4)
            ]
            lake.append("trades", more)
            assert counts(engine) == stored + Counter(row["exchange"] for row in more)
            assert counts(engine, as_of_snapshot=first) == stored
            with pytest.raises(QueryTimeoutError):
                run_sql(engine, ENDLESS, limits=limits, pool=pool, as_of_snapshot=first)
            assert counts(engine, as_of_snapshot=first) == stored
            # No quotes table narrowed to nyse has rows: the job registers an empty table of its own (Arrow IPC).
            empty = "SELECT count(*) AS n FROM quotes"
            nyse = run_sql(engine, empty, limits=limits, pool=pool, readable=lambda _s: frozenset({"nyse"}))
            assert nyse.table.to_pylist() == [{"n": 0}]
            assert run_sql(engine, empty, limits=limits, pool=pool).table.to_pylist() == [{"n": 1}]
            assert len(pool.pids()) == 1
    finally:
        pool.close()
