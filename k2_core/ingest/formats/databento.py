"""Databento DBN files (`.dbn`, or `.dbn.zst` as Databento delivers them): `trades` records become K2 trades,
`mbp-1` and `tbbo` records K2 quotes (`mbp-10` records become level-2 books: k2_core.ingest.formats.databento_books,
which reads its files with this module's metadata, symbology and record-block helpers).

A DBN file is a metadata header (dataset, schema, symbology) followed by fixed-size little-endian C structs, one
per event. `databento_dbn` decodes the header; the records are read here a chunk at a time as a numpy structured
array over the raw bytes and turned into Arrow columns whole, because decoding them one by one into Python objects
(`DBNDecoder`) and converting each field runs at about a million records a second, and a day of a busy future holds
tens of millions. The two record layouts read here (`TradeMsg`, 48 bytes; `Mbp1Msg`, which `tbbo` shares, 80 bytes)
are the same in DBN versions 1, 2 and 3; a file of a newer version is refused rather than misread.

What the format leaves to the reader, and what K2 does with it:

- Prices are int64 in units of 1e-9; a DECIMAL(18, 8) holds one exactly when it is a multiple of 10 (a price with
  nine decimals is a bad row, never rounded). `UNDEF_PRICE` (int64 max) means no price: a trade without one is a bad
  row, and so is a quote whose bid or ask side is empty (K2 quotes are two-sided). Sizes are uint32 counts.
- `ts_event` (the matching engine's time, ns) is the exchange timestamp. K2 timestamps are microseconds (Iceberg's
  unit), so the nanoseconds are floored to the microsecond, never rounded up into the next one.
- `side` on a trade is the aggressor's: `B`id is a buy aggressor, `A`sk a sell aggressor, `N` none.
- Records carry a numeric `instrument_id`; its raw symbol comes from the metadata's symbology mappings, which hold
  per date range (an id is reused for another contract later, a contract gets a new id on roll). As in
  `databento_dbn`'s own symbol map, a record's date is the UTC date of its `ts_recv`, Databento's index timestamp
  (of `ts_event` when `ts_recv` is undefined). Only raw symbols make K2 symbols: a file requested with parent or
  continuous symbology (`ES.FUT`, `ES.c.0`) names products, not instruments, and is refused.
- `mbp-1`: every record is a book event (add, cancel, modify, trade, ...), and its level 0 is the top of the book
  *after* that event: one quote per record.
- `tbbo`: one record per trade, whose level 0 is the top of the book just *before* the trade (Databento's
  definition). K2 reads it as quotes, each stamped with its trade's `ts_event`: the quote in force when the trade
  hit. (The trades themselves are in the `trades` schema; reading them here too would store every trade twice.)
- The venue's `sequence` numbers a venue's whole feed (a CME channel, say), not one instrument, so it is not K2's
  `exchange_sequence_number`. That is the row's 1-based ordinal within its (symbol, UTC day of the exchange
  timestamp) in file order, counting only rows read, continued across chunks. A trade's `trade_id` is the venue
  `sequence` where there is one (non-zero), else that ordinal.
- A bad row's `line` is its 1-based record number in the file (the metadata header is not a record).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any

import databento_dbn as dbn
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from k2_core.exceptions import ReplayFormatError
from k2_core.ingest.formats import register
from k2_core.ingest.formats.base import BadRow, Chunk, FileFormat, ReadOptions
from k2_core.model.records import SYMBOL_RE
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import Kind

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Records = npt.NDArray[np.void]

DBN_PREFIX = b"DBN"
DBN_VERSIONS = (1, 2, 3)  # record layouts of trades / mbp-1 / tbbo are identical in all three
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
NS_PER_DAY = 86_400 * 1_000_000_000
UNDEF_PRICE = dbn.UNDEF_PRICE  # int64 max: no price
UNDEF_SIZE = dbn.UNDEF_ORDER_SIZE  # uint32 max: no size
UNDEF_TIMESTAMP = dbn.UNDEF_TIMESTAMP  # uint64 max: no time
_EPOCH = dt.date(1970, 1, 1)
NO_MAPPING, AMBIGUOUS = -1, -2  # symbol codes that are not an index into the symbol list
_TS_OUT_BYTES = 8  # live data may append the gateway's send time to every record

HEADER_FIELDS = [
    ("length", "u1"),  # the record's size in 4-byte words
    ("rtype", "u1"),
    ("publisher_id", "<u2"),
    ("instrument_id", "<u4"),
    ("ts_event", "<u8"),
]
TRADE_FIELDS = [
    ("price", "<i8"),
    ("size", "<u4"),
    ("action", "u1"),
    ("side", "u1"),
    ("flags", "u1"),
    ("depth", "u1"),
    ("ts_recv", "<u8"),
    ("ts_in_delta", "<i4"),
    ("sequence", "<u4"),
]
LEVEL_FIELDS = [  # a BidAskPair: levels[0] of mbp-1, each of levels[0..9] of mbp-10
    ("bid_px", "<i8"),
    ("ask_px", "<i8"),
    ("bid_sz", "<u4"),
    ("ask_sz", "<u4"),
    ("bid_ct", "<u4"),
    ("ask_ct", "<u4"),
]
TRADE_DTYPE = np.dtype(HEADER_FIELDS + TRADE_FIELDS)  # dbn::TradeMsg, 48 bytes
MBP1_DTYPE = np.dtype(HEADER_FIELDS + TRADE_FIELDS + LEVEL_FIELDS)  # dbn::Mbp1Msg (= TbboMsg), 80 bytes

# Aggressor side byte -> K2 side. Any other byte is a bad row.
_SIDES = pa.array(["buy", "sell", "unknown"], pa.large_string())
_SIDE_CODE = np.full(256, -1, dtype=np.int64)
_SIDE_CODE[ord("B")], _SIDE_CODE[ord("A")], _SIDE_CODE[ord("N")] = 0, 1, 2

_UTC_US = pa.timestamp("us", tz="UTC")
_PRICE_TYPE = pa.decimal128(18, 8)
_SIZE_SCALE = 10**8  # a size in units -> unscaled DECIMAL(18, 8)
_PRICE_DIVISOR = 10  # 1e-9 units -> unscaled DECIMAL(18, 8)


@dataclass(frozen=True)
class DbnLayout:
    """What one Databento schema's records look like and which K2 table they fill."""

    schema: str  # Databento's schema name, as in the file's metadata
    kind: Kind
    rtype: int  # dbn::rtype of its records: MBP_0 (trades) or MBP_1 (mbp-1 and tbbo)
    dtype: np.dtype[Any]

    def record_dtype(self, ts_out: bool) -> np.dtype[Any]:
        return stored_dtype(self.dtype, ts_out)


