"""Recovery sources for gap backfill: the simulators' retransmission store and recorded exchange files.

Both come from `k2_stream` (the simulator writes the store, replay knows the file formats), so they are adapted
here rather than in `k2_core`, which only knows the `RecoverySource` protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k2_core.logging import get_logger
from k2_core.model.topics import Kind
from k2_core.settings import RecordedFile, Settings
from k2_core.upkeep.backfill import RecoverySource, SourceResolver
from k2_stream.replay import BadLine, open_lines, replay_format
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


class RecordedFileSource:
    """A recorded dump of one stream, re-read for the requested sequence range."""

    def __init__(self, recorded: RecordedFile) -> None:
        self.recorded = recorded
        self.spec = replay_format(recorded.format)

    @property
    def name(self) -> str:
        return f"file:{Path(self.recorded.path).name}"

    def fetch(self, kind: Kind, symbol: str, first: int, last: int) -> list[dict[str, Any]]:
        if kind != self.spec.kind or symbol != self.recorded.symbol:
            return []
        out = []
        with open_lines(self.recorded.path) as lines:
            for parsed in self.spec.parse(lines, self.recorded.exchange, self.recorded.symbol):
                if isinstance(parsed, BadLine):
                    continue
                seq = parsed["exchange_sequence_number"]
                if first <= seq <= last:
                    out.append(parsed)
        log.info("recorded file read for recovery", extra={"source": self.name, "first": first, "found": len(out)})
        return out


def resolver(settings: Settings) -> SourceResolver:
    """Sources to try for a stream: recorded files of that stream first, then the exchange's simulator store."""
    simulators: dict[str, SimulatorSource] = {}

    def resolve(exchange: str, symbol: str) -> list[RecoverySource]:
        sources: list[RecoverySource] = [
            RecordedFileSource(f)
            for f in settings.maintenance.recorded_files
            if f.exchange == exchange and f.symbol == symbol
        ]
        if recovery_path(settings, exchange).exists():
            sources.append(simulators.setdefault(exchange, SimulatorSource(settings, exchange)))
        return sources

    return resolve
