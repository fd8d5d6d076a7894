"""API security: who the client is, authentication, per-route and per-exchange scopes, rate limits, and the audit log.

`install_security(app)` wires it all into an app before its routers are included:

* `authorize`, a dependency on every route, looks the matched route template up in `POLICY` to find the scopes
  it needs (`read:trades:<exchange>`, `read:gaps`, ...): one for every table whose columns the response can carry,
  so `/v1/trades?with_quote=true` needs the quotes scope too. Public routes (`PUBLIC`) need nothing; a route in
  neither table needs `admin`, so a new route is never public by accident. Whether credentials are needed is
  decided on the request's real origin (`k2_core.access.clients`: socket peer and proxy headers), not on the
  configured bind address. Before any database work, a client that keeps failing authentication is refused
  (429, `FailureGate`); once refused, the rest of its requests are turned away by `RefusedClientMiddleware`
  before routing, on the event loop, with no thread and no Redis round trip, until its budget refills.
  It answers 401 with `WWW-Authenticate` for missing or bad credentials, 429 with `Retry-After` once a key's
  or a client's budget is spent, and 403 naming the missing scope.
* `AuditMiddleware` appends one `audit_log` row per request to a protected route, before the response leaves:
  if the row cannot be written, the caller gets a 503 instead of the data. Refusals are counted
  (`k2_api_refused_requests_total`); all but a missing scope's are summarised per client
  (`k2_core.access.refusals`) instead. Key lookups and audit writes each have a small connection pool of their
  own; the lifespan writes the summaries and prunes old rows (`audit.retention_days`) as it runs.
* The OpenAPI document gains the security schemes and the 401/403/429/503 answers.

Credentials travel only in headers (`Authorization: Bearer <API key or JWT>`, or `X-API-Key`), never in the
URL, so they never reach access logs or the audit log's parameters; nothing here logs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Request, status
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from k2_api.formats import ROW_COUNT
from k2_core.access.audit import MAX_PARAMS_CHARS, MAX_ROUTE_CHARS, AuditEntry, AuditLog
from k2_core.access.auth import (
    ADMIN,
    JwtVerifier,
    KeyStore,
    Principal,
    allows,
    auth_banner,
    auth_required,
)
from k2_core.access.clients import Origin, Origins
from k2_core.access.ratelimit import FailureGate, RateLimiter
from k2_core.access.refusals import REFUSED_PARAMS_CHARS, RefusalTally
from k2_core.exceptions import AuditError, AuthenticationError, CredentialStoreError, RateLimitError
from k2_core.lake.sqldb import access_engine
from k2_core.logging import REQUEST_ID, get_logger
from k2_core.model.topics import KINDS
from k2_core.settings import Settings

logger = get_logger(__name__)

REALM = "k2"
AUDIT_SCOPE_KEY = "k2.audit"  # where `authorize` leaves the request's audit context for the middleware
PUBLIC = frozenset({"/health", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
ANONYMOUS = Principal(subject="anonymous", method="none")
ROW_COUNT_KEY = ROW_COUNT.lower().encode()
REFUSED = Counter(
    "k2_api_refused_requests_total",
    "Requests to protected routes refused by the API's security: no_credentials, bad_credentials (401), "
    "client_failures (429: the client's failure budget is spent; refused before any database work), "
    "key_rate_limit (429), scope (403), not_local (403: auth off, and the request is not from loopback)",
    ["reason"],
)
# Refusals summarised per client in the audit log instead of a full row each (k2_core.access.refusals).
SUMMARISED = frozenset({"no_credentials", "bad_credentials", "client_failures", "key_rate_limit", "not_local"})


@dataclass(frozen=True)
class Rule:
    """The scopes a route needs: `read:<resource>[:<exchange>]`. `resource_param` names a query parameter that
    picks the resource (replay's `kind=quotes` reads quotes); `joins` maps a flag parameter to another resource whose
    columns the flag adds to the response (`with_quote` adds the quote's bid and ask), which then needs its scope
    too: scopes cover every column a response can carry. `body_scoped` routes (`/v1/sql`) need credentials (when
    the caller needs them at all) but no one scope here: which tables the body reads decides, and the route checks
    them against the principal (`k2_core.read.sql.allowed_exchanges`: 403 naming the scope, rows narrowed to the
    exchanges granted)."""

    resource: str
    per_exchange: bool = True
    resource_param: str | None = None
    joins: tuple[tuple[str, str], ...] = ()
    also: tuple[str, ...] = ()  # resources the response always carries columns of, besides `resource`
    body_scoped: bool = False
    # Query parameters naming the exchanges read: every value of each (a join's right side may be another exchange).
    exchange_params: tuple[str, ...] = ("exchange",)
    # A query parameter that narrows the response to some of `resource` and `also` (latest-on's `kind=quotes`): only
    # those are needed then. Absent, or naming anything else, every one is.
    narrow_param: str | None = None


# What a boolean query parameter may say to mean false (pydantic's spellings); any other value, or any other among
# repeated values, counts as asking for the join, so the scope check never reads a flag more leniently than the route.
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})

POLICY: dict[str, Rule] = {
    "/v1/trades": Rule("trades", joins=(("with_quote", "quotes"),)),
    "/v1/quotes": Rule("quotes"),
    # Bars, day summaries and the last trade are computed from trades.
    "/v1/ohlcv": Rule("trades"),
    "/v1/summary": Rule("trades"),
    "/v1/latest": Rule("trades"),
    # The last trade and the last quote of every instrument: both streams' columns, unless `kind` names one.
    "/v1/latest/all": Rule("trades", also=("quotes",), narrow_param="kind"),
    "/v1/replay": Rule("trades", resource_param="kind"),
    "/v1/book": Rule("books"),
    "/v1/book/series": Rule("books"),
    "/v1/gaps": Rule("gaps", per_exchange=False),
    "/v1/snapshots": Rule("snapshots", per_exchange=False),
    # Joins on time read trades and quotes (or trades) of the exchange and of the right side's: both scopes of each.
    "/v1/asof": Rule("trades", also=("quotes",), exchange_params=("exchange", "right_exchange")),
    "/v1/window": Rule("trades", also=("quotes",), exchange_params=("exchange", "right_exchange")),
    "/v1/markouts": Rule("trades", also=("quotes",)),
    # The SQL names its tables; the route checks each against the principal's scopes.
    "/v1/sql": Rule("sql", per_exchange=False, body_scoped=True),
    # An exchange's trades scope or its quotes scope (either) reads its instruments: the route checks, and narrows
    # a listing of every exchange to those the caller may read (k2_core.access.auth.instrument_exchanges).
    "/v1/instruments": Rule("instruments", per_exchange=False, body_scoped=True),
}


def required_scopes(route: str, request: Request) -> list[str]:
    rule = POLICY.get(route)
    if rule is None:
        return [ADMIN]
    if rule.body_scoped:
        return []
    resource = rule.resource
    if rule.resource_param is not None:
        chosen = request.query_params.get(rule.resource_param)
        if chosen in KINDS:  # anything else is refused by the route's own validation
            resource = chosen
    carried = [resource, *rule.also]
    if rule.narrow_param is not None:
        named = {v.strip() for value in request.query_params.getlist(rule.narrow_param) for v in value.split(",")}
        if named and named <= set(carried):  # anything else is refused by the route's own validation
            carried = [r for r in carried if r in named]
    resources = carried + [
        joined
        for flag, joined in rule.joins
        if any(value.strip().lower() not in _FALSE for value in request.query_params.getlist(flag))
    ]
    if not rule.per_exchange:
        return [f"read:{resource}" for resource in resources]
    # Every value counts, not just the one the route reads: `?exchange=asx&exchange=nyse` needs both.
    exchanges = [e for name in rule.exchange_params for e in request.query_params.getlist(name)] or ["*"]
    return [f"read:{resource}:{exchange}" for resource in resources for exchange in dict.fromkeys(exchanges)]


# ---- per-app state ---------------------------------------------------------------------------------------------


class Security:
    """What `authorize` and the audit middleware share, opened once per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mode = settings.auth.mode
        self.required = auth_required(settings)  # credentials of every client, local or not
        self.origins = Origins(settings.auth.trusted_proxies)
        # Key lookups and audit writes each get a small pool: a flood of bad keys never queues an audit write.
        self.key_engine, self.audit_engine = access_engine(settings), access_engine(settings)
        self.audit = AuditLog(self.audit_engine)
        self.keys = KeyStore(self.key_engine) if self.mode != "off" else None
        self.jwt = JwtVerifier(settings.auth) if self.mode != "off" else None
        auth = settings.auth
        self.limiter = RateLimiter(auth.rate_limit_per_second, auth.rate_limit_burst, settings.redis)
        self.gate = FailureGate(
            auth.client_failures_per_second, auth.client_failure_burst, settings.redis, settings.catalog.name
        )
        self.refusals = RefusalTally(settings.audit.refusal_window_seconds, settings.audit.refusal_max_windows)

    def write_refusals(self, everything: bool = False) -> None:
        """Append the summaries of the refusal windows that have closed (all of them with `everything`)."""
        for entry in self.refusals.due(everything):
            try:
                self.audit.append(entry)
            except AuditError as exc:
                logger.error("refusal summary not written", extra={"error": str(exc), "client": entry.client})

    def prune(self) -> int:
        """Delete the audit rows older than `audit.retention_days` (0 keeps them all)."""
        days = self.settings.audit.retention_days
        if not days:
            return 0
        deleted = self.audit.prune(datetime.now(UTC) - timedelta(days=days))
        if deleted:
            logger.info("audit log pruned", extra={"deleted": deleted, "retention_days": days})
        return deleted

    async def upkeep(self) -> None:
        """Runs beside the app: refusal summaries as their windows close, and the pruning, every so often."""
        tick = min(self.settings.audit.refusal_window_seconds, 5.0)
        next_prune = 0.0
        while True:
            await anyio.to_thread.run_sync(self.write_refusals)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.settings.audit.prune_every_seconds
                try:
                    await anyio.to_thread.run_sync(self.prune)
                except AuditError as exc:
                    logger.error("audit log not pruned", extra={"error": str(exc)})
            await anyio.sleep(tick)

    def close(self) -> None:
        self.write_refusals(everything=True)
        self.limiter.close()
        self.gate.close()
        self.key_engine.dispose()
        self.audit_engine.dispose()


_OPEN_LOCK = threading.Lock()


def security_of(app: FastAPI) -> Security:
    """The app's `Security`, opened by the lifespan, or here on first use when an app runs without one."""
    found: Security | None = getattr(app.state, "security", None)
    if found is None:
        with _OPEN_LOCK:
            found = getattr(app.state, "security", None)
            if found is None:
                found = app.state.security = Security(app.state.settings)
    return found


# ---- authentication and authorisation --------------------------------------------------------------------------


@dataclass
class AuditContext:
    """The request as the audit log sees it; `authorize` fills in the principal once it is known, and marks a
    refusal that is summarised rather than recorded in full."""

    route: str
    method: str
    params: dict[str, Any]
    client: str | None
    principal: Principal = ANONYMOUS
    began: float = field(default_factory=time.perf_counter)
    summarised: bool = False


def _quoted(text: str) -> str:
    """A header-safe quoted string (RFC 6750 allows printable ASCII minus `"` and `\\`): the text may quote
    caller input (an exchange, a JWT's `alg`), which must not break the header or inject another one."""
    return '"' + "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text[:200]) + '"'


def _challenge(error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    parts = [f'Bearer realm="{REALM}"']
    if error:
        parts.append(f"error={_quoted(error)}")
    if description:
        parts.append(f"error_description={_quoted(description)}")
    if scope:
        parts.append(f"scope={_quoted(scope)}")
    return ", ".join(parts)


def _unauthorized(detail: str, error: str | None = "invalid_token") -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": _challenge(error, detail if error else None)},
    )


def _credential(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthorized("use `Authorization: Bearer <API key or JWT>`", error="invalid_request")
        return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


def authenticate(security: Security, request: Request) -> Principal:
    token = _credential(request)
    if token is None:
        raise _unauthorized(
            "credentials required: send an API key or JWT as `Authorization: Bearer <token>`", error=None
        )
    assert security.keys is not None
    assert security.jwt is not None
    try:
        if token.startswith("k2_"):
            return security.keys.verify(token)
        if not security.jwt.enabled:
            raise AuthenticationError("bearer JWTs are not configured here (auth.jwt_secret / auth.jwks_url)")
        return security.jwt.verify(token)
    except AuthenticationError as exc:
        logger.info("authentication refused", extra={"reason": str(exc), "path": request.url.path})
        raise _unauthorized(str(exc)) from None
    except CredentialStoreError as exc:
        logger.error("credential store unavailable", extra={"error": str(exc)})
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "credentials cannot be checked right now") from None


def authorize(request: Request) -> Principal:
    """The dependency on every route: who is calling, and may they call this route with these parameters?"""
    route = getattr(request.scope.get("route"), "path", request.url.path)
    if route in PUBLIC:
        return ANONYMOUS
    security = security_of(request.app)
    origin = security.origins.of(request.client.host if request.client else None, request.headers.raw)
    params: dict[str, Any] = {k: v[0] if len(v) == 1 else v for k, v in _multi(request).items()}
    params.update(request.path_params)
    context = AuditContext(route, request.method, params, origin.address)
    request.scope[AUDIT_SCOPE_KEY] = context
    if security.mode == "off":
        if origin.local:
            return ANONYMOUS
        raise _refused(
            context,
            "not_local",
            HTTPException(
                status.HTTP_403_FORBIDDEN,
                "authentication is off (K2_AUTH_MODE=off), which serves direct loopback clients only; this request "
                "came from another address or through a proxy",
            ),
        )
    if not security.required and origin.local and not _presents_credentials(request):
        return ANONYMOUS
    principal = context.principal = _authenticated(security, request, context, origin)
    try:
        security.limiter.check(principal.rate_key)
    except RateLimitError as exc:
        logger.warning("rate limited", extra={"principal": principal.subject, "route": route})
        raise _refused(context, "key_rate_limit", _too_many(exc)) from None
    for scope in required_scopes(route, request):
        if not allows(principal.scopes, scope):
            granted = " ".join(sorted(principal.scopes)) or "no scopes"
            logger.info("scope refused", extra={"principal": principal.subject, "route": route, "scope": scope})
            raise _refused(
                context,
                "scope",
                HTTPException(
                    status.HTTP_403_FORBIDDEN,
                    f"missing scope {scope} for {route} (this {principal.method.replace('_', ' ')} grants: {granted})",
                    headers={"WWW-Authenticate": _challenge("insufficient_scope", scope=scope)},
                ),
            )
    return principal


def audit_params(request: Request, **params: Any) -> None:
    """Add what a route read from its body (the SQL of `/v1/sql`) to the request's audit row, which otherwise holds
    the query string only."""
    context: AuditContext | None = request.scope.get(AUDIT_SCOPE_KEY)
    if context is not None:
        context.params.update(params)


def scope_refused(request: Request, scope: str, detail: str) -> HTTPException:
    """The 403 of a scope a route found missing itself (`body_scoped`), counted and challenged as `authorize`'s."""
    REFUSED.labels("scope").inc()
    principal = getattr(request.scope.get(AUDIT_SCOPE_KEY), "principal", ANONYMOUS)
    logger.info("scope refused", extra={"principal": principal.subject, "route": request.url.path, "scope": scope})
    return HTTPException(
        status.HTTP_403_FORBIDDEN, detail, headers={"WWW-Authenticate": _challenge("insufficient_scope", scope=scope)}
    )


def _authenticated(security: Security, request: Request, context: AuditContext, origin: Origin) -> Principal:
    """The caller's principal; a client over its failure budget is refused before its credentials are looked
    at (no database work), and every failure is charged to it."""
    try:
        security.gate.check(origin.key)
    except RateLimitError as exc:  # logged once per client and window, with the audit summary (`_summarised`)
        raise _refused(context, "client_failures", _too_many(exc)) from None
    try:
        return authenticate(security, request)
    except HTTPException as exc:
        if exc.status_code != status.HTTP_401_UNAUTHORIZED:
            raise
        security.gate.charge(origin.key)
        raise _refused(
            context, "bad_credentials" if _presents_credentials(request) else "no_credentials", exc
        ) from None


def _presents_credentials(request: Request) -> bool:
    return "authorization" in request.headers or "x-api-key" in request.headers


def _refused(context: AuditContext, reason: str, exc: HTTPException) -> HTTPException:
    REFUSED.labels(reason).inc()
    context.summarised = reason in SUMMARISED
    return exc


def _too_many(exc: RateLimitError) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": str(int(exc.retry_after))}
    )


def _multi(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key, []).append(value)
    return out


# ---- clients already refused -----------------------------------------------------------------------------------


_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key"})


class RefusedClientMiddleware:
    """Turns away, before routing, the requests of a client this process already knows has spent its failure
    budget (`FailureGate.refused_for`): a flood's 429s then cost the event loop a dictionary lookup each, never a
    worker thread or a Redis round trip that a valid key's request would queue behind. The refusals are counted
    and summarised in the audit log like the gate's own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        security: Security | None = getattr(scope["app"].state, "security", None) if scope["type"] == "http" else None
        if security is None or security.mode == "off" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        origin = security.origins.of(peer[0] if peer else None, scope.get("headers", []))
        headers = dict(scope.get("headers", []))
        anonymous_allowed = not security.required and origin.local and not _CREDENTIAL_HEADERS & headers.keys()
        wait = 0.0 if anonymous_allowed else security.gate.refused_for(origin.key)
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        REFUSED.labels("client_failures").inc()
        error = security.gate.error(wait)
        entry = AuditEntry(
            at=datetime.now(UTC),
            principal=ANONYMOUS.subject,
            auth=ANONYMOUS.method,
            method=scope["method"],
            route=scope["path"][:MAX_ROUTE_CHARS],
            params={},
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            rows=None,
            duration_ms=0.0,
            client=origin.address,
            request_id=REQUEST_ID.get(),
        )
        if security.refusals.add(entry):
            await _write_refusal(security, entry)
        await _send_json(
            send, status.HTTP_429_TOO_MANY_REQUESTS, str(error), [(b"retry-after", str(error.retry_after).encode())]
        )


async def _write_refusal(security: Security, entry: AuditEntry) -> None:
    """The first refusal of a client's window: logged, and its own (cut) audit row written."""
    logger.warning(
        "request refused; more like it from this client are counted in one audit summary",
        extra={"client": entry.client, "principal": entry.principal, "route": entry.route, "status": entry.status},
    )
    try:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(security.audit.append, entry, REFUSED_PARAMS_CHARS)
    except AuditError as exc:
        logger.error("audit log unavailable", extra={"error": str(exc), "route": entry.route, "status": entry.status})


# ---- audit -----------------------------------------------------------------------------------------------------


class AuditMiddleware:
    """Holds a protected route's response until its audit row is written; a stream's row is written when the
    stream starts and its row count filled in when it ends, or when the client goes away."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = AuditedResponse(scope, send)
        try:
            await self.app(scope, receive, response.send)
        except Exception:
            context = scope.get(AUDIT_SCOPE_KEY)
            if context is not None and not response.sent_any:
                await response.append(context, 500)
            raise
        finally:
            await response.close()


class AuditedResponse:
    """One response on its way out through `AuditMiddleware`. Its row count comes from where the response was built
    (the `K2-Row-Count` header, taken off here: it is for the audit log, not the client), so no body is parsed
    again; only NDJSON, streamed as it is produced, is counted as it passes, a row a line, and only once a
    chunk has been handed to the server (`sent_rows`), so an aborted stream records what it delivered."""

    def __init__(self, scope: Scope, send: Send) -> None:
        self.scope = scope
        self._send = send
        self.held: Message | None = None  # the response start, until the audit row is written
        self.rows: int | None = None  # as the response was built with (`K2-Row-Count`), or NDJSON lines so far
        self.counting_lines = False  # NDJSON that came without a count
        self.sent_rows = 0  # NDJSON lines in the chunks the server has taken
        self.entry_id: int | None = None  # a stream's audit row, completed when the stream ends
        self.finished = False  # the stream's row count is written
        self.refused = False  # the stream's audit row could not be written: a 503 went out instead
        self.sent_any = False

    async def send(self, message: Message) -> None:
        context: AuditContext | None = self.scope.get(AUDIT_SCOPE_KEY)
        if message["type"] == "http.response.start":
            self.rows = _take_row_count(message)
        if context is None:
            self.sent_any = True
            await self._send(message)
        elif message["type"] == "http.response.start":
            self.held = message
        elif message["type"] != "http.response.body":
            await self._send(message)
        elif self.held is not None:
            await self._first_body(context, self.held, message)
        elif not self.refused:  # once refused, the rest of the stream is dropped
            lines = self._count(message.get("body", b""))
            if not message.get("more_body", False) and self.entry_id is not None:
                # Before the last chunk: once the client has it, the server may cancel this task.
                await self._finish(context, self.rows)
            await self._send(message)
            self.sent_rows += lines

    async def _first_body(self, context: AuditContext, start: Message, message: Message) -> None:
        self.held = None
        self.sent_any = True
        code = int(start["status"])
        if context.summarised:
            await self._summarised(context, code)
            await self._send(start)
            await self._send(message)
            return
        if self.rows is None and _header(start, b"content-type").lower().startswith("application/x-ndjson"):
            self.rows, self.counting_lines = 0, True
        lines = self._count(message.get("body", b""))
        if message.get("more_body", False):
            self.entry_id = await self.append(context, code)
            if self.entry_id is None and code < 400:
                self.refused = True
                await _send_unavailable(self._send)
                return
        elif await self.append(context, code, self.rows if code < 300 else None) is None and code < 400:
            await _send_unavailable(self._send)
            return
        await self._send(start)
        await self._send(message)
        self.sent_rows += lines

    def _count(self, body: bytes) -> int:
        """The NDJSON lines in `body` (0 unless counting), added to `rows`."""
        if not self.counting_lines:
            return 0
        lines = body.count(b"\n")
        self.rows = (self.rows or 0) + lines
        return lines

    def _entry(self, context: AuditContext, code: int, rows: int | None) -> AuditEntry:
        return AuditEntry(
            at=datetime.now(UTC),
            principal=context.principal.subject,
            auth=context.principal.method,
            method=context.method,
            route=context.route,
            params=context.params,
            status=code,
            rows=rows,
            duration_ms=_elapsed_ms(context),
            client=context.client,
            request_id=REQUEST_ID.get(),
        )

    async def append(self, context: AuditContext, code: int, rows: int | None = None) -> int | None:
        """The new entry's id, or None (logged) when the audit log cannot be written."""
        return await self._write(self._entry(context, code, rows), MAX_PARAMS_CHARS)

    async def _summarised(self, context: AuditContext, code: int) -> None:
        """A refusal before authentication: its own (cut) row only if it opens its client's window."""
        entry = self._entry(context, code, None)
        security = security_of(self.scope["app"])
        if security.refusals.add(entry):
            await _write_refusal(security, entry)

    async def _write(self, entry: AuditEntry, max_params_chars: int) -> int | None:
        try:
            security = security_of(self.scope["app"])
            with anyio.CancelScope(shield=True):
                entry_id = await anyio.to_thread.run_sync(security.audit.append, entry, max_params_chars)
        except AuditError as exc:
            logger.error(
                "audit log unavailable", extra={"error": str(exc), "route": entry.route, "status": entry.status}
            )
            return None
        return int(entry_id)

    async def _finish(self, context: AuditContext, rows: int | None) -> None:
        assert self.entry_id is not None
        self.finished = True
        security = security_of(self.scope["app"])
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(security.audit.finish, self.entry_id, rows, _elapsed_ms(context))
        except AuditError as exc:  # the entry exists; only its row count is missing
            logger.error("audit entry not completed", extra={"error": str(exc), "entry": self.entry_id})

    async def close(self) -> None:
        """A stream that ended without its last chunk (the client went away, or the app failed): its row gets
        the rows the server took."""
        context: AuditContext | None = self.scope.get(AUDIT_SCOPE_KEY)
        if self.entry_id is not None and not self.finished and context is not None:
            await self._finish(context, self.sent_rows if self.counting_lines else None)


def _elapsed_ms(context: AuditContext) -> float:
    return round((time.perf_counter() - context.began) * 1000, 2)


def _take_row_count(start: Message) -> int | None:
    count: int | None = None
    kept = []
    for key, value in start.get("headers", []):
        if bytes(key).lower() == ROW_COUNT_KEY:
            count = int(value)
        else:
            kept.append((key, value))
    start["headers"] = kept
    return count


def _header(start: Message, name: bytes) -> str:
    for key, value in start.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


async def _send_unavailable(send: Send) -> None:
    await _send_json(
        send, status.HTTP_503_SERVICE_UNAVAILABLE, "the audit log cannot be written; no data is served without it"
    )


async def _send_json(send: Send, code: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---- wiring ----------------------------------------------------------------------------------------------------

_ERROR = {
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
        }
    }
}


