"""Binance public data (data.binance.vision): trades, aggregate trades and futures bookTicker dumps, one symbol per
file, named by the file (BTCUSDT-trades-2024-01-01.zip) or by `--symbol`.

Columns, as Binance publishes them (binance-public-data README; futures files open with a header row, spot files
mostly do not, so a header is recognised on line 1 only, by a first field of letters):

- trades, spot: id, price, qty, quote_qty, time, is_buyer_maker, is_best_match; USDⓈ-M and COIN-M futures: the same
  without is_best_match (COIN-M's fourth column is base_qty). Which one a file is comes from its header, or, without
  one, from the column count most lines of its first block have.
- aggTrades, spot: agg_trade_id, price, quantity, first_trade_id, last_trade_id, transact_time, is_buyer_maker,
  is_best_match; futures: the same without is_best_match.
- bookTicker (futures only): update_id, best_bid_price, best_bid_qty, best_ask_price, best_ask_qty,
  transaction_time, event_time.

Times are milliseconds since the epoch, or microseconds in spot dumps since 2025 (a value of at least 10**14 is
µs). The buyer being the maker means the seller crossed the spread: side sell; otherwise buy.

Sequence numbers: a trade's id and an aggregate trade's id are contiguous per instrument, so they are
`exchange_sequence_number` (and `trade_id`, as text). bookTicker's update_id is shared across instruments and skips,
so a quote is numbered by its ordinal within its (symbol, UTC day) instead (k2_core.ingest.formats.ordinals).

The trades reader reads exactly what the replay's per-line parser (k2_stream.replay.parse_binance_trades) reads,
refusing the same lines with the same reasons; the tests hold it to that.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from k2_core.exceptions import ConfigError
from k2_core.ingest.formats import register
from k2_core.ingest.formats.base import Chunk, FileFormat, ReadOptions
from k2_core.ingest.formats.blocks import TextBlock
from k2_core.ingest.formats.delimited import Build, Layout, read_delimited
from k2_core.ingest.formats.fields import (
    TEXT,
    BooleanField,
    DecimalField,
    EpochTimeField,
    Field,
    IntegerField,
    NumberField,
)
from k2_core.ingest.formats.parse import RowRule

_HEADER_FIELD = re.compile(r"[A-Za-z_ ]+")
_FILE_NAME = re.compile(r"([A-Za-z0-9_]+)-(?:trades|aggTrades|bookTicker)-[0-9]{4}-[0-9]{2}(?:-[0-9]{2})?\.")
# How many lines of the first block vote on the layout of a file without a header.
_SNIFF_LINES = 1000


def symbol_from_filename(path: Path) -> str | None:
    """The symbol a Binance dump's name gives (BTCUSDT from BTCUSDT-trades-2024-01-01.zip or
    BTCUSDT-aggTrades-2024-01.csv), or None for a name Binance did not give."""
    match = _FILE_NAME.match(path.name)
    return match.group(1).upper() if match else None


def _symbol(path: Path, options: ReadOptions, name: str) -> str:
    symbol = options.symbol or symbol_from_filename(path)
    if not symbol:
        raise ConfigError(
            f"{path}: a {name} file names its symbol only in its file name (BTCUSDT-trades-2024-01-01.zip), "
            "and this one does not: give the symbol (--symbol)"
        )
    return symbol.upper()


def is_header(line: str) -> bool:
    """The replay's rule: a first field of letters (id, agg_trade_id, update_id, ...) makes line 1 a header."""
    return _HEADER_FIELD.fullmatch(line.split(",")[0].strip()) is not None


def _trades(values: Mapping[str, pa.Array]) -> dict[str, pa.Array]:
    return {
        "exchange_sequence_number": values["exchange_sequence_number"],
        "exchange_timestamp": values["exchange_timestamp"],
        "price": values["price"],
        "volume": values["volume"],
        # the buyer resting as maker means the seller crossed the spread: a sell-side aggressor
        "side": pc.if_else(values["buyer_is_maker"], pa.scalar("sell", TEXT), pa.scalar("buy", TEXT)),
    }


def _quotes(values: Mapping[str, pa.Array]) -> dict[str, pa.Array]:
    transaction, event = values["transaction_time"], values["event_time"]
    return {
        "exchange_timestamp": pc.if_else(pc.greater(transaction, 0), transaction, event),
        "bid_price": values["bid_price"],
        "bid_size": values["bid_size"],
        "ask_price": values["ask_price"],
        "ask_size": values["ask_size"],
    }


