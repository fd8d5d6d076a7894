"""Independent reference bars for the bar options (any interval, exchange and session alignment, fills, tick/volume/
dollar bars): pandas time-zone arithmetic and plain Python `Decimal`, no DuckDB, no k2_core bucketing.

Each takes plain trade rows and returns plain bar rows, to compare with what the engine answers."""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pandas as pd

from tests.support.query_oracle import EIGHT_PLACES, in_order, vwap

Row = dict[str, Any]
_UNITS = {"s": "s", "m": "min", "h": "h", "d": "D"}

# The 2024 trading calendars as the exchanges publish them (asx.com.au "trading calendar", nyse.com "holidays and
# trading hours"), written out by hand so session bars and freshness are not checked against exchange_calendars
# itself: full-day closures, and early closes at a local time.
ASX_2024_HOLIDAYS = frozenset(
    date(2024, m, d) for m, d in ((1, 1), (1, 26), (3, 29), (4, 1), (4, 25), (6, 10), (12, 25), (12, 26))
)
ASX_2024_EARLY_CLOSES = {date(2024, 12, 24): time(14, 10), date(2024, 12, 31): time(14, 10)}
NYSE_2024_HOLIDAYS = frozenset(
    date(2024, m, d)
    for m, d in ((1, 1), (1, 15), (2, 19), (3, 29), (5, 27), (6, 19), (7, 4), (9, 2), (11, 28), (12, 25))
)
NYSE_2024_EARLY_CLOSES = {date(2024, 7, 3): time(13), date(2024, 11, 29): time(13), date(2024, 12, 24): time(13)}


def split(interval: str) -> tuple[int, str]:
    unit = "mo" if interval.endswith("mo") else interval[-1]
    return int(interval[: -len(unit)]), unit


def _localize(naive: datetime, tz: str) -> list[datetime]:
    """Every UTC instant that shows `naive` on a clock in `tz`."""
    out = set()
    for ambiguous in (True, False):
        try:
            stamp = pd.Timestamp(naive).tz_localize(tz, ambiguous=ambiguous, nonexistent="raise")
        except ValueError:  # a wall-clock time that does not exist
            continue
        out.add(stamp.tz_convert("UTC").to_pydatetime())
    return sorted(out)


def _first_day(day: date, count: int, unit: str) -> date:
    if unit == "mo":
        return day.replace(day=1)
    if unit == "w":
        monday = day - timedelta(days=day.weekday())
        weeks = (monday - date(1970, 1, 5)).days // 7
        return monday - timedelta(days=7 * (weeks % count))
    return day - timedelta(days=(day - date(1970, 1, 1)).days % count)


