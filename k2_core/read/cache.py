"""Query-result caching in two tiers: an in-process LRU bounded by bytes, then Redis shared by API workers.

(The third tier, precomputed OHLCV tables, is data rather than a cache: `k2_core.read.precomputed`.)

Keys always carry the Iceberg snapshot id(s) a result was read from. A commit makes a new snapshot, so a cached
answer can never hide newer data: a query after the commit looks up a different key. Nothing needs
invalidating, and entries simply age out (LRU by size, Redis by TTL). Results that include realtime-tail rows
are never cached: they have no snapshot to key them by.

Redis is an accelerator, not a dependency: any Redis failure is logged, Redis is skipped for
`retry_after_seconds`, and the query runs (slower) without it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Hashable
from typing import Literal

import pyarrow as pa
import redis
from cachetools import LRUCache

from k2_core.logging import get_logger
from k2_core.settings import RedisSettings

logger = get_logger(__name__)

Tier = Literal["lru", "redis"]
_PREFIX = "k2:query:v1:"


def _nbytes(table: pa.Table) -> int:
    return max(int(table.nbytes), 1)


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


class RedisTier:
    """Arrow tables stored as Arrow IPC bytes under a hashed key, with a TTL; a circuit breaker keeps a down
    Redis from adding its timeout to every request."""

    def __init__(self, settings: RedisSettings) -> None:
        self.ttl_seconds = settings.ttl_seconds
        self.retry_after = settings.retry_after_seconds
        self._client = redis.Redis.from_url(
            settings.url.get_secret_value(),
            socket_timeout=settings.timeout_seconds,
            socket_connect_timeout=settings.timeout_seconds,
        )
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def get(self, key: str) -> pa.Table | None:
        if not self.available:
            return None
        try:
            data = self._client.get(_PREFIX + key)
        except redis.RedisError as exc:
            self._trip(exc)
            return None
        if not isinstance(data, bytes):
            return None
        try:
            return from_ipc(data)
        except pa.ArrowInvalid as exc:  # a foreign or truncated value: treat as a miss
            logger.warning("unreadable cache entry", extra={"key": key, "error": str(exc)})
            return None

    def put(self, key: str, table: pa.Table) -> None:
        if not self.available:
            return
        try:
            self._client.set(_PREFIX + key, to_ipc(table), ex=self.ttl_seconds)
        except redis.RedisError as exc:
            self._trip(exc)

    def close(self) -> None:
        self._client.close()

    def _trip(self, exc: redis.RedisError) -> None:
        with self._lock:
            was_up = self.available
            self._down_until = time.monotonic() + self.retry_after
        if was_up:
            logger.warning(
                "redis unavailable, caching in-process only",
                extra={"error": str(exc), "retry_after_seconds": self.retry_after},
            )


class ResultCache:
    """LRU first, then Redis; a Redis hit is promoted into the LRU. Thread-safe."""

    def __init__(self, lru_max_bytes: int, redis_tier: RedisTier | None = None) -> None:
        self._lru: LRUCache[str, pa.Table] | None = (
            LRUCache(maxsize=lru_max_bytes, getsizeof=_nbytes) if lru_max_bytes > 0 else None
        )
        self.redis = redis_tier
        self._lock = threading.Lock()

    @staticmethod
    def key(*parts: Hashable) -> str:
        """A stable text key for the parts (reprs of ints, strings, datetimes and tuples are stable)."""
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def get(self, key: str) -> tuple[pa.Table, Tier] | None:
        if self._lru is not None:
            with self._lock:
                hit = self._lru.get(key)
            if hit is not None:
                return hit, "lru"
        if self.redis is not None:
            table = self.redis.get(key)
            if table is not None:
                self._remember(key, table)
                return table, "redis"
        return None

    def put(self, key: str, table: pa.Table) -> None:
        self._remember(key, table)
        if self.redis is not None:
            self.redis.put(key, table)

    def get_or_compute(self, key: str, compute: Callable[[], pa.Table]) -> tuple[pa.Table, Tier | None]:
        """The cached table and the tier that had it, or the computed (and now cached) table and None."""
        found = self.get(key)
        if found is not None:
            return found
        table = compute()
        self.put(key, table)
        return table, None

    def clear_local(self) -> None:
        if self._lru is not None:
            with self._lock:
                self._lru.clear()

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()

    def _remember(self, key: str, table: pa.Table) -> None:
        if self._lru is None or _nbytes(table) > self._lru.maxsize:
            return
        with self._lock:
            self._lru[key] = table
