"""The simulator's retransmission service: records it withheld on purpose, kept so gap backfill can fetch them.

A real exchange answers gap requests from its own store; the simulator plays that role by writing every
withheld record to `<home>/recovery/<exchange>.jsonl` before it sends anything later in the same stream,
so a backfill running in another process can always find a gap's records once the gap is observable.
Runs append; when two runs reuse a sequence number, the later line wins.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, cast

from k2_core.exceptions import ReplayFormatError
from k2_core.logging import get_logger
from k2_core.model.topics import KINDS, Kind
from k2_core.settings import Settings
from k2_stream.simulator.faults import Event

log = get_logger(__name__)

# Field types that JSON cannot carry; tests check these against the Avro schemas so they cannot drift.
DECIMAL_FIELDS: dict[Kind, frozenset[str]] = {
    "trades": frozenset({"price", "volume"}),
    "quotes": frozenset({"bid_price", "bid_size", "ask_price", "ask_size"}),
}
TIMESTAMP_FIELDS = frozenset({"exchange_timestamp", "ingestion_timestamp"})
OPTIONAL_TIMESTAMP_FIELDS = frozenset({"ts_recv"})  # null when unknown, or absent in lines of older runs


def recovery_path(settings: Settings, exchange: str) -> Path:
    return settings.home / "recovery" / f"{exchange}.jsonl"


def to_json_line(event: Event) -> str:
    def default(value: object) -> str:
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        raise TypeError(f"cannot serialise {type(value).__name__}")

    return json.dumps({"kind": event.kind, "record": event.record}, default=default, sort_keys=True)


def from_json_line(line: str) -> Event:
    """Parse one stored line back into typed values (Decimal, timezone-aware datetime)."""
    try:
        raw = json.loads(line)
        kind = raw["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        record: dict[str, Any] = dict(raw["record"])
        for name in DECIMAL_FIELDS[kind]:
            record[name] = Decimal(record[name])
        for name in TIMESTAMP_FIELDS | OPTIONAL_TIMESTAMP_FIELDS:
            if name in OPTIONAL_TIMESTAMP_FIELDS and record.get(name) is None:
                continue
            stamp = datetime.fromisoformat(record[name])
            if stamp.tzinfo is None:
                raise ValueError(f"{name} has no timezone")
            record[name] = stamp
        record["exchange_sequence_number"] = int(record["exchange_sequence_number"])
    except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
        raise ReplayFormatError(f"bad recovery record: {exc}") from exc
    return Event(cast(Kind, kind), record)


def append_recovery(path: Path, events: Iterable[Event]) -> int:
    """Append events to a recovery file, flushed before returning so another process can read them."""
    lines = [to_json_line(e) + "\n" for e in events]
    if not lines:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(lines))
    return len(lines)


class RecoveryStore:
    """Withheld records of one exchange, addressable by stream and sequence range."""

    KEPT_SNAPSHOTS = 100  # per symbol: the newest book snapshots it can hand out again

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self._records: dict[tuple[Kind, str], dict[int, dict[str, Any]]] = {}
        self._snapshots: dict[str, list[dict[str, Any]]] = {}

    def add_snapshot(self, record: dict[str, Any]) -> None:
        """Keep a book snapshot the simulator published, so it can be asked for again (a venue's snapshot service:
        how a consumer that lost updates gets a book back)."""
        kept = self._snapshots.setdefault(record["symbol"], [])
        kept.append(record)
        del kept[: -self.KEPT_SNAPSHOTS]

    def snapshot(self, symbol: str, at: datetime | None = None) -> dict[str, Any] | None:
        """The newest kept snapshot of `symbol` at or before `at` (any time when None), or None."""
        kept = [r for r in self._snapshots.get(symbol, []) if at is None or r["exchange_timestamp"] <= at]
        return dict(kept[-1]) if kept else None

    def add(self, event: Event) -> None:
        if event.record["exchange"] != self.exchange:
            raise ReplayFormatError(f"recovery store for {self.exchange} given a {event.record['exchange']} record")
        if event.kind not in KINDS:  # a book heals by its next snapshot: its updates are never retransmitted
            raise ReplayFormatError(f"the recovery store keeps trades and quotes, not {event.kind}")
        self._records.setdefault((event.kind, event.record["symbol"]), {})[event.sequence] = event.record

    def fetch(self, kind: Kind, symbol: str, first: int, last: int) -> list[dict[str, Any]]:
        """The stored records with first <= sequence <= last, in sequence order; sequence numbers that were
        never withheld are simply absent (a gap that is not the simulator's cannot be recovered here)."""
        by_seq = self._records.get((kind, symbol), {})
        return [dict(by_seq[s]) for s in sorted(by_seq) if first <= s <= last]

    def __len__(self) -> int:
        return sum(len(v) for v in self._records.values())


def load_recovery(settings: Settings, exchange: str) -> RecoveryStore:
    """Read the exchange's recovery file (a missing file is an empty store).

    A final line without its newline is a write in progress by a running simulator and is left for the
    next load; any other unreadable line raises ReplayFormatError naming its line number.
    """
    store = RecoveryStore(exchange)
    path = recovery_path(settings, exchange)
    try:
        fh = path.open(encoding="utf-8")
    except FileNotFoundError:
        return store
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.endswith("\n"):
                log.info("skipping partially written recovery line", extra={"path": str(path), "line_number": number})
                break
            if not line.strip():
                continue
            try:
                store.add(from_json_line(line))
            except ReplayFormatError as exc:
                raise ReplayFormatError(f"{path}:{number}: {exc}") from exc
    return store
