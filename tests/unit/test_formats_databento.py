"""The Databento DBN readers, on files written by databento_dbn's own encoder: exact values (decimals, microsecond
timestamps, aggressor sides, raw symbols by date, per-(symbol, day) ordinals across chunks), bad rows by record
number and reason, and refusals of files the readers cannot read faithfully."""

from __future__ import annotations

import random
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import databento_dbn as dbn
import numpy as np
import pytest

from k2_core.exceptions import ReplayFormatError
from k2_core.ingest.formats import FORMATS, BadRow, Chunk, ReadOptions, file_format
from k2_core.ingest.formats.databento import MBP1_DTYPE, TRADE_DTYPE
from k2_core.model.tables import MARKET_TABLES
from tests.support import dbn as enc
from tests.support.dbn import UNDEF

D1, D2, D3 = date(2024, 11, 1), date(2024, 11, 2), date(2024, 11, 3)
RECEIVED = datetime(2026, 1, 5, 12, 0, 0, 123456, tzinfo=UTC)
# iid 102 is NQZ4 on the first day and NQH5 on the second (an id reused after a roll); 104's raw symbol is no K2
# symbol; "esh5" is upper-cased; 999 is in no mapping.
MAPPINGS = {
    "ESZ4": [(D1, D3, 101)],
    "NQZ4": [(D1, D2, 102)],
    "NQH5": [(D2, D3, 102)],
    "BAD SYM": [(D1, D3, 104)],
    "esh5": [(D1, D3, 105)],
}
SUFFIXES = pytest.mark.parametrize("suffix", [".dbn", ".dbn.zst"])


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def unmapped(line: int, iid: int, day: date) -> BadRow:
    return BadRow(
        line, f"instrument_id {iid} has no symbol mapping on {day} (UTC date of ts_recv) in the file's metadata"
    )


def read(fmt: str, path: Path, chunk_rows: int = 1 << 20) -> list[Chunk]:
    return list(file_format(fmt).read(path, ReadOptions(exchange="cme", received=RECEIVED, chunk_rows=chunk_rows)))


# The extra columns (schema version 2) Databento files fill; their values are checked by the tests named for them.
EXTRA = {"trades": ("ts_recv",), "quotes": ("bid_count", "ask_count", "ts_recv")}


def rows(chunk: Chunk) -> list[tuple[Any, ...]]:
    """A chunk's rows as tuples, without the exchange and ingestion time (checked once for all rows) and the extra
    columns."""
    assert chunk.table.schema == MARKET_TABLES[chunk.kind].arrow_schema_with(EXTRA[chunk.kind])
    assert set(chunk.table.column("exchange").to_pylist()) <= {"cme"}
    assert set(chunk.table.column("ingestion_timestamp").to_pylist()) <= {RECEIVED}
    drop = {"exchange", "ingestion_timestamp", *EXTRA[chunk.kind]}
    return [tuple(v for k, v in row.items() if k not in drop) for row in chunk.table.to_pylist()]


def test_receive_times_and_order_counts_fill_the_extra_columns(tmp_path: Path) -> None:
    """Databento's ts_recv (µs, floored; null when undefined) and mbp-1's order counts at the best bid and ask."""
    records = [
        enc.trade(101, "2024-11-01T23:59:59.000001999", "5000.25", 3, "A", ts_recv="2024-11-01T23:59:59.000002999"),
        enc.trade(101, "2024-11-01T23:59:59.1", "5000.5", 1, "B"),
    ]
    path = enc.write(tmp_path / "t.dbn", enc.encode(enc.metadata("trades", MAPPINGS), records))
    (chunk,) = read("databento-trades", path)
    assert chunk.table.column("ts_recv").to_pylist() == [ts("2024-11-01T23:59:59.000002"), ts("2024-11-01T23:59:59.1")]
    quotes = [
        enc.mbp1(101, "2024-11-01T23:59:58.1", "5000.25", 10, "5000.5", 12),
        enc.mbp1(101, "2024-11-01T23:59:58.2", "5000.25", 0, "5000.5", 12, side="A"),
    ]
    path = enc.write(tmp_path / "q.dbn", enc.encode(enc.metadata("mbp-1", MAPPINGS), quotes))
    (chunk,) = read("databento-mbp1", path)
    table = chunk.table.select(["bid_count", "ask_count", "ts_recv"]).to_pylist()
    assert table == [
        {"bid_count": 1, "ask_count": 1, "ts_recv": ts("2024-11-01T23:59:58.1")},
        {"bid_count": 0, "ask_count": 1, "ts_recv": ts("2024-11-01T23:59:58.2")},
    ]


