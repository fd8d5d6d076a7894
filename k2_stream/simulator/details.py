"""What real feeds carry beyond the price (the optional fields of schema version 2), simulated per venue.

* `ts_recv`: the capture host's receive time, a little after the exchange's: tens of microseconds to a couple of
  milliseconds for an equities feed handler next to its exchange, milliseconds to tens of them for a crypto feed
  read over the internet.
* `conditions`: NYSE trades carry CTA sale conditions when they are not plain regular sales (`I` for an odd lot,
  `F` for an intermarket sweep, after `@`, the regular-sale code); ASX marks the odd crossing (`XT`) or late trade
  (`LT`); Binance sends none (null).
* `buyer_order_id` / `seller_order_id`: the aggressor's order is new (the venue's next order id), the resting one
  was entered earlier; ids are the venue's own counter, as decimal strings.
* `bid_count` / `ask_count`: orders at the best bid and ask, which equities feeds report and Binance's book ticker
  does not (null).

Draws come from a `random.Random` of their own, so adding these fields left the seeded prices, sizes and faults of
a run exactly as they were.
"""

from __future__ import annotations

import random
from collections import deque
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from k2_stream.simulator.prices import Fill

# Receive latency, microseconds (low, mode, high) of a triangular draw.
_LATENCY_US = {"binance": (1_000, 6_000, 40_000)}
_COLOCATED_US = (40, 250, 2_000)
# Share of ASX trades with a condition code, and the codes.
_ASX_CONDITION_SHARE = 0.04
_ASX_CODES = ("XT", "LT")
_NYSE_SWEEP_SHARE = 0.05  # intermarket sweep orders (CTA condition F)
_CRYPTO = frozenset({"binance"})


class FeedDetails:
    """One venue's version-2 fields for each trade and quote."""

    def __init__(self, exchange: str, seed: int | None) -> None:
        self.exchange = exchange
        self.rng = random.Random(None if seed is None else f"{seed}:details")  # noqa: S311  # a market, not a secret
        self._latency = _LATENCY_US.get(exchange, _COLOCATED_US)
        self._next_order = self.rng.randint(10**9, 9 * 10**9)
        self._resting: deque[int] = deque(maxlen=64)  # orders entered earlier, still on the book

    def received(self, exchange_time: datetime) -> datetime:
        low, mode, high = self._latency
        return exchange_time + timedelta(microseconds=round(self.rng.triangular(low, high, mode)))

    def _order(self) -> int:
        self._next_order += self.rng.randint(1, 40)  # other instruments' orders take the ids between
        return self._next_order

    def trade(self, fill: Fill, exchange_time: datetime) -> dict[str, Any]:
        aggressor = self._order()
        resting = self.rng.choice(self._resting) if self._resting else self._order()
        self._resting.append(self._order())  # the book refills behind the trade
        buyer, seller = (aggressor, resting) if fill.side == "buy" else (resting, aggressor)
        return {
            "ts_recv": self.received(exchange_time),
            "conditions": self._conditions(fill.volume),
            "buyer_order_id": str(buyer),
            "seller_order_id": str(seller),
        }

    def _conditions(self, volume: Decimal) -> list[str] | None:
        if self.exchange == "nyse":
            codes = ["F"] if self.rng.random() < _NYSE_SWEEP_SHARE else []
            if volume < 100:
                codes.append("I")
            return ["@", *codes] if codes else None
        if self.exchange in _CRYPTO:
            return None
        if self.rng.random() < _ASX_CONDITION_SHARE:
            return [self.rng.choice(_ASX_CODES)]
        return None

    def quote(self, exchange_time: datetime) -> dict[str, Any]:
        crypto = self.exchange in _CRYPTO
        return {
            "bid_count": None if crypto else self.rng.randint(1, 40),
            "ask_count": None if crypto else self.rng.randint(1, 40),
            "ts_recv": self.received(exchange_time),
        }
