"""Databento DBN `mbp-10` files (`.dbn`, `.dbn.zst`) as K2 book records (k2_core.ingest.formats.book_files).

Every MBP-10 record is one book event of one instrument (add, cancel, modify, trade, fill, clear: `action`, `side`,
`price`, `size`) *and* the top ten bid and ask levels after it (`levels[0..9]`: price, total size, order count).
The levels say what the book is; the event says only why it changed (its `size` is the order's, not the level's
new total, which K2's updates carry). So K2 reads the levels:

- an instrument's first record in the file is a K2 snapshot of its levels;
- every later record becomes the K2 updates that turn the levels before it into the levels after it: a level
  whose total size changed or that appeared (its new total), a level that left the top ten (0). A trade changes no
  level and makes no update; a clear (`R`) removes them all;
- an instrument's first record of each minute (exchange time) is a snapshot too, after its updates: the record
  holds the whole top ten, so this is the source's book, not one K2 computed, and a rebuild replays at most a
  minute of updates (and a book a refused record left unknown is known again within a minute).

A record flagged `F_MAYBE_BAD_BOOK` (Databento found an unrecoverable gap in the venue's channel) is treated as one
that cannot be read, without being reported: its instrument's book is unknown from it (a gap in K2's numbers) until
its next unflagged record, which is a snapshot again.

The K2 book is therefore exactly the ten levels a side Databento sent, as of each record. Levels whose price is
undefined (`UNDEF_PRICE`, fewer than ten levels) or whose size is 0 are not there.

Sequence numbers: the record's `sequence` is the venue's message number across its whole channel (a CME channel
carries many instruments), so it is not per instrument and is not kept. A file's updates are numbered per symbol from
1 in file order; the snapshot takes 0 (k2_core.ingest.formats.book_files: each file is a session of its own). A
record that cannot be read (a price with nine decimals, an undefined size, a wrong record type) costs its
instrument a number, and that instrument's next good record is a snapshot again: the book is unknown between the
two (a gap, healed at once), never rebuilt without the record.

Times, prices and symbols are read as Databento's trades and quotes are (k2_core.ingest.formats.databento): the
exchange time is `ts_event` floored to the microsecond; prices in 1e-9 units must be whole multiples of 1e-8; raw
symbols come from the metadata's symbology by instrument id and UTC date of `ts_recv`. A bad row's `line` is its
1-based record number.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import databento_dbn as dbn
import numpy as np

from k2_core.ingest.formats import register_book
from k2_core.ingest.formats.base import BadRow, ReadOptions
from k2_core.ingest.formats.book_files import (
    BookChunk,
    BookChunker,
    BookFileFormat,
    BookNumbers,
    BookRow,
    micros_time,
)
from k2_core.ingest.formats.databento import (
    AMBIGUOUS,
    HEADER_FIELDS,
    LEVEL_FIELDS,
    NO_MAPPING,
    NS_PER_DAY,
    TRADE_FIELDS,
    UNDEF_PRICE,
    UNDEF_SIZE,
    UNDEF_TIMESTAMP,
    SymbolMap,
    check_schema,
    open_dbn,
    read_metadata,
    record_blocks,
    stored_dtype,
)
from k2_core.model.books import ASK, BID, Level, snapshot_record, update_record
from k2_core.model.records import SYMBOL_RE

SCHEMA = "mbp-10"
DEPTH = 10
MBP10_RTYPE = 0x0A
MBP10_DTYPE = np.dtype([*HEADER_FIELDS, *TRADE_FIELDS, ("levels", np.dtype(LEVEL_FIELDS), (DEPTH,))])  # 368 bytes
_PRICE_DIVISOR = 10  # 1e-9 units -> 1e-8, K2's scale
# Every record holds the whole top ten: a snapshot of it a minute costs one row and bounds a rebuild to a minute of
# updates, as K2's own minute snapshots do for live books (k2_core.upkeep.book_snapshots).
SNAPSHOT_EVERY = timedelta(minutes=1)
MAYBE_BAD_BOOK = dbn.F_MAYBE_BAD_BOOK  # the venue's channel had an unrecoverable gap: the levels may be wrong

Side = dict[Decimal, Decimal]  # price -> total size


def _day(ns: int) -> str:
    return str(np.datetime64(ns // NS_PER_DAY, "D"))


class _Mbp10Reader:
    """One file's records (the module's rules): the last levels of each instrument and its update numbers."""

    def __init__(self, path: Path, options: ReadOptions, metadata: dbn.Metadata) -> None:
        self.options = options
        self.symbols = SymbolMap.from_metadata(metadata, path)
        self.numbers = BookNumbers()
        self.chunker = BookChunker(options.chunk_rows)
        self.books: dict[str, tuple[Side, Side]] = {}
        self.unknown: set[str] = set()  # a record was bad since: the next good one is a snapshot
        self.next_snapshot: dict[str, datetime] = {}  # the minute from which the next good record is one too

    def block(self, rec: Any, first: int) -> Iterator[BookChunk]:
        ts_event, ts_recv = rec["ts_event"], rec["ts_recv"]
        index_ts = np.where(ts_recv == UNDEF_TIMESTAMP, ts_event, ts_recv)
        codes = self.symbols.lookup((index_ts // NS_PER_DAY).astype(np.int64), rec["instrument_id"].astype(np.int64))
        levels = rec["levels"]
        rtypes, events, iids = rec["rtype"].tolist(), ts_event.tolist(), rec["instrument_id"].tolist()
        doubtful = (rec["flags"] & MAYBE_BAD_BOOK != 0).tolist()
        bid_px, ask_px = levels["bid_px"].tolist(), levels["ask_px"].tolist()
        bid_sz, ask_sz = levels["bid_sz"].tolist(), levels["ask_sz"].tolist()
        for i, code in enumerate(codes.tolist()):
            done = self.chunker.begin_row()
            if done is not None:
                yield done
            number = first + i
            symbol = self.symbols.symbols[code] if code >= 0 and self.symbols.valid[code] else None
            reason = self.refusal(rtypes[i], events[i], code, iids[i], int(index_ts[i]))
            if reason is None:
                bids, reason = _side(bid_px[i], bid_sz[i], "bid")
                asks, ask_reason = _side(ask_px[i], ask_sz[i], "ask")
                reason = reason or ask_reason
            if reason is not None or symbol is None or doubtful[i]:
                if reason is not None or symbol is None:
                    self.chunker.refuse(BadRow(number, reason or "no symbol"))
                if symbol is not None:  # its book is unknown until its next good record
                    self.numbers.next(symbol)
                    self.unknown.add(symbol)
                continue
            self.levels(symbol, micros_time(events[i] // 1000), bids, asks, number)

    def refusal(self, rtype: int, ts_event: int, code: int, iid: int, index_ts: int) -> str | None:
        if rtype != MBP10_RTYPE:
            return f"record type {rtype:#04x} is not a {SCHEMA} record"
        if ts_event == UNDEF_TIMESTAMP:
            return "no ts_event (undefined timestamp)"
        if code == NO_MAPPING:
            return (
                f"instrument_id {iid} has no symbol mapping on {_day(index_ts)} (UTC date of ts_recv) in the file's "
                "metadata"
            )
        if code == AMBIGUOUS:
            return f"instrument_id {iid} maps to several symbols on {_day(index_ts)}"
        if not self.symbols.valid[code]:
            return f"symbol {self.symbols.symbols[code]!r} is not a K2 symbol ({SYMBOL_RE.pattern})"
        return None

    def levels(self, symbol: str, at: datetime, bids: list[Level], asks: list[Level], number: int) -> None:
        """A good record's levels: the instrument's snapshot, or the updates from its last levels to these, and a
        snapshot of them too at the instrument's first record of each minute."""
        o = self.options
        before = self.books.get(symbol)
        self.books[symbol] = (dict(bids), dict(asks))
        if before is not None and symbol not in self.unknown:
            for side, old, new in ((BID, before[0], dict(bids)), (ASK, before[1], dict(asks))):
                changes = [(price, Decimal(0)) for price in old if price not in new]
                changes += [(price, size) for price, size in new.items() if old.get(price) != size]
                for price, size in sorted(changes):
                    sequence = self.numbers.next(symbol)
                    record = update_record(symbol, o.exchange, at, sequence, side, price, size, o.received)
                    self.chunker.add(BookRow("book_updates", record, number))
            if at < self.next_snapshot.get(symbol, at):
                return
        self.unknown.discard(symbol)
        self.next_snapshot[symbol] = at.replace(second=0, microsecond=0) + SNAPSHOT_EVERY
        record = snapshot_record(symbol, o.exchange, at, self.numbers.last(symbol), bids, asks, o.received)
        self.chunker.add(BookRow("book_snapshots", record, number))