def test_the_three_formats_are_registered() -> None:
    assert {name: (fmt.kind, fmt.needs_symbol) for name, fmt in FORMATS.items() if name.startswith("databento")} == {
        "databento-trades": ("trades", False),
        "databento-mbp1": ("quotes", False),
        "databento-tbbo": ("quotes", False),
    }


def test_record_layouts_are_databento_dbns_own() -> None:
    """The numpy layouts the readers cast raw bytes to are, field for field, those databento_dbn declares (its
    names for level 0 end in _00, and it reads action and side as 1-byte strings where K2 reads bytes)."""

    def layout(dtype: np.dtype[Any]) -> list[tuple[int, int, str]]:
        fields = dtype.fields or {}
        return [
            (offset, ftype.itemsize, "u" if name in ("action", "side") else ftype.kind)
            for name, (ftype, offset) in fields.items()
        ]

    for ours, theirs in ((TRADE_DTYPE, dbn.TradeMsg), (MBP1_DTYPE, dbn.MBP1Msg)):
        reference = np.dtype(theirs._dtypes)
        assert ours.itemsize == reference.itemsize == theirs.size_hint
        assert layout(ours) == layout(reference)


TRADES = [
    enc.trade(101, "2024-11-01T23:59:59.000001999", "5000.25", 3, "A", 1001),  # 1: µs floored
    enc.trade(102, "2024-11-01T23:59:59.5", "20000.5", 1, "B"),  # 2: no venue sequence: trade_id = ordinal
    enc.trade(101, "2024-11-01T23:59:59.6", UNDEF),  # 3
    enc.trade(999, "2024-11-01T23:59:59.7", "1"),  # 4
    enc.trade(101, "2024-11-01T23:59:59.8", "5000.123456789"),  # 5
    enc.trade(101, "2024-11-01T23:59:59.9", "0.00000001", 10, "N", 1003),  # 6
    enc.trade(101, "2024-11-02T00:00:00.5", "5001", 4_294_967_294, "B", 1004),  # 7: new day, ordinal 1
    # 8: received (ts_recv) on the second day, so NQH5 by the symbology, but traded on the first day
    enc.trade(102, "2024-11-01T23:59:59.999999", "20001", 2, "A", ts_recv="2024-11-02T00:00:00.000001"),
    enc.trade(104, "2024-11-02T00:00:01", "1"),  # 9
    enc.trade(101, "2024-11-02T00:00:02", "5002.5", 1, "A", 1005),  # 10
    enc.trade(105, "2024-11-02T00:00:03", "4999.75", 5, "B"),  # 11
    enc.trade(101, "2024-11-02T00:00:04", "5003", 1, "B"),  # 12
    enc.trade(102, "2024-11-03T00:00:01", "20002"),  # 13: after the last mapping's end date
]


@SUFFIXES
def test_trades(tmp_path: Path, suffix: str) -> None:
    path = enc.write(tmp_path / f"glbx.trades{suffix}", enc.encode(enc.metadata("trades", MAPPINGS), TRADES))
    chunks = read("databento-trades", path, chunk_rows=4)
    d = Decimal
    assert [rows(c) for c in chunks] == [
        [
            ("ESZ4", ts("2024-11-01T23:59:59.000001"), 1, d("5000.25"), d(3), "sell", "1001"),
            ("NQZ4", ts("2024-11-01T23:59:59.5"), 1, d("20000.5"), d(1), "buy", "1"),
        ],
        [
            ("ESZ4", ts("2024-11-01T23:59:59.9"), 2, d("0.00000001"), d(10), "unknown", "1003"),
            ("ESZ4", ts("2024-11-02T00:00:00.5"), 1, d(5001), d(4_294_967_294), "buy", "1004"),
            ("NQH5", ts("2024-11-01T23:59:59.999999"), 1, d(20001), d(2), "sell", "1"),
        ],
        [
            ("ESZ4", ts("2024-11-02T00:00:02"), 2, d("5002.5"), d(1), "sell", "1005"),
            ("ESH5", ts("2024-11-02T00:00:03"), 1, d("4999.75"), d(5), "buy", "1"),
            ("ESZ4", ts("2024-11-02T00:00:04"), 3, d(5003), d(1), "buy", "3"),
        ],
        [],
    ]
    assert [c.end for c in chunks] == [4, 8, 12, 13]
    assert [c.bad for c in chunks] == [
        [
            BadRow(3, "no price (UNDEF_PRICE)"),
            unmapped(4, 999, D1),
        ],
        [BadRow(5, "price 5000.123456789 has more than 8 decimal places")],
        [BadRow(9, r"symbol 'BAD SYM' is not a K2 symbol (^[A-Z0-9][A-Z0-9.\-]{0,19}$)")],
        [unmapped(13, 102, D3)],
    ]
    price = chunks[0].table.column("price").type
    assert (price.precision, price.scale) == (18, 8)


