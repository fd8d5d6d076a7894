"""Tardis.dev level-2 book CSV files (docs.tardis.dev, "Downloadable CSV files"), as K2 book records
(k2_core.ingest.formats.book_files). Like Tardis's trades and quotes (k2_core.ingest.formats.tardis): one file per
exchange, data type, symbol and day, plain or gzip, comma-separated, never quoted, a header row, times in
microseconds since the epoch (UTC); columns are found by their header name; symbols are upper-cased; the `exchange`
column is Tardis's naming and is not read (the import names K2's); `timestamp` is the exchange time and
`local_timestamp` is not kept. Fields are read by the same exact rules as every other file's
(k2_core.ingest.formats.fields).

- `incremental_book_L2` (exchange, symbol, timestamp, local_timestamp, is_snapshot, side, price, amount): one row
  per changed price level; `amount` is the level's new total (0 removes it), `side` bid or ask. A run of
  `is_snapshot` true rows of one symbol (no other row of that symbol between them) is a whole book: a K2 snapshot
  as of the run's last row's time. Tardis sends one at the start of each day's file, and again after a
  reconnection; by Tardis's own rule, a snapshot row that follows an update of its symbol resets the book. Every
  other row is a K2 update.
- `book_snapshot_25` (and `_5`, `_10`: the depth is read from the header): exchange, symbol, timestamp,
  local_timestamp, then asks[0].price, asks[0].amount, bids[0].price, bids[0].amount, asks[1].price, ... best first,
  a level that is not there left empty. Each row is a K2 snapshot; there are no updates.

Tardis rows carry no sequence number, so a file's updates are numbered per symbol from 1 in file order, and a
snapshot takes the number of the last update before it (0 at the file's start): each file is a session of its own
(k2_core.ingest.formats.book_files). A `book_snapshot_25` row takes its ordinal among its symbol's good rows.

A row that cannot be read still costs its symbol a number (an `incremental_book_L2` file): the book is unknown from
it until the next snapshot, never rebuilt without it. A row whose symbol cannot be read could be any symbol's: every
book the file has held so far is unknown from it. A bad row inside a snapshot run drops the whole snapshot.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from k2_core.exceptions import ReplayFormatError, SourceError
from k2_core.ingest.formats import register_book
from k2_core.ingest.formats.base import BadRow, ReadOptions
from k2_core.ingest.formats.blocks import TextBlock, text_blocks
from k2_core.ingest.formats.book_files import (
    BookChunk,
    BookChunker,
    BookFileFormat,
    BookNumbers,
    BookRow,
    micros_time,
)
from k2_core.ingest.formats.delimited import Layout, parse_block
from k2_core.ingest.formats.fields import BookSideField, BooleanField, DecimalField, EpochTimeField, SymbolField
from k2_core.ingest.formats.sources import open_source
from k2_core.model.books import ASK, BID, Book, Level, snapshot_record, update_record

L2_HEADER = ("exchange", "symbol", "timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount")
SNAPSHOT_HEADER_START = ("exchange", "symbol", "timestamp", "local_timestamp", "asks[0].price", "asks[0].amount")

_SYMBOL = SymbolField("symbol", "symbol")
_TIME = EpochTimeField("exchange_timestamp", "timestamp", unit="us")
_IS_SNAPSHOT = BooleanField("is_snapshot", "is_snapshot")
_PRICE = DecimalField("price", "price")
_AMOUNT = DecimalField("size", "amount", positive=False)
_SIDE = BookSideField("side", "side")


@contextmanager
def _lines(path: Path) -> Iterator[Iterator[tuple[int, str]]]:
    """The file's physical lines, numbered from 1, without their newline: universal newlines, a UTF-8 byte-order
    mark unseen, undecodable bytes replaced (they surface as a bad row), as the other text readers count them."""
    with open_source(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline=None)
        yield ((number, line.rstrip("\n")) for number, line in enumerate(text, start=1))


def _columns(path: Path, first: str | None, wanted: tuple[str, ...], name: str) -> list[str]:
    header = [column.strip() for column in first.split(",")] if first is not None else []
    missing = [column for column in wanted if column not in header]
    if missing:
        raise SourceError(
            f"{path}: not a Tardis {name} file: its first line has no {', '.join(missing)} column "
            f"(a {name} file's header starts {','.join(wanted)})"
        )
    return header


def _l2_layout(header: list[str]) -> Layout:
    """The fields of a row, in file order (the first wrong one is told), by their columns' header names."""
    fields = {
        "symbol": _SYMBOL,
        "timestamp": _TIME,
        "is_snapshot": _IS_SNAPSHOT,
        "side": _SIDE,
        "price": _PRICE,
        "amount": _AMOUNT,
    }
    positions = sorted(header.index(column) for column in fields)
    by_position = {header.index(column): spec for column, spec in fields.items()}
    return Layout(len(header), tuple(by_position[p] for p in positions), tuple(positions), dict)


