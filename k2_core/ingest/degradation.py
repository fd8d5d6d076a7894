"""The degradation cascade: how the ingester gives way under load instead of falling over.

Levels, driven by measured consumer lag and Iceberg write latency:
  0 normal
  1 bigger batches (fewer, larger commits amortise the per-commit cost)
  2 skip non-critical work (gap-fill bookkeeping is deferred, state eviction postponed)
  3 shed non-critical symbols (only the configured priority list is ingested; the rest is dead-lettered with
    reason `shed`, counted and logged, so it can be replayed)
  4 circuit breaker OPEN on the write path (writes keep failing: stop consuming, keep offsets, retry with backoff)

Going up is immediate; coming down is one level at a time, after the pressure has stayed below the current level
for `recover_seconds`, so the ingester does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from k2_core.settings import DegradationSettings


class Level(IntEnum):
    NORMAL = 0
    BIGGER_BATCHES = 1
    SKIP_NON_CRITICAL = 2
    SHED_SYMBOLS = 3
    BREAKER_OPEN = 4


class Breaker(IntEnum):
    """Exported as the `circuit_breaker_state` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


def _level_for(value: float, thresholds: list[float]) -> int:
    return sum(1 for t in thresholds if value >= t)


@dataclass
class Degradation:
    policy: DegradationSettings
    level: Level = Level.NORMAL
    breaker: Breaker = Breaker.CLOSED
    failures: int = 0
    _calm_since: float | None = field(default=None, repr=False)
    _last_lag: float = field(default=float("inf"), repr=False)  # no trend before the second batch

    def observe(self, lag_seconds: float, write_seconds: float, now: float) -> Level:
        """Update the level from one batch's measurements (monotonic `now`)."""
        if self.breaker is not Breaker.CLOSED:
            return self.level
        by_lag = _level_for(lag_seconds, self.policy.lag_seconds)
        if by_lag == Level.SHED_SYMBOLS and lag_seconds <= self._last_lag:
            # Old messages alone are not overload: a backlog being caught up (after downtime, a replay) shrinks
            # its lag batch by batch. Shed only while the ingester is falling further behind.
            by_lag = Level.SKIP_NON_CRITICAL
        self._last_lag = lag_seconds
        target = max(by_lag, _level_for(write_seconds, self.policy.write_seconds))
        if target >= self.level:
            self.level = Level(target)
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        elif now - self._calm_since >= self.policy.recover_seconds:
            self.level = Level(self.level - 1)
            self._calm_since = now
        return self.level

    def write_failed(self) -> Breaker:
        self.failures += 1
        if self.failures >= self.policy.breaker_failures:
            self.breaker = Breaker.OPEN
            self.level = Level.BREAKER_OPEN
        return self.breaker

    def probing(self) -> None:
        """The backoff elapsed: the next attempt is a probe."""
        if self.breaker is Breaker.OPEN:
            self.breaker = Breaker.HALF_OPEN

    def write_succeeded(self) -> None:
        self.failures = 0
        if self.breaker is not Breaker.CLOSED:
            self.breaker = Breaker.CLOSED
            self.level = Level.SKIP_NON_CRITICAL  # walk back down from just below shedding
            self._calm_since = None

    def batch_scale(self) -> int:
        return self.policy.batch_growth if self.level >= Level.BIGGER_BATCHES else 1

    def skip_non_critical(self) -> bool:
        return self.level >= Level.SKIP_NON_CRITICAL

    def sheds(self, exchange: str, symbol: str) -> bool:
        """Only at level 3: while the breaker is open nothing is consumed, and its probe batch must not shed."""
        if self.level != Level.SHED_SYMBOLS:
            return False
        critical = self.policy.critical_symbols
        return symbol not in critical and f"{exchange}:{symbol}" not in critical