MBP1 = [
    enc.mbp1(101, "2024-11-01T23:59:58.000000500", "5000.25", 10, "5000.5", 12, sequence=5),  # 1
    enc.mbp1(101, "2024-11-01T23:59:58.1", UNDEF, 0, "5000.5", 12, action="C"),  # 2
    enc.mbp1(102, "2024-11-01T23:59:58.2", "20000", 1, UNDEF, 0, side="A"),  # 3
    enc.mbp1(101, "2024-11-01T23:59:58.3", UNDEF, 0, UNDEF, 0, action="C"),  # 4
    enc.mbp1(101, "2024-11-01T23:59:58.4", "5000.25", 11, "5000.500000001", 12, side="A"),  # 5
    enc.mbp1(999, "2024-11-01T23:59:58.5", "1", 1, "2", 1),  # 6
    enc.mbp1(102, "2024-11-01T23:59:59", "20000", 2, "20000.25", 3, action="M"),  # 7
    enc.mbp1(101, "2024-11-02T00:00:00.000001", "5001", 1, "5001.25", 1, action="T", side="A"),  # 8
    enc.mbp1(102, "2024-11-02T00:00:01", "20010", 4, "20010.25", 5),  # 9: NQH5 now
    enc.mbp1(101, "2024-11-01T23:59:59.5", "5000", 7, "5000.25", 8, action="C", side="A"),  # 10: back to day one
]


@SUFFIXES
def test_mbp1_quotes_are_the_book_after_every_event(tmp_path: Path, suffix: str) -> None:
    path = enc.write(tmp_path / f"glbx.mbp-1{suffix}", enc.encode(enc.metadata("mbp-1", MAPPINGS), MBP1))
    chunks = read("databento-mbp1", path, chunk_rows=3)
    d = Decimal
    assert [rows(c) for c in chunks] == [
        [("ESZ4", ts("2024-11-01T23:59:58"), 1, d("5000.25"), d(10), d("5000.5"), d(12))],
        [],
        [
            ("NQZ4", ts("2024-11-01T23:59:59"), 1, d(20000), d(2), d("20000.25"), d(3)),
            ("ESZ4", ts("2024-11-02T00:00:00.000001"), 1, d(5001), d(1), d("5001.25"), d(1)),
            ("NQH5", ts("2024-11-02T00:00:01"), 1, d(20010), d(4), d("20010.25"), d(5)),
        ],
        [("ESZ4", ts("2024-11-01T23:59:59.5"), 2, d(5000), d(7), d("5000.25"), d(8))],
    ]
    assert [c.end for c in chunks] == [3, 6, 9, 10]
    assert [c.bad for c in chunks] == [
        [BadRow(2, "no bid price (one-sided book)"), BadRow(3, "no ask price (one-sided book)")],
        [
            BadRow(4, "no bid and no ask price (empty book)"),
            BadRow(5, "ask_price 5000.500000001 has more than 8 decimal places"),
            unmapped(6, 999, D1),
        ],
        [],
        [],
    ]


TBBO = [
    # The book just before each trade: the buy at 5000.5 lifted the 5000.5 offer that record 1 shows.
    enc.mbp1(101, "2024-11-01T23:59:59.000000001", "5000.25", 4, "5000.5", 2, action="T", side="B", sequence=9),
    enc.mbp1(101, "2024-11-01T23:59:59.1", "5000.25", 4, "5000.75", 6, action="T", side="A"),
    enc.mbp1(102, "2024-11-01T23:59:59.2", "20000.000000005", 1, "20000.25", 1, action="T"),
    enc.mbp1(101, "2024-11-02T00:00:00", "5001", 3, "5001.25", 3, action="T", side="N"),
    enc.mbp1(105, "2024-11-02T00:00:00.5", "4999", 1, "4999.25", 2, action="T", side="A"),
]


