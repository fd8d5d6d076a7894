"""Market records for tests, in one shape: a test states only the values it is about, and a change to the record
schema is made here once rather than in every test module."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

Row = dict[str, Any]

# A feed run from here crosses midnight (UTC): its trades land in two day partitions.
FEED_START = datetime(2026, 11, 24, 23, 59, 0, tzinfo=UTC)


def _decimal(value: str | int | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(value)


def at(day: date, seconds: float) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=UTC) + timedelta(seconds=seconds)


def trade(
    symbol: str = "BHP",
    seq: int = 1,
    ts: datetime | None = None,
    price: str | Decimal = "10",
    volume: str | int | Decimal = "1",
    exchange: str = "asx",
    **fields: Any,
) -> Row:
    """A valid trade, number `seq` of `symbol` on `exchange`, at `ts` (default: now, also its ingestion time); any
    other field is given by its record name and replaces the default as it is (a test of the record rules passes
    a float or None on purpose)."""
    now = datetime.now(UTC)
    row: Row = {
        "symbol": symbol,
        "exchange": exchange,
        "exchange_timestamp": ts or now,
        "exchange_sequence_number": seq,
        "price": _decimal(price),
        "volume": _decimal(volume),
        "side": "buy" if seq % 2 else "sell",
        "trade_id": f"{exchange}-{symbol}-{seq}",
        "ingestion_timestamp": now,
    }
    return row | fields


def quote(
    symbol: str = "BHP",
    seq: int = 1,
    ts: datetime | None = None,
    bid: str | Decimal = "9.99",
    ask: str | Decimal = "10.01",
    bid_size: str | Decimal = "100",
    ask_size: str | Decimal = "100",
    exchange: str = "asx",
    **fields: Any,
) -> Row:
    """A valid quote, as `trade` makes a trade."""
    now = datetime.now(UTC)
    row: Row = {
        "symbol": symbol,
        "exchange": exchange,
        "exchange_timestamp": ts or now,
        "exchange_sequence_number": seq,
        "bid_price": _decimal(bid),
        "bid_size": _decimal(bid_size),
        "ask_price": _decimal(ask),
        "ask_size": _decimal(ask_size),
        "ingestion_timestamp": now,
    }
    return row | fields


def feed_trade(symbol: str, seq: int, exchange: str = "asx") -> Row:
    """Trade `seq` of a feed started at FEED_START: a quarter second apart, prices cycling, volumes rising."""
    return trade(
        symbol,
        seq,
        FEED_START + timedelta(milliseconds=250 * seq),
        Decimal("45.10") + Decimal(seq % 7) / 100,
        Decimal(100 + seq),
        exchange,
    )


def gap(
    gap_id: str = "g1",
    first: int = 5,
    last: int = 6,
    status: str = "open",
    detected_at: datetime | None = None,
    symbol: str = "BHP",
    exchange: str = "asx",
    **fields: Any,
) -> Row:
    """A `sequence_gaps` row for `first..last` of `symbol`'s trades, as the ingester records one; any other field
    replaces the default as it is."""
    row: Row = {
        "gap_id": gap_id,
        "data_type": "trades",
        "exchange": exchange,
        "symbol": symbol,
        "first_missing": first,
        "last_missing": last,
        "missing_count": last - first + 1,
        "severity": "warning",
        "status": status,
        "detected_at": detected_at or datetime.now(UTC),
        "resolved_at": None,
        "attempts": 0,
        "reason": None,
    }
    return row | fields
