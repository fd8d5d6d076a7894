"""A flood of bad credentials against a running API, and a valid key's latency beside it, over real HTTP on loopback
(tests/integration/test_flood.py asserts on it, bench/flood.py prints its figures).

The attackers are eight loopback addresses of their own (127.0.0.2-9: all of 127/8 is this host's), so that the
API tells them from the valid key's client (127.0.0.1) by the socket peer, as it would tell hosts apart.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

FLOOD_SOURCES = tuple(f"127.0.0.{i}" for i in range(2, 10))
PADDING = "x" * 1800  # a parameter an attacker pads, for the audit log to store
TRANSPORT_ERROR = 0  # the status recorded for a request that got no answer


def bad_credentials(i: int) -> dict[str, str]:
    """A different kind of bad credential by turn: a well-formed API key (a key lookup, unless refused first), none
    at all, a malformed key, and a JWT nobody signed."""
    kind = i % 4
    if kind == 0:
        return {"Authorization": f"Bearer k2_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"}
    if kind == 1:
        return {}
    if kind == 2:
        return {"X-API-Key": "k2_not-a-key"}
    return {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJldmUifQ.c2lnbmF0dXJl"}


@dataclass
class Timings:
    statuses: Counter[int] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)

    def percentile(self, q: int) -> float:
        """The q-th percentile in milliseconds."""
        if len(self.seconds) < 2:
            return self.seconds[0] * 1000 if self.seconds else float("nan")
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[q - 1] * 1000

    def summary(self) -> str:
        return f"n={len(self.seconds)} p50={self.percentile(50):.1f} ms p99={self.percentile(99):.1f} ms"


def query_repeatedly(
    url: str, token: str, path: str, params: dict[str, Any], count: int, until: threading.Event | None = None
) -> Timings:
    """The valid key's requests, one after another on one keep-alive connection: `count` of them, then on until
    `until` is set."""
    timings = Timings()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while len(timings.seconds) < count or (until is not None and not until.is_set()):
            began = time.perf_counter()
            response = client.get(path, params=params)
            timings.seconds.append(time.perf_counter() - began)
            timings.statuses[response.status_code] += 1
    return timings


def flood(
    url: str,
    path: str,
    params: dict[str, Any],
    total: int = 2000,
    sources: tuple[str, ...] = FLOOD_SOURCES,
    concurrency: int = 48,
) -> Counter[int]:
    """`total` requests with bad credentials from `sources` in turn, `concurrency` at a time; their statuses."""
    return asyncio.run(_flood(url, path, {**params, "pad": PADDING}, total, sources, concurrency))


async def _flood(
    url: str, path: str, params: dict[str, Any], total: int, sources: tuple[str, ...], concurrency: int
) -> Counter[int]:
    statuses: Counter[int] = Counter()
    slots = asyncio.Semaphore(concurrency)
    clients = [
        httpx.AsyncClient(base_url=url, transport=httpx.AsyncHTTPTransport(local_address=source), timeout=60)
        for source in sources
    ]

    async def one(i: int) -> None:
        async with slots:
            try:
                response = await clients[i % len(clients)].get(path, params=params, headers=bad_credentials(i))
            except httpx.TransportError:
                statuses[TRANSPORT_ERROR] += 1
            else:
                statuses[response.status_code] += 1

    try:
        await asyncio.gather(*(one(i) for i in range(total)))
    finally:
        for client in clients:
            await client.aclose()
    return statuses


def refused_total(metrics: str, reasons: tuple[str, ...]) -> float:
    """The sum of `k2_api_refused_requests_total` over `reasons`, from a /metrics exposition."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("k2_api_refused_requests_total{"):
            labels, _, value = line.partition("} ")
            if any(f'reason="{reason}"' in labels for reason in reasons):
                total += float(value)
    return total