@SUFFIXES
def test_tbbo_quotes_are_the_book_before_each_trade(tmp_path: Path, suffix: str) -> None:
    path = enc.write(tmp_path / f"glbx.tbbo{suffix}", enc.encode(enc.metadata("tbbo", MAPPINGS), TBBO))
    chunks = read("databento-tbbo", path, chunk_rows=2)
    d = Decimal
    assert [rows(c) for c in chunks] == [
        [
            ("ESZ4", ts("2024-11-01T23:59:59"), 1, d("5000.25"), d(4), d("5000.5"), d(2)),
            ("ESZ4", ts("2024-11-01T23:59:59.1"), 2, d("5000.25"), d(4), d("5000.75"), d(6)),
        ],
        [("ESZ4", ts("2024-11-02T00:00:00"), 1, d(5001), d(3), d("5001.25"), d(3))],
        [("ESH5", ts("2024-11-02T00:00:00.5"), 1, d(4999), d(1), d("4999.25"), d(2))],
    ]
    assert [c.end for c in chunks] == [2, 4, 5]
    assert [c.bad for c in chunks] == [[], [BadRow(3, "bid_price 20000.000000005 has more than 8 decimal places")], []]


@pytest.mark.parametrize("version", [1, 2])
def test_older_dbn_versions_and_ts_out_read_the_same(tmp_path: Path, version: int) -> None:
    """DBN 1 and 2 lay trades and mbp-1 records out as 3 does; live data's `ts_out` adds 8 bytes per record."""
    v3 = enc.write(tmp_path / "v3.dbn", enc.encode(enc.metadata("trades", MAPPINGS), TRADES))
    old = enc.write(tmp_path / "old.dbn.zst", enc.encode(enc.metadata("trades", MAPPINGS, version=version), TRADES))
    with_ts_out = [
        dbn.TradeMsg(
            publisher_id=r.publisher_id,
            instrument_id=r.instrument_id,
            ts_event=r.ts_event,
            price=r.price,
            size=r.size,
            action=dbn.Action.TRADE,
            side=r.side,
            depth=r.depth,
            ts_recv=r.ts_recv,
            sequence=r.sequence,
            ts_out=r.ts_recv + 5,
        )
        for r in TRADES
    ]
    out = enc.write(tmp_path / "ts_out.dbn", enc.encode(enc.metadata("trades", MAPPINGS, ts_out=True), with_ts_out))
    expected = [(rows(c), c.bad, c.end) for c in read("databento-trades", v3, chunk_rows=5)]
    assert len(bytes(with_ts_out[0])) == TRADE_DTYPE.itemsize + 8
    for path in (old, out):
        assert [(rows(c), c.bad, c.end) for c in read("databento-trades", path, chunk_rows=5)] == expected


def test_symbology_by_instrument_id_in_and_raw_symbol_out(tmp_path: Path) -> None:
    meta = dbn.Metadata(
        dataset="GLBX.MDP3",
        start=enc.ns("2024-11-01T00:00:00"),
        stype_in=dbn.SType.INSTRUMENT_ID,
        stype_out=dbn.SType.RAW_SYMBOL,
        schema=dbn.Schema.TRADES,
        mappings=[enc.SymbolMapping("101", [enc.Interval(D1, D3, "ESZ4")])],
    )
    path = enc.write(tmp_path / "inverse.dbn", enc.encode(meta, TRADES[:1]))
    assert [r[0] for r in rows(read("databento-trades", path)[0])] == ["ESZ4"]


def test_an_instrument_two_raw_symbols_claim_on_a_day_is_a_bad_row(tmp_path: Path) -> None:
    mappings = {"ESZ4": [(D1, D3, 101)], "ESZ4X": [(D2, D3, 101)]}
    records = [enc.trade(101, "2024-11-01T12:00:00", "1"), enc.trade(101, "2024-11-02T12:00:00", "2")]
    path = enc.write(tmp_path / "two.dbn", enc.encode(enc.metadata("trades", mappings), records))
    [chunk] = read("databento-trades", path)
    assert [r[0] for r in rows(chunk)] == ["ESZ4"]
    assert chunk.bad == [BadRow(2, "instrument_id 101 maps to several symbols on 2024-11-02")]


