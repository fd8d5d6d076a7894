"""A level-2 order book: price levels a side, changed one level at a time.

The one definition of what applying an update means (the new total size of a level; 0 removes it) and of a
book's sides (bids highest first, asks lowest first), shared by the simulator that publishes books, the query that
rebuilds them from stored snapshots and updates, and the upkeep that writes K2's own snapshots: all three must
agree to the level, or a rebuilt book would differ from the one the feed held.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from k2_core.exceptions import BookError

Level = tuple[Decimal, Decimal]  # (price, size)
BID = "bid"
ASK = "ask"


@dataclass
class Book:
    """One instrument's book as of the update numbered `sequence` (0: no update applied yet)."""

    sequence: int = 0
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)

    @classmethod
    def from_levels(cls, sequence: int, bids: Iterable[Mapping[str, Any]], asks: Iterable[Mapping[str, Any]]) -> Book:
        """A book from a snapshot's sides (`{"price": ..., "size": ...}` items, as Avro and Arrow give them)."""
        return cls(
            sequence,
            {Decimal(lv["price"]): Decimal(lv["size"]) for lv in bids},
            {Decimal(lv["price"]): Decimal(lv["size"]) for lv in asks},
        )

    def side(self, side: str) -> dict[Decimal, Decimal]:
        if side == BID:
            return self.bids
        if side == ASK:
            return self.asks
        raise BookError(f"side must be {BID!r} or {ASK!r}, got {side!r}")

    def apply(self, side: str, price: Decimal, size: Decimal, sequence: int | None = None) -> None:
        """Set the level at `price` to `size` (0 removes it); `sequence`, when given, becomes the book's."""
        if size < 0:
            raise BookError(f"negative size {size} at {price}")
        levels = self.side(side)
        if size == 0:
            levels.pop(price, None)
        else:
            levels[price] = size
        if sequence is not None:
            self.sequence = sequence

    def levels(self, side: str, depth: int | None = None) -> list[Level]:
        """The side's levels best first, at most `depth` of them."""
        levels = self.side(side)
        ordered = sorted(levels.items(), reverse=side == BID)
        return ordered if depth is None else ordered[:depth]

    def best(self, side: str) -> Level | None:
        levels = self.side(side)
        if not levels:
            return None
        price = max(levels) if side == BID else min(levels)
        return price, levels[price]

    def copy(self) -> Book:
        return Book(self.sequence, dict(self.bids), dict(self.asks))

    def as_dict(self, depth: int | None = None) -> dict[str, Any]:
        """The book as a snapshot's sides: what Avro encodes and the snapshot table stores."""
        return {
            "exchange_sequence_number": self.sequence,
            "bids": [{"price": p, "size": s} for p, s in self.levels(BID, depth)],
            "asks": [{"price": p, "size": s} for p, s in self.levels(ASK, depth)],
        }

    def snapshot_record(self, symbol: str, exchange: str, at: datetime, ingested: datetime) -> dict[str, Any]:
        """A `BookSnapshot` record of the whole book (schemas/avro/booksnapshot.v1.avsc)."""
        return snapshot_record(symbol, exchange, at, self.sequence, self.levels(BID), self.levels(ASK), ingested)


def snapshot_record(
    symbol: str,
    exchange: str,
    at: datetime,
    sequence: int,
    bids: Iterable[Level],
    asks: Iterable[Level],
    ingested: datetime,
) -> dict[str, Any]:
    """A `BookSnapshot` record (schemas/avro/booksnapshot.v1.avsc) of sides given best first, as a source lists
    them (`check_book_record` says whether they are)."""
    return {
        "symbol": symbol,
        "exchange": exchange,
        "exchange_timestamp": at,
        "exchange_sequence_number": sequence,
        "bids": [{"price": p, "size": s} for p, s in bids],
        "asks": [{"price": p, "size": s} for p, s in asks],
        "ingestion_timestamp": ingested,
    }


def update_record(
    symbol: str,
    exchange: str,
    at: datetime,
    sequence: int,
    side: str,
    price: Decimal,
    size: Decimal,
    ingested: datetime,
) -> dict[str, Any]:
    """A `BookUpdate` record (schemas/avro/bookupdate.v1.avsc)."""
    return {
        "symbol": symbol,
        "exchange": exchange,
        "exchange_timestamp": at,
        "exchange_sequence_number": sequence,
        "side": side,
        "price": price,
        "size": size,
        "ingestion_timestamp": ingested,
    }


def spread_mid_imbalance(book: Book) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
    """Spread and mid of the top of book, and the imbalance of the sizes there, (bid - ask) / (bid + ask), in
    [-1, 1]; each None when a side is empty."""
    bid, ask = book.best(BID), book.best(ASK)
    if bid is None or ask is None:
        return None, None, None
    imbalance = (bid[1] - ask[1]) / (bid[1] + ask[1])
    return ask[0] - bid[0], (ask[0] + bid[0]) / 2, imbalance


def check_book_record(record_type: str, record: Mapping[str, Any], exchange: str) -> None:
    """The rules a book record meets before storage; `BookError` says which it breaks (the record is
    dead-lettered). A snapshot's sides come best first without repeats and do not cross; an update names a side, a
    positive price and a size of 0 or more."""
    if record["exchange"] != exchange:
        raise BookError(f"a {record['exchange']!r} record on the {exchange!r} books topic")
    if record["exchange_sequence_number"] < 0:
        raise BookError(f"negative sequence number {record['exchange_sequence_number']}")
    if record_type == "book_updates":
        Book().side(record["side"])
        if record["price"] <= 0:
            raise BookError(f"price {record['price']} is not positive")
        if record["size"] < 0:
            raise BookError(f"negative size {record['size']} at {record['price']}")
        return
    for side in (BID, ASK):
        levels = record[side + "s"]
        prices = [lv["price"] for lv in levels]
        if any(lv["price"] <= 0 or lv["size"] <= 0 for lv in levels):
            raise BookError(f"{side}s hold a level whose price or size is not positive")
        if prices != sorted(set(prices), reverse=side == BID):
            raise BookError(f"{side}s are not best first without repeats")
    if record["bids"] and record["asks"] and record["bids"][0]["price"] >= record["asks"][0]["price"]:
        raise BookError(f"crossed book: bid {record['bids'][0]['price']} >= ask {record['asks'][0]['price']}")
