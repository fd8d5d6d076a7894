"""Recovery sources for gap backfill: recorded exchange files (k2_core.upkeep.recorded, any format `k2 import`
reads) and the simulators' retransmission store, which `k2_stream` writes and so is adapted here.
"""

from __future__ import annotations

from typing import Any

from k2_core.logging import get_logger
from k2_core.model.topics import Kind
from k2_core.settings import Settings
from k2_core.upkeep.backfill import RecoverySource, SourceResolver
from k2_core.upkeep.recorded import RecordedFileSource
from k2_stream.simulator.recovery import RecoveryStore, load_recovery, recovery_path

log = get_logger(__name__)


class SimulatorSource:
    """A simulated exchange's store of the records it withheld (`<home>/recovery/<exchange>.jsonl`)."""

    def __init__(self, settings: Settings, exchange: str) -> None:
        self.settings = settings
        self.exchange = exchange
        self._store: RecoveryStore | None = None

    @property
    def name(self) -> str:
        return f"simulator:{self.exchange}"

    def fetch(self, kind: Kind, symbol: str, first: int, last: int) -> list[dict[str, Any]]:
        if self._store is None:  # read once per backfill pass
            self._store = load_recovery(self.settings, self.exchange)
        return self._store.fetch(kind, symbol, first, last)


def resolver(settings: Settings) -> SourceResolver:
    """Sources to try for a stream: recorded files of that stream first, then the exchange's simulator store."""
    simulators: dict[str, SimulatorSource] = {}
    recorded = [RecordedFileSource(f) for f in settings.maintenance.recorded_files]

    def resolve(exchange: str, symbol: str) -> list[RecoverySource]:
        sources: list[RecoverySource] = [f for f in recorded if f.serves(exchange, symbol)]
        if recovery_path(settings, exchange).exists():
            sources.append(simulators.setdefault(exchange, SimulatorSource(settings, exchange)))
        return sources

    return resolve