def test_a_side_other_than_a_b_or_n_is_a_bad_row(tmp_path: Path) -> None:
    record = bytearray(bytes(enc.trade(101, "2024-11-01T12:00:00", "1", side="A")))
    record[TRADE_DTYPE.fields["side"][1]] = ord("X")  # type: ignore[index]
    path = enc.write(tmp_path / "side.dbn", enc.encode(enc.metadata("trades", MAPPINGS), [bytes(record)]))
    [chunk] = read("databento-trades", path)
    assert chunk.table.num_rows == 0
    assert chunk.bad == [BadRow(1, "side 'X' is not A (sell aggressor), B (buy aggressor) or N")]


def test_a_truncated_last_record_is_a_bad_row(tmp_path: Path) -> None:
    plain = enc.encode(enc.metadata("trades", MAPPINGS), TRADES[:2])
    path = enc.write(tmp_path / "cut.dbn", plain[:-5])
    [chunk] = read("databento-trades", path)
    assert [r[0] for r in rows(chunk)] == ["ESZ4"]
    assert chunk.bad == [BadRow(2, "truncated record: 43 of 48 bytes at the end of the file")]
    assert chunk.end == 2


def test_a_truncated_zstd_stream_is_refused_after_the_chunks_before_it(tmp_path: Path) -> None:
    """A .dbn.zst cut short (an interrupted download) fails with the file named, not with Arrow's bare OSError."""
    records = [enc.trade(101, f"2024-11-01T12:00:{i // 10**6:02d}.{i % 10**6:06d}", "1") for i in range(0, 20000)]
    compressed = enc.zstd(enc.encode(enc.metadata("trades", MAPPINGS), records))
    path = tmp_path / "cut.dbn.zst"
    path.write_bytes(compressed[: len(compressed) - 10])
    chunks = file_format("databento-trades").read(path, ReadOptions(exchange="cme", chunk_rows=1000))
    assert next(chunks).end == 1000
    with pytest.raises(ReplayFormatError, match=r"cannot read: .* the file is truncated or corrupt"):
        list(chunks)


def test_a_file_of_metadata_alone_has_no_chunks(tmp_path: Path) -> None:
    path = enc.write(tmp_path / "empty.dbn.zst", enc.encode(enc.metadata("mbp-1", MAPPINGS), []))
    assert read("databento-mbp1", path) == []


