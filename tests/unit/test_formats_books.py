"""The level-2 book file readers (k2_core.ingest.formats.tardis_books, databento_books): records and their per-file
numbers exactly as the module rules say, bad rows by line with their books' numbers left out, chunks cut by the
file's rows without changing a record, and files of the wrong kind refused by name."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import databento_dbn as dbn
import pytest

from k2_core.exceptions import SourceError
from k2_core.ingest.formats import BOOK_FORMATS, ReadOptions
from k2_core.ingest.formats.book_files import BookChunk
from tests.support import dbn as enc

RECEIVED = datetime(2026, 1, 5, 12, tzinfo=UTC)
T = 1_732_496_400_000_000  # 2024-11-25T01:00:00Z in µs
HEADER = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"


def read(name: str, path: Path, chunk_rows: int = 1 << 20) -> list[BookChunk]:
    options = ReadOptions(exchange="binance", received=RECEIVED, chunk_rows=chunk_rows)
    return list(BOOK_FORMATS[name].read(path, options))


def records(chunks: list[BookChunk]) -> list[tuple[str, str, int, int]]:
    """(record type, symbol, number, line) of every record, in order."""
    return [
        (r.record_type, r.record["symbol"], r.record["exchange_sequence_number"], r.line)
        for c in chunks
        for r in c.rows
    ]


def row(symbol: str, dt: int, snapshot: bool, side: str, price: str, amount: str) -> str:
    return f"binance-futures,{symbol},{T + dt},{T + dt + 5},{str(snapshot).lower()},{side},{price},{amount}"


def l2(path: Path, *lines: str) -> Path:
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def test_snapshot_runs_and_updates_are_numbered_per_symbol_per_file(tmp_path: Path) -> None:
    dump = l2(
        tmp_path / "a.csv",
        row("btcusdt", 0, True, "bid", "100.5", "2"),
        row("btcusdt", 0, True, "ask", "101", "3"),
        row("ethusdt", 0, True, "bid", "10", "1"),
        row("ethusdt", 0, True, "ask", "11", "1"),
        row("btcusdt", 1, False, "bid", "100.5", "0"),
        row("ethusdt", 2, False, "ask", "11.5", "4"),
        row("btcusdt", 3, False, "ask", "101.5", "1.25"),
        row("btcusdt", 9, True, "bid", "99", "7"),  # a reconnection: the book is reset
        row("btcusdt", 9, True, "ask", "102", "8"),
        row("btcusdt", 10, False, "bid", "99.5", "1"),
    )
    chunks = read("tardis-book-l2", dump)
    assert records(chunks) == [  # a snapshot is handed on when its symbol's next row ends its run
        ("book_snapshots", "BTCUSDT", 0, 2),
        ("book_updates", "BTCUSDT", 1, 6),
        ("book_snapshots", "ETHUSDT", 0, 4),
        ("book_updates", "ETHUSDT", 1, 7),
        ("book_updates", "BTCUSDT", 2, 8),
        ("book_snapshots", "BTCUSDT", 2, 9),
        ("book_updates", "BTCUSDT", 3, 11),
    ]
    first, reset = chunks[0].rows[0].record, chunks[0].rows[5].record
    assert first["bids"] == [{"price": Decimal("100.5"), "size": Decimal(2)}]
    assert first["asks"] == [{"price": Decimal(101), "size": Decimal(3)}]
    assert first["exchange_timestamp"] == datetime(2024, 11, 25, 1, tzinfo=UTC)
    assert reset["bids"] == [{"price": Decimal(99), "size": Decimal(7)}]  # not the levels before the reset
    removal = chunks[0].rows[1].record
    assert (removal["side"], removal["price"], removal["size"]) == ("bid", Decimal("100.5"), Decimal(0))
    assert removal["exchange_timestamp"] == datetime(2024, 11, 25, 1, tzinfo=UTC) + timedelta(microseconds=1)
    assert [c.end for c in chunks] == [10]


def test_chunks_cut_by_rows_change_no_record_and_a_run_goes_with_the_rows_that_end_it(tmp_path: Path) -> None:
    lines = [
        row("BTCUSDT", 0, True, side, str(100 + k if side == "ask" else 99 - k), "1")
        for k in range(3)
        for side in ("bid", "ask")
    ]
    lines += [row("BTCUSDT", i, False, "bid", "98", str(i)) for i in range(1, 12)]
    lines += [row("BTCUSDT", 20, True, "ask", str(100 + k), "2") for k in range(4)]  # the file ends in a run
    dump = l2(tmp_path / "b.csv", *lines)
    whole = records(read("tardis-book-l2", dump))
    for size in (1, 4, 6, 7, 21):
        chunks = read("tardis-book-l2", dump, chunk_rows=size)
        assert records(chunks) == whole, size
        ends = [c.end for c in chunks]
        assert ends == sorted(set(ends)), size  # no two chunks end at the same row: a resume skips by it
        assert ends[-1] == 21
        for chunk in chunks:
            for r in chunk.rows:
                assert r.line - 1 <= chunk.end, (size, r)
    assert whole[-1] == ("book_snapshots", "BTCUSDT", 11, 19)  # completed by the file's end, with the last rows


def test_a_bad_row_costs_its_books_a_number(tmp_path: Path) -> None:
    dump = l2(
        tmp_path / "c.csv",
        row("BTCUSDT", 0, True, "bid", "100", "1"),
        row("ETHUSDT", 0, True, "bid", "10", "1"),
        row("BTCUSDT", 1, False, "bid", "100", "2"),
        row("BTCUSDT", 2, False, "bid", "1e-9", "2"),  # line 5: its symbol is known, it loses one number
        row("BTCUSDT", 3, False, "bid", "100", "3"),
        f"binance-futures,,{T + 4},{T + 4},false,bid,100,1",  # line 7: no symbol: every book loses one
        row("ETHUSDT", 5, False, "ask", "11", "1"),
        row("BTCUSDT", 6, False, "sell", "100", "1"),  # line 9: not a side
        row("BTCUSDT", 7, False, "bid", "100", "4"),
        "binance-futures,BTCUSDT,1",  # line 11: a short row
    )
    chunks = read("tardis-book-l2", dump)
    assert [(b.line, b.reason) for c in chunks for b in c.bad] == [
        (5, "price '1e-9' has more than 8 decimal places"),
        (7, "symbol is empty"),
        (9, "side 'sell' is not bid or ask"),
        (11, "expected 8 columns, got 3"),
    ]
    updates = [(s, n) for t, s, n, _ in records(chunks) if t == "book_updates"]
    assert updates == [("BTCUSDT", 1), ("BTCUSDT", 3), ("ETHUSDT", 2), ("BTCUSDT", 6)]


def test_a_bad_row_in_a_snapshot_run_drops_the_snapshot_and_leaves_a_hole(tmp_path: Path) -> None:
    dump = l2(
        tmp_path / "d.csv",
        row("BTCUSDT", 0, True, "bid", "100", "1"),
        row("BTCUSDT", 0, True, "ask", "abc", "1"),
        row("BTCUSDT", 0, True, "ask", "102", "1"),
        row("BTCUSDT", 1, False, "bid", "100", "2"),
        row("BTCUSDT", 2, True, "bid", "99", "1"),
        row("BTCUSDT", 3, False, "bid", "99", "2"),
    )
    chunks = read("tardis-book-l2", dump)
    assert [(b.line, b.reason) for c in chunks for b in c.bad] == [
        (3, "price 'abc' is not a number; the snapshot it belongs to is not stored")
    ]
    assert records(chunks) == [
        ("book_updates", "BTCUSDT", 2, 5),  # 1 is the dropped snapshot's hole
        ("book_snapshots", "BTCUSDT", 2, 6),
        ("book_updates", "BTCUSDT", 3, 7),
    ]


@pytest.mark.parametrize("name", ["tardis-book-l2", "tardis-book-snapshot"])
def test_a_file_of_another_kind_is_refused_by_its_header(tmp_path: Path, name: str) -> None:
    trades = tmp_path / "trades.csv"
    trades.write_text("exchange,symbol,timestamp,local_timestamp,id,side,price,amount\nx,BTC,1,1,1,buy,1,1\n")
    with pytest.raises(SourceError, match=r"not a Tardis \w+ file: its first line has no"):
        read(name, trades)


def test_book_snapshot_rows_are_snapshots_of_the_headers_depth(tmp_path: Path) -> None:
    levels = [f"{s}[{i}].{p}" for i in range(5) for s in ("asks", "bids") for p in ("price", "amount")]
    header = ",".join(["exchange", "symbol", "timestamp", "local_timestamp", *levels])

    def line(dt: int, cells: list[str]) -> str:
        return ",".join(["binance", "btcusdt", str(T + dt), str(T + dt), *cells, *[""] * (20 - len(cells))])

    dump = tmp_path / "binance_book_snapshot_5_2024-11-25_BTCUSDT.csv"
    dump.write_text(
        "\n".join(
            [
                header,
                line(0, ["101", "1", "100", "2", "102", "3", "99", "4"]),
                line(1, ["101", "1", "100", "-2"]),  # line 3
                line(2, ["101.5", "5", "", "", "102", "6"]),  # no bids at all: one-sided
            ]
        )
        + "\n"
    )
    chunks = read("tardis-book-snapshot", dump)
    assert [(b.line, b.reason) for c in chunks for b in c.bad] == [(3, "bids[0].amount '-2' must be positive")]
    got = [r.record for c in chunks for r in c.rows]
    assert [r["exchange_sequence_number"] for r in got] == [1, 2]
    level = lambda price, size: {"price": Decimal(price), "size": Decimal(size)}  # noqa: E731
    assert got[0]["asks"] == [level(101, 1), level(102, 3)]
    assert got[0]["bids"] == [level(100, 2), level(99, 4)]
    assert (got[1]["asks"], got[1]["bids"]) == ([level("101.5", 5), level(102, 6)], [])


def mbp(iid: int, ms: int, bids: list[tuple[str | int, int]], asks: list[tuple[str | int, int]], flags: int = 0) -> Any:
    return enc.mbp10(iid, f"2024-11-01T14:00:00.{ms:03d}000000", bids, asks, flags=flags)


def test_mbp10_records_become_a_snapshot_then_the_level_changes_of_each_record(tmp_path: Path) -> None:
    day = date(2024, 11, 1)
    ten = [(f"{100 - k}", 10 + k) for k in range(10)]
    asks = [("101", 5)]
    recs = [
        mbp(1, 0, ten, asks),
        mbp(1, 1, ten, asks),  # a trade, say: no level changed
        mbp(1, 2, [("100", 11), *ten[1:]], asks),  # the best bid's total grows
        mbp(1, 3, [*ten[1:], ("90", 3)], asks),  # the best bid leaves: the 11th level comes into the top ten
        mbp(1, 4, [*ten[1:], ("90", 3)], [(100_500_000_001, 1)]),  # nine decimals: a bad record, a hole
        mbp(1, 5, [*ten[1:], ("90", 3)], [("101", 6)]),  # after a hole: a snapshot again
        mbp(1, 6, [], []),  # a clear: every level goes
    ]
    meta = enc.metadata("mbp-10", {"AAPL": [(day, day + timedelta(days=1), 1)]})
    dump = enc.write(tmp_path / "x.dbn.zst", enc.encode(meta, recs))
    chunks = read("databento-mbp10", dump, chunk_rows=3)
    assert [(b.line, b.reason) for c in chunks for b in c.bad] == [
        (5, "ask_px_00 100.500000001 has more than 8 decimal places")
    ]
    got = [(r.record_type, r.record["exchange_sequence_number"], r.line) for c in chunks for r in c.rows]
    kinds = [("book_snapshots", 0, 1), ("book_updates", 1, 3), ("book_updates", 2, 4), ("book_updates", 3, 4)]
    assert got[:4] == kinds
    assert got[4] == ("book_snapshots", 4, 6)  # 4 is the bad record's: the snapshot includes it
    assert [(t, n) for t, n, line in got[5:]] == [("book_updates", n) for n in range(5, 16)]  # 10 bids and an ask
    rows = [r.record for c in chunks for r in c.rows]
    assert (rows[1]["side"], rows[1]["price"], rows[1]["size"]) == ("bid", Decimal(100), Decimal(11))
    assert {(r["price"], r["size"]) for r in rows[2:4]} == {(Decimal(100), Decimal(0)), (Decimal(90), Decimal(3))}
    assert rows[0]["exchange_timestamp"] == datetime(2024, 11, 1, 14, tzinfo=UTC)
    assert all(r["size"] == 0 for r in rows[5:])
    assert [c.end for c in chunks] == [3, 6, 7]


def test_a_snapshot_sent_in_rows_of_several_times_is_one_book_as_of_its_last(tmp_path: Path) -> None:
    """Tardis's rule: the book resets when a snapshot row follows an update, not when a snapshot row's time moves."""
    dump = l2(
        tmp_path / "e.csv",
        row("BTCUSDT", 0, True, "bid", "100", "1"),
        row("BTCUSDT", 2, True, "ask", "101", "1"),  # the same snapshot, a later message
        row("BTCUSDT", 3, False, "bid", "100", "2"),
    )
    (snapshot, update) = [r.record for c in read("tardis-book-l2", dump) for r in c.rows]
    assert snapshot["exchange_timestamp"] == datetime(2024, 11, 25, 1, tzinfo=UTC) + timedelta(microseconds=2)
    assert (len(snapshot["bids"]), len(snapshot["asks"])) == (1, 1)
    assert update["exchange_sequence_number"] == 1


def test_an_mbp10_record_flagged_maybe_bad_book_leaves_its_book_unknown_until_the_next(tmp_path: Path) -> None:
    day = date(2024, 11, 1)
    recs = [
        mbp(1, 0, [("100", 1)], [("101", 1)]),
        mbp(1, 1, [("100", 2)], [("101", 1)]),
        mbp(1, 2, [("100", 3)], [("101", 1)], flags=int(dbn.F_MAYBE_BAD_BOOK)),  # a gap in the venue's channel
        mbp(1, 3, [("100", 4)], [("101", 1)]),
    ]
    meta = enc.metadata("mbp-10", {"AAPL": [(day, day + timedelta(days=1), 1)]})
    chunks = read("databento-mbp10", enc.write(tmp_path / "f.dbn", enc.encode(meta, recs)))
    assert [b for c in chunks for b in c.bad] == []  # not a bad row: the venue's own doubt
    got = [(r.record_type, r.record["exchange_sequence_number"], r.line) for c in chunks for r in c.rows]
    assert got == [("book_snapshots", 0, 1), ("book_updates", 1, 2), ("book_snapshots", 2, 4)]


def test_mbp10_stores_the_top_ten_as_a_snapshot_at_each_instruments_first_record_of_a_minute(tmp_path: Path) -> None:
    day = date(2024, 11, 1)
    times = ["14:00:30", "14:00:50", "14:01:10", "14:01:20", "14:03:00"]
    recs = [enc.mbp10(1, f"2024-11-01T{t}.000000000", [("100", k + 1)], [("101", 1)]) for k, t in enumerate(times)]
    meta = enc.metadata("mbp-10", {"AAPL": [(day, day + timedelta(days=1), 1)]})
    chunks = read("databento-mbp10", enc.write(tmp_path / "g.dbn", enc.encode(meta, recs)))
    got = [(r.record_type, r.record["exchange_sequence_number"], r.line) for c in chunks for r in c.rows]
    assert got == [
        ("book_snapshots", 0, 1),
        ("book_updates", 1, 2),
        ("book_updates", 2, 3),
        ("book_snapshots", 2, 3),  # the first record of 14:01, after its update: the book as of number 2
        ("book_updates", 3, 4),
        ("book_updates", 4, 5),
        ("book_snapshots", 4, 5),
    ]
    last = chunks[-1].rows[-1].record
    assert last["bids"] == [{"price": Decimal(100), "size": Decimal(5)}]
