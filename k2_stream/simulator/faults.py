"""Feed faults on purpose: withheld sequence numbers (gaps), duplicates and swapped neighbours.

The ingester's gap detection, dedup and reorder tolerance are only trustworthy if they are exercised
against faults whose exact positions are known, so every fault here is periodic per stream rather than
random, and every one is accounted for in `FaultStats`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from k2_core.exceptions import ConfigError
from k2_core.model.topics import BookRecord, Kind


class Stream(NamedTuple):
    """One sequence space: trades, quotes and book updates of a symbol are numbered independently."""

    exchange: str
    symbol: str
    kind: Kind | BookRecord

    def __str__(self) -> str:
        return f"{self.exchange}/{self.symbol}/{self.kind}"


class Event(NamedTuple):
    """What the simulator emits: the record and which topic kind it belongs to (unpacks as `kind, record`); book
    records name their record type (k2_core.model.topics.BookRecord)."""

    kind: Kind | BookRecord
    record: dict[str, Any]

    @property
    def stream(self) -> Stream:
        return Stream(self.record["exchange"], self.record["symbol"], self.kind)

    @property
    def sequence(self) -> int:
        return int(self.record["exchange_sequence_number"])


@dataclass(frozen=True)
class FaultConfig:
    """Periods of each fault, 0 meaning off.

    gap_every=N withholds sequence numbers N, 2N, ... of every stream. duplicate_every=N sends the Nth,
    2Nth, ... delivered message of a stream twice in a row. reorder_every=N holds back the Nth, 2Nth, ...
    delivered message of a stream and sends it right after that stream's next message.
    """

    gap_every: int = 0
    duplicate_every: int = 0
    reorder_every: int = 0

    def __post_init__(self) -> None:
        for name in ("gap_every", "duplicate_every", "reorder_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (off) or positive, got {getattr(self, name)}")
        if self.gap_every == 1:
            raise ConfigError("gap_every=1 would withhold every message")

    @property
    def any(self) -> bool:
        return bool(self.gap_every or self.duplicate_every or self.reorder_every)


@dataclass
class FaultStats:
    sent: Counter[Stream] = field(default_factory=Counter)
    withheld: defaultdict[Stream, list[int]] = field(default_factory=lambda: defaultdict(list))
    duplicates: int = 0
    reorders: int = 0


class FaultInjector:
    """Turns the clean per-stream message order into the faulty one, one message at a time."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.stats = FaultStats()
        self._delivered: Counter[Stream] = Counter()
        self._held: dict[Stream, list[Event]] = {}
        self._withheld: list[Event] = []

    def apply(self, event: Event) -> list[Event]:
        """The messages to send now in place of `event`: none (withheld or held back), one, or several."""
        cfg = self.config
        stream = event.stream
        if cfg.gap_every and event.sequence % cfg.gap_every == 0:
            self.stats.withheld[stream].append(event.sequence)
            self._withheld.append(event)
            return []
        self._delivered[stream] += 1
        nth = self._delivered[stream]
        copies = [event]
        if cfg.duplicate_every and nth % cfg.duplicate_every == 0:
            copies.append(event)
            self.stats.duplicates += 1
        held = self._held.pop(stream, None)
        if held is not None:
            # This message is the held one's swap partner, so it is never held itself: pairs stay disjoint.
            self.stats.reorders += 1
            return self._count([*copies, *held])
        if cfg.reorder_every and nth % cfg.reorder_every == 0:
            self._held[stream] = copies
            return []
        return self._count(copies)

    def finish(self) -> list[Event]:
        """Release messages still waiting for a swap partner that will never come (not counted as reorders)."""
        held = [e for copies in self._held.values() for e in copies]
        self._held.clear()
        return self._count(held)

    def take_withheld(self) -> list[Event]:
        """Withheld messages since the last call, so the caller can persist them before later ones are sent."""
        taken, self._withheld = self._withheld, []
        return taken

    def _count(self, events: list[Event]) -> list[Event]:
        for e in events:
            self.stats.sent[e.stream] += 1
        return events