def test_files_the_readers_cannot_read_faithfully_are_refused(tmp_path: Path) -> None:
    trades = enc.encode(enc.metadata("trades", MAPPINGS), TRADES)
    cases: dict[str, tuple[str, bytes, str]] = {
        "other schema": (
            "databento-tbbo",
            trades,
            re.escape("holds trades records, not tbbo (read it with --format databento-trades)"),
        ),
        "mbp-1 as tbbo": (
            "databento-tbbo",
            enc.encode(enc.metadata("mbp-1", MAPPINGS), MBP1),
            r"not tbbo \(read it with --format databento-mbp1\)",
        ),
        "not dbn": ("databento-trades", b"ts_event,price\n1,2\n", "not a DBN file"),
        "newer version": ("databento-trades", b"DBN\x09" + trades[4:], "DBN version 9"),
        "parent symbology": (
            "databento-trades",
            enc.encode(enc.metadata("trades", {"ES.FUT": [(D1, D3, 101)]}, stype_in=dbn.SType.PARENT), TRADES),
            "symbology parent -> instrument_id does not name each instrument's raw symbol",
        ),
        "corrupt": ("databento-trades", trades[:-48] + b"\x02" + trades[-47:], "record 13 is 8 bytes, not the 48"),
        "length byte 76": ("databento-trades", trades[:-96] + b"\x4c" + trades[-95:], "record 12 is 304 bytes"),
        "truncated metadata": ("databento-trades", trades[:50], "truncated DBN metadata"),
    }
    for name, (fmt, data, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.dbn"
        path.write_bytes(data)
        with pytest.raises(ReplayFormatError, match=message):
            read(fmt, path)


# The readers against a per-record reference: databento_dbn's own decoder and the rules written out plainly.


def _reference(path: Path, kind: str) -> tuple[list[tuple[Any, ...]], list[BadRow]]:
    raw = path.read_bytes()
    compression = dbn.Compression.ZSTD if path.suffix == ".zst" else dbn.Compression.NONE
    decoded = dbn.DBNDecoder(compression=compression).write_and_decode(raw)
    meta, records = decoded[0], decoded[1:]
    by_day: dict[tuple[date, int], str] = {}
    for raw_symbol, intervals in meta.mappings.items():
        for interval in intervals:
            day = interval["start_date"]
            while day < interval["end_date"]:
                by_day[(day, int(interval["symbol"]))] = raw_symbol.upper()
                day += timedelta(days=1)
    seen: dict[tuple[str, date], int] = {}
    good: list[tuple[Any, ...]] = []
    bad: list[BadRow] = []
    for number, rec in enumerate(records, start=1):
        recv_day = datetime.fromtimestamp(rec.ts_recv // 10**9, UTC).date()
        symbol = by_day.get((recv_day, rec.instrument_id))
        prices = [rec.price] if kind == "trades" else [rec.levels[0].bid_px, rec.levels[0].ask_px]
        if symbol is None:
            bad.append(BadRow(number, "unmapped"))
            continue
        if any(p == UNDEF for p in prices):
            bad.append(BadRow(number, "undefined price"))
            continue
        if any(p % 10 for p in prices):
            bad.append(BadRow(number, "9 decimals"))
            continue
        when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=rec.ts_event // 1000)
        ordinal = seen[(symbol, when.date())] = seen.get((symbol, when.date()), 0) + 1
        if kind == "trades":
            side = {"A": "sell", "B": "buy", "N": "unknown"}[str(rec.side)]
            trade_id = str(rec.sequence or ordinal)
            good.append((symbol, when, ordinal, Decimal(rec.price).scaleb(-9), Decimal(rec.size), side, trade_id))
        else:
            level = rec.levels[0]
            sizes = Decimal(level.bid_sz), Decimal(level.ask_sz)
            bid, ask = Decimal(level.bid_px).scaleb(-9), Decimal(level.ask_px).scaleb(-9)
            good.append((symbol, when, ordinal, bid, sizes[0], ask, sizes[1]))
    return good, bad


def _random_price(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.03:
        return UNDEF
    if roll < 0.06:
        return rng.randrange(1, 10**13) * 10 + rng.randrange(1, 10)  # nine decimals
    return rng.randrange(-(10**13), 10**14) * 10  # spreads and some futures trade below zero


@pytest.mark.parametrize("kind", ["trades", "quotes"])
def test_readers_agree_with_a_per_record_reference(tmp_path: Path, kind: str) -> None:
    rng = random.Random(20241101)
    start = enc.ns("2024-11-01T20:00:00")
    records: list[dbn.TradeMsg | dbn.MBP1Msg] = []
    for _ in range(3000):
        t = start + rng.randrange(0, 10 * 3600 * 10**9)  # across midnight
        iid = rng.choice([101, 101, 102, 105, 999])
        common = {"publisher_id": 1, "instrument_id": iid, "ts_event": t, "depth": 0, "ts_recv": t + 12_345}
        side = rng.choice([dbn.Side.ASK, dbn.Side.BID, dbn.Side.NONE])
        sequence = rng.choice([0, rng.randrange(1, 2**32)])
        if kind == "trades":
            size = rng.randrange(0, 2**32 - 1)
            rec: Any = dbn.TradeMsg(
                price=_random_price(rng), size=size, action=dbn.Action.TRADE, side=side, sequence=sequence, **common
            )
        else:
            level = dbn.BidAskPair(
                bid_px=_random_price(rng),
                ask_px=_random_price(rng),
                bid_sz=rng.randrange(0, 10**6),
                ask_sz=rng.randrange(0, 10**6),
            )
            rec = dbn.MBP1Msg(
                price=level.bid_px, size=1, action=dbn.Action.ADD, side=side, sequence=sequence, levels=level, **common
            )
        records.append(rec)
    schema, fmt = ("trades", "databento-trades") if kind == "trades" else ("mbp-1", "databento-mbp1")
    path = enc.write(tmp_path / f"random{schema}.dbn.zst", enc.encode(enc.metadata(schema, MAPPINGS), records))
    expected_rows, expected_bad = _reference(path, kind)
    chunks = read(fmt, path, chunk_rows=97)
    assert [r for c in chunks for r in rows(c)] == expected_rows
    assert [b.line for c in chunks for b in c.bad] == [b.line for b in expected_bad]
    assert chunks[-1].end == len(records)
    # Chunking changes nothing but the cuts.
    assert [r for c in read(fmt, path) for r in rows(c)] == expected_rows