def stored_dtype(dtype: np.dtype[Any], ts_out: bool) -> np.dtype[Any]:
    """A record as stored: live data saved with `ts_out` appends 8 bytes that K2 does not read."""
    if not ts_out:
        return dtype
    fields: dict[str, Any] = dict(dtype.fields or {})
    return np.dtype(
        {
            "names": list(fields),
            "formats": [fields[name][0] for name in fields],
            "offsets": [fields[name][1] for name in fields],
            "itemsize": dtype.itemsize + _TS_OUT_BYTES,
        }
    )


TRADES = DbnLayout("trades", "trades", 0x00, TRADE_DTYPE)
MBP1 = DbnLayout("mbp-1", "quotes", 0x01, MBP1_DTYPE)
TBBO = DbnLayout("tbbo", "quotes", 0x01, MBP1_DTYPE)


@dataclass(frozen=True)
class SymbolMap:
    """Instrument ids by UTC day -> K2 symbols, as keys `day << 32 | instrument_id` and a code per key into
    `symbols` (upper-cased and de-duplicated, so "esz4" and "ESZ4" are one symbol and count ordinals together), or
    `AMBIGUOUS` where two raw symbols claim the same instrument on the same day."""

    keys: Int64Array
    codes: Int64Array
    symbols: list[str]
    valid: BoolArray  # per symbol: matches SYMBOL_RE

    @classmethod
    def from_metadata(cls, metadata: dbn.Metadata, path: Path) -> SymbolMap:
        stype_in, stype_out = metadata.stype_in, metadata.stype_out
        if stype_in == dbn.SType.RAW_SYMBOL and stype_out == dbn.SType.INSTRUMENT_ID:
            inverse = False
        elif stype_in == dbn.SType.INSTRUMENT_ID and stype_out == dbn.SType.RAW_SYMBOL:
            inverse = True
        else:
            shown = stype_in.value if stype_in is not None else "none (live data, symbols in the record stream)"
            raise ReplayFormatError(
                f"{path}: symbology {shown} -> {stype_out.value} does not name each instrument's raw symbol; "
                "K2 reads files requested with stype_in=raw_symbol (or instrument_id -> raw_symbol)"
            )
        by_key: dict[int, int] = {}
        symbols: dict[str, int] = {}
        for key_symbol, intervals in metadata.mappings.items():
            for interval in intervals:
                if not interval["symbol"]:  # unresolved on those dates (older symbology format)
                    continue
                raw, iid_text = (interval["symbol"], key_symbol) if inverse else (key_symbol, interval["symbol"])
                try:
                    iid = int(iid_text)
                except ValueError as exc:
                    raise ReplayFormatError(f"{path}: symbology maps {raw!r} to {iid_text!r}, not an id") from exc
                code = symbols.setdefault(raw.upper(), len(symbols))
                first = (interval["start_date"] - _EPOCH).days
                last = (interval["end_date"] - _EPOCH).days  # exclusive
                for day in range(first, last):
                    key = day << 32 | iid
                    by_key[key] = code if by_key.get(key, code) == code else AMBIGUOUS
        keys = np.fromiter(by_key.keys(), dtype=np.int64, count=len(by_key))
        codes = np.fromiter(by_key.values(), dtype=np.int64, count=len(by_key))
        names = list(symbols)
        valid = np.array([SYMBOL_RE.match(name) is not None for name in names], dtype=np.bool_)
        return cls(keys, codes, names, valid)

    def lookup(self, days: Int64Array, instrument_ids: Int64Array) -> Int64Array:
        """The symbol code of each (day, instrument), `NO_MAPPING` where the metadata has none. A hash lookup
        (Arrow's `index_in`): ten times the speed of a binary search over sorted keys."""
        at = pc.index_in(pa.array(days << 32 | instrument_ids), value_set=self.key_set)
        pos = np.asarray(at.fill_null(-1), dtype=np.int64)
        return np.where(pos >= 0, self.codes[pos], NO_MAPPING)

    @cached_property
    def key_set(self) -> pa.Array:
        return pa.array(self.keys)