def _side(prices: list[int], sizes: list[int], side: str) -> tuple[list[Level], str | None]:
    """A side's levels as Databento lists them (best first), or why they cannot be read."""
    levels: list[Level] = []
    for depth, (price, size) in enumerate(zip(prices, sizes, strict=True)):
        if price == UNDEF_PRICE:
            continue
        if price % _PRICE_DIVISOR:
            return [], f"{side}_px_{depth:02d} {Decimal(price).scaleb(-9)} has more than 8 decimal places"
        if size == UNDEF_SIZE:
            return [], f"{side}_sz_{depth:02d} is undefined (UNDEF_ORDER_SIZE)"
        if size:
            levels.append((Decimal(price // _PRICE_DIVISOR).scaleb(-8), Decimal(size)))
    return levels, None


def read_mbp10(path: Path, options: ReadOptions) -> Iterator[BookChunk]:
    """databento-mbp10."""
    with open_dbn(path) as stream:
        metadata = read_metadata(stream, path)
        check_schema(metadata, SCHEMA, path)
        reader = _Mbp10Reader(path, options, metadata)
        dtype = stored_dtype(MBP10_DTYPE, metadata.ts_out)
        for rec, first, truncated in record_blocks(stream, path, dtype, SCHEMA, options.chunk_rows):
            yield from reader.block(rec, first)
            if truncated is not None:
                done = reader.chunker.begin_row()
                if done is not None:
                    yield done
                reader.chunker.refuse(truncated)
    last = reader.chunker.finish()
    if last is not None:
        yield last


register_book(
    BookFileFormat(
        "databento-mbp10",
        read_mbp10,
        "Databento DBN mbp-10 schema (.dbn or .dbn.zst): the top ten levels after every book event, as a snapshot "
        "of each instrument's first record and the level changes of every later one",
    )
)