def _symbol(fields: list[str], at: int) -> str | None:
    try:
        return _SYMBOL.value(fields[at]) if at < len(fields) else None
    except ReplayFormatError:
        return None


@dataclass
class _Run:
    """A snapshot being read: consecutive rows of one symbol with is_snapshot true; `micros` the newest's time."""

    micros: int
    sequence: int
    line: int
    book: Book = field(default_factory=Book)
    broken: bool = False


class _L2Reader:
    """One `incremental_book_L2` file's records (the module's rules). Rows are parsed a block at a time by the
    fields' vectorised rules (k2_core.ingest.formats.delimited, the same as every other text format's); what a row
    means for its book is decided row by row, in file order."""

    def __init__(self, options: ReadOptions) -> None:
        self.options = options
        self.numbers = BookNumbers()
        self.chunker = BookChunker(options.chunk_rows)
        self.runs: dict[str, _Run] = {}

    def read(self, path: Path) -> Iterator[BookChunk]:
        layout: Layout | None = None
        at: dict[str, int] = {}
        with open_source(path) as stream:
            for whole in text_blocks(stream):
                block: TextBlock | None = whole
                if layout is None:
                    header = _columns(path, whole.line(whole.first_line), L2_HEADER, "incremental_book_L2")
                    at = {column: header.index(column) for column in L2_HEADER}
                    layout = _l2_layout(header)
                    block = whole.without_first_line()
                if block is not None:
                    yield from self.block(block, layout, at)
        for symbol in list(self.runs):
            self.close(symbol)
        last = self.chunker.finish()
        if last is not None:
            yield last

    def block(self, block: TextBlock, layout: Layout, at: dict[str, int]) -> Iterator[BookChunk]:
        parsed = parse_block(block, layout)
        v = {key: values.to_pylist() for key, values in parsed.values.items()}
        symbols, times, flags, sides = v["symbol"], v["exchange_timestamp"], v["is_snapshot"], v["side"]
        prices, sizes = v["price"], v["size"]
        refused = {bad.line: bad.reason for bad in parsed.bad}
        good = 0
        for number in parsed.data_lines.tolist():
            done = self.chunker.begin_row()
            if done is not None:
                yield done
            reason = refused.get(number)
            if reason is not None:
                self.refuse(number, block.line(number).split(","), at, reason)
                continue
            i, good = good, good + 1
            symbol, micros = symbols[i], times[i]
            if flags[i]:
                self.snapshot_run(symbol, micros, number).book.apply(sides[i], prices[i], sizes[i])
                continue
            self.close(symbol)
            o = self.options
            sequence = self.numbers.next(symbol)
            record = update_record(
                symbol, o.exchange, micros_time(micros), sequence, sides[i], prices[i], sizes[i], o.received
            )
            self.chunker.add(BookRow("book_updates", record, number))

    def snapshot_run(self, symbol: str, micros: int, number: int) -> _Run:
        """The run this snapshot row belongs to: the symbol's open one, else a new one (the book is reset)."""
        run = self.runs.get(symbol)
        if run is None:
            run = self.runs[symbol] = _Run(micros, self.numbers.last(symbol), number)
        run.micros = max(run.micros, micros)
        return run

    def close(self, symbol: str) -> None:
        """The symbol's snapshot run is over: its snapshot, or, if a row of it was bad, a hole in the numbers."""
        run = self.runs.pop(symbol, None)
        if run is None:
            return
        if run.broken:
            self.numbers.next(symbol)
            return
        book, o = run.book, self.options
        record = snapshot_record(
            symbol, o.exchange, micros_time(run.micros), run.sequence, book.levels(BID), book.levels(ASK), o.received
        )
        self.chunker.add(BookRow("book_snapshots", record, run.line))

    def refuse(self, number: int, fields: list[str], at: dict[str, int], reason: str) -> None:
        """A row that cannot be read: reported, and the books it may belong to unknown from it (the module's rule)."""
        symbol = _symbol(fields, at["symbol"])
        symbols = [symbol] if symbol is not None else sorted({*self.numbers.symbols(), *self.runs})
        is_snapshot = _flag(fields, at["is_snapshot"])
        dropped = False
        for name in symbols:
            run = self.runs.get(name)
            if run is not None and is_snapshot is not False:
                run.broken = dropped = True
            elif is_snapshot and symbol is not None:  # the first row of a snapshot: the rest of it goes too
                self.runs[name] = _Run(0, self.numbers.last(name), number, broken=True)
                dropped = True
            else:
                self.close(name)
                self.numbers.next(name)
        suffix = "; the snapshot it belongs to is not stored" if dropped else ""
        self.chunker.refuse(BadRow(number, reason + suffix))


