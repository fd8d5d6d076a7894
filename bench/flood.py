"""A valid key's latency with and without a flood of bad credentials (issue 14, finding 3): a real `python -m k2_api`
with authentication on, its catalog in PostgreSQL (a database of its own, dropped afterwards) or SQLite, the
failure budgets in Redis, all on loopback.

    .venv/bin/python -m bench.flood                       # 2,000 bad-credential requests, PostgreSQL catalog
    .venv/bin/python -m bench.flood --flood 10000 --catalog sqlite

The valid key (127.0.0.1) queries /v1/trades one request after another: `--queries` times alone, then on for as
long as the flood lasts. The flood comes from eight other loopback addresses (127.0.0.2-9), `--concurrency`
requests at a time, each with a bad credential of one of four kinds (a well-formed unknown key, none, a malformed
key, an unsigned JWT). Printed: the valid key's p50/p99 and statuses both times, the flood's statuses and rate.
The request driver and the server are the test suite's own (tests/support/flood.py, tests/support/api.py), so
the figures are of what tests/integration/test_flood.py asserts on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from k2_core.access.auth import KeyStore
from k2_core.lake.sqldb import catalog_engine
from k2_core.settings import CatalogSettings, QuerySettings, Settings
from tests.support.api import api_server
from tests.support.databases import private_database
from tests.support.flood import FLOOD_SOURCES, flood, query_repeatedly
from tests.support.lake import seed

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
PATH, PARAMS = "/v1/trades", {"symbol": "BHP", "exchange": "asx", "start": "2024-01-02", "end": "2024-01-03"}


def run(home: Path, catalog_uri: str, total: int, queries: int, concurrency: int) -> None:
    settings = Settings(
        home=home,
        catalog=CatalogSettings(name=f"b{uuid.uuid4().hex[:8]}", uri=catalog_uri),
        query=QuerySettings(tail_enabled=False),
    )
    seed(settings)
    engine = catalog_engine(settings)
    try:
        _, token = KeyStore(engine).create("bench", ["read:trades:asx"], datetime.now(UTC) + timedelta(hours=1))
    finally:
        engine.dispose()
    env = {"K2_AUTH_MODE": "on", "K2_AUTH_RATE_LIMIT_PER_SECOND": "0", "K2_LOG_LEVEL": "WARNING"}
    with api_server(settings, home / "api.log", **env) as url:
        query_repeatedly(url, token, PATH, PARAMS, count=20)  # warm-up
        quiet = query_repeatedly(url, token, PATH, PARAMS, count=queries)
        done, flooded = threading.Event(), Counter[int]()

        def attack() -> None:
            # The flood's client runs in a process of its own at the lowest CPU priority, standing in for a machine
            # of its own: in this one, its GIL and its CPU would slow the valid key's client, not the server.
            try:
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    flooded.update(pool.submit(_nice_flood, url, total, concurrency).result())
            finally:
                done.set()

        began = time.monotonic()
        attacker = threading.Thread(target=attack)
        attacker.start()
        busy = query_repeatedly(url, token, PATH, PARAMS, count=min(queries, 50), until=done)
        attacker.join()
        took = time.monotonic() - began
    print(f"catalog {catalog_uri.split(':')[0]}, flood of {total} from {len(FLOOD_SOURCES)} clients x {concurrency}")
    print(f"  valid key, no flood:     {quiet.summary()}  {dict(quiet.statuses)}")
    print(f"  valid key, during flood: {busy.summary()}  {dict(busy.statuses)}")
    print(f"  flood: {dict(sorted(flooded.items()))} in {took:.1f} s ({total / took:.0f} requests/s)")


def _nice_flood(url: str, total: int, concurrency: int) -> Counter[int]:
    os.nice(19)
    return flood(url, PATH, PARAMS, total=total, concurrency=concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=2000, help="bad-credential requests")
    parser.add_argument("--queries", type=int, default=300, help="valid requests without the flood")
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--catalog", choices=["postgres", "sqlite"], default="postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="k2-flood-") as tmp:
        if args.catalog == "sqlite":
            run(Path(tmp), f"sqlite:///{tmp}/catalog.db", args.flood, args.queries, args.concurrency)
            return
        with private_database(f"{POSTGRES}/test", prefix="k2_bench_") as uri:
            run(Path(tmp), uri, args.flood, args.queries, args.concurrency)


if __name__ == "__main__":
    main()
