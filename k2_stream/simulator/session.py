"""What a feed process needs around its producer: topics and a producer ready to send, and a graceful stop.

Shared by the simulator run loop and recorded-file replay. `k2 run` stops feeds with SIGTERM and users with
Ctrl-C; either way the feed should stop between messages, release what it holds and flush, rather than
die with records in the producer's buffer or half a line in the recovery file.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from confluent_kafka import KafkaException

from k2_core.exceptions import ConfigError, K2Error
from k2_core.logging import get_logger
from k2_core.model.registry import SchemaRegistry
from k2_core.model.topics import TopicLayout
from k2_core.settings import Settings
from k2_stream.admin import ensure_topics, load_layout
from k2_stream.bulk import BulkProducer
from k2_stream.producer import FeedProducer
from k2_stream.registry_confluent import make_registry

log = get_logger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def open_producer(
    settings: Settings, exchange: str, registry: SchemaRegistry | None = None, track_deliveries: bool = False
) -> FeedProducer:
    """Check the exchange has topics, create them, and return a producer. Broker trouble becomes a K2Error
    the CLI can report (the admin client raises KafkaException when the broker is unreachable)."""
    try:
        layout, registry = _prepare(settings, exchange, registry)
        return FeedProducer(settings, layout, registry, track_deliveries)
    except KafkaException as exc:
        raise K2Error(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from exc


def open_bulk_producer(settings: Settings, exchange: str, registry: SchemaRegistry | None = None) -> BulkProducer:
    """`open_producer` for pre-encoded blocks of messages (a columnar replay): the same checks and topics."""
    try:
        layout, registry = _prepare(settings, exchange, registry)
        return BulkProducer(settings, layout, registry)
    except KafkaException as exc:
        raise K2Error(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from exc


def _prepare(settings: Settings, exchange: str, registry: SchemaRegistry | None) -> tuple[TopicLayout, SchemaRegistry]:
    layout = load_layout(settings)
    if exchange not in layout.exchanges:
        raise ConfigError(f"unknown exchange {exchange!r}; known: {sorted(layout.exchanges)}")
    layout = ensure_topics(settings, layout)
    return layout, registry or make_registry(settings.kafka.schema_registry_url, settings.kafka.schemas_dir)


class GracefulStop:
    """While active, SIGINT/SIGTERM set `requested` for the loop to poll instead of interrupting it wherever
    it happens to be; a second signal raises KeyboardInterrupt for a feed that is stuck. Only the main
    thread can own signal handlers, so elsewhere this is inert and the caller's own handling applies."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
