"""Requests refused before authentication, summarised per client instead of stored a row each.

A 401 (missing or bad credentials) or a 429 from a client's failure budget costs nothing to send; a full audit
row each would make the audit log the cheapest way to load the catalog database. So the first such refusal of a
client (for one principal, route and status) in a window of `audit.refusal_window_seconds` gets a row of its own,
its parameters cut to `REFUSED_PARAMS_CHARS`, as evidence of what was tried, and the rest are only counted. When
the window closes, one summary row carries their number: `params = {"refused": N, "since": ..., "until": ...}`.
At most `audit.refusal_max_windows` windows are open at once; refusals beyond that share one window under the
client `*`, so memory stays bounded whatever the number of addresses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from k2_core.access.audit import AuditEntry

REFUSED_PARAMS_CHARS = 256
OVERFLOW_CLIENT = "*"

_Key = tuple[str | None, str, str, str, int]  # client, principal, method, route, status


@dataclass
class _Window:
    opened: float  # on the tally's clock
    first: AuditEntry  # the refusal that opened it, written at once
    last: datetime
    more: int = 0  # refusals after the first, written as one summary when the window closes


class RefusalTally:
    def __init__(self, window_seconds: float, max_windows: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_seconds, self.max_windows, self.clock = window_seconds, max_windows, clock
        self._windows: dict[_Key, _Window] = {}
        self._lock = threading.Lock()

    def add(self, entry: AuditEntry) -> bool:
        """Count one refusal; True when it opens a window, so that its own (cut) row is to be written now."""
        key: _Key = (entry.client, entry.principal, entry.method, entry.route, entry.status)
        with self._lock:
            window = self._windows.get(key)
            if window is None and len(self._windows) >= self.max_windows:
                key = (OVERFLOW_CLIENT, *key[1:])
                entry = replace(entry, client=OVERFLOW_CLIENT)
                window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(self.clock(), entry, entry.at)
                return True
            window.more += 1
            window.last = entry.at
            return False

    def due(self, everything: bool = False) -> list[AuditEntry]:
        """Summary rows of the windows that have closed (all of them with `everything`), which are then forgotten;
        a window holding only its first refusal needs none."""
        now = self.clock()
        with self._lock:
            closed = [k for k, w in self._windows.items() if everything or now - w.opened >= self.window_seconds]
            windows = [self._windows.pop(k) for k in closed]
        return [_summary(w) for w in windows if w.more]


def _summary(window: _Window) -> AuditEntry:
    first = window.first
    params = {"refused": window.more, "since": first.at.isoformat(), "until": window.last.isoformat()}
    return replace(first, at=window.last, params=params, rows=None, duration_ms=0.0, request_id=None)