def bar_start(
    ts: datetime,
    interval: str,
    align: str,
    tz: str,
    open_: time,
    close: time,
    holidays: frozenset[date] = frozenset(),
    early_closes: dict[date, time] | None = None,
) -> datetime | None:
    """The start of the bar holding `ts`, computed trade by trade from the definitions (None: in no bar). Session
    bars skip weekends and `holidays` and end at `early_closes` (local date -> local close) on half days."""
    count, unit = split(interval)
    stamp = pd.Timestamp(ts)
    if align == "utc":
        if unit in _UNITS:
            return stamp.floor(f"{count}{_UNITS[unit]}").to_pydatetime()
        first = _first_day(ts.date(), count, unit)
        return datetime.combine(first, time(0), tzinfo=UTC)
    local = stamp.tz_convert(tz).tz_localize(None).to_pydatetime()
    if align == "exchange":
        if unit in ("s", "m", "h"):
            width = pd.Timedelta(f"{count}{_UNITS[unit]}").to_pytimedelta()
            midnight = datetime.combine(local.date(), time(0))
            wall = midnight + ((local - midnight) // width) * width
            while True:
                found = [t for t in _localize(wall, tz) if t <= ts]
                if found:
                    return found[-1]
                wall -= width  # the wall-clock time does not exist: the bar before goes on
        first = _first_day(local.date(), count, unit)
        return _localize(datetime.combine(first, time(0)), tz)[0]
    # session
    closing = (early_closes or {}).get(local.date(), close)
    if local.weekday() >= 5 or local.date() in holidays or not (open_ <= local.time() < closing):
        return None
    opening = datetime.combine(local.date(), open_)
    if unit in ("s", "m", "h"):
        width = pd.Timedelta(f"{count}{_UNITS[unit]}").to_pytimedelta()
        return _localize(opening + ((local - opening) // width) * width, tz)[0]
    first = _first_day(local.date(), count, unit)
    while first.weekday() >= 5 or first in holidays:
        first += timedelta(days=1)
    return _localize(datetime.combine(first, open_), tz)[0]


def time_bars(
    rows: Iterable[Row],
    interval: str,
    align: str,
    tz: str = "UTC",
    open_: time = time(0),
    close: time = time(0),
    holidays: frozenset[date] = frozenset(),
    early_closes: dict[date, time] | None = None,
) -> list[Row]:
    frame = pd.DataFrame(in_order(rows))
    if frame.empty:
        return []
    frame["bar_start"] = [
        bar_start(t, interval, align, tz, open_, close, holidays, early_closes) for t in frame["exchange_timestamp"]
    ]
    frame = frame[frame["bar_start"].notna()]
    out = []
    for (symbol, bar), group in frame.groupby(["symbol", "bar_start"], sort=True):
        prices, volumes = list(group["price"]), list(group["volume"])
        out.append(
            {
                "symbol": symbol,
                "bar_start": pd.Timestamp(bar).to_pydatetime(),
                "open": prices[0],
                "high": max(prices),
                "low": min(prices),
                "close": prices[-1],
                "volume": sum(volumes, Decimal(0)),
                "vwap": vwap(prices, volumes),
                "trade_count": len(group),
            }
        )
    return out


def filled(bars: list[Row], grid: list[datetime], how: str) -> list[Row]:
    """One symbol's bars with a row at every grid time: pandas reindex for the rows, ffill for `previous`, and exact
    Decimal interpolation by position for `linear`."""
    frame = pd.DataFrame(bars).set_index("bar_start") if bars else pd.DataFrame(columns=["close"])
    frame = frame.reindex(pd.DatetimeIndex(grid))
    closes = list(frame["close"])
    known = [i for i, c in enumerate(closes) if isinstance(c, Decimal)]
    out = []
    previous = frame["close"].ffill()
    for i, (at, row) in enumerate(frame.iterrows()):
        if isinstance(row["close"], Decimal):
            out.append(
                {
                    "bar_start": at.to_pydatetime(),
                    **{k: row[k] for k in ("open", "high", "low", "close", "volume", "vwap", "trade_count")},
                }
            )
            continue
        price = None
        if how == "previous" and isinstance(previous.iloc[i], Decimal):
            price = previous.iloc[i]
        if how == "linear":
            before = [k for k in known if k < i]
            after = [k for k in known if k > i]
            if before and after:
                a, b = before[-1], after[0]
                with decimal.localcontext() as ctx:
                    ctx.prec = 60
                    value = closes[a] + (closes[b] - closes[a]) * (i - a) / (b - a)
                price = value.quantize(EIGHT_PLACES, rounding=ROUND_HALF_EVEN)
        out.append(
            {
                "bar_start": at.to_pydatetime(),
                "open": price,
                "high": price,
                "low": price,
                "close": price,
                "volume": Decimal(0),
                "vwap": None,
                "trade_count": 0,
            }
        )
    return out


def activity_bars(rows: Iterable[Row], kind: str, size: Decimal) -> list[Row]:
    """De Prado's bars by the book: walk the trades, close a bar at the trade that makes its measure reach size."""
    out: list[Row] = []
    current: list[Row] = []
    total = Decimal(0)

    def close(complete: bool) -> None:
        prices = [r["price"] for r in current]
        volumes = [r["volume"] for r in current]
        out.append(
            {
                "bar_start": current[0]["exchange_timestamp"],
                "bar_end": current[-1]["exchange_timestamp"],
                "open": prices[0],
                "high": max(prices),
                "low": min(prices),
                "close": prices[-1],
                "volume": sum(volumes, Decimal(0)),
                "vwap": vwap(prices, volumes),
                "trade_count": len(current),
                "complete": complete,
            }
        )

    for row in in_order(rows):
        current.append(row)
        total += {"tick": Decimal(1), "volume": row["volume"], "dollar": row["price"] * row["volume"]}[kind]
        if total >= size:
            close(True)
            current, total = [], Decimal(0)
    if current:
        close(False)
    return out