def _flag(fields: list[str], at: int) -> bool | None:
    """Whether the row says it is a snapshot row; None when that cannot be read either."""
    try:
        return bool(_IS_SNAPSHOT.value(fields[at])) if at < len(fields) else None
    except ReplayFormatError:
        return None


def read_book_l2(path: Path, options: ReadOptions) -> Iterator[BookChunk]:
    """tardis-book-l2."""
    return _L2Reader(options).read(path)


def _depth(header: list[str]) -> int:
    depth = 0
    while all(f"{side}[{depth}].{part}" in header for side in ("asks", "bids") for part in ("price", "amount")):
        depth += 1
    return depth


def _levels(fields: list[str], columns: list[tuple[int, int]], side: str) -> list[Level]:
    levels: list[Level] = []
    for depth, (price_at, amount_at) in enumerate(columns):
        price_text, amount_text = fields[price_at], fields[amount_at]
        if not price_text.strip() and not amount_text.strip():
            continue  # fewer levels than the file's depth
        label = f"{side}[{depth}]"
        price: Decimal = DecimalField("price", f"{label}.price").value(price_text)
        size: Decimal = DecimalField("size", f"{label}.amount").value(amount_text)
        levels.append((price, size))
    return levels


def read_book_snapshots(path: Path, options: ReadOptions) -> Iterator[BookChunk]:
    """tardis-book-snapshot."""
    numbers = BookNumbers()
    chunker = BookChunker(options.chunk_rows)
    with _lines(path) as lines:
        first = next(lines, None)
        header = _columns(path, first[1] if first else None, SNAPSHOT_HEADER_START, "book_snapshot_25")
        depth = _depth(header)
        symbol_at, time_at = header.index("symbol"), header.index("timestamp")
        sides = {
            side: [(header.index(f"{side}[{i}].price"), header.index(f"{side}[{i}].amount")) for i in range(depth)]
            for side in ("bids", "asks")
        }
        for number, text in lines:
            if not text.strip():
                continue
            done = chunker.begin_row()
            if done is not None:
                yield done
            fields = text.split(",")
            try:
                if len(fields) != len(header):
                    raise ReplayFormatError(f"expected {len(header)} columns, got {len(fields)}")
                symbol = _SYMBOL.value(fields[symbol_at])
                micros = _TIME.value(fields[time_at])
                asks = _levels(fields, sides["asks"], "asks")
                bids = _levels(fields, sides["bids"], "bids")
            except ReplayFormatError as exc:
                chunker.refuse(BadRow(number, str(exc)))
                continue
            at, sequence = micros_time(micros), numbers.next(symbol)
            record = snapshot_record(symbol, options.exchange, at, sequence, bids, asks, options.received)
            chunker.add(BookRow("book_snapshots", record, number))
    last = chunker.finish()
    if last is not None:
        yield last


register_book(
    BookFileFormat(
        "tardis-book-l2",
        read_book_l2,
        "Tardis.dev incremental_book_L2 CSV (.csv or .csv.gz): exchange, symbol, timestamp, local_timestamp, "
        "is_snapshot, side, price, amount; is_snapshot runs become snapshots, other rows updates",
    )
)
register_book(
    BookFileFormat(
        "tardis-book-snapshot",
        read_book_snapshots,
        "Tardis.dev book_snapshot_25 (or _5, _10) CSV (.csv or .csv.gz): exchange, symbol, timestamp, "
        "local_timestamp, asks[i].price, asks[i].amount, bids[i].price, bids[i].amount; each row a snapshot",
    )
)
