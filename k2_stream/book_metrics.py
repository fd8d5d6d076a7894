"""The book ingester's own metrics (Prometheus), in a module only its process imports (k2_stream.book_ingester), so
the trades ingester never serves them.

It also counts into the shared ingestion metrics of k2_stream.metrics: MESSAGES_CONSUMED, ROWS_WRITTEN
(book_updates, book_snapshots), DUPLICATES, WRITE_DURATION, ROWS_PER_COMMIT, DLQ_MESSAGES, SEQUENCE_GAPS and the
consumer lag gauges; Prometheus tells the two processes apart by their scrape job (k2-ingester, k2-book-ingester).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric

from k2_stream.metrics import CIRCUIT_BREAKER_STATE, DEGRADATION_LEVEL, HALTED_PARTITIONS

BOOK_GAPS_HEALED = Counter("k2_book_gaps_healed_total", "Book gaps healed by a snapshot", ["exchange"])
BOOKS_UNKNOWN = Gauge(
    "k2_books_unknown", "Books the book ingester holds as unknown (a gap no snapshot has healed yet)", ["exchange"]
)
BOOK_UNKNOWN_SINCE = Gauge(
    "k2_book_unknown_since_timestamp_seconds",
    "Unix time the exchange's longest-unknown book became unknown (no series while none is)",
    ["exchange"],
)
BOOK_LAST_COMMIT = Gauge(
    "k2_book_last_commit_timestamp_seconds", "Unix time of the book ingester's last committed batch"
)
BOOK_FAILED_BATCHES = Counter(
    "k2_book_failed_batches_total", "Book batches whose commit failed (retried after a backoff)"
)


class _Without:
    """The default registry without some metric families."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if family.name not in self.names:
                yield family


def book_ingester_registry() -> CollectorRegistry:
    """What the book ingester serves: every metric of its process but the trades ingester's unlabelled state gauges
    (degradation, breaker, halted partitions), which it never sets and which would read as a second ingester at 0."""
    registry = CollectorRegistry()
    trades_only = (HALTED_PARTITIONS, CIRCUIT_BREAKER_STATE, DEGRADATION_LEVEL)
    registry.register(_Without(frozenset(family.name for g in trades_only for family in g.describe())))
    return registry
