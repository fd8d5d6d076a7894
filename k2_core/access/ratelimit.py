"""Per-caller rate limits: a token bucket per key, shared through Redis by every API worker.

Each caller has `burst` tokens, refilled at `rate` per second; a request takes one, and a request that finds
none is refused with the seconds until the next token. The bucket lives in one Redis hash updated by one Lua
script (atomic, and timed by Redis's own clock so API hosts' clocks do not matter). When Redis is down, each
process keeps its own buckets until Redis is back (`redis.retry_after_seconds`): limits stay on, just per
process rather than shared.
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
# KEYS[1] bucket; ARGV rate, burst. Returns {allowed (0/1), seconds until a token as a string}.
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


@dataclass
class _Bucket:
    tokens: float
    at: float


class LocalBuckets:
    """The same token bucket in this process's memory."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(float(self.burst), now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate


class RateLimiter:
    """`check(key)` raises `RateLimitError` when `key` has no token left; `rate == 0` turns limiting off."""

    def __init__(self, rate: float, burst: int, settings: RedisSettings) -> None:
        self.rate, self.burst = rate, burst
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
        """Whether limits are currently counted in Redis (shared by all workers)."""
        return self._script is not None and time.monotonic() >= self._down_until

    def check(self, key: str) -> None:
        if self.local is None:
            return
        wait = self._take_shared(key) if self.shared else None
        if wait is None:
            wait = self.local.take(key)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise RateLimitError(
                f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded; retry after {retry_after}s",
                retry_after,
            )

    def _take_shared(self, key: str) -> float | None:
        assert self._script is not None
        try:
            allowed, wait = self._script(keys=[_PREFIX + key], args=[self.rate, self.burst])
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
