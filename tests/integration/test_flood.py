"""Floods of bad credentials against a real `python -m k2_api` (uvicorn), with the catalog in a PostgreSQL database of
the test's own and the failure budgets in the real Redis, all on loopback and bounded (issue 14, finding 3):
refused requests are cut off per client before any database work, counted rather than stored a row each, and key
lookups cannot hold up the audit writes of valid requests. Latency is printed, not asserted (bench/flood.py)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import sqlalchemy

from k2_core.access.audit import AuditLog
from k2_core.access.auth import KeyStore
from k2_core.lake.sqldb import catalog_engine
from k2_core.settings import Settings
from tests.support.api import api_server
from tests.support.flood import FLOOD_SOURCES, bad_credentials, flood, query_repeatedly, refused_total
from tests.support.lake import seed
from tests.support.waits import wait_for

SettingsFactory = Callable[..., Settings]
PATH, PARAMS = "/v1/trades", {"symbol": "BHP", "exchange": "asx", "start": "2024-01-02", "end": "2024-01-03"}
FLOOD = 2000
BURST = 30  # K2_AUTH_CLIENT_FAILURE_BURST's default
SECRET = "k2-flood-test-hs256-secret-of-32-bytes+"


def private_catalog(make_settings: SettingsFactory, uri: str) -> Settings:
    settings = make_settings(catalog="postgres")
    settings.catalog.uri = uri
    settings.query.tail_enabled = False
    seed(settings)
    return settings


def new_token(settings: Settings, *scopes: str) -> tuple[str, str]:
    engine = catalog_engine(settings)
    try:
        key, token = KeyStore(engine).create("desk", scopes, datetime.now(UTC) + timedelta(hours=1))
    finally:
        engine.dispose()
    return key.key_id, token


def test_a_flood_of_bad_credentials_never_degrades_a_valid_key(
    make_settings: SettingsFactory, private_postgres: str, tmp_path: Path
) -> None:
    settings = private_catalog(make_settings, private_postgres)
    key_id, token = new_token(settings, "read:trades:asx")
    env = {"K2_AUTH_MODE": "on", "K2_AUTH_RATE_LIMIT_PER_SECOND": "0"}  # the key's own limit is not what is tested
    with api_server(settings, tmp_path / "api.log", **env) as url:
        quiet = query_repeatedly(url, token, PATH, PARAMS, count=200)
        done, flooded = threading.Event(), Counter[int]()

        def attack() -> None:
            try:
                flooded.update(flood(url, PATH, PARAMS, total=FLOOD))
            finally:
                done.set()

        began = time.monotonic()
        attacker = threading.Thread(target=attack)
        attacker.start()
        busy = query_repeatedly(url, token, PATH, PARAMS, count=50, until=done)
        attacker.join(120)
        took = time.monotonic() - began
        metrics = httpx.get(f"{url}/metrics").text
    print(f"\nvalid key, no flood:     {quiet.summary()}")
    print(f"valid key, during flood: {busy.summary()}")
    print(f"flood: {FLOOD} requests from {len(FLOOD_SOURCES)} clients in {took:.1f} s: {dict(sorted(flooded.items()))}")

    # The valid key: every request answered with its data, none refused, none a 503.
    assert quiet.statuses == {200: len(quiet.seconds)}
    assert busy.statuses == {200: len(busy.seconds)}
    # The flood: all refused, most of it before any database work (429: the client's failure budget is spent).
    assert sum(flooded.values()) == FLOOD
    assert set(flooded) <= {401, 429}, flooded
    assert flooded[429] >= FLOOD // 2, flooded
    # Counted, every one.
    assert refused_total(metrics, ("no_credentials", "bad_credentials", "client_failures")) == FLOOD
    engine = catalog_engine(settings)
    try:
        entries = [e.as_dict() for e in AuditLog(engine).tail(100_000)]
    finally:
        engine.dispose()
    # Stored: per attacker, a first row for each status (parameters cut) and one summary of the rest.
    attacks = [e for e in entries if e["client"] in FLOOD_SOURCES]
    assert len(attacks) <= 4 * len(FLOOD_SOURCES), len(attacks)
    assert all(len(json.dumps(e["params"])) <= 300 for e in attacks)
    assert sum(e["params"].get("refused", 1) for e in attacks) == FLOOD
    assert {(e["principal"], e["status"]) for e in attacks} == {("anonymous", 401), ("anonymous", 429)}
    served = [e for e in entries if e["principal"].startswith(f"key:{key_id}:")]
    assert [e["status"] for e in served] == [200] * (len(quiet.seconds) + len(busy.seconds))


def test_key_lookups_held_up_never_hold_up_the_audit_writes_of_valid_requests(
    make_settings: SettingsFactory, private_postgres: str, tmp_path: Path
) -> None:
    settings = private_catalog(make_settings, private_postgres)
    new_token(settings, "admin")  # creates the key table
    good = jwt.encode(
        {"sub": "desk", "scope": "read:trades:asx", "aud": "k2", "exp": datetime.now(UTC) + timedelta(minutes=5)},
        SECRET,
        algorithm="HS256",
    )
    env = {"K2_AUTH_MODE": "on", "K2_AUTH_JWT_SECRET": SECRET, "K2_AUTH_RATE_LIMIT_PER_SECOND": "0"}
    locker = sqlalchemy.create_engine(private_postgres)
    waiting = sqlalchemy.text("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'api_keys'::regclass")
    with api_server(settings, tmp_path / "api.log", **env) as url, ThreadPoolExecutor(20) as pool:
        with locker.connect() as lock, locker.connect() as look:
            lock.execute(sqlalchemy.text("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"))
            # Twenty well-formed keys: their lookups wait on the lock, holding every connection the lookups may use.
            stuck = [
                pool.submit(httpx.get, url + PATH, params=PARAMS, headers=bad_credentials(0), timeout=60)
                for _ in range(20)
            ]
            wait_for(lambda: look.execute(waiting).scalar_one() >= 8, timeout=30, interval=0.2)
            # A JWT needs no lookup: its request still gets its audit row written, and its data.
            answer = httpx.get(url + PATH, params=PARAMS, headers={"Authorization": f"Bearer {good}"}, timeout=8)
            assert answer.status_code == 200, answer.text
            assert answer.json()["count"] == 3
            lock.rollback()
        assert {future.result().status_code for future in stuck} <= {401, 503}
    locker.dispose()