_MAKER = BooleanField("buyer_is_maker", "is_buyer_maker")
_BEST_MATCH = BooleanField("best_match", "is_best_match")
TRADE_FIELDS: tuple[Field, ...] = (
    IntegerField("exchange_sequence_number", "trade id"),
    DecimalField("price", "price"),
    DecimalField("volume", "qty"),
    NumberField("quote_qty", "quote qty"),
    EpochTimeField("exchange_timestamp", "time"),
    _MAKER,
    _BEST_MATCH,
)
AGG_TRADE_FIELDS: tuple[Field, ...] = (
    IntegerField("exchange_sequence_number", "agg trade id"),
    DecimalField("price", "price"),
    DecimalField("volume", "quantity"),
    IntegerField("first_trade_id", "first trade id"),
    IntegerField("last_trade_id", "last trade id"),
    EpochTimeField("exchange_timestamp", "transact time"),
    _MAKER,
    _BEST_MATCH,
)
BOOK_TICKER_FIELDS: tuple[Field, ...] = (
    IntegerField("update_id", "update id"),
    DecimalField("bid_price", "best bid price"),
    DecimalField("bid_size", "best bid qty", positive=False),
    DecimalField("ask_price", "best ask price"),
    DecimalField("ask_size", "best ask qty", positive=False),
    EpochTimeField("transaction_time", "transaction time", optional=True),
    EpochTimeField("event_time", "event time", optional=True),
)
_AGG_RULES = (
    RowRule(
        lambda values: pc.greater(values["first_trade_id"], values["last_trade_id"]),
        "first trade id is after last trade id",
    ),
)
_QUOTE_RULES = (
    RowRule(
        lambda values: pc.and_(pc.equal(values["transaction_time"], 0), pc.equal(values["event_time"], 0)),
        "neither transaction time nor event time is given",
    ),
)


def _layouts(fields: tuple[Field, ...], build: Build, rules: tuple[RowRule, ...] = ()) -> dict[int, Layout]:
    """The spot layout (every field) and, where there is one, the futures layout (without is_best_match), by their
    column count."""
    layouts = {len(fields): Layout(len(fields), fields, tuple(range(len(fields))), build, rules)}
    if fields[-1] is _BEST_MATCH:
        futures = fields[:-1]
        layouts[len(futures)] = Layout(len(futures), futures, tuple(range(len(futures))), build, rules)
    return layouts


TRADE_LAYOUTS = _layouts(TRADE_FIELDS, _trades)
AGG_TRADE_LAYOUTS = _layouts(AGG_TRADE_FIELDS, _trades, _AGG_RULES)
BOOK_TICKER_LAYOUTS = _layouts(BOOK_TICKER_FIELDS, _quotes, _QUOTE_RULES)


def sniff(layouts: Mapping[int, Layout], block: TextBlock) -> tuple[Layout, bool]:
    """The layout of a file, from its first block: the header's column count, or without a header the count most
    of the first lines have (the widest layout when they do not say)."""
    first = block.line(block.first_line)
    header = bool(first.strip()) and is_header(first)
    if header and first.count(",") + 1 in layouts:
        return layouts[first.count(",") + 1], True
    votes: Counter[int] = Counter()
    for number in range(block.first_line + header, min(block.next_line, block.first_line + _SNIFF_LINES)):
        text = block.line(number)
        if text.strip() and text.count(",") + 1 in layouts:
            votes[text.count(",") + 1] += 1
    widest = max(layouts)
    if not votes:
        return layouts[widest], header
    count = max(votes, key=lambda columns: (votes[columns], columns))
    return layouts[count], header


def read_trades(path: Path, options: ReadOptions) -> Iterator[Chunk]:
    """binance-trades."""
    return read_delimited(path, options, "trades", partial(sniff, TRADE_LAYOUTS), _symbol(path, options, "Binance"))


def read_agg_trades(path: Path, options: ReadOptions) -> Iterator[Chunk]:
    """binance-aggtrades."""
    return read_delimited(path, options, "trades", partial(sniff, AGG_TRADE_LAYOUTS), _symbol(path, options, "Binance"))


def read_book_ticker(path: Path, options: ReadOptions) -> Iterator[Chunk]:
    """binance-bookticker."""
    return read_delimited(
        path, options, "quotes", partial(sniff, BOOK_TICKER_LAYOUTS), _symbol(path, options, "Binance")
    )


register(
    FileFormat(
        "binance-trades",
        "trades",
        read_trades,
        "Binance trades dump (data.binance.vision), spot: id, price, qty, quote_qty, time, is_buyer_maker, "
        "is_best_match; futures: the same without is_best_match",
        needs_symbol=True,
    )
)
register(
    FileFormat(
        "binance-aggtrades",
        "trades",
        read_agg_trades,
        "Binance aggTrades dump, spot: agg_trade_id, price, quantity, first_trade_id, last_trade_id, transact_time, "
        "is_buyer_maker, is_best_match; futures: the same without is_best_match",
        needs_symbol=True,
    )
)
register(
    FileFormat(
        "binance-bookticker",
        "quotes",
        read_book_ticker,
        "Binance futures bookTicker dump: update_id, best_bid_price, best_bid_qty, best_ask_price, best_ask_qty, "
        "transaction_time, event_time",
        needs_symbol=True,
    )
)
