"""The simulator run loop: pace the pure generator to a trade rate and produce its events to Kafka."""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from k2_core.exceptions import ConfigError
from k2_core.logging import get_logger
from k2_core.model.registry import SchemaRegistry
from k2_core.settings import Settings
from k2_stream.simulator.faults import Event, Stream
from k2_stream.simulator.generator import MarketSimulator, SimulatorConfig
from k2_stream.simulator.recovery import append_recovery, recovery_path
from k2_stream.simulator.session import GracefulStop, open_producer

log = get_logger(__name__)

# Pacing granularity: small enough that the rate looks steady to a consumer, large enough that sleeping
# is not most of the work at thousands of trades per second.
CHUNK_SECONDS = 0.01
# Chunk size when unthrottled (rate 0): only bounds how often the duration is checked.
UNTHROTTLED_CHUNK = 1000


@dataclass
class SimulationSummary:
    exchange: str
    trades_generated: int = 0
    quotes_generated: int = 0
    sent: dict[Stream, int] = field(default_factory=dict)
    withheld: dict[Stream, list[int]] = field(default_factory=dict)
    duplicates: int = 0
    reorders: int = 0
    elapsed_seconds: float = 0.0
    recovery_file: Path | None = None
    interrupted: bool = False
    # with `track_deliveries`: what the broker acknowledged, per partition, and its cluster (k2_stream.acks)
    delivered: dict[tuple[str, int], array[int]] = field(default_factory=dict)
    cluster_id: str = ""

    @property
    def messages_sent(self) -> int:
        return sum(self.sent.values())


def run_simulation(
    settings: Settings,
    config: SimulatorConfig,
    *,
    rate: float,
    duration: float | None = None,
    count: int | None = None,
    registry: SchemaRegistry | None = None,
    track_deliveries: bool = False,
) -> SimulationSummary:
    """Produce the simulated feed at `rate` trades per second (0 = as fast as possible) until `count`
    trades were generated or `duration` seconds passed, whichever comes first (neither: until SIGINT or
    SIGTERM, which end the run as cleanly as reaching the count).

    Withheld records are appended to the recovery file before any later message is produced, so a gap is
    never observable downstream before its records are recoverable.
    """
    if rate < 0:
        raise ConfigError(f"rate must be >= 0, got {rate}")
    if count is not None and count < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    simulator = MarketSimulator(config)
    producer = open_producer(settings, config.exchange, registry, track_deliveries)
    recovery = recovery_path(settings, config.exchange)
    summary = SimulationSummary(config.exchange)

    def send(events: list[Event]) -> None:
        append_recovery(recovery, simulator.take_unpersisted())
        for kind, record in events:
            producer.send_event(kind, {**record, "ingestion_timestamp": datetime.now(UTC)})

    chunk = max(1, round(rate * CHUNK_SECONDS)) if rate else UNTHROTTLED_CHUNK
    start = time.monotonic()
    deadline = start + duration if duration is not None else None
    done = 0
    log.info(
        "simulation started",
        extra={"exchange": config.exchange, "rate": rate, "duration": duration, "count": count},
    )
    with GracefulStop() as stop:
        while count is None or done < count:
            if stop.requested:
                summary.interrupted = True
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            n = chunk if count is None else min(chunk, count - done)
            send([e for _ in range(n) for e in simulator.step()])
            done += n
            if rate:
                wake = start + done / rate
                if deadline is not None:
                    wake = min(wake, deadline)
                pause = wake - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        send(simulator.finish())
        producer.flush()

    stats = simulator.stats
    summary.trades_generated = simulator.trades_generated
    summary.quotes_generated = simulator.quotes_generated
    summary.sent = dict(sorted(stats.sent.items()))
    summary.withheld = {s: list(seqs) for s, seqs in sorted(stats.withheld.items())}
    summary.duplicates = stats.duplicates
    summary.reorders = stats.reorders
    summary.elapsed_seconds = time.monotonic() - start
    summary.recovery_file = recovery if summary.withheld else None
    summary.delivered, summary.cluster_id = producer.delivered, producer.cluster_id
    log.info(
        "simulation finished",
        extra={
            "exchange": config.exchange,
            "trades_generated": summary.trades_generated,
            "messages_sent": summary.messages_sent,
            "withheld": sum(len(v) for v in summary.withheld.values()),
            "duplicates": summary.duplicates,
            "reorders": summary.reorders,
            "interrupted": summary.interrupted,
        },
    )
    return summary
