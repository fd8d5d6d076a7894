"""Rate limits: token buckets shared through Redis by every API worker, per key and per client.

Each bucket holds `burst` tokens, refilled at `rate` per second. The bucket lives in one Redis hash updated by
one Lua script (atomic, and timed by Redis's own clock so API hosts' clocks do not matter). When Redis is down,
each process keeps its own buckets until Redis is back (`redis.retry_after_seconds`): limits stay on, just per
process rather than shared.

* `RateLimiter`: a request takes a token from its key's bucket; one that finds none is refused with the seconds
  until the next token.
* `FailureGate`: a client's (peer address's) budget of failed authentications. Every request that would check
  credentials first looks at it without taking anything (`check`), before any database work; only a failure
  takes a token (`charge`). A client that spent its budget is refused at once until the bucket refills, so a
  flood of bad credentials costs a Redis round trip per request, not a key lookup and an audit row. Once Redis
  has said a client is refused, and for how long, this process remembers it (`refused_for`), so the API can turn
  the rest of that client's requests away before routing them, without a thread or a Redis round trip.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import redis

from k2_core.exceptions import RateLimitError
from k2_core.logging import get_logger
from k2_core.settings import RedisSettings

log = get_logger(__name__)

_PREFIX = "k2:ratelimit:"
# KEYS[1] bucket; ARGV rate, burst, cost (1 takes a token, 0 only looks). Returns {allowed (0/1), seconds until a
# token as a string}.
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - cost
  allowed = 1
else
  wait = (1 - tokens) / rate
end
if cost > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
end
return {allowed, tostring(wait)}
"""


@dataclass
class _Bucket:
    tokens: float
    at: float


class LocalBuckets:
    """The same token bucket in this process's memory; past `max_keys` buckets, the full ones are forgotten (a full
    bucket is what a new one starts as)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, cost: int = 1) -> float:
        """0 if a token was there (and `cost` of them taken), else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= self.max_keys:
                self._buckets = {
                    k: b for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate < self.burst
                }
            bucket = self._buckets.setdefault(key, _Bucket(float(self.burst), now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            if bucket.tokens >= 1:
                bucket.tokens -= cost
                return 0.0
            return (1 - bucket.tokens) / self.rate


class TokenBuckets:
    """Buckets by key in Redis (under `prefix`), or in this process while Redis is down; `rate == 0` means no
    limit at all."""

    def __init__(self, rate: float, burst: int, settings: RedisSettings, prefix: str = _PREFIX) -> None:
        self.rate, self.burst, self.prefix = rate, burst, prefix
        self.local = LocalBuckets(rate, burst) if rate > 0 else None
        self.retry_after = settings.retry_after_seconds
        self._client = (
            redis.Redis.from_url(
                settings.url.get_secret_value(),
                socket_timeout=settings.timeout_seconds,
                socket_connect_timeout=settings.timeout_seconds,
            )
            if settings.enabled and rate > 0
            else None
        )
        self._script = self._client.register_script(_BUCKET_SCRIPT) if self._client is not None else None
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """Whether buckets are currently kept in Redis (shared by all workers)."""
        return self._script is not None and time.monotonic() >= self._down_until

    def take(self, key: str, cost: int = 1) -> float:
        """0 if `key` had a token (and `cost` of them were taken), else the seconds until it has one."""
        if self.local is None:
            return 0.0
        wait = self._take_shared(key, cost) if self.shared else None
        return self.local.take(key, cost) if wait is None else wait

    def _take_shared(self, key: str, cost: int) -> float | None:
        assert self._script is not None
        try:
            allowed, wait = self._script(keys=[self.prefix + key], args=[self.rate, self.burst, cost])
        except redis.RedisError as exc:
            with self._lock:
                self._down_until = time.monotonic() + self.retry_after
            log.warning(
                "redis unavailable, rate limiting per process",
                extra={"error": str(exc), "retry_after_seconds": self.retry_after},
            )
            return None
        return 0.0 if int(allowed) else float(wait)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _retry_after(wait: float) -> int:
    return max(1, math.ceil(wait))


class RateLimiter:
    """`check(key)` raises `RateLimitError` when `key` has no token left; `rate == 0` turns limiting off."""

    def __init__(self, rate: float, burst: int, settings: RedisSettings) -> None:
        self.rate, self.burst = rate, burst
        self.buckets = TokenBuckets(rate, burst, settings)

    @property
    def shared(self) -> bool:
        return self.buckets.shared

    def check(self, key: str) -> None:
        wait = self.buckets.take(key)
        if wait > 0:
            retry_after = _retry_after(wait)
            raise RateLimitError(
                f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded; retry after {retry_after}s",
                retry_after,
            )

    def close(self) -> None:
        self.buckets.close()


class FailureGate:
    """Per-client budgets of failed authentications, under `namespace` (the deployment: API processes that share
    a Redis and a namespace share the budgets). `rate == 0` turns the gate off."""

    def __init__(
        self, rate: float, burst: int, settings: RedisSettings, namespace: str, max_remembered: int = 100_000
    ) -> None:
        self.rate, self.burst = rate, burst
        self.buckets = TokenBuckets(rate, burst, settings, prefix=f"{_PREFIX}client:{namespace}:")
        self.max_remembered = max_remembered
        self._refused_until: dict[str, float] = {}  # client -> monotonic time its bucket next has a token
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Raises `RateLimitError` when `client` has spent its failure budget; takes nothing."""
        wait = self.buckets.take(client, cost=0)
        if wait > 0:
            self._remember(client, wait)
            raise self.error(wait)

    def refused_for(self, client: str) -> float:
        """The seconds `client` is still refused as far as this process knows from an earlier `check` (0 when
        not known to be refused): memory only, no Redis."""
        until = self._refused_until.get(client)
        if until is None:
            return 0.0
        wait = until - time.monotonic()
        if wait <= 0:
            with self._lock:
                self._refused_until.pop(client, None)
            return 0.0
        return wait

    def error(self, wait: float) -> RateLimitError:
        retry_after = _retry_after(wait)
        return RateLimitError(
            f"too many failed authentications from this client ({self.burst}, then {self.rate:g}/s); "
            f"retry after {retry_after}s",
            retry_after,
        )

    def _remember(self, client: str, wait: float) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._refused_until) >= self.max_remembered:
                self._refused_until = {c: t for c, t in self._refused_until.items() if t > now}
                if len(self._refused_until) >= self.max_remembered:
                    return  # too many clients refused at once to remember another: Redis still refuses it
            self._refused_until[client] = now + wait

    def charge(self, client: str) -> None:
        """Count one failed authentication against `client`."""
        self.buckets.take(client)

    def close(self) -> None:
        self.buckets.close()
