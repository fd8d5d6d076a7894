"""The simulator's pure core: a seeded market that yields trade and quote records with faults applied.

No Kafka and no sleeping here, so tests can check sequence numbers, ticks and faults exactly and the run
loop (k2_stream.simulator.run) stays a thin pacing-and-producing shell.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from k2_core.model.books import Book, update_record
from k2_core.model.topics import Kind
from k2_stream.simulator.book import LevelChange, SimulatedBook
from k2_stream.simulator.details import FeedDetails
from k2_stream.simulator.faults import Event, FaultConfig, FaultInjector, FaultStats, Stream
from k2_stream.simulator.instruments import Instrument, instruments_for
from k2_stream.simulator.prices import Fill, PriceWalk
from k2_stream.simulator.recovery import RecoveryStore

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SimulatorConfig:
    exchange: str
    symbols: tuple[str, ...] | None = None
    quotes: bool = True
    seed: int | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    # Level-2 books (k2_stream.simulator.book): off unless asked, so the trades and quotes feed is as it was.
    books: bool = False
    book_depth: int = 10
    snapshot_every: int = 50  # a symbol's snapshot after this many of its updates (and one before its first)
    book_faults: FaultConfig = field(default_factory=FaultConfig)  # applied to book updates only, never snapshots
    keep_book_history: bool = False  # remember every book state, for `book_at` (tests)


class MarketSimulator:
    """One exchange's feed. Each `step` is one trade on a randomly chosen symbol, preceded by the quote
    update it trades against (when quotes are on), passed through the fault injector.

    `ingestion_timestamp` is set to the generation time as a placeholder; whoever sends the record
    overwrites it with the receive time, as a feed handler would. Records have every field of the newest feed
    schema (version 2: receive time, trade conditions, order ids, order counts; k2_stream.simulator.details).
    """

    def __init__(self, config: SimulatorConfig, clock: Clock = utc_now) -> None:
        self.config = config
        self.exchange = config.exchange
        self.instruments: tuple[Instrument, ...] = instruments_for(config.exchange, config.symbols)
        self.clock = clock
        self.rng = random.Random(config.seed)  # noqa: S311  # a reproducible market, not a secret
        self._walks = [PriceWalk(i, self.rng) for i in self.instruments]
        self._weights = [i.activity for i in self.instruments]
        self._next_seq: Counter[Stream] = Counter()
        self.details = FeedDetails(config.exchange, config.seed)
        self.faults = FaultInjector(config.faults)
        self.recovery = RecoveryStore(config.exchange)
        # The books draw from their own generator, so the walk's draws (trades, quotes) are the same with books on.
        book_rng = random.Random(None if config.seed is None else config.seed + 1)  # noqa: S311  # not a secret
        self.books = {
            i.symbol: SimulatedBook(i, config.book_depth, book_rng, config.keep_book_history) for i in self.instruments
        }
        self._since_snapshot: Counter[str] = Counter()
        self.book_faults = FaultInjector(config.book_faults)
        self.book_updates_generated = 0
        self.book_snapshots_generated = 0
        self._unpersisted: list[Event] = []
        self.trades_generated = 0
        self.quotes_generated = 0

    @property
    def stats(self) -> FaultStats:
        return self.faults.stats

    def _sequence(self, symbol: str, kind: Kind) -> int:
        stream = Stream(self.exchange, symbol, kind)
        self._next_seq[stream] += 1
        return self._next_seq[stream]

    def _quote(self, symbol: str, fill: Fill) -> Event:
        now = self.clock()
        self.quotes_generated += 1
        return Event(
            "quotes",
            {
                "symbol": symbol,
                "exchange": self.exchange,
                "exchange_timestamp": now,
                "exchange_sequence_number": self._sequence(symbol, "quotes"),
                "bid_price": fill.book.bid_price,
                "bid_size": fill.book.bid_size,
                "ask_price": fill.book.ask_price,
                "ask_size": fill.book.ask_size,
                "ingestion_timestamp": now,
                **self.details.quote(now),
            },
        )

    def _trade(self, symbol: str, fill: Fill) -> Event:
        now = self.clock()
        seq = self._sequence(symbol, "trades")
        self.trades_generated += 1
        record: dict[str, Any] = {
            "symbol": symbol,
            "exchange": self.exchange,
            "exchange_timestamp": now,
            "exchange_sequence_number": seq,
            "price": fill.price,
            "volume": fill.volume,
            "side": fill.side,
            "trade_id": f"{self.exchange}-{symbol}-{seq}",
            "ingestion_timestamp": now,
            **self.details.trade(fill, now),
        }
        return Event("trades", record)

    def _book_events(self, symbol: str, fill: Fill, quote_at: datetime, trade_at: datetime) -> list[Event]:
        """The book's updates for this step (the quote's, the trade's, some churn) and its snapshot when due."""
        sim = self.books[symbol]
        events: list[Event] = []
        if sim.book.sequence == 0 and self._since_snapshot[symbol] == 0:
            events.append(self._snapshot(symbol, quote_at))  # the empty book before the first update
        q = fill.book
        events += self._updates(symbol, sim.quote(q.bid_price, q.bid_size, q.ask_price, q.ask_size), quote_at)
        events += self._updates(symbol, sim.trade(fill.price, fill.volume, fill.side) + sim.churn(), trade_at)
        if self._since_snapshot[symbol] >= self.config.snapshot_every:
            events.append(self._snapshot(symbol, trade_at))
        return events

    def _updates(self, symbol: str, changes: list[LevelChange], at: datetime) -> list[Event]:
        numbered = self.books[symbol].number(changes, at)
        self._since_snapshot[symbol] += len(numbered)
        self.book_updates_generated += len(numbered)
        return [
            Event("book_updates", update_record(symbol, self.exchange, at, seq, side, price, size, at))
            for seq, (side, price, size) in numbered
        ]

    def _snapshot(self, symbol: str, at: datetime) -> Event:
        self._since_snapshot[symbol] = 0
        self.book_snapshots_generated += 1
        record = self.books[symbol].book.snapshot_record(symbol, self.exchange, at, at)
        self.recovery.add_snapshot(record)
        return Event("book_snapshots", record)

    def snapshot_now(self, symbol: str) -> Event:
        """A snapshot of the symbol's book as it is, on request (what a venue's snapshot service answers)."""
        return self._snapshot(symbol, self.clock())

    def book_at(self, symbol: str, at: datetime) -> Book | None:
        """The symbol's book after its last update at or before `at` (needs `keep_book_history`)."""
        return self.books[symbol].at(at)

    def step(self) -> list[Event]:
        """Generate one trade (and its quote) and return what the faulty feed sends for it, possibly nothing."""
        walk = self.rng.choices(self._walks, weights=self._weights)[0]
        symbol = walk.instrument.symbol
        fill = walk.next_fill()
        clean = [self._quote(symbol, fill)] if self.config.quotes else []
        clean.append(self._trade(symbol, fill))
        out = [sent for event in clean for sent in self.faults.apply(event)]
        if self.config.books:
            quote_at = clean[0].record["exchange_timestamp"]
            for event in self._book_events(symbol, fill, quote_at, clean[-1].record["exchange_timestamp"]):
                out += self.book_faults.apply(event) if event.kind == "book_updates" else [event]
            self.book_faults.take_withheld()  # a book heals by its next snapshot, not by retransmission
        for event in self.faults.take_withheld():
            self.recovery.add(event)
            self._unpersisted.append(event)
        return out

    def finish(self) -> list[Event]:
        """End of the feed: release messages still held back for reordering."""
        return self.faults.finish() + self.book_faults.finish()

    def take_unpersisted(self) -> list[Event]:
        """Withheld records not yet handed out, for the run loop to persist before it sends later messages."""
        taken, self._unpersisted = self._unpersisted, []
        return taken

    def events(self, trades: int | None = None) -> Iterator[Event]:
        """The whole faulty feed for `trades` trades (endless when None), then the held-back tail."""
        done = 0
        while trades is None or done < trades:
            yield from self.step()
            done += 1
        yield from self.finish()
