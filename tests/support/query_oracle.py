"""Independent reference computations for the query tests: pandas and Python `Decimal`, no DuckDB, no k2_core.

Each takes plain rows (dicts as produced or as pyiceberg reads them) and returns plain rows, so a test compares
K2's answer with an answer computed a different way from the same data.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pandas as pd

Row = dict[str, Any]
EIGHT_PLACES = Decimal("0.00000001")
PANDAS_FREQ = {"1s": "1s", "5s": "5s", "1m": "1min", "5m": "5min", "15m": "15min", "1h": "1h", "1d": "1D"}


def in_order(rows: Iterable[Row]) -> list[Row]:
    """Exchange order: (exchange_timestamp, exchange_sequence_number)."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return []
    frame = frame.sort_values(["exchange_timestamp", "exchange_sequence_number"], kind="stable")
    return [_plain(r) for r in frame.to_dict("records")]


def window(rows: Iterable[Row], start: datetime, end: datetime) -> list[Row]:
    return [r for r in in_order(rows) if start <= r["exchange_timestamp"] < end]


def vwap(prices: list[Decimal], volumes: list[Decimal]) -> Decimal:
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        total_volume = sum(volumes, Decimal(0))
        notional = sum((p * v for p, v in zip(prices, volumes, strict=True)), Decimal(0))
        return (notional / total_volume).quantize(EIGHT_PLACES, rounding=ROUND_HALF_EVEN)


def bars(rows: Iterable[Row], interval: str) -> list[Row]:
    """OHLCV per UTC-aligned bucket via pandas `dt.floor`, sorted within a bucket by exchange order."""
    frame = pd.DataFrame(in_order(rows))
    if frame.empty:
        return []
    frame["bar_start"] = pd.to_datetime(frame["exchange_timestamp"], utc=True).dt.floor(PANDAS_FREQ[interval])
    out = []
    for (symbol, exchange, bar_start), group in frame.groupby(["symbol", "exchange", "bar_start"], sort=True):
        prices, volumes = list(group["price"]), list(group["volume"])
        out.append(
            {
                "symbol": symbol,
                "exchange": exchange,
                "bar_start": bar_start.to_pydatetime(),
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


def day_summary(rows: Iterable[Row], day: date) -> Row:
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    picked = [r for r in in_order(rows) if start <= r["exchange_timestamp"] < start + timedelta(days=1)]
    if not picked:
        return {"trade_count": 0, "volume": Decimal(0), "open": None, "high": None, "low": None, "close": None}
    (bar,) = bars(picked, "1d")
    return {k: bar[k] for k in ("open", "high", "low", "close", "volume", "vwap", "trade_count")}


def asof_quotes(trades: Iterable[Row], quotes: Iterable[Row]) -> list[Row]:
    """Each trade with the latest quote at or before it (ties on time: the higher sequence), via merge_asof."""
    left = pd.DataFrame(in_order(trades))
    right = pd.DataFrame(in_order(quotes))
    if left.empty:
        return []
    right = right.rename(
        columns={"exchange_timestamp": "quote_timestamp", "exchange_sequence_number": "quote_sequence_number"}
    )[["quote_timestamp", "quote_sequence_number", "bid_price", "bid_size", "ask_price", "ask_size"]]
    left["_t"] = pd.to_datetime(left["exchange_timestamp"], utc=True)
    right["_t"] = pd.to_datetime(right["quote_timestamp"], utc=True)
    # merge_asof takes the last right row with _t <= the left row's: right is in exchange order, so on equal
    # times that is the highest sequence number.
    joined = pd.merge_asof(left, right, on="_t", direction="backward", allow_exact_matches=True)
    return [_plain({k: v for k, v in r.items() if k != "_t"}) for r in joined.to_dict("records")]


def _plain(row: Row) -> Row:
    """pandas values back to Python ones: Timestamps to datetimes, NaN/NaT to None, numpy ints to int; lists (a
    trade's conditions) as they are."""
    out: Row = {}
    for key, value in row.items():
        if value is None or (not isinstance(value, (Decimal, str, list)) and pd.isna(value)):
            out[key] = None
        elif isinstance(value, pd.Timestamp):
            out[key] = value.to_pydatetime()
        elif hasattr(value, "item") and not isinstance(value, Decimal):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def latest_on(trades: Iterable[Row], quotes: Iterable[Row], exchange: str, symbols: Iterable[str] | None) -> list[Row]:
    """The last trade and last quote per symbol of one exchange (pandas groupby `.tail(1)` in exchange order), side
    by side, by symbol; a symbol with neither has no row."""
    wanted = set(symbols) if symbols is not None else None

    def last(rows: Iterable[Row]) -> dict[str, Row]:
        picked = [r for r in rows if r["exchange"] == exchange and (wanted is None or r["symbol"] in wanted)]
        frame = pd.DataFrame(in_order(picked))
        if frame.empty:
            return {}
        return {r["symbol"]: _plain(r) for r in frame.groupby("symbol", sort=False).tail(1).to_dict("records")}

    last_trades, last_quotes = last(trades), last(quotes)
    out = []
    for symbol in sorted(last_trades.keys() | last_quotes.keys()):
        t, q = last_trades.get(symbol, {}), last_quotes.get(symbol, {})
        out.append(
            {
                "symbol": symbol,
                "exchange": exchange,
                "trade_timestamp": t.get("exchange_timestamp"),
                "trade_sequence_number": t.get("exchange_sequence_number"),
                "price": t.get("price"),
                "volume": t.get("volume"),
                "quote_timestamp": q.get("exchange_timestamp"),
                "quote_sequence_number": q.get("exchange_sequence_number"),
                "bid_price": q.get("bid_price"),
                "bid_size": q.get("bid_size"),
                "ask_price": q.get("ask_price"),
                "ask_size": q.get("ask_size"),
            }
        )
    return out
