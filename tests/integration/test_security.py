"""API security over real HTTP (TestClient, and real uvicorn servers where the socket matters), real SQLite/PostgreSQL
catalog databases and the real Redis: who the client is (socket peer and proxy headers), API keys and JWTs (401 +
WWW-Authenticate), scopes per route and exchange (403), rate limits (429 + Retry-After), the fail-closed audit log
(refusals summarised, old rows pruned, aborted streams counted), `k2 keys` / `k2 audit tail`, and secrets kept out
of logs. Floods: tests/integration/test_flood.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
import sqlalchemy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr
from typer.testing import CliRunner

from k2_api.formats import ROW_COUNT
from k2_api.main import create_app
from k2_core.access.audit import AUDIT_LOG, AuditEntry, AuditLog
from k2_core.access.auth import API_KEYS, KeyStore, auth_banner, hash_token
from k2_core.exceptions import ConfigError
from k2_core.lake.sqldb import catalog_engine
from k2_core.logging import JsonFormatter
from k2_core.read.engine import QueryEngine
from k2_core.settings import REPO_ROOT, AuthSettings, Settings
from tests.support.api import api_server, uvicorn_command
from tests.support.clients import local_client
from tests.support.cursors import cursor_body, resigned_cursor, unsigned_cursor
from tests.support.factories import trade
from tests.support.lake import SEED_DAY, open_lake, seed
from tests.support.ports import free_port, non_loopback_address
from tests.support.waits import wait_for

SettingsFactory = Callable[..., Settings]
SECRET = "k2-test-hs256-secret-of-at-least-32-bytes!"
WINDOW = {"symbol": "BHP", "start": "2024-01-02", "end": "2024-01-03"}


def secured(make_settings: SettingsFactory, catalog: str = "sqlite", **auth: Any) -> Settings:
    settings = make_settings(catalog=catalog)
    settings.query.tail_enabled = False
    settings.auth = AuthSettings(mode="on", **auth)
    seed(settings)
    return settings


def new_key(store: KeyStore, *scopes: str, name: str | None = None) -> tuple[str, str]:
    key, token = store.create(name or f"tester-{uuid.uuid4().hex[:6]}", scopes, datetime.now(UTC) + timedelta(days=1))
    return key.key_id, token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hs256(sub: str, scope: str, *, secret: str = SECRET, **claims: Any) -> str:
    payload = {"sub": sub, "scope": scope, "aud": "k2", "exp": datetime.now(UTC) + timedelta(minutes=5), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def audit_entries(settings: Settings, after_id: int = 0) -> list[dict[str, Any]]:
    """Entries appended after `after_id`, oldest first (PostgreSQL's audit_log is shared with other tests)."""
    engine = catalog_engine(settings)
    try:
        return [e.as_dict() for e in AuditLog(engine).tail(100_000, after_id=after_id)]
    finally:
        engine.dispose()


def last_audit_id(settings: Settings) -> int:
    entries = audit_entries_tail(settings)
    return int(entries[-1]["id"]) if entries else 0


def audit_entries_tail(settings: Settings) -> list[dict[str, Any]]:
    engine = catalog_engine(settings)
    try:
        return [e.as_dict() for e in AuditLog(engine).tail(1)]
    finally:
        engine.dispose()


# ---- configuration ---------------------------------------------------------------------------------------------


def test_auth_off_is_refused_unless_bound_to_loopback(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    settings.api.host = "0.0.0.0"
    settings.auth.mode = "off"
    with pytest.raises(ConfigError, match=r"K2_AUTH_MODE=off is refused: the API binds to 0\.0\.0\.0"):
        create_app(settings)
    settings.auth.mode = "auto"  # the default: on, because the address is reachable from elsewhere
    assert auth_banner(settings).startswith("auth ON")
    settings.api.host = "127.0.0.1"
    assert auth_banner(settings).startswith("auth OFF for direct loopback clients only: a request from any other")
    settings.auth.mode = "off"
    create_app(settings)  # allowed on loopback


def test_the_server_refuses_to_start_with_auth_off_on_a_public_address(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "K2_HOME": str(tmp_path),
        "K2_API_HOST": "0.0.0.0",
        "K2_API_PORT": "1",
        "K2_AUTH_MODE": "off",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "k2_api"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "K2_AUTH_MODE=off is refused" in proc.stderr


# ---- who the client is -----------------------------------------------------------------------------------------


def test_auth_auto_is_decided_on_the_socket_peer_not_the_configured_host(
    make_settings: SettingsFactory, key_store: Callable[[Settings], KeyStore], tmp_path: Path
) -> None:
    # uvicorn's own command line binds 0.0.0.0 while K2_API_HOST keeps its default, 127.0.0.1: only a direct loopback
    # client goes without credentials, whatever host the settings name and however uvicorn treats proxy headers.
    lan = non_loopback_address()
    if lan is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach the server from")
    settings = make_settings()
    seed(settings)
    token = new_key(key_store(settings), "read:trades:asx")[1]
    port, log = free_port(), tmp_path / "uvicorn.log"
    after = last_audit_id(settings)
    with api_server(settings, log, uvicorn_command("0.0.0.0", port), port=port) as local:
        remote = f"http://{lan}:{port}"

        def get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
            return httpx.get(f"{url}/v1/trades", params={**WINDOW, "exchange": "asx"}, headers=headers, timeout=10)

        assert get(local).status_code == 200
        refused = get(remote)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == 'Bearer realm="k2"'
        assert get(remote, bearer(token)).json()["count"] == 3
        # Through a proxy on this host the peer is loopback too; the headers say a proxy forwarded it.
        for proxied in (
            {"X-Forwarded-For": "203.0.113.7"},
            {"X-Forwarded-For": "127.0.0.1"},
            {"Forwarded": "for=127.0.0.1;proto=http"},
            {"X-Real-IP": "127.0.0.1"},
        ):
            assert get(local, proxied).status_code == 401, proxied
        assert get(local, {"X-Forwarded-For": "203.0.113.7", **bearer(token)}).status_code == 200
    assert "auth OFF for direct loopback clients only" in log.read_text()
    refusals = [e for e in audit_entries(settings, after_id=after) if e["status"] == 401]
    assert lan in {e["client"] for e in refusals}


def test_forwarded_clients_are_believed_only_through_trusted_proxies(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    seed(settings)
    log = tmp_path / "api.log"
    with api_server(settings, log, K2_AUTH_TRUSTED_PROXIES='["127.0.0.1"]') as url:

        def status(**headers: str) -> int:
            headers = {name.replace("_", "-"): value for name, value in headers.items()}
            params = {**WINDOW, "exchange": "asx"}
            return httpx.get(f"{url}/v1/trades", params=params, headers=headers, timeout=10).status_code

        assert status() == 200
        assert status(X_Forwarded_For="127.0.0.1") == 200  # a local client, through the trusted local proxy
        assert status(Forwarded='for="[::1]:4711"') == 200
        assert status(X_Forwarded_For="203.0.113.7") == 401
        # Read right to left: the client may write anything first; the proxy appends the address it saw.
        assert status(X_Forwarded_For="127.0.0.1, 203.0.113.7") == 401
        assert status(Forwarded="for=unknown") == 401
        # Every kind of proxy header must agree.
        assert status(X_Forwarded_For="127.0.0.1", X_Real_IP="203.0.113.7") == 401
    assert "trusted proxies: 127.0.0.1/32" in log.read_text()


def test_auth_off_serves_direct_loopback_clients_only(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    settings.query.tail_enabled = False
    settings.auth.mode = "off"
    seed(settings)
    params = {**WINDOW, "exchange": "asx"}
    with local_client(create_app(settings)) as client:
        assert client.get("/v1/trades", params=params).status_code == 200
        refused = client.get("/v1/trades", params=params, headers={"X-Forwarded-For": "203.0.113.7"})
        assert refused.status_code == 403
        assert "serves direct loopback clients only" in refused.json()["detail"]
    with TestClient(create_app(settings), client=("192.0.2.50", 40000)) as client:
        assert client.get("/v1/trades", params=params).status_code == 403


# ---- authentication --------------------------------------------------------------------------------------------


def test_missing_or_bad_credentials_get_401_with_a_challenge(
    make_settings: SettingsFactory, key_store: Callable[[Settings], KeyStore]
) -> None:
    settings = secured(make_settings, jwt_secret=SECRET)
    store = key_store(settings)
    key_id, token = new_key(store, "read:trades:asx")
    revoked_id, revoked = new_key(store, "read:trades:asx")
    store.revoke(revoked_id)
    expired_id, expired = new_key(store, "read:trades:asx")
    with store.engine.begin() as conn:
        conn.execute(
            sqlalchemy.update(API_KEYS)
            .where(API_KEYS.c.key_id == expired_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    params = {**WINDOW, "exchange": "asx"}
    with local_client(create_app(settings)) as client:
        assert client.get("/health").status_code == 200  # public

        none = client.get("/v1/trades", params=params)
        assert none.status_code == 401
        assert none.headers["www-authenticate"] == 'Bearer realm="k2"'

        cases = {
            "wrong secret": (bearer(token[:-4] + "AAAA"), f"invalid API key {key_id}"),
            "revoked": (bearer(revoked), f"API key {revoked_id} is revoked"),
            "expired": (bearer(expired), f"API key {expired_id} is expired"),
            "malformed": (bearer("k2_nothex_x"), "malformed API key"),
            "basic auth": ({"Authorization": "Basic YWxpY2U6cHc="}, "use `Authorization: Bearer"),
            "bad JWT signature": (bearer(hs256("eve", "admin", secret="x" * 40)), "Signature verification failed"),
            "expired JWT": (
                bearer(hs256("eve", "admin", exp=datetime.now(UTC) - timedelta(minutes=5))),
                "Signature has expired",
            ),
            "wrong audience": (bearer(hs256("eve", "admin", aud="other")), "Audience doesn't match"),
            "unsigned JWT": (bearer(jwt.encode({"sub": "eve", "aud": "k2"}, None, algorithm="none")), "'none'"),
        }
        for case, (headers, reason) in cases.items():
            response = client.get("/v1/trades", params=params, headers=headers)
            assert response.status_code == 401, case
            assert reason in response.json()["detail"], (case, response.json())
            assert response.headers["www-authenticate"].startswith('Bearer realm="k2", error="'), case

        ok = client.get("/v1/trades", params=params, headers={"X-API-Key": token})
        assert ok.status_code == 200
        assert ok.json()["count"] == 3


def test_the_docs_pages_and_their_bundled_assets_are_public(make_settings: SettingsFactory) -> None:
    # The assets come from the installed fastapi-offline wheel, so they are served by the API itself, and a
    # browser must get them without credentials for the public /docs and /redoc to work with auth on.
    with local_client(create_app(secured(make_settings))) as client:
        for page in ("/docs", "/redoc"):
            response = client.get(page)
            assert response.status_code == 200, page
            assert response.headers["content-security-policy"].startswith("default-src 'self'"), page
            referenced = re.findall(r'(?:src|href|spec-url|url:)\s*=?\s*["\']([^"\']+)', response.text)
            assert "/openapi.json" in referenced, page
            assert any(url.endswith(".js") for url in referenced), page
            for url in referenced:
                assert url.startswith("/"), (page, url)  # nothing from another host
                assert client.get(url).status_code == 200, (page, url)
        assert client.get("/v1/snapshots").status_code == 401  # while the data still needs a credential


def test_keys_are_stored_hashed(make_settings: SettingsFactory, key_store: Callable[[Settings], KeyStore]) -> None:
    settings = make_settings()
    store = key_store(settings)
    key_id, token = new_key(store, "admin", name="ops")
    assert token.startswith(f"k2_{key_id}_")
    with store.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.select(API_KEYS)).mappings().all()
    stored = json.dumps([dict(r) for r in rows], default=str)
    assert token not in stored
    assert token.split("_", 2)[2] not in stored
    assert rows[0]["token_sha256"] == hash_token(token) == hashlib.sha256(token.encode()).hexdigest()


def test_hs256_bearer_jwts_carry_scopes(make_settings: SettingsFactory) -> None:
    settings = secured(make_settings, jwt_secret=SECRET)
    with local_client(create_app(settings)) as client:
        token = hs256("alice", "read:trades:asx read:gaps")
        assert client.get("/v1/trades", params={**WINDOW, "exchange": "asx"}, headers=bearer(token)).status_code == 200
        assert client.get("/v1/gaps", headers=bearer(token)).status_code == 200
        refused = client.get("/v1/trades", params={**WINDOW, "exchange": "nyse"}, headers=bearer(token))
        assert refused.status_code == 403
        scp = jwt.encode(
            {"sub": "bob", "scp": ["read:quotes:*"], "aud": "k2", "exp": datetime.now(UTC) + timedelta(minutes=1)},
            SECRET,
            algorithm="HS256",
        )
        assert client.get("/v1/quotes", params={**WINDOW, "exchange": "asx"}, headers=bearer(scp)).status_code == 200
    assert {e["principal"] for e in audit_entries(settings)} == {"jwt:alice", "jwt:bob"}


@pytest.fixture
def jwks_issuer() -> Iterator[tuple[str, rsa.RSAPrivateKey]]:
    """A real HTTP server publishing one RSA signing key as a JWKS document."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    document = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json", private
    server.shutdown()
    server.server_close()


def test_rs256_jwts_are_verified_against_the_issuers_jwks(
    make_settings: SettingsFactory, jwks_issuer: tuple[str, rsa.RSAPrivateKey]
) -> None:
    url, private = jwks_issuer
    settings = secured(make_settings, jwks_url=url, jwt_issuer="https://issuer.test")
    claims = {"sub": "svc", "scope": "read:trades:*", "aud": "k2", "iss": "https://issuer.test"}
    params = {**WINDOW, "exchange": "nyse"}
    with local_client(create_app(settings)) as client:
        good = jwt.encode(
            {**claims, "exp": datetime.now(UTC) + timedelta(minutes=5)},
            private,
            algorithm="RS256",
            headers={"kid": "k1"},
        )
        response = client.get("/v1/trades", params=params, headers=bearer(good))
        assert response.status_code == 200
        assert response.json()["count"] == 2

        wrong_issuer = jwt.encode(
            {**claims, "iss": "https://evil.test", "exp": datetime.now(UTC) + timedelta(minutes=5)},
            private,
            algorithm="RS256",
            headers={"kid": "k1"},
        )
        assert client.get("/v1/trades", params=params, headers=bearer(wrong_issuer)).status_code == 401

        # Algorithm confusion: an HS256 token "signed" with the issuer's public key must not pass.
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        signing_input = (
            b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
            + "."
            + b64(json.dumps({**claims, "exp": int(time.time()) + 300}).encode())
        )
        forged = signing_input + "." + b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
        refused = client.get("/v1/trades", params=params, headers=bearer(forged))
        assert refused.status_code == 401
        assert "algorithm 'HS256' is not accepted" in refused.json()["detail"]


# ---- authorisation ---------------------------------------------------------------------------------------------


def test_scopes_per_route_and_exchange(
    make_settings: SettingsFactory, key_store: Callable[[Settings], KeyStore]
) -> None:
    settings = secured(make_settings)
    store = key_store(settings)
    tokens = {
        scope: new_key(store, *scope.split())[1]
        for scope in ("read:trades:asx", "read:trades:*", "read:quotes:asx", "read:gaps", "read:books:asx", "admin")
    }
    routes = {
        "trades@asx": ("/v1/trades", {**WINDOW, "exchange": "asx"}),
        "trades@nyse": ("/v1/trades", {**WINDOW, "exchange": "nyse"}),
        "quotes@asx": ("/v1/quotes", {**WINDOW, "exchange": "asx"}),
        "gaps": ("/v1/gaps", {}),
        "book@asx": ("/v1/book", {"symbol": "BHP", "exchange": "asx"}),
        "book@nyse": ("/v1/book", {"symbol": "IBM", "exchange": "nyse"}),
    }
    allowed = {
        "read:trades:asx": {"trades@asx"},
        "read:trades:*": {"trades@asx", "trades@nyse"},
        "read:quotes:asx": {"quotes@asx"},
        "read:gaps": {"gaps"},
        "read:books:asx": {"book@asx"},
        "admin": set(routes),
    }
    with local_client(create_app(settings)) as client:
        for scope, token in tokens.items():
            for name, (path, params) in routes.items():
                response = client.get(path, params=params, headers=bearer(token))
                if name in allowed[scope]:
                    assert response.status_code == 200, (scope, name, response.text)
                else:
                    assert response.status_code == 403, (scope, name, response.text)
                    assert response.json()["detail"].startswith("missing scope read:"), response.text
                    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]

        # Every exchange asked for must be granted, not only the one the route happens to read.
        both = client.get(
            "/v1/trades",
            params=[*WINDOW.items(), ("exchange", "asx"), ("exchange", "nyse")],
            headers=bearer(tokens["read:trades:asx"]),
        )
        assert both.status_code == 403
        assert "missing scope read:trades:nyse" in both.json()["detail"]
        # No exchange at all needs the wildcard; the route's own validation then answers for the rest.
        assert client.get("/v1/trades", params=WINDOW, headers=bearer(tokens["read:trades:asx"])).status_code == 403
        assert client.get("/v1/trades", params=WINDOW, headers=bearer(tokens["read:trades:*"])).status_code == 422


def test_a_route_missing_from_the_policy_needs_admin(
    make_settings: SettingsFactory, key_store: Callable[[Settings], KeyStore]
) -> None:
    settings = secured(make_settings)
    store = key_store(settings)
    reader, admin = new_key(store, "read:trades:*", "read:gaps")[1], new_key(store, "admin")[1]
    app = create_app(settings)

    @app.get("/v1/new-thing")
    def new_thing() -> dict[str, int]:
        return {"count": 0}

    with local_client(app) as client:
        refused = client.get("/v1/new-thing", headers=bearer(reader))
        assert refused.status_code == 403
        assert refused.json()["detail"].startswith("missing scope admin for /v1/new-thing")
        assert client.get("/v1/new-thing", headers=bearer(admin)).status_code == 200


# ---- rate limits -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("redis_up", [True, False], ids=["redis", "redis-down"])
def test_rate_limit_per_key_answers_429_with_retry_after(
    redis_up: bool, make_settings: SettingsFactory, key_store: Callable[[Settings], KeyStore]
) -> None:
    settings = secured(make_settings, rate_limit_per_second=0.5, rate_limit_burst=3)
    if not redis_up:
        settings.redis.url = "redis://127.0.0.1:1/0"  # nothing listens there: each process counts for itself
    store = key_store(settings)
    limited_id, limited = new_key(store, "read:gaps")
    other = new_key(store, "read:gaps")[1]
    with local_client(create_app(settings)) as client:
        codes = [client.get("/v1/gaps", headers=bearer(limited)).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        refused = client.get("/v1/gaps", headers=bearer(limited))
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) == 2  # one token at 0.5/s
        assert "rate limit of 0.5 requests/s (burst 3) exceeded" in refused.json()["detail"]
        assert client.get("/v1/gaps", headers=bearer(other)).status_code == 200, "limits are per key"
    if redis_up:
        bucket = redis.Redis.from_url(settings.redis.url.get_secret_value()).hgetall(f"k2:ratelimit:key:{limited_id}")
        assert float(bucket[b"tokens"]) < 1


# ---- audit -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_every_data_access_is_audited(
    catalog: str,
    make_settings: SettingsFactory,
    key_store: Callable[[Settings], KeyStore],
    request: pytest.FixtureRequest,
) -> None:
    if catalog == "postgres":
        request.getfixturevalue("postgres_uri")
    settings = secured(make_settings, catalog=catalog)
    store = key_store(settings)
    name = f"auditor-{uuid.uuid4().hex[:8]}"
    key_id, token = new_key(store, "read:trades:asx", name=name)
    tag = "T" + uuid.uuid4().hex[:8].upper()
    began = datetime.now(UTC)
    with local_client(create_app(settings)) as client:
        after = last_audit_id(settings)
        assert client.get("/v1/trades", params={**WINDOW, "exchange": "asx"}, headers=bearer(token)).status_code == 200
        assert client.get("/v1/trades", params={**WINDOW, "exchange": "nyse"}, headers=bearer(token)).status_code == 403
        assert client.get("/v1/gaps", params={"symbol": tag}).status_code == 401
        client.get("/health")
    who = f"key:{key_id}:{name}"
    entries = audit_entries(settings, after_id=after)
    mine = [e for e in entries if e["principal"] == who or e["params"].get("symbol") == tag]
    assert len(mine) == 3
    ok, denied, anonymous = mine
    assert ok["principal"] == denied["principal"] == who
    assert ok["auth"] == "api_key"
    assert (ok["method"], ok["route"], ok["status"], ok["rows"]) == ("GET", "/v1/trades", 200, 3)
    assert ok["params"] == {**WINDOW, "exchange": "asx"}
    assert ok["at"] >= began
    assert ok["at"].tzinfo is not None
    assert ok["duration_ms"] > 0
    assert ok["request_id"]
    assert (denied["status"], denied["rows"], denied["params"]["exchange"]) == (403, None, "nyse")
    assert (anonymous["principal"], anonymous["route"], anonymous["status"]) == ("anonymous", "/v1/gaps", 401)
    assert all(e["route"] != "/health" for e in entries)


@pytest.mark.parametrize("fmt", ["json", "csv", "arrow", "parquet"])
def test_audited_rows_come_from_where_the_answer_is_built_in_every_format(
    fmt: str, make_settings: SettingsFactory
) -> None:
    settings = make_settings()
    settings.query.tail_enabled = False
    seed(settings)
    asks = [
        ("/v1/trades", {**WINDOW, "exchange": "asx"}, 3),
        ("/v1/gaps", {}, 1),
        ("/v1/snapshots", {"table": "trades"}, 1),
    ]
    with local_client(create_app(settings)) as client:
        for route, params, _ in asks:
            response = client.get(route, params={**params, "format": fmt})
            assert response.status_code == 200
            assert "k2-row-count" not in response.headers  # for the audit log only
    entries = audit_entries(settings)
    assert [(e["route"], e["rows"]) for e in entries] == [(route, rows) for route, _, rows in asks]


def test_no_data_is_served_when_the_audit_log_cannot_be_written(make_settings: SettingsFactory) -> None:
    settings = make_settings()  # auth off on loopback: still audited
    settings.query.tail_enabled = False
    seed(settings)
    with local_client(create_app(settings)) as client:
        assert client.get("/v1/trades", params={**WINDOW, "exchange": "asx"}).status_code == 200
        engine = catalog_engine(settings)
        AUDIT_LOG.drop(engine)
        engine.dispose()
        response = client.get("/v1/trades", params={**WINDOW, "exchange": "asx"})
        assert response.status_code == 503
        assert response.json() == {"detail": "the audit log cannot be written; no data is served without it"}
        assert client.get("/health").status_code == 200  # public routes are not audited


def test_streamed_responses_are_audited_with_their_row_count(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    settings.query.tail_enabled = False
    app = create_app(settings)

    @app.get("/v1/stream-test")
    def stream_test() -> StreamingResponse:
        def lines() -> Iterator[bytes]:
            for chunk in range(3):
                yield b"".join(b'{"n":%d}\n' % (chunk * 10 + i) for i in range(chunk + 1))

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    with local_client(app) as client:
        response = client.get("/v1/stream-test", params={"date": "2024-01-02"})
        assert response.status_code == 200
        assert len(response.text.splitlines()) == 6
    (entry,) = [e for e in audit_entries(settings) if e["route"] == "/v1/stream-test"]
    assert (entry["principal"], entry["auth"], entry["rows"], entry["params"]) == (
        "anonymous",
        "none",
        6,
        {"date": "2024-01-02"},
    )


def test_an_aborted_replay_records_the_rows_it_sent(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    total = 100_000  # ~25 MB of NDJSON: far more than the socket buffers hold once the client stops reading
    day = [
        trade("BHP", seq, SEED_DAY + timedelta(milliseconds=seq), ingestion_timestamp=SEED_DAY)
        for seq in range(1, total + 1)
    ]
    open_lake(settings).append("trades", day)
    with api_server(settings, tmp_path / "api.log") as url:
        after = last_audit_id(settings)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no autotuning: the server soon waits
            sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            sock.sendall(b"GET /v1/replay?symbol=BHP&exchange=asx&date=2024-01-02 HTTP/1.1\r\nHost: k2\r\n\r\n")
            received = b""
            while received.count(b"\n") < 1000:
                received += sock.recv(64 * 1024)
        # The client has gone mid-stream: the audit row gets the rows handed to the server until then.

        def replays() -> list[dict[str, Any]]:
            return [e for e in audit_entries(settings, after_id=after) if e["route"] == "/v1/replay"]

        wait_for(lambda: bool(replays()) and replays()[0]["rows"] is not None, timeout=30, interval=0.2)
    (entry,) = replays()
    assert entry["status"] == 200
    delivered = sum(1 for line in received.split(b"\n") if line.startswith(b'{"'))
    assert 1000 <= delivered <= entry["rows"] < total


def test_the_audit_log_never_parses_a_response_body(make_settings: SettingsFactory) -> None:
    # Row counts come from where an answer is built (`K2-Row-Count`), or from NDJSON's line ends as a stream
    # passes: a JSON body is never parsed again to count its rows (issue 14, finding 7).
    settings = make_settings()
    settings.query.tail_enabled = False
    seed(settings)
    app = create_app(settings)
    body = {"data": [{"n": 1}, {"n": 2}, {"n": 3}], "count": 3}

    @app.get("/v1/uncounted")
    def uncounted() -> JSONResponse:
        return JSONResponse(body)

    @app.get("/v1/counted")
    def counted(response: Response) -> JSONResponse:
        return JSONResponse(body, headers={ROW_COUNT: "2"})

    with local_client(app) as client:
        for route in ("/v1/uncounted", "/v1/counted"):
            response = client.get(route)
            assert response.json() == body
            assert "k2-row-count" not in response.headers
        summary = client.get("/v1/summary", params={"symbol": "BHP", "exchange": "asx", "date": "2024-01-02"})
        assert summary.status_code == 200
    rows = {e["route"]: e["rows"] for e in audit_entries(settings)}
    assert rows == {"/v1/uncounted": None, "/v1/counted": 2, "/v1/summary": 1}


def test_refusals_are_summarised_per_client_not_stored_in_full(
    make_settings: SettingsFactory, key_store: Callable[[Settings], KeyStore]
) -> None:
    settings = secured(make_settings, client_failure_burst=5, client_failures_per_second=0.01)
    settings.audit.refusal_window_seconds = 0.5
    token = new_key(key_store(settings), "read:trades:asx")[1]
    params = {**WINDOW, "exchange": "asx", "pad": "x" * 400}
    before = {reason: refused(reason) for reason in ("no_credentials", "client_failures")}
    with local_client(create_app(settings)) as attacker:
        codes = [attacker.get("/v1/trades", params=params).status_code for _ in range(40)]
        assert codes == [401] * 5 + [429] * 35
        blocked = attacker.get("/v1/trades", params=params, headers=bearer(token))
        assert blocked.status_code == 429  # refused before its key is even looked up
        assert "too many failed authentications from this client" in blocked.json()["detail"]
        assert int(blocked.headers["retry-after"]) > 1
        # Another client is another budget, and the summaries of closed windows are written as the API runs.
        with TestClient(create_app(settings), client=("192.0.2.60", 40000)) as elsewhere:
            assert elsewhere.get("/v1/trades", params=params, headers=bearer(token)).status_code == 200

            def summarised() -> int:
                return sum(1 for e in audit_entries(settings) if "refused" in e["params"])

            wait_for(lambda: summarised() == 2, timeout=10, interval=0.2)
    assert refused("no_credentials") - before["no_credentials"] == 5
    assert refused("client_failures") - before["client_failures"] == 36
    refusals = [e for e in audit_entries(settings) if e["principal"] == "anonymous"]
    assert [(e["status"], e["params"].get("refused")) for e in refusals] == [
        (401, None),
        (429, None),
        (401, 4),
        (429, 35),
    ]
    first = refusals[0]
    assert first["params"] == {"truncated": first["params"]["truncated"]}  # cut, not 2,000 characters
    assert len(first["params"]["truncated"]) <= 256
    assert refusals[2]["params"]["since"] == first["at"].isoformat()


def test_a_refused_client_is_turned_away_before_routing(make_settings: SettingsFactory) -> None:
    settings = secured(make_settings, client_failure_burst=2, client_failures_per_second=0.01)
    params = {**WINDOW, "exchange": "asx"}
    before = refused("client_failures")
    with local_client(create_app(settings)) as attacker:
        assert [attacker.get("/v1/trades", params=params).status_code for _ in range(3)] == [401, 401, 429]
        # This process now knows the client is refused: even a path no route matches gets the 429, not a 404,
        # because the request never reaches the router (nor a worker thread, nor Redis).
        nowhere = attacker.get("/v1/no-such-route")
        assert nowhere.status_code == 429, nowhere.text
        assert "too many failed authentications" in nowhere.json()["detail"]
        assert int(nowhere.headers["retry-after"]) > 1
        assert attacker.get("/health").status_code == 200  # public routes stay open
    assert refused("client_failures") - before == 2
    # Another API process has not seen the refusal: it routes the request (404), while the shared budget in
    # Redis still refuses the client on a real route.
    with local_client(create_app(settings)) as same_client_elsewhere:
        assert same_client_elsewhere.get("/v1/no-such-route").status_code == 404
        assert same_client_elsewhere.get("/v1/trades", params=params).status_code == 429


def refused(reason: str) -> float:
    """This process's `k2_api_refused_requests_total{reason}` so far."""
    return REGISTRY.get_sample_value("k2_api_refused_requests_total", {"reason": reason}) or 0.0


def test_the_api_prunes_audit_rows_past_their_retention(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    settings.query.tail_enabled = False
    settings.audit.retention_days = 30
    engine = catalog_engine(settings)
    log = AuditLog(engine)
    now = datetime.now(UTC)
    entries = [
        AuditEntry(at, "anonymous", "none", "GET", "/v1/gaps", {}, 200, 1, 1.0)
        for at in (now - timedelta(days=31), now - timedelta(days=29))
    ]
    old, recent = (log.append(entry) for entry in entries)
    try:
        with local_client(create_app(settings)):
            wait_for(lambda: [e.id for e in log.tail(10)] == [recent], timeout=30, interval=0.2)
    finally:
        engine.dispose()
    assert old != recent


# ---- secrets stay out of logs ----------------------------------------------------------------------------------


def test_tokens_never_reach_the_json_logs(
    make_settings: SettingsFactory, key_store: Callable[[Settings], KeyStore]
) -> None:
    settings = secured(make_settings, jwt_secret=SECRET, rate_limit_per_second=0.1, rate_limit_burst=2)
    store = key_store(settings)
    _, token = new_key(store, "read:trades:asx")
    jwt_token = hs256("carol", "read:gaps")
    secrets = [token, token.split("_", 2)[2], jwt_token, jwt_token.split(".")[2], SECRET]
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter("api"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with local_client(create_app(settings)) as client:
            params = {**WINDOW, "exchange": "asx"}
            for headers in (
                bearer(token),  # 200
                bearer(token[:-3] + "xyz"),  # 401 wrong secret
                {"X-API-Key": token},  # 200
                bearer(token),  # 429 (burst 2)
                bearer(jwt_token),  # 403 (scope) on trades
                bearer(jwt_token[:-2] + "AA"),  # 401 bad signature
            ):
                client.get("/v1/trades", params=params, headers=headers)
            client.get("/v1/gaps", headers=bearer(jwt_token))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    logged = sink.getvalue()
    assert "authentication refused" in logged
    assert "rate limited" in logged
    for secret in secrets:
        assert secret not in logged
    assert SECRET not in repr(settings)
    assert SECRET not in settings.model_dump_json()
    audit = json.dumps(audit_entries(settings), default=str)
    for secret in secrets:
        assert secret not in audit


# ---- CLI -------------------------------------------------------------------------------------------------------


def test_keys_and_audit_cli(make_settings: SettingsFactory, tmp_path: Path) -> None:
    from k2_cli.main import app as cli

    settings = secured(make_settings)
    env = {"K2_HOME": str(settings.home)}
    runner = CliRunner()

    created = runner.invoke(cli, ["keys", "create", "--name", "dana", "--scope", "read:trades:asx,read:gaps"], env=env)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("k2_")
    assert "shown" not in created.stdout  # the notice goes to stderr; stdout is the token alone
    key_id = token.split("_")[1]

    listed = runner.invoke(cli, ["keys", "list"], env=env)
    assert listed.exit_code == 0
    assert key_id in listed.stdout
    assert "active" in listed.stdout
    assert token not in listed.stdout

    bad = runner.invoke(cli, ["keys", "create", "--name", "x", "--scope", "read:everything"], env=env)
    assert bad.exit_code == 2
    assert "unknown scope 'read:everything'" in bad.stderr
    past = runner.invoke(cli, ["keys", "create", "--name", "x", "--scope", "admin", "--expires", "2001-01-01"], env=env)
    assert past.exit_code == 2
    assert "is in the past" in past.stderr

    with local_client(create_app(settings)) as client:
        assert client.get("/v1/gaps", headers=bearer(token)).status_code == 200
        assert runner.invoke(cli, ["keys", "revoke", key_id], env=env).exit_code == 0
        assert client.get("/v1/gaps", headers=bearer(token)).status_code == 401
    again = runner.invoke(cli, ["keys", "revoke", key_id], env=env)
    assert again.exit_code == 2
    assert "already revoked" in again.stderr

    tail = runner.invoke(cli, ["audit", "tail", "-n", "2"], env=env)
    assert tail.exit_code == 0, tail.output
    lines = tail.stdout.strip().splitlines()
    assert len(lines) == 2
    assert f"key:{key_id}:dana GET /v1/gaps {{}} -> 200 rows=1" in lines[0]
    assert "anonymous GET /v1/gaps {} -> 401 rows=-" in lines[1]

    # --follow prints entries appended after it started.
    follower = subprocess.Popen(
        [sys.executable, "-m", "k2_cli.main", "audit", "tail", "-n", "1", "--follow", "--interval", "0.2"],
        env={**os.environ, **env, "COLUMNS": "300"},
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert "/v1/gaps" in follower.stdout.readline()
        with local_client(create_app(settings)) as client:
            client.get("/v1/trades", params={**WINDOW, "exchange": "asx"}, headers=bearer(token))
        followed = follower.stdout.readline()
        assert "GET /v1/trades" in followed
        assert "-> 401" in followed
    finally:
        follower.terminate()
        follower.wait(10)


def test_caller_input_cannot_break_or_inject_response_headers(
    make_settings: SettingsFactory, key_store: Callable[[Settings], KeyStore]
) -> None:
    settings = secured(make_settings, jwt_secret=SECRET)
    token = new_key(key_store(settings), "read:trades:asx")[1]

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    odd_alg = b64(json.dumps({"alg": 'x"\r\nX-Evil: 1\u00fc'}).encode()) + "." + b64(b"{}") + ".c2ln"
    with local_client(create_app(settings), raise_server_exceptions=False) as client:
        refused = client.get(
            "/v1/trades", params={**WINDOW, "exchange": 'asx"\r\nX-Evil: 1\u00e9'}, headers=bearer(token)
        )
        assert refused.status_code == 403
        assert "x-evil" not in refused.headers
        assert refused.headers["www-authenticate"].endswith('scope="read:trades:asx???X-Evil: 1?"')
        bad_jwt = client.get("/v1/trades", params={**WINDOW, "exchange": "asx"}, headers=bearer(odd_alg))
        assert bad_jwt.status_code == 401
        assert "x-evil" not in bad_jwt.headers
        assert "\r" not in bad_jwt.headers["www-authenticate"]


# ---- scopes cover every column a response carries --------------------------------------------------------------


def test_with_quote_needs_the_quotes_scope_of_the_exchange_too(
    make_settings: SettingsFactory, key_store: Callable[[Settings], KeyStore]
) -> None:
    settings = secured(make_settings)
    store = key_store(settings)
    refused_scopes = ("read:trades:asx", "read:trades:asx read:quotes:nyse", "read:trades:* read:quotes:nyse")
    allowed_scopes = ("read:trades:asx read:quotes:asx", "read:trades:* read:quotes:*", "admin")
    tokens = {scopes: new_key(store, *scopes.split())[1] for scopes in refused_scopes + allowed_scopes}
    asx = {**WINDOW, "exchange": "asx"}
    with local_client(create_app(settings)) as client:
        for scopes in refused_scopes:
            headers = bearer(tokens[scopes])
            refused = client.get("/v1/trades", params={**asx, "with_quote": "true"}, headers=headers)
            assert refused.status_code == 403, (scopes, refused.text)
            assert refused.json()["detail"].startswith("missing scope read:quotes:asx for /v1/trades"), refused.text
            assert refused.headers["www-authenticate"].endswith('scope="read:quotes:asx"')
            assert "45.1" not in refused.text  # the seeded bid
            # Every spelling the route reads as true needs it, and so does a true among repeated values.
            for value in ("1", "on", "yes", "True", "t", "Y"):
                assert client.get("/v1/trades", params={**asx, "with_quote": value}, headers=headers).status_code == 403
            repeated = [*asx.items(), ("with_quote", "false"), ("with_quote", "true")]
            assert client.get("/v1/trades", params=repeated, headers=headers).status_code == 403
            # The trades themselves stay readable.
            for plain in (asx, {**asx, "with_quote": "false"}, {**asx, "with_quote": "0"}):
                response = client.get("/v1/trades", params=plain, headers=headers)
                assert response.status_code == 200, (scopes, plain, response.text)
                assert "bid_price" not in response.json()["data"][0]
        for scopes in allowed_scopes:
            quoted = client.get("/v1/trades", params={**asx, "with_quote": "true"}, headers=bearer(tokens[scopes]))
            assert quoted.status_code == 200, (scopes, quoted.text)
            assert Decimal(quoted.json()["data"][0]["bid_price"]) == Decimal("45.1"), quoted.text


# ---- signed cursors --------------------------------------------------------------------------------------------


def test_cursors_are_signed_and_every_bad_one_is_a_400(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    settings.query.tail_enabled = False
    seed(settings)
    other = settings.model_copy(deep=True)  # another installation: same data, its own cursor secret
    other.query = other.query.model_copy(update={"cursor_secret": SecretStr("another-installation-" + "x" * 32)})
    pages = {
        "/v1/trades": {**WINDOW, "exchange": "asx", "limit": 1},
        "/v1/ohlcv": {**WINDOW, "exchange": "asx", "interval": "1s", "limit": 1},
    }
    with (
        local_client(create_app(settings), raise_server_exceptions=False) as client,
        local_client(create_app(other), raise_server_exceptions=False) as elsewhere,
    ):
        for route, params in pages.items():
            issued = client.get(route, params=params).json()["next_cursor"]
            assert client.get(route, params={**params, "cursor": issued}).status_code == 200
            body = cursor_body(issued)
            rewound = {**body, "a": [body["a"][0] - 1, *([0] if len(body["a"]) == 2 else [])]}
            signature = issued.rpartition(".")[2]
            bad = {
                "a position past every date": unsigned_cursor({**body, "a": [10**18, *body["a"][1:]]}),
                "a position past int64": unsigned_cursor({**body, "a": [2**63, *body["a"][1:]]}),
                "rewound to read a row again": unsigned_cursor(rewound),
                "rewound, the signature kept": resigned_cursor(issued, rewound),
                "the signature altered": issued[: -len(signature)] + signature[::-1],
                "the signature dropped": issued.rpartition(".")[0] or issued + "x",
                "another installation's": elsewhere.get(route, params=params).json()["next_cursor"],
                "very long": issued + "A" * 5000,
                "not base64": "%%%",
                "not ASCII": "\u00e9t\u00e9",
            }
            for case, cursor in bad.items():
                response = client.get(route, params={**params, "cursor": cursor})
                assert response.status_code == 400, (route, case, response.status_code, response.text)
                assert response.json()["detail"].startswith("cursor "), (route, case, response.text)


def test_one_cursor_secret_per_home_shared_by_the_api_and_the_cli(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    settings.query.tail_enabled = False
    seed(settings)
    asx = {**WINDOW, "exchange": "asx", "limit": 1}
    with local_client(create_app(settings)) as client:
        issued = client.get("/v1/trades", params=asx).json()["next_cursor"]
    secret = settings.home / "cursor.key"
    assert secret.stat().st_mode & 0o777 == 0o600
    # The CLI's engine (another process of the same installation) reads the same file and continues the page.
    with QueryEngine.from_settings(settings, cache=False) as engine:
        query = engine.market_query("BHP", "asx", WINDOW["start"], WINDOW["end"], 1)
        assert engine.fetch("trades", query, cursor=issued).table.column("exchange_sequence_number").to_pylist() == [2]


# ---- secrets stay out of repr and logs -------------------------------------------------------------------------


def test_no_secret_reaches_repr_or_the_logs_of_a_startup(
    make_settings: SettingsFactory,
    key_store: Callable[[Settings], KeyStore],
    postgres_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tag = uuid.uuid4().hex[:10]
    passwords = {
        "catalog": f"pg-pass-{tag}",
        "redis": f"redis-pass-{tag}",
        "dagster": f"dagster-pass-{tag}",
        "registry": f"registry-pass-{tag}",
    }
    secrets = {
        # PostgreSQL here trusts local connections, so the password is sent nowhere but must still stay hidden.
        "K2_CATALOG_URI": postgres_uri.replace("postgres@", f"postgres:{passwords['catalog']}@"),
        "K2_REDIS_URL": f"redis://k2:{passwords['redis']}@127.0.0.1:6379/0",
        "K2_MAINTENANCE_DAGSTER_POSTGRES_URL": f"postgresql://k2:{passwords['dagster']}@127.0.0.1:5432/dagster",
        "K2_KAFKA_SCHEMA_REGISTRY_URL": f"http://k2:{passwords['registry']}@127.0.0.1:1",
        "K2_AUTH_JWT_SECRET": f"jwt-secret-{tag}-of-at-least-32-bytes",
        "K2_S3_ACCESS_KEY_ID": f"AKIA{tag.upper()}",
        "K2_S3_SECRET_ACCESS_KEY": f"s3-secret-{tag}",
        "K2_QUERY_CURSOR_SECRET": f"cursor-secret-{tag}-of-at-least-32-bytes",
    }
    hidden = [*secrets.values(), *passwords.values()]

    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    from_env = Settings()
    for shown in (repr(from_env), str(from_env), from_env.model_dump_json(), repr(from_env.model_dump())):
        for secret in hidden:
            assert secret not in shown, (secret, shown)
    assert from_env.catalog_uri.get_secret_value() == secrets["K2_CATALOG_URI"]

    settings = make_settings(catalog="postgres")
    settings.query.tail_enabled = False
    seed(settings)
    token = new_key(key_store(settings), "read:trades:asx")[1]
    log = tmp_path / "api.log"
    with api_server(settings, log, **secrets, K2_AUTH_MODE="on", K2_LOG_LEVEL="DEBUG") as url:
        params = {**WINDOW, "exchange": "asx", "limit": 1}
        first = httpx.get(f"{url}/v1/trades", params=params, headers=bearer(token), timeout=10)
        assert first.status_code == 200, first.text
        nxt = {**params, "cursor": first.json()["next_cursor"]}
        assert httpx.get(f"{url}/v1/trades", params=nxt, headers=bearer(token), timeout=10).status_code == 200
        assert httpx.get(f"{url}/v1/trades", params=params, headers=bearer(token[:-2] + "xx")).status_code == 401
        assert httpx.get(f"{url}/v1/gaps", headers=bearer(hs256("eve", "read:gaps"))).status_code == 401
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(r.get("message") == "api started" for r in records), lines
    assert any(r.get("message") == "authentication refused" for r in records), lines
    logged = "\n".join(lines)
    for secret in hidden:
        assert secret not in logged, (secret, [line for line in lines if secret in line])
