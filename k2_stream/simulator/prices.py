"""Per-instrument market state: a tick-rounded random walk for prices, lot-aware sizes and a top of book.

All draws come from the `random.Random` handed in, so a seed reproduces the same market exactly. Floats are
only used for the random draws themselves; every value that reaches a record is a quantized Decimal.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from k2_stream.simulator.instruments import Instrument

# Per-trade volatility of the walk: a few basis points, so large caps move a tick or two per trade.
TRADE_VOLATILITY = 0.0004
# Share of NYSE trades that are odd lots (fewer than 100 shares); the rest are multiples of 100.
ODD_LOT_SHARE = 0.2


@dataclass(frozen=True)
class Book:
    bid_price: Decimal
    bid_size: Decimal
    ask_price: Decimal
    ask_size: Decimal


@dataclass(frozen=True)
class Fill:
    price: Decimal
    volume: Decimal
    side: str
    book: Book


def _decimal(value: float) -> Decimal:
    """A float draw as a Decimal, via repr so the value is the one printed, not its binary expansion."""
    return Decimal(repr(value))


class PriceWalk:
    """The evolving market of one instrument. `next_fill` gives the book just before a trade and the trade."""

    def __init__(self, instrument: Instrument, rng: random.Random) -> None:
        self.instrument = instrument
        self.rng = rng
        self.last = instrument.round_to_tick(instrument.start_price)

    def _size(self, price: Decimal) -> Decimal:
        """A size around the typical notional, log-normal like real trade sizes, rounded to the lot step."""
        inst = self.instrument
        notional = float(inst.typical_notional) * math.exp(self.rng.gauss(0.0, 1.0) - 0.5)
        units = _decimal(notional) / price
        if inst.lot_style == "round_lots":
            if self.rng.random() < ODD_LOT_SHARE:
                return Decimal(self.rng.randint(1, 99))
            return max(Decimal(100), (units / 100).to_integral_value(ROUND_DOWN) * 100)
        steps = (units / inst.lot_step).to_integral_value(ROUND_DOWN)
        # An integer number of lot steps keeps the step's exponent, so the size is already on the lot grid.
        return max(steps, Decimal(1)) * inst.lot_step

    def next_fill(self) -> Fill:
        """Move the price, quote around it (bid < price <= ask) and decide the aggressor side.

        The side follows the move, as aggressive buyers lift offers and push prices up; unchanged prices
        get a coin flip.
        """
        inst = self.instrument
        # Walk in whole ticks so every price is on the grid by construction. A floor of half a tick keeps
        # low-priced names, whose volatility is far below one tick, moving between neighbouring ticks.
        ticks_sigma = max(float(self.last * _decimal(TRADE_VOLATILITY) / inst.tick_at(self.last)), 0.5)
        price = inst.step(self.last, round(self.rng.gauss(0.0, ticks_sigma)))
        if price > self.last:
            side = "buy"
        elif price < self.last:
            side = "sell"
        else:
            side = self.rng.choice(("buy", "sell"))
        bid = inst.step(price, -self.rng.randint(1, 2))
        ask = inst.step(price, self.rng.randint(0, 2))
        if bid >= price:
            # The walk sits on the minimum tick and cannot go lower: open the book upwards instead.
            price = inst.step(price, 1)
            ask = max(ask, price)
        self.last = price
        book = Book(bid, self._size(bid), ask, self._size(ask))
        return Fill(price, self._size(price), side, book)
