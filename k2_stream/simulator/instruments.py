"""What each simulated exchange lists: symbols, plausible start prices, tick-size ladders and lot steps.

Downstream code checks tick and lot conformance, so a simulator that emitted off-tick prices would test
nothing; the ladders here follow the real venues closely enough to exercise those checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from k2_core.exceptions import ConfigError

LotStyle = Literal["shares", "round_lots", "fractional"]

# (upper bound exclusive, tick); the last rung has no upper bound.
TickLadder = tuple[tuple[Decimal | None, Decimal], ...]

# Every record value is quantized to at most this many places: the Avro and Iceberg decimals are (18, 8).
MAX_PLACES = Decimal("0.00000001")

ASX_LADDER: TickLadder = (
    (Decimal("0.10"), Decimal("0.001")),
    (Decimal("2.00"), Decimal("0.005")),
    (None, Decimal("0.01")),
)
CENT_LADDER: TickLadder = ((None, Decimal("0.01")),)


def flat_ladder(tick: str) -> TickLadder:
    return ((None, Decimal(tick)),)


@dataclass(frozen=True)
class Instrument:
    symbol: str
    start_price: Decimal
    ladder: TickLadder
    lot_step: Decimal
    lot_style: LotStyle
    # Typical trade notional in quote currency: sizes are drawn around it so a BTC trade is not 500 BTC.
    typical_notional: Decimal
    # Relative weight of this symbol in the trade flow (large caps trade more often).
    activity: float = 1.0

    def __post_init__(self) -> None:
        # Prices and sizes are whole multiples of these, so they alone decide whether records fit 8 places.
        for name, value in [("lot_step", self.lot_step)] + [("tick", tick) for _, tick in self.ladder]:
            if value <= 0 or value != value.quantize(MAX_PLACES):
                raise ConfigError(f"{self.symbol}: {name} {value} must be positive with at most 8 decimal places")

    @property
    def min_tick(self) -> Decimal:
        return min(tick for _, tick in self.ladder)

    def tick_at(self, price: Decimal) -> Decimal:
        """The tick that applies to prices at `price` (ladder bounds are the first price of the next rung)."""
        for bound, tick in self.ladder:
            if bound is None or price < bound:
                return tick
        raise ConfigError(f"{self.symbol}: tick ladder has no open-ended last rung")

    def on_tick(self, price: Decimal) -> bool:
        return price > 0 and price % self.tick_at(price) == 0

    def round_to_tick(self, price: Decimal) -> Decimal:
        """Nearest valid price, never below one minimum tick (a walk must not reach zero)."""
        tick = self.tick_at(price)
        rounded = (price / tick).to_integral_value() * tick
        # Rounding up across a ladder bound lands on the bound, which is on the coarser grid too.
        return max(rounded, self.min_tick).quantize(tick)

    def _rung(self, price: Decimal, below: bool) -> tuple[Decimal, Decimal | None, Decimal]:
        """(lower bound, upper bound, tick) of the rung holding `price`, or with `below` the rung of the
        prices just under it (the tick below 2.00 on the ASX is 0.005, the tick above it 0.01)."""
        lower = Decimal(0)
        for upper, tick in self.ladder:
            if upper is None or price < upper or (below and price == upper):
                return lower, upper, tick
            lower = upper
        raise ConfigError(f"{self.symbol}: tick ladder has no open-ended last rung")

    def step(self, price: Decimal, ticks: int) -> Decimal:
        """Move an on-tick price `ticks` ticks up (positive) or down, rung-aware, floored at one min tick.

        Jumps a whole rung at a time, so a 2,000-tick move of BTC costs no more than a one-tick move.
        """
        remaining = abs(ticks)
        while remaining:
            if ticks > 0:
                _, upper, tick = self._rung(price, below=False)
                room = remaining if upper is None else min(remaining, int((upper - price) / tick))
            else:
                lower, _, tick = self._rung(price, below=True)
                room = min(remaining, int((price - lower) / tick))
                if lower == 0 and room * tick >= price:
                    return tick
                room = -room
            price = (price + room * tick).quantize(tick)
            remaining -= abs(room)
        return price


def _asx(symbol: str, price: str, activity: float = 1.0) -> Instrument:
    return Instrument(symbol, Decimal(price), ASX_LADDER, Decimal(1), "shares", Decimal(20_000), activity)


def _nyse(symbol: str, price: str, activity: float = 1.0) -> Instrument:
    return Instrument(symbol, Decimal(price), CENT_LADDER, Decimal(1), "round_lots", Decimal(25_000), activity)


def _binance(symbol: str, price: str, tick: str, step: str, activity: float = 1.0) -> Instrument:
    return Instrument(symbol, Decimal(price), flat_ladder(tick), Decimal(step), "fractional", Decimal(2_000), activity)


CATALOG: dict[str, tuple[Instrument, ...]] = {
    "asx": (
        _asx("BHP", "45.20", 3.0),
        _asx("CBA", "152.40", 3.0),
        _asx("CSL", "248.10", 2.0),
        _asx("NAB", "38.15", 2.0),
        _asx("WBC", "33.02", 2.0),
        _asx("ANZ", "29.85", 2.0),
        _asx("WES", "74.60", 1.5),
        _asx("MQG", "212.75", 1.5),
        _asx("RIO", "119.30", 1.5),
        _asx("FMG", "19.44", 2.0),
        _asx("TLS", "3.96", 1.5),
        _asx("WOW", "31.20", 1.0),
        # Low-priced names exercise the 0.005 and 0.001 rungs of the ASX ladder.
        _asx("PLS", "1.955", 1.0),
        _asx("SYA", "0.046", 0.5),
    ),
    "nyse": (
        _nyse("IBM", "231.45", 1.5),
        _nyse("JPM", "241.10", 2.0),
        _nyse("GS", "562.30", 1.0),
        _nyse("XOM", "112.85", 2.0),
        _nyse("KO", "68.42", 1.5),
        _nyse("WMT", "95.17", 2.0),
        _nyse("DIS", "110.64", 1.5),
        _nyse("BA", "171.90", 1.5),
        _nyse("CVX", "151.33", 1.0),
        _nyse("PG", "166.08", 1.0),
        _nyse("JNJ", "155.71", 1.0),
        _nyse("V", "318.26", 1.0),
    ),
    "binance": (
        _binance("BTCUSDT", "65000.00", "0.01", "0.00001", 4.0),
        _binance("ETHUSDT", "3200.00", "0.01", "0.0001", 3.0),
        _binance("BNBUSDT", "580.00", "0.01", "0.001", 1.0),
        _binance("SOLUSDT", "150.00", "0.01", "0.001", 2.0),
        _binance("XRPUSDT", "0.5200", "0.0001", "0.1", 1.5),
        _binance("ADAUSDT", "0.4500", "0.0001", "0.1", 1.0),
        _binance("DOGEUSDT", "0.12000", "0.00001", "1", 1.5),
        _binance("LTCUSDT", "80.00", "0.01", "0.001", 0.5),
    ),
}


def simulated_exchanges() -> list[str]:
    return sorted(CATALOG)


def instruments_for(exchange: str, symbols: Iterable[str] | None = None) -> tuple[Instrument, ...]:
    """The exchange's instruments, restricted to `symbols` (in catalog order) when given."""
    try:
        listed = CATALOG[exchange]
    except KeyError as exc:
        raise ConfigError(
            f"no simulated instruments for exchange {exchange!r}; simulated: {simulated_exchanges()}"
        ) from exc
    if symbols is None:
        return listed
    wanted = set(symbols)
    unknown = sorted(wanted - {i.symbol for i in listed})
    if unknown:
        raise ConfigError(f"symbols {unknown} are not listed on {exchange}; listed: {[i.symbol for i in listed]}")
    if not wanted:
        raise ConfigError("at least one symbol is needed")
    return tuple(i for i in listed if i.symbol in wanted)