class DayOrdinals:
    """1-based row ordinals within each (symbol, UTC day), in the order rows are given, continued across calls.

    Private to this reader for now: the same rule (K2's exchange_sequence_number for sources whose own sequence is
    not per instrument) is meant to become one shared helper of the formats package."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}  # symbol code << 32 | day -> rows numbered so far

    def number(self, symbol_codes: Int64Array, days: Int64Array) -> Int64Array:
        n = len(symbol_codes)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        # Group ids by hashing (first appearance order), then a stable sort by group keeps file order within each:
        # a radix sort while the groups fit 16 bits, which a chunk's (symbol, day) pairs nearly always do.
        encoded = pa.array(symbol_codes << 32 | days).dictionary_encode()
        unique = encoded.dictionary.to_numpy()
        group = encoded.indices.to_numpy().astype(np.uint16 if len(unique) <= 1 << 16 else np.int64)
        counts = np.bincount(group, minlength=len(unique))
        order = np.argsort(group, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        base = np.fromiter((self._seen.get(int(k), 0) for k in unique), dtype=np.int64, count=len(unique))
        for key, before, count in zip(unique.tolist(), base.tolist(), counts.tolist(), strict=True):
            self._seen[key] = before + count
        return rank + 1 + base[group]


def _decimal(unscaled: Int64Array) -> pa.Array:
    """A DECIMAL(18, 8) column from int64 unscaled values, built from its buffer (16-byte little-endian two's
    complement per value) so no value passes through Python."""
    words = np.empty((len(unscaled), 2), dtype=np.int64)
    words[:, 0] = unscaled
    words[:, 1] = unscaled >> 63
    return pa.Array.from_buffers(_PRICE_TYPE, len(unscaled), [None, pa.py_buffer(words)])


def _price(units: int) -> Decimal:
    return Decimal(units).scaleb(-9)


def _count(counts: npt.NDArray[np.uint32]) -> pa.Array:
    """Order counts as the table's int; a count beyond it (no venue has 2**31 orders at a price) is unknown."""
    wide = counts.astype(np.int64)
    return pa.array(wide.astype(np.int32), pa.int32(), mask=wide > np.iinfo(np.int32).max)