def _document(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """`required`: credentials of everyone; `auto` on loopback: of every client but direct loopback ones (the
    OpenAPI `{}` alternative); `off`: none, and a 403 for clients not on loopback."""
    original = app.openapi
    off, required = settings.auth.mode == "off", auth_required(settings)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        for path, operations in schema.get("paths", {}).items():
            if path in PUBLIC:
                continue
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.setdefault("503", {"description": "The audit log cannot be written", **_ERROR})
                if off:
                    responses.setdefault("403", {"description": "Authentication is off: loopback only", **_ERROR})
                    continue
                operation["security"] = [{"bearer": []}, {"apiKey": []}, *([] if required else [{}])]
                responses.setdefault("401", {"description": "Missing or invalid credentials", **_ERROR})
                responses.setdefault("403", {"description": "The credentials lack the scope this needs", **_ERROR})
                responses.setdefault("429", {"description": "Rate limit exceeded; see Retry-After", **_ERROR})
        if not off:
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (k2_...) or a JWT."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        return schema

    return openapi


def install_security(app: FastAPI) -> None:
    """Call in `create_app` after `app.state.settings` is set and before the routers are included. Raises
    `ConfigError` when authentication is off on a non-loopback address."""
    settings: Settings = app.state.settings
    required = auth_required(settings)
    app.router.dependencies.append(Depends(authorize))
    app.add_middleware(AuditMiddleware)
    app.add_middleware(RefusedClientMiddleware)  # outside the audit: its refusals are summarised by itself
    app.openapi = _document(app, settings)  # type: ignore[method-assign]
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            security = app.state.security = Security(settings)
            (logger.info if required else logger.warning)(
                auth_banner(settings),
                extra={
                    "auth": settings.auth.mode,
                    "credentials_required_of": "everyone" if required else "clients not on loopback",
                    "trusted_proxies": [str(p) for p in settings.auth.trusted_proxies],
                },
            )
            upkeep = asyncio.get_running_loop().create_task(security.upkeep())
            try:
                yield state
            finally:
                upkeep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upkeep
                app.state.security = None
                await anyio.to_thread.run_sync(security.close)

    app.router.lifespan_context = lifespan
