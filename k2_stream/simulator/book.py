"""One simulated instrument's level-2 book, kept consistent with the quotes and trades the simulator publishes.

The price walk (k2_stream.simulator.prices) still decides every quote and trade, with the same draws as before, so
trades and quotes are unchanged by books being on. The book follows them: a quote sets its top of book (levels
better than the new best are gone, the best level takes the quoted size), a trade at a price the book shows takes
its volume out of that level (a trade inside the spread met hidden liquidity: the visible book is unchanged), and
between those the book's own draws (a separate seeded `Random`) resize deeper levels and refill the sides to
`depth` levels. Every change is one update numbered per symbol; the whole book is at most `depth` levels a side,
so a snapshot carries all of it and a rebuild from snapshot plus updates is exact.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from k2_core.model.books import ASK, BID, Book
from k2_stream.simulator.instruments import Instrument

LevelChange = tuple[str, Decimal, Decimal]  # (side, price, new size)


@dataclass(frozen=True)
class Moment:
    """The book after one update: what `book_at` answers from."""

    at: datetime
    sequence: int
    book: Book


class SimulatedBook:
    def __init__(self, instrument: Instrument, depth: int, rng: random.Random, keep_history: bool = False) -> None:
        self.instrument = instrument
        self.depth = depth
        self.rng = rng
        self.book = Book()
        self.keep_history = keep_history
        self.history: list[Moment] = []

    def _size(self) -> Decimal:
        """A resting size: a few lot steps to a few hundred (round lots where the venue trades them)."""
        inst = self.instrument
        lots = self.rng.randint(1, 400)
        if inst.lot_style == "round_lots":
            return Decimal(100 * self.rng.randint(1, 20))
        return lots * inst.lot_step

    def quote(self, bid: Decimal, bid_size: Decimal, ask: Decimal, ask_size: Decimal) -> list[LevelChange]:
        """The changes that make (bid, ask) the top of book with these sizes, then refill both sides."""
        changes: list[LevelChange] = []
        changes += [(BID, p, Decimal(0)) for p in sorted(self.book.bids) if p > bid or p >= ask]
        changes += [(ASK, p, Decimal(0)) for p in sorted(self.book.asks) if p < ask or p <= bid]
        changes += [(BID, bid, bid_size), (ASK, ask, ask_size)]
        return self._apply_all(changes) + self._refill()

    def trade(self, price: Decimal, volume: Decimal, side: str) -> list[LevelChange]:
        """A buy at a shown ask, or a sell at a shown bid, takes `volume` out of that level (all of it at most)."""
        book_side = ASK if side == "buy" else BID
        resting = self.book.side(book_side).get(price)
        if resting is None:
            return []
        return self._apply_all([(book_side, price, max(resting - volume, Decimal(0)))]) + self._refill()

    def churn(self) -> list[LevelChange]:
        """Now and then a deeper level is resized (orders added or cancelled behind the top)."""
        if self.rng.random() >= 0.5:
            return []
        side = self.rng.choice((BID, ASK))
        levels = self.book.levels(side)
        if len(levels) < 2:
            return []
        price, _ = levels[self.rng.randint(1, len(levels) - 1)]
        return self._apply_all([(side, price, self._size())])

    def _refill(self) -> list[LevelChange]:
        """Bring each side back to `depth` levels: drop the deepest beyond it, add new ones behind the last."""
        changes: list[LevelChange] = []
        for side, away in ((BID, -1), (ASK, 1)):
            levels = self.book.levels(side)
            changes += [(side, p, Decimal(0)) for p, _ in levels[self.depth :]]
            if not levels:
                continue
            last = levels[min(len(levels), self.depth) - 1][0]
            for _ in range(self.depth - len(levels)):
                nxt = self.instrument.step(last, away * self.rng.randint(1, 2))
                if nxt == last:  # the minimum tick: no room further down
                    break
                last = nxt
                changes.append((side, last, self._size()))
        return self._apply_all(changes)

    def _apply_all(self, changes: list[LevelChange]) -> list[LevelChange]:
        """Apply each change to the book; a change that changes nothing (a level set to its size) is dropped."""
        applied = []
        for side, price, size in changes:
            if self.book.side(side).get(price, Decimal(0)) == size:
                continue
            self.book.apply(side, price, size)
            applied.append((side, price, size))
        return applied

    def number(self, changes: list[LevelChange], at: datetime) -> list[tuple[int, LevelChange]]:
        """Number applied changes as consecutive updates and, when keeping history, remember the book after them."""
        first = self.book.sequence + 1
        self.book.sequence += len(changes)
        if self.keep_history and changes:
            self.history.append(Moment(at, self.book.sequence, self.book.copy()))
        return list(enumerate(changes, start=first))

    def at(self, when: datetime) -> Book | None:
        """The book after the last update at or before `when` (None before the first); needs `keep_history`."""
        i = bisect_right([m.at for m in self.history], when)
        return self.history[i - 1].book if i else None