def _day(ns: int) -> str:
    return (_EPOCH + dt.timedelta(days=ns // NS_PER_DAY)).isoformat()


class _Reader:
    """One file's chunks: the symbol map and ordinals live as long as the file is read."""

    def __init__(self, layout: DbnLayout, path: Path, options: ReadOptions, metadata: dbn.Metadata) -> None:
        self.layout = layout
        self.options = options
        self.symbols = SymbolMap.from_metadata(metadata, path)
        self.symbol_array = pa.array(self.symbols.symbols, pa.large_string())
        self.ordinals = DayOrdinals()
        # Databento says when its capture host received each record (ts_recv) and, for a book, how many orders
        # stand at the best bid and ask: the extra columns of schema version 2.
        extra = ("ts_recv",) if layout.kind == "trades" else ("bid_count", "ask_count", "ts_recv")
        self.schema = MARKET_TABLES[layout.kind].arrow_schema_with(extra)

    def chunk(self, rec: Records, first: int) -> tuple[pa.Table, list[BadRow]]:
        """The rows of `rec` (records `first`, `first` + 1, ... of the file) and its bad rows."""
        n = len(rec)
        ts_event = rec["ts_event"]
        ts_recv = rec["ts_recv"]
        index_ts = np.where(ts_recv == UNDEF_TIMESTAMP, ts_event, ts_recv)
        iids = rec["instrument_id"].astype(np.int64)
        codes = self.symbols.lookup((index_ts // NS_PER_DAY).astype(np.int64), iids)
        valid_symbol = np.zeros(n, dtype=np.bool_)
        known = codes >= 0
        valid_symbol[known] = self.symbols.valid[codes[known]]

        checks: list[tuple[BoolArray, Callable[[int], str]]] = [
            (
                rec["rtype"] != self.layout.rtype,
                lambda i: f"record type {rec['rtype'][i]:#04x} is not a {self.layout.schema} record",
            ),
            (ts_event == UNDEF_TIMESTAMP, lambda i: "no ts_event (undefined timestamp)"),
            (codes == NO_MAPPING, lambda i: self._unmapped(rec, i, index_ts)),
            (
                codes == AMBIGUOUS,
                lambda i: f"instrument_id {iids[i]} maps to several symbols on {_day(int(index_ts[i]))}",
            ),
            (
                known & ~valid_symbol,
                lambda i: f"symbol {self.symbols.symbols[codes[i]]!r} is not a K2 symbol ({SYMBOL_RE.pattern})",
            ),
        ]
        checks += self._value_checks(rec)

        reason = np.zeros(n, dtype=np.int64)
        for code, (mask, _) in enumerate(checks, start=1):
            reason[(reason == 0) & mask] = code
        bad_at = np.flatnonzero(reason)
        bad = [BadRow(first + int(i), checks[reason[i] - 1][1](int(i))) for i in bad_at]

        good = reason == 0
        g, sym = (rec, codes) if not len(bad_at) else (rec[good], codes[good])
        days = (g["ts_event"] // NS_PER_DAY).astype(np.int64)
        ordinal = self.ordinals.number(sym, days)
        m = len(g)
        common = {
            "symbol": self.symbol_array.take(pa.array(sym)),
            "exchange": pa.repeat(pa.scalar(self.options.exchange, pa.large_string()), m),
            "exchange_timestamp": pa.array((g["ts_event"] // 1000).astype(np.int64), _UTC_US),
            "exchange_sequence_number": pa.array(ordinal, pa.int64()),
            "ingestion_timestamp": pa.repeat(pa.scalar(self.options.received, _UTC_US), m),
            "ts_recv": pa.array((g["ts_recv"] // 1000).astype(np.int64), _UTC_US, mask=g["ts_recv"] == UNDEF_TIMESTAMP),
        }
        if self.layout.kind == "trades":
            sequence = g["sequence"].astype(np.int64)
            columns = common | {
                "price": _decimal(g["price"] // _PRICE_DIVISOR),
                "volume": _decimal(g["size"].astype(np.int64) * _SIZE_SCALE),
                "side": _SIDES.take(pa.array(_SIDE_CODE[g["side"]])),
                "trade_id": pc.cast(pa.array(np.where(sequence != 0, sequence, ordinal)), pa.large_string()),
            }
        else:
            columns = common | {
                "bid_price": _decimal(g["bid_px"] // _PRICE_DIVISOR),
                "bid_size": _decimal(g["bid_sz"].astype(np.int64) * _SIZE_SCALE),
                "ask_price": _decimal(g["ask_px"] // _PRICE_DIVISOR),
                "ask_size": _decimal(g["ask_sz"].astype(np.int64) * _SIZE_SCALE),
                "bid_count": _count(g["bid_ct"]),
                "ask_count": _count(g["ask_ct"]),
            }
        table = pa.Table.from_arrays([columns[name] for name in self.schema.names], schema=self.schema)
        return table, bad

    def _unmapped(self, rec: Records, i: int, index_ts: npt.NDArray[np.uint64]) -> str:
        return (
            f"instrument_id {rec['instrument_id'][i]} has no symbol mapping on {_day(int(index_ts[i]))} "
            "(UTC date of ts_recv) in the file's metadata"
        )

    def _value_checks(self, rec: Records) -> list[tuple[BoolArray, Callable[[int], str]]]:
        if self.layout.kind == "trades":
            price = rec["price"]
            return [
                (price == UNDEF_PRICE, lambda i: "no price (UNDEF_PRICE)"),
                (
                    price % _PRICE_DIVISOR != 0,
                    lambda i: f"price {_price(int(price[i]))} has more than 8 decimal places",
                ),
                (rec["size"] == UNDEF_SIZE, lambda i: "no size (UNDEF_ORDER_SIZE)"),
                (
                    _SIDE_CODE[rec["side"]] < 0,
                    lambda i: f"side {chr(rec['side'][i])!r} is not A (sell aggressor), B (buy aggressor) or N",
                ),
            ]
        bid, ask = rec["bid_px"], rec["ask_px"]
        no_bid, no_ask = bid == UNDEF_PRICE, ask == UNDEF_PRICE
        return [
            (no_bid & no_ask, lambda i: "no bid and no ask price (empty book)"),
            (no_bid, lambda i: "no bid price (one-sided book)"),
            (no_ask, lambda i: "no ask price (one-sided book)"),
            (
                bid % _PRICE_DIVISOR != 0,
                lambda i: f"bid_price {_price(int(bid[i]))} has more than 8 decimal places",
            ),
            (
                ask % _PRICE_DIVISOR != 0,
                lambda i: f"ask_price {_price(int(ask[i]))} has more than 8 decimal places",
            ),
            ((rec["bid_sz"] == UNDEF_SIZE) | (rec["ask_sz"] == UNDEF_SIZE), lambda i: "no size (UNDEF_ORDER_SIZE)"),
        ]


def open_dbn(path: Path) -> pa.NativeFile:
    """The file's DBN bytes: zstd is recognised by its magic number, not the file name."""
    raw = pa.OSFile(str(path), "rb")
    magic = raw.read(4)
    raw.seek(0)
    return pa.CompressedInputStream(raw, "zstd") if magic == ZSTD_MAGIC else raw


def read_bytes(stream: pa.NativeFile, size: int, path: Path) -> pa.Buffer | bytes:
    """`size` bytes, or fewer at the end of the stream (a decompressing stream may return less per call)."""
    try:
        first = stream.read_buffer(size)
        if len(first) in (0, size):
            return first
        parts, got = [first], len(first)
        while got < size:
            part = stream.read_buffer(size - got)
            if not len(part):
                break
            parts.append(part)
            got += len(part)
    except OSError as exc:  # Arrow's decompressor: a frame cut short (an interrupted download) or corrupt data
        raise ReplayFormatError(f"{path}: cannot read: {exc}; the file is truncated or corrupt") from exc
    return first if len(parts) == 1 else b"".join(part.to_pybytes() for part in parts)


def read_metadata(stream: pa.NativeFile, path: Path) -> dbn.Metadata:
    prelude = read_bytes(stream, 8, path)
    prefix = bytes(prelude[:3]) if len(prelude) >= 3 else b""
    if prefix != DBN_PREFIX:
        raise ReplayFormatError(f"{path}: not a DBN file (does not start with {DBN_PREFIX!r})")
    if len(prelude) < 8:
        raise ReplayFormatError(f"{path}: truncated DBN metadata")
    version = prelude[3]
    if version not in DBN_VERSIONS:
        raise ReplayFormatError(f"{path}: DBN version {version}; this reader knows versions {DBN_VERSIONS}")
    length = int.from_bytes(bytes(prelude[4:8]), "little")
    body = read_bytes(stream, length, path)
    if len(body) < length:
        raise ReplayFormatError(f"{path}: truncated DBN metadata ({len(body)} of {length} bytes)")
    try:
        return dbn.Metadata.decode(bytes(prelude) + bytes(body))
    except dbn.DBNError as exc:
        raise ReplayFormatError(f"{path}: invalid DBN metadata: {exc}") from exc


def check_schema(metadata: dbn.Metadata, wanted: str, path: Path) -> None:
    """The file holds `wanted` records, or a ReplayFormatError saying which format reads what it holds."""
    schema = str(metadata.schema) if metadata.schema is not None else None  # a Schema enum, str() its name
    if schema != wanted:
        raise ReplayFormatError(
            f"{path}: holds {schema or 'mixed'} records, not {wanted}"
            + (f" (read it with --format {BY_SCHEMA[schema]})" if schema in BY_SCHEMA else "")
        )


def record_blocks(
    stream: pa.NativeFile, path: Path, dtype: np.dtype[Any], schema: str, chunk_rows: int
) -> Iterator[tuple[Records, int, BadRow | None]]:
    """The records after the metadata, `chunk_rows` at a time, as a structured array over the raw bytes: each block,
    the 1-based number of its first record, and a truncated record at the end of the file (a bad row)."""
    size = dtype.itemsize
    done = 0
    while True:
        data = read_bytes(stream, max(1, chunk_rows) * size, path)
        if not len(data):
            return
        whole = len(data) // size
        rec = np.frombuffer(data, dtype=dtype, count=whole)
        framing = np.flatnonzero(rec["length"] != size // 4)  # in 4-byte words (uint8: never multiply)
        if len(framing):
            i = int(framing[0])
            raise ReplayFormatError(
                f"{path}: record {done + i + 1} is {int(rec['length'][i]) * 4} bytes, not the {size} of a "
                f"{schema} record: the file is corrupt"
            )
        first = done + 1
        done += whole
        truncated = None
        if len(data) % size:
            done += 1
            truncated = BadRow(done, f"truncated record: {len(data) % size} of {size} bytes at the end of the file")
        yield rec, first, truncated


def read_dbn(layout: DbnLayout, path: Path, options: ReadOptions) -> Iterator[Chunk]:
    """The records of a DBN file of `layout.schema`, `options.chunk_rows` records per chunk."""
    with open_dbn(path) as stream:
        metadata = read_metadata(stream, path)
        check_schema(metadata, layout.schema, path)
        reader = _Reader(layout, path, options, metadata)
        dtype = layout.record_dtype(metadata.ts_out)
        for rec, first, truncated in record_blocks(stream, path, dtype, layout.schema, options.chunk_rows):
            table, bad = reader.chunk(rec, first)
            if truncated is not None:
                bad.append(truncated)
            yield Chunk(layout.kind, table, bad, first - 1 + len(rec) + (truncated is not None))


BY_SCHEMA = {
    "trades": "databento-trades",
    "mbp-1": "databento-mbp1",
    "tbbo": "databento-tbbo",
    "mbp-10": "databento-mbp10",
}


def read_trades(path: Path, options: ReadOptions) -> Iterator[Chunk]:
    return read_dbn(TRADES, path, options)


def read_mbp1(path: Path, options: ReadOptions) -> Iterator[Chunk]:
    return read_dbn(MBP1, path, options)


def read_tbbo(path: Path, options: ReadOptions) -> Iterator[Chunk]:
    return read_dbn(TBBO, path, options)


register(
    FileFormat(
        "databento-trades",
        "trades",
        read_trades,
        "Databento DBN trades schema (.dbn or .dbn.zst): price, size, aggressor side, ts_event; raw symbols from the "
        "file's symbology",
    )
)
register(
    FileFormat(
        "databento-mbp1",
        "quotes",
        read_mbp1,
        "Databento DBN mbp-1 schema (.dbn or .dbn.zst): the top of book after every book event, as quotes",
    )
)
register(
    FileFormat(
        "databento-tbbo",
        "quotes",
        read_tbbo,
        "Databento DBN tbbo schema (.dbn or .dbn.zst): the top of book just before each trade, as quotes",
    )
)
