"""The realtime tail: a bounded in-memory buffer of the most recent market records, per topic.

The API's own Kafka consumer (`k2_stream.tail`) feeds it; the query layer reads it for ranges too recent for
Iceberg (the ingester commits about once a second). This module holds no Kafka code, only the buffer and the
rule for what it can vouch for:

- Records are kept per (kind, exchange, symbol), keyed by sequence number, so a message delivered twice is
  held once (the same key the ingester deduplicates on).
- Each topic (kind, exchange) holds at most `max_messages` records and none produced more than `retention`
  ago; the oldest go first.
- `covers_from(kind, exchange)` is the earliest exchange time from which the buffer holds every record the
  topic delivered, or None until the consumer has caught up with the topic once. Evicting a record moves it
  past that record's time, so a query never trusts the buffer for a time it has dropped rows from.
- `schema(kind)` is the columns its rows come in: the tables' created columns, plus each optional column of a newer
  feed version (`EXTRA_COLUMNS`) that the consumer's reader schema has (`carries`) or a held record ever had. Once
  there a column stays: what the buffer answers in only grows, so pages of one listing never lose a column it had.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from k2_core.model.tables import EXTRA_COLUMNS, MARKET_TABLES, feed_schema
from k2_core.model.topics import Kind

_Topic = tuple[Kind, str]  # (kind, exchange)
_Stream = tuple[Kind, str, str]  # (kind, exchange, symbol)
_ONE_MICRO = timedelta(microseconds=1)
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_EXTRA: dict[Kind, frozenset[str]] = {kind: frozenset(f.name for f in fields) for kind, fields in EXTRA_COLUMNS.items()}


class RealtimeBuffer:
    """Thread-safe: one consumer thread adds, request threads read."""

    def __init__(self, max_messages: int, retention: timedelta) -> None:
        self.max_messages = max_messages
        self.retention = retention
        self._lock = threading.Lock()
        self._streams: dict[_Stream, dict[int, dict[str, Any]]] = {}
        # Arrival order per topic, for eviction: (symbol, sequence, exchange time, produced at).
        self._arrivals: dict[_Topic, deque[tuple[str, int, datetime, datetime]]] = {}
        self._covers_from: dict[_Topic, datetime] = {}
        self._ready: set[_Topic] = set()
        self._extras: dict[Kind, frozenset[str]] = {kind: frozenset() for kind in MARKET_TABLES}
        self._schemas: dict[tuple[Kind, frozenset[str]], pa.Schema] = {}
        self.received = 0
        self.duplicates = 0

    # --- feeding (the consumer thread) ---------------------------------------------------------------------

    def carries(self, kind: Kind, fields: Iterable[str]) -> None:
        """The consumer decodes `kind` records with these fields (its reader schema's): the optional columns among
        them are in this buffer's rows from now on, null where a record lacks one."""
        with self._lock:
            self._extras[kind] = self._extras[kind] | (_EXTRA[kind] & set(fields))

    def add(self, kind: Kind, record: dict[str, Any], produced_at: datetime) -> bool:
        """Hold one decoded, valid record; False when it was already held or is older than the retention."""
        topic: _Topic = (kind, record["exchange"])
        stream: _Stream = (kind, record["exchange"], record["symbol"])
        seq = int(record["exchange_sequence_number"])
        now = datetime.now(UTC)
        with self._lock:
            self.received += 1
            self._evict(topic, now)
            if produced_at < now - self.retention:
                # Not held, so the buffer no longer vouches for this record's time.
                self._raise_coverage(topic, record["exchange_timestamp"])
                return False
            held = self._streams.setdefault(stream, {})
            if seq in held:
                self.duplicates += 1
                return False
            held[seq] = record
            if not _EXTRA[kind] <= self._extras[kind]:
                self._extras[kind] = self._extras[kind] | (_EXTRA[kind] & record.keys())
            arrivals = self._arrivals.setdefault(topic, deque())
            arrivals.append((record["symbol"], seq, record["exchange_timestamp"], produced_at))
            if len(arrivals) > self.max_messages:
                self._drop_oldest(topic)
            return True

    def mark_ready(self, kind: Kind, exchange: str, covers_from: datetime | None) -> None:
        """The consumer has read the topic up to its end once, starting at `covers_from` (None: from the
        topic's beginning). From now on the buffer vouches for the topic from that time on."""
        with self._lock:
            topic: _Topic = (kind, exchange)
            start = covers_from or _EARLIEST
            self._covers_from[topic] = max(self._covers_from.get(topic, start), start)
            self._ready.add(topic)

    def expire(self, now: datetime) -> None:
        """Drop records produced before `now - retention` on every topic (the consumer calls this when idle)."""
        with self._lock:
            for topic in list(self._arrivals):
                self._evict(topic, now)

    # --- reading (request threads) -------------------------------------------------------------------------

    def covers_from(self, kind: Kind, exchange: str) -> datetime | None:
        with self._lock:
            topic: _Topic = (kind, exchange)
            return self._covers_from.get(topic) if topic in self._ready else None

    def schema(self, kind: Kind) -> pa.Schema:
        """The columns `rows` answers in (see the module's docstring)."""
        with self._lock:
            extras = self._extras[kind]
            found = self._schemas.get((kind, extras))
            if found is None:
                full = feed_schema(kind)
                found = pa.schema([f for f in full if f.name not in _EXTRA[kind] or f.name in extras])
                self._schemas[(kind, extras)] = found
            return found

    def rows(self, kind: Kind, symbol: str | None, exchange: str, start: datetime, end: datetime) -> pa.Table:
        """The held records of one stream (of every symbol of the exchange when `symbol` is None) with
        `start <= exchange_timestamp < end`, in table sort order, in `schema(kind)`: a record may carry columns the
        table has not gained yet."""
        schema = self.schema(kind)
        with self._lock:
            if symbol is None:
                streams = [h for (k, ex, _), h in self._streams.items() if k == kind and ex == exchange]
            else:
                streams = [self._streams.get((kind, exchange, symbol), {})]
            picked = [r for held in streams for r in held.values() if start <= r["exchange_timestamp"] < end]
        return MARKET_TABLES[kind].sort(pa.Table.from_pylist(picked, schema=schema))

    def latest(self, kind: Kind, symbol: str, exchange: str) -> dict[str, Any] | None:
        """The held record of one stream that is last in exchange order, or None."""
        with self._lock:
            held = self._streams.get((kind, exchange, symbol), {})
            if not held:
                return None
            return max(held.values(), key=lambda r: (r["exchange_timestamp"], r["exchange_sequence_number"]))

    def symbols(self, exchange: str) -> set[str]:
        with self._lock:
            return {symbol for (_, ex, symbol), held in self._streams.items() if ex == exchange and held}

    def size(self) -> int:
        with self._lock:
            return sum(len(a) for a in self._arrivals.values())

    def topics(self) -> Iterable[_Topic]:
        with self._lock:
            return tuple(self._ready)

    # --- internals (lock held) -----------------------------------------------------------------------------

    def _evict(self, topic: _Topic, now: datetime) -> None:
        arrivals = self._arrivals.get(topic)
        horizon = now - self.retention
        while arrivals and arrivals[0][3] < horizon:
            self._drop_oldest(topic)

    def _drop_oldest(self, topic: _Topic) -> None:
        symbol, seq, at, _ = self._arrivals[topic].popleft()
        kind, exchange = topic
        held = self._streams.get((kind, exchange, symbol))
        if held is not None:
            held.pop(seq, None)
            if not held:
                del self._streams[(kind, exchange, symbol)]
        self._raise_coverage(topic, at)

    def _raise_coverage(self, topic: _Topic, dropped_at: datetime) -> None:
        self._covers_from[topic] = max(self._covers_from.get(topic, _EARLIEST), dropped_at + _ONE_MICRO)
