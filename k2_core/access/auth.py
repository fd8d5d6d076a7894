"""Who is calling, and what they may read: API keys, OAuth2 bearer JWTs and scopes.

**API keys** look like `k2_<id>_<secret>`: a 12-hex-digit id (shown in listings and the audit log) and 32 random
bytes. Only the SHA-256 of the whole token is stored, in the `api_keys` table of the catalog database; the
token is printed once, when the key is created. A fast hash is the right one here: slow password hashes
(bcrypt, argon2) protect low-entropy secrets people choose, while a 256-bit random secret cannot be guessed
from its hash, and a slow hash would add its cost to every request. Comparison is constant-time.

**JWTs** are verified with PyJWT: HS256 with the shared secret `auth.jwt_secret`, or RS256/ES256 with a key
from the issuer's JWKS (`auth.jwks_url`). `exp`, `sub` and `aud` are required; scopes come from the
space-separated `scope` claim (RFC 8693) or the `scp` list.

**Scopes**: `admin` (everything), `read:<resource>` for resources without exchanges (`read:gaps`,
`read:snapshots`) and `read:<resource>:<exchange>` or `read:<resource>:*` for `trades` and `quotes`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt
from sqlalchemy import Column, DateTime, Engine, String, Table, Text, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from k2_core.exceptions import ApiKeyError, AuthenticationError, ConfigError, CredentialStoreError
from k2_core.lake.sqldb import METADATA, create_tables, utc
from k2_core.settings import AuthSettings, Settings

ADMIN = "admin"
PER_EXCHANGE = ("trades", "quotes", "books")  # resources whose scopes name an exchange (or `*`)
GLOBAL = ("gaps", "snapshots")  # resources read as a whole
SCOPE_RE = re.compile(
    rf"admin|read:(?:{'|'.join(GLOBAL)})|read:(?:{'|'.join(PER_EXCHANGE)}):(?:\*|[a-z][a-z0-9_]{{0,31}})"
)
TOKEN_PREFIX = "k2_"  # noqa: S105 - a public prefix, not a secret
_TOKEN_RE = re.compile(r"k2_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")
_JWKS_ALGORITHMS = ["RS256", "ES256"]

API_KEYS = Table(
    "api_keys",
    METADATA,
    Column("key_id", String(12), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("token_sha256", String(64), nullable=False),
    Column("scopes", Text, nullable=False),  # space-separated, as in OAuth2
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `subject` is what the audit log records as "who"."""

    subject: str
    method: Literal["api_key", "jwt", "none"]
    scopes: frozenset[str] = field(default_factory=frozenset)
    key_id: str | None = None

    @property
    def rate_key(self) -> str:
        """What rate limits count against: the key, or the JWT subject."""
        return f"key:{self.key_id}" if self.key_id else f"{self.method}:{self.subject}"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None

    def state(self, now: datetime) -> Literal["active", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "active"


def parse_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise scopes (sorted, unique); an unknown one is refused rather than silently useless."""
    parsed = sorted({s.strip() for s in scopes if s.strip()})
    if not parsed:
        raise ApiKeyError("at least one scope is required (e.g. read:trades:asx, read:trades:*, read:gaps, admin)")
    bad = [s for s in parsed if not SCOPE_RE.fullmatch(s)]
    if bad:
        raise ApiKeyError(
            f"unknown scope {', '.join(map(repr, bad))}: use admin, read:gaps, read:snapshots, "
            "read:trades:<exchange>|*, read:quotes:<exchange>|*, read:books:<exchange>|*"
        )
    return tuple(parsed)


def allows(granted: Iterable[str], required: str) -> bool:
    """Whether `granted` covers `required`: exactly, through `admin`, or through a `*` exchange."""
    granted = set(granted)
    if ADMIN in granted or required in granted:
        return True
    resource, _, exchange = required.rpartition(":")
    return bool(exchange) and resource.count(":") == 1 and f"{resource}:*" in granted


def readable_exchanges(granted: Iterable[str], resource: str) -> frozenset[str] | None:
    """The exchanges `granted` lets a caller read of `resource` (`trades`, `quotes`, `gaps`): None for all of them
    (`read:trades:*`, `admin`, or a resource read as a whole), empty for none. What `/v1/sql` narrows its views to."""
    granted = set(granted)
    if resource in GLOBAL:
        return None if allows(granted, f"read:{resource}") else frozenset()
    if allows(granted, f"read:{resource}:*"):
        return None
    prefix = f"read:{resource}:"
    return frozenset(scope[len(prefix) :] for scope in granted if scope.startswith(prefix))


def instrument_exchanges(granted: Iterable[str]) -> frozenset[str] | None:
    """The exchanges whose reference data (`market.instruments`) `granted` lets a caller read: those whose trades or
    quotes it may read, since the instruments only describe what those carry. None for all of them."""
    trades, quotes = readable_exchanges(granted, "trades"), readable_exchanges(granted, "quotes")
    if trades is None or quotes is None:
        return None
    return trades | quotes


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """API keys in the catalog database; the plaintext token never reaches it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(engine, API_KEYS.name)

    def create(self, name: str, scopes: Iterable[str], expires_at: datetime) -> tuple[ApiKey, str]:
        """A new key and its token: the token is returned here once and cannot be recovered later."""
        now = datetime.now(UTC)
        if expires_at.tzinfo is None:
            raise ApiKeyError("expiry must be timezone-aware")
        if expires_at <= now:
            raise ApiKeyError(f"expiry {expires_at.isoformat()} is in the past")
        if not name.strip() or len(name) > 200:
            raise ApiKeyError("a key needs a name of 1-200 characters (who or what uses it)")
        key = ApiKey(secrets.token_hex(6), name.strip(), parse_scopes(scopes), now, expires_at, None)
        token = f"{TOKEN_PREFIX}{key.key_id}_{secrets.token_urlsafe(32)}"
        with self.engine.begin() as conn:
            conn.execute(
                insert(API_KEYS).values(
                    key_id=key.key_id,
                    name=key.name,
                    token_sha256=hash_token(token),
                    scopes=" ".join(key.scopes),
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                )
            )
        return key, token

    def list(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(API_KEYS).order_by(API_KEYS.c.created_at)).mappings().all()
        return [_key(row) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        with self.engine.begin() as conn:
            done = conn.execute(
                update(API_KEYS)
                .where(API_KEYS.c.key_id == key_id, API_KEYS.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            row = conn.execute(select(API_KEYS).where(API_KEYS.c.key_id == key_id)).mappings().first()
        if row is None:
            raise ApiKeyError(f"no API key with id {key_id!r}")
        key = _key(row)
        if done.rowcount == 0:
            raise ApiKeyError(f"API key {key_id} was already revoked at {key.revoked_at}")
        return key

    def verify(self, token: str, now: datetime | None = None) -> Principal:
        """The principal a token stands for. Every failure says as little as "invalid API key" plus the id,
        so a caller cannot probe which ids exist."""
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            raise AuthenticationError("malformed API key")
        key_id = match.group(1)
        try:
            with self.engine.connect() as conn:
                row = conn.execute(select(API_KEYS).where(API_KEYS.c.key_id == key_id)).mappings().first()
        except SQLAlchemyError as exc:
            raise CredentialStoreError(f"API keys cannot be read from the catalog database: {exc}") from exc
        if row is None or not hmac.compare_digest(row["token_sha256"], hash_token(token)):
            raise AuthenticationError(f"invalid API key {key_id}")
        key = _key(row)
        state = key.state(now or datetime.now(UTC))
        if state != "active":
            raise AuthenticationError(f"API key {key_id} is {state}")
        return Principal(
            subject=f"key:{key.key_id}:{key.name}", method="api_key", scopes=frozenset(key.scopes), key_id=key_id
        )


def _key(row: Any) -> ApiKey:
    revoked = row["revoked_at"]
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        scopes=tuple(row["scopes"].split()),
        created_at=utc(row["created_at"]),
        expires_at=utc(row["expires_at"]),
        revoked_at=utc(revoked) if revoked is not None else None,
    )


class JwtVerifier:
    """Bearer JWTs from an OAuth2 issuer (JWKS) or signed with the shared HS256 secret."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        if self.secret is not None and len(self.secret.encode()) < 32:
            raise ConfigError("auth.jwt_secret must be at least 32 bytes (RFC 7518 section 3.2 for HS256)")
        self.jwks = (
            jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=5) if settings.jwks_url else None
        )

    @property
    def enabled(self) -> bool:
        return self.secret is not None or self.jwks is not None

    def verify(self, token: str) -> Principal:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            if algorithm == "HS256" and self.secret is not None:
                key: Any = self.secret
                algorithms = ["HS256"]
            elif algorithm in _JWKS_ALGORITHMS and self.jwks is not None:
                key = self.jwks.get_signing_key_from_jwt(token).key
                algorithms = _JWKS_ALGORITHMS
            else:
                raise AuthenticationError(f"bearer token algorithm {algorithm!r} is not accepted here")
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer or None,
                leeway=self.settings.jwt_leeway_seconds,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.PyJWKClientError as exc:
            raise AuthenticationError(f"bearer token key not found at the JWKS endpoint: {exc}") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"invalid bearer token: {exc}") from exc
        return Principal(subject=f"jwt:{claims['sub']}", method="jwt", scopes=frozenset(_claimed_scopes(claims)))


def _claimed_scopes(claims: dict[str, Any]) -> list[str]:
    raw = claims.get("scope", claims.get("scp", ""))
    values = raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []
    return [s for s in values if SCOPE_RE.fullmatch(s)]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def auth_required(settings: Settings) -> bool:
    """Whether the API must authenticate every caller (`auth.mode`, resolved against the bind address); with
    `auto` on loopback it still authenticates every request that is not from a direct loopback client
    (`k2_core.access.clients`). Turning authentication off on an address other hosts can reach is refused with
    a `ConfigError`."""
    mode, host = settings.auth.mode, settings.api.host
    if mode == "off" and not is_loopback(host):
        raise ConfigError(
            f"K2_AUTH_MODE=off is refused: the API binds to {host}, which is not a loopback address, so anyone who "
            "can reach it could read everything. Bind to 127.0.0.1 (K2_API_HOST) or turn authentication on."
        )
    return mode == "on" or (mode == "auto" and not is_loopback(host))


def auth_banner(settings: Settings) -> str:
    """One line saying how the API authenticates, for the start of `k2 run` and the API's log."""
    proxies = ", ".join(str(p) for p in settings.auth.trusted_proxies) or "none"
    if auth_required(settings):
        methods = ["API keys"] + (["bearer JWTs"] if settings.auth.jwt_secret or settings.auth.jwks_url else [])
        return f"auth ON ({' and '.join(methods)}; create a key with `k2 keys create`; trusted proxies: {proxies})"
    if settings.auth.mode == "off":
        return (
            "auth OFF (K2_AUTH_MODE=off) for direct loopback clients; any other request, from another address or "
            f"through a proxy, is refused (trusted proxies: {proxies})."
        )
    return (
        "auth OFF for direct loopback clients only: a request from any other address, or through a proxy "
        f"(Forwarded / X-Forwarded-For / X-Real-IP; trusted proxies: {proxies}), needs an API key or JWT, whatever "
        f"the configured host ({settings.api.host}). Set K2_AUTH_MODE=on to require them of everyone."
    )


_DURATION_RE = re.compile(r"(\d+)\s*([dhm])")
_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}


def parse_expiry(text: str, now: datetime) -> datetime:
    """`90d`, `12h`, `30m` from now, or an ISO-8601 date/time (naive = UTC). Keys always expire."""
    if match := _DURATION_RE.fullmatch(text.strip().lower()):
        return now + int(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ApiKeyError(f"--expires must be like 90d, 12h, 30m or an ISO-8601 date; got {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
