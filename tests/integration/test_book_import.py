"""`k2 import` of level-2 book files (Tardis incremental_book_L2 and book_snapshot_25, Databento mbp-10) into the
real book tables: the book rebuilt by k2_core.read.book at any time equals a plain replay of the rows the test wrote
(a dict of levels a side: the oracle), a bad row is reported by its line and makes its book unknown until the next
snapshot rather than wrong, a second import adds nothing, and an interrupted import resumes without duplicates."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import databento_dbn as dbn
import pytest
from typer.testing import CliRunner

from k2_cli.main import app
from k2_core.ingest.book_importer import BookImporter
from k2_core.ingest.formats import BOOK_FORMATS, ReadOptions
from k2_core.ingest.gaps import HEALED, OPEN
from k2_core.ingest.importer import Progress
from k2_core.read.engine import QueryEngine
from k2_core.settings import Settings
from tests.support import dbn as dbn_files
from tests.support.formats import write_gz
from tests.support.lake import table_rows
from tests.support.processes import settings_env

SettingsFactory = Callable[..., Settings]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY = datetime(2024, 11, 25, tzinfo=UTC)
Levels = list[tuple[Decimal, Decimal]]
Book = tuple[Levels, Levels]  # bids best first, asks best first


def us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def at(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def sides(bids: dict[Decimal, Decimal], asks: dict[Decimal, Decimal]) -> Book:
    return sorted(bids.items(), reverse=True), sorted(asks.items())


def stored(settings: Settings, table: str) -> int:
    return len(table_rows(settings, table))


def book_gaps(settings: Settings) -> list[dict[str, object]]:
    return [g for g in table_rows(settings, "sequence_gaps") if g["data_type"] == "book_updates"]


def check_books(
    settings: Settings,
    exchange: str,
    times: dict[str, Iterable[int]],
    oracle: Callable[[str, int], Book | None],
    unknown: dict[str, tuple[int, int]] | None = None,
) -> int:
    """Every book K2 rebuilds at each time equals the oracle's; inside a symbol's `unknown` span [from, to) K2 says
    the book is unknown because of a gap. Returns how many books were compared."""
    compared = 0
    with QueryEngine.from_settings(settings, cache=False) as engine:
        for symbol, marks in times.items():
            for mark in marks:
                got = engine.book(symbol, exchange, at=at(mark), depth=100)
                span = (unknown or {}).get(symbol)
                if span is not None and span[0] <= mark < span[1]:
                    assert not got.valid, (symbol, at(mark))
                    assert "gap" in (got.reason or ""), got.reason
                    continue
                want = oracle(symbol, mark)
                if want is None:
                    assert not got.valid, (symbol, at(mark))
                    continue
                assert got.valid, (symbol, at(mark), got.reason)
                assert (got.bids, got.asks) == want, (symbol, at(mark))
                compared += 1
    return compared


# --- Tardis incremental_book_L2 -----------------------------------------------------------------------------------

L2_HEADER = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"
BID_GRID = [Decimal("95") + Decimal("0.5") * k for k in range(11)]  # 95.0 .. 100.0
ASK_GRID = [Decimal("100.5") + Decimal("0.5") * k for k in range(11)]  # 100.5 .. 105.5: never crossed


@dataclass(frozen=True)
class L2Row:
    symbol: str
    micros: int
    snapshot: bool
    side: str
    price: Decimal
    amount: Decimal

    def line(self) -> str:
        flag = "true" if self.snapshot else "false"
        local = self.micros + 150
        return f"binance-futures,{self.symbol},{self.micros},{local},{flag},{self.side},{self.price},{self.amount}"


def l2_rows(
    seed: int, symbols: tuple[str, ...], updates: int, reset_at: int, start: datetime = DAY + timedelta(hours=1)
) -> list[L2Row]:
    """Each symbol's opening snapshot, then `updates` random level changes a millisecond apart (a level's new
    amount, 0 removing it), and after `reset_at` of them a new snapshot of the first symbol (a reconnection)."""
    rng = random.Random(seed)
    rows: list[L2Row] = []
    held: dict[tuple[str, str], set[Decimal]] = {}
    t = us(start)

    def snapshot(symbol: str, micros: int) -> None:
        for side, grid in (("bid", BID_GRID[-5:]), ("ask", ASK_GRID[:5])):
            held[symbol, side] = set(grid)
            rows.extend(L2Row(symbol, micros, True, side, p, Decimal(rng.randint(1, 40))) for p in grid)

    for symbol in symbols:
        snapshot(symbol, t)
        t += 1000
    for i in range(updates):
        t += 1000
        if i == reset_at:
            snapshot(symbols[0], t)
            continue
        symbol, side = rng.choice(symbols), rng.choice(("bid", "ask"))
        price = rng.choice(BID_GRID if side == "bid" else ASK_GRID)
        levels = held[symbol, side]
        if price in levels and rng.random() < 0.4:
            levels.discard(price)
            amount = Decimal(0)
        else:
            levels.add(price)
            amount = Decimal(rng.randint(1, 40)) / 4
        rows.append(L2Row(symbol, t, False, side, price, amount))
    return rows


def write_l2(path: Path, rows: list[L2Row], bad: dict[int, str] | None = None) -> Path:
    """The rows as Tardis writes them; `bad` lines inserted before the row of each index."""
    lines = [L2_HEADER]
    for i, row in enumerate(rows):
        if bad and i in bad:
            lines.append(bad[i])
        lines.append(row.line())
    path.write_text("\n".join(lines) + "\n")
    return path


def l2_oracle(rows: list[L2Row]) -> Callable[[str, int], Book | None]:
    """The book a plain replay of the rows holds at a time, by Tardis's rule: a snapshot row that follows an update
    of its symbol (or opens the file) resets the book; every row sets its level's amount (0 removes it)."""

    def book(symbol: str, micros: int) -> Book | None:
        bids: dict[Decimal, Decimal] = {}
        asks: dict[Decimal, Decimal] = {}
        known, in_snapshot = False, False
        for row in rows:
            if row.symbol != symbol or row.micros > micros:
                continue
            if row.snapshot and not in_snapshot:
                bids, asks, known = {}, {}, True
            in_snapshot = row.snapshot
            levels = bids if row.side == "bid" else asks
            if row.amount:
                levels[row.price] = row.amount
            else:
                levels.pop(row.price, None)
        return sides(bids, asks) if known else None

    return book


def marks(rows: Iterable[L2Row | int], symbol: str | None = None, step: int = 1) -> list[int]:
    """Each `step`-th row time of one symbol (and its last), and a moment after each: a rebuild is a few scans, so
    the tests compare a sample of times, not every one."""
    times = sorted({r if isinstance(r, int) else r.micros for r in rows if isinstance(r, int) or r.symbol == symbol})
    return [m for t in sorted({*times[::step], times[-1]}) for m in (t, t + 500)]


def test_a_tardis_incremental_book_rebuilds_as_the_file_replays(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    symbols = ("BTCUSDT", "ETHUSDT")
    rows = l2_rows(7, symbols, updates=160, reset_at=110)
    # A row of BTCUSDT that cannot be read, after one of its updates and before its new snapshot: the book is
    # unknown from that update until the snapshot, not rebuilt without the row.
    before = next(i for i in range(60, len(rows)) if rows[i].symbol == "BTCUSDT" and not rows[i].snapshot)
    bad_index = before + 1
    bad_text = f"binance-futures,BTCUSDT,{rows[before].micros + 1},0,false,bid,not-a-price,1"
    dump = write_l2(
        tmp_path / "binance-futures_incremental_book_L2_2024-11-25_BTCUSDT.csv", rows, {bad_index: bad_text}
    )
    bad_line = bad_index + 2  # the header is line 1

    env = settings_env(settings)
    command = ["import", str(dump), "-f", "tardis-book-l2", "-e", "binance"]
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 0, result.output
    assert f"line {bad_line}:" in result.output
    assert "price 'not-a-price' is not a number" in result.output

    updates = [r for r in rows if not r.snapshot]
    snapshots = {(r.symbol, r.micros) for r in rows if r.snapshot}
    assert stored(settings, "book_updates") == len(updates)
    assert stored(settings, "book_snapshots") == len(snapshots) == 3
    (gap,) = book_gaps(settings)
    assert (gap["symbol"], gap["status"]) == ("BTCUSDT", HEALED)
    reset = max(t for s, t in snapshots if s == "BTCUSDT")
    unknown = {"BTCUSDT": (rows[before].micros, reset)}
    edges = [t + d for t in unknown["BTCUSDT"] for d in (-1, 0, 1)]
    times = {"BTCUSDT": [us(DAY), *edges, *marks(rows, "BTCUSDT", 6)], "ETHUSDT": marks(rows, "ETHUSDT", 6)}
    assert check_books(settings, "binance", times, l2_oracle(rows), unknown) >= 40

    again = CliRunner().invoke(app, command, env=env)
    assert again.exit_code == 0, again.output
    assert "already imported" in again.output
    # The same rows in other bytes (gzipped as Tardis publishes them): read again, and every record a duplicate.
    copy = write_gz(tmp_path / "copy.csv.gz", dump.read_text())
    report = BookImporter(settings).import_file(copy, BOOK_FORMATS["tardis-book-l2"], ReadOptions(exchange="binance"))
    assert (report.written, report.duplicates, report.gaps) == (0, len(updates) + len(snapshots), 0)
    assert [b.line for b in report.bad] == [bad_line]
    assert stored(settings, "book_updates") == len(updates)
    assert stored(settings, "book_snapshots") == len(snapshots)
    assert len(book_gaps(settings)) == 1


def test_a_gap_one_days_file_leaves_open_is_healed_by_the_next_days_opening_snapshot(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Each file is a session numbered from its start: the next day's opens with a snapshot, and the book the day
    before left unknown (a bad row after its last snapshot) is known again from it, across two imports."""
    settings = make_settings()
    fmt, options = BOOK_FORMATS["tardis-book-l2"], ReadOptions(exchange="binance")
    first = l2_rows(21, ("BTCUSDT",), updates=40, reset_at=-1)
    bad = {31: f"binance-futures,BTCUSDT,{first[30].micros + 1},0,false,ask,101,-1"}  # a negative amount
    day1 = write_l2(tmp_path / "binance-futures_incremental_book_L2_2024-11-25_BTCUSDT.csv", first, bad)
    report = BookImporter(settings).import_file(day1, fmt, options)
    assert [(b.line, b.reason) for b in report.bad] == [(33, "amount '-1' must not be negative")]
    assert [(g["symbol"], g["status"]) for g in book_gaps(settings)] == [("BTCUSDT", OPEN)]

    second = l2_rows(22, ("BTCUSDT",), updates=40, reset_at=-1, start=DAY + timedelta(days=1, hours=1))
    day2 = write_l2(tmp_path / "binance-futures_incremental_book_L2_2024-11-26_BTCUSDT.csv", second)
    report = BookImporter(settings).import_file(day2, fmt, options)
    assert (report.written, report.duplicates, report.gaps) == (len(second) - 10 + 1, 0, 0)
    assert [(g["symbol"], g["status"]) for g in book_gaps(settings)] == [("BTCUSDT", HEALED)]
    unknown = {"BTCUSDT": (first[30].micros, second[0].micros)}
    times = {"BTCUSDT": [*marks(first, "BTCUSDT", 5), *marks(second, "BTCUSDT", 5)]}
    assert check_books(settings, "binance", times, l2_oracle(first + second), unknown) >= 20


class Interrupted(Exception):
    """The import stopped between two chunks (as a killed process would)."""


def test_an_interrupted_book_import_resumes_without_duplicates(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    rows = l2_rows(11, ("BTCUSDT",), updates=150, reset_at=85)  # the new snapshot's rows are rows 96..105
    dump = write_l2(tmp_path / "binance-futures_incremental_book_L2_2024-11-25_BTCUSDT.csv", rows)
    fmt, options = BOOK_FORMATS["tardis-book-l2"], ReadOptions(exchange="binance", chunk_rows=50)

    def stop_after_two(progress: Progress) -> None:
        if progress.rows_read >= 100:
            raise Interrupted

    with pytest.raises(Interrupted):
        BookImporter(settings).import_file(dump, fmt, options, stop_after_two)
    partial = stored(settings, "book_updates")
    assert 0 < partial < 150

    report = BookImporter(settings).import_file(dump, fmt, options)
    assert report.resumed_at == 100
    assert (report.rows_read, report.duplicates, report.gaps) == (len(rows) - 100, 0, 0)
    assert stored(settings, "book_updates") == len([r for r in rows if not r.snapshot])
    assert stored(settings, "book_snapshots") == 2
    assert book_gaps(settings) == []
    times = marks(rows, "BTCUSDT", 7)
    assert check_books(settings, "binance", {"BTCUSDT": times}, l2_oracle(rows)) == len(times)
    assert BookImporter(settings).import_file(dump, fmt, options).skipped


def test_k2_import_writes_k2_minute_snapshots_across_the_imported_hours(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """The Dagster asset writes K2's minute snapshots of live books only (it looks back minutes): `k2 import`
    writes them for the minutes a file spans, each the oracle's book at its mark, none where the book was unknown,
    so a rebuild inside imported history starts at most a minute back. A second import writes nothing more."""
    settings = make_settings()
    start = us(DAY + timedelta(hours=1))
    # Updates a second apart: 200 of them span three minute marks and a bit.
    rows = [replace(r, micros=start + (r.micros - start) * 1000) for r in l2_rows(5, ("BTCUSDT", "ETHUSDT"), 200, -1)]
    before = next(i for i, r in enumerate(rows) if r.symbol == "ETHUSDT" and not r.snapshot and r.micros > start + 70e6)
    bad = f"binance-futures,ETHUSDT,{rows[before].micros + 1},0,false,bid,not-a-price,1"  # ETHUSDT unknown from here
    dump = write_l2(tmp_path / "binance-futures_incremental_book_L2_2024-11-25.csv", rows, {before + 1: bad})
    command = ["import", str(dump), "-f", "tardis-book-l2", "-e", "binance"]
    result = CliRunner().invoke(app, command, env=settings_env(settings))
    assert result.exit_code == 0, result.output

    oracle = l2_oracle(rows)
    minutes = [DAY + timedelta(hours=1, minutes=m) for m in (1, 2, 3)]
    k2 = sorted(
        ((r["symbol"], r["exchange_timestamp"]), r)
        for r in table_rows(settings, "book_snapshots")
        if r["source"] == "k2"
    )
    # ETHUSDT's book is unknown from its bad row (past 70 s) on: no snapshot at the later marks
    assert [key for key, _ in k2] == [*(("BTCUSDT", m) for m in minutes), ("ETHUSDT", minutes[0])]
    for (symbol, mark), row in k2:
        book = ([(lv["price"], lv["size"]) for lv in row["bids"]], [(lv["price"], lv["size"]) for lv in row["asks"]])
        assert book == oracle(symbol, us(mark))
    with QueryEngine.from_settings(settings, cache=False) as engine:
        late = minutes[-1] + timedelta(seconds=30)
        answer = engine.book("BTCUSDT", "binance", at=late, depth=100)
        assert (answer.snapshot_source, answer.snapshot_at) == ("k2", minutes[-1])
        assert (answer.bids, answer.asks) == oracle("BTCUSDT", us(late))
    again = CliRunner().invoke(app, command, env=settings_env(settings))
    assert "already imported" in again.output
    assert len([r for r in table_rows(settings, "book_snapshots") if r["source"] == "k2"]) == len(k2)


# --- Tardis book_snapshot_25 --------------------------------------------------------------------------------------


def snapshot_header(depth: int = 25) -> str:
    levels = [f"{side}[{i}].{part}" for i in range(depth) for side in ("asks", "bids") for part in ("price", "amount")]
    return ",".join(["exchange", "symbol", "timestamp", "local_timestamp", *levels])


def snapshot_line(symbol: str, micros: int, book: Book, override: dict[str, str] | None = None) -> str:
    """A row as Tardis writes it (levels past the book's left empty); `override` replaces named cells' text."""
    bids, asks = book
    cells = {"exchange": "binance", "symbol": symbol, "timestamp": str(micros), "local_timestamp": str(micros + 90)}
    for i in range(25):
        for name, levels in (("asks", asks), ("bids", bids)):
            price, amount = (str(levels[i][0]), str(levels[i][1])) if i < len(levels) else ("", "")
            cells[f"{name}[{i}].price"], cells[f"{name}[{i}].amount"] = price, amount
    cells.update(override or {})
    return ",".join(cells[column] for column in snapshot_header().split(","))


def random_book(rng: random.Random, mid: Decimal) -> Book:
    bids = [(mid - Decimal("0.25") * (k + 1), Decimal(rng.randint(1, 90)) / 10) for k in range(rng.randint(3, 8))]
    asks = [(mid + Decimal("0.25") * (k + 1), Decimal(rng.randint(1, 90)) / 10) for k in range(rng.randint(3, 8))]
    return bids, asks


def test_tardis_book_snapshots_of_two_days_rebuild_as_each_row_says(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    rng = random.Random(3)
    folder = tmp_path / "snapshots"
    folder.mkdir()
    good: dict[str, list[tuple[int, Book]]] = {"BTCUSDT": [], "ETHUSDT": []}
    problems: dict[str, list[int]] = {}
    for day, count in ((0, 40), (1, 20)):
        start = us(DAY + timedelta(days=day, hours=2))
        lines = [snapshot_header()]
        for i in range(count):
            symbol = "BTCUSDT" if day or i % 2 else "ETHUSDT"
            micros = start + i * 250_000
            book = random_book(rng, Decimal(3000 + rng.randint(-40, 40)))
            line = snapshot_line(symbol, micros, book)
            if day == 0 and i == 11:  # a level's amount that is no number: the row is not stored
                line = snapshot_line(symbol, micros, book, {"bids[0].amount": "x"})
            elif day == 0 and i == 17:  # a crossed book: the record rules refuse it
                crossed = ([(book[1][0][0] + 1, Decimal(1)), *book[0]], book[1])
                line = snapshot_line(symbol, micros, crossed)
            else:
                good[symbol].append((micros, book))
            lines.append(line)
        name = f"binance_book_snapshot_25_2024-11-{25 + day}_ALL.csv"
        (folder / name).write_text("\n".join(lines) + "\n")
        problems[name] = [13, 19] if day == 0 else []

    env = settings_env(settings)
    result = CliRunner().invoke(app, ["import", str(folder), "-f", "tardis-book-snapshot", "-e", "binance"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 files: 60 rows read, 58 written" in result.output
    assert "line 13: bids[0].amount 'x' is not a number" in result.output
    assert "line 19: snapshot: crossed book" in result.output
    assert stored(settings, "book_snapshots") == 58
    assert stored(settings, "book_updates") == 0
    assert book_gaps(settings) == []

    def oracle(symbol: str, micros: int) -> Book | None:
        last = [book for t, book in good[symbol] if t <= micros]
        return last[-1] if last else None

    times = {s: [us(DAY), *marks([t for t, _ in good[s]], step=2)] for s in good}
    assert check_books(settings, "binance", times, oracle) == sum(len(m) - 1 for m in times.values())

    # A day before the stored ones, imported after them: refused with the reason, nothing of it stored.
    earlier = tmp_path / "binance_book_snapshot_25_2024-11-24_BTCUSDT.csv"
    earlier.write_text(
        f"{snapshot_header()}\n{snapshot_line('BTCUSDT', us(DAY) - 3_600_000_000, good['BTCUSDT'][0][1])}\n"
    )
    refused = CliRunner().invoke(app, ["import", str(earlier), "-f", "tardis-book-snapshot", "-e", "binance"], env=env)
    assert refused.exit_code == 1, refused.output
    assert "import an instrument's book files in date order" in refused.output
    assert stored(settings, "book_snapshots") == 58


# --- Databento mbp-10 ---------------------------------------------------------------------------------------------

MBP_DAY = date(2024, 11, 1)
MBP_START = datetime(2024, 11, 1, 14, tzinfo=UTC)


STEP_MS = 700  # between records: 240 of them span two minute marks, where a snapshot is stored too


def mbp_us(i: int) -> int:
    return us(MBP_START) + i * STEP_MS * 1000


def mbp_time(i: int) -> str:
    """Record `i`'s ts_event: `i` steps into 14:00 UTC, plus 777 ns (floored away: K2 keeps microseconds)."""
    ms = i * STEP_MS
    return f"{MBP_DAY.isoformat()}T14:{ms // 60_000:02d}:{ms // 1000 % 60:02d}.{ms % 1000 * 1_000_000 + 777:09d}"


def top(book: dict[str, dict[Decimal, int]]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The ten best levels a side, best first, as mbp-10 records carry them."""
    bids = sorted(book["bid"].items(), reverse=True)[:10]
    asks = sorted(book["ask"].items())[:10]
    return [(str(p), s) for p, s in bids], [(str(p), s) for p, s in asks]


def test_databento_mbp10_rebuilds_the_top_ten_levels_of_every_record(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    rng = random.Random(5)
    ids = {"AAPL": 11, "MSFT": 12}
    books = {
        symbol: {
            "bid": {Decimal("200.00") - Decimal("0.01") * k: rng.randint(1, 500) for k in range(14)},
            "ask": {Decimal("200.01") + Decimal("0.01") * k: rng.randint(1, 500) for k in range(14)},
        }
        for symbol in ids
    }
    records: list[dbn.MBP10Msg] = []
    good: dict[str, list[tuple[int, Book]]] = {symbol: [] for symbol in ids}
    bad_numbers: list[int] = []
    unknown: dict[str, tuple[int, int]] = {}

    def emit(symbol: str, ms: int, action: str = "A", side: str = "B") -> None:
        bids, asks = top(books[symbol])
        records.append(dbn_files.mbp10(ids[symbol], mbp_time(ms), bids, asks, action=action, side=side))
        levels = ([(Decimal(p), Decimal(s)) for p, s in bids], [(Decimal(p), Decimal(s)) for p, s in asks])
        good[symbol].append((mbp_us(ms), levels))

    for symbol in ids:
        emit(symbol, len(records))
    for ms in range(len(records), 240):
        symbol, side = rng.choice(sorted(ids)), rng.choice(("bid", "ask"))
        levels = books[symbol][side]
        if ms == 120:  # AAPL's best bid grows, then a record of it that cannot be read: unknown until the next one
            symbol, side = "AAPL", "bid"
            best = max(books["AAPL"]["bid"])
            books["AAPL"]["bid"][best] += 1
            emit("AAPL", ms)
            broken = dbn_files.mbp10(ids["AAPL"], mbp_time(ms + 1), [(200_000_000_001, 5)], [("200.01", 5)])
            records.append(broken)  # a bid price of nine decimals
            bad_numbers.append(len(records))
            continue
        if ms == 121:  # an instrument the metadata does not map: no book of it
            records.append(dbn_files.mbp10(99, mbp_time(ms), [("1.00", 1)], [("1.01", 1)]))
            bad_numbers.append(len(records))
            continue
        if ms == 122:
            symbol = "AAPL"
            unknown["AAPL"] = (good["AAPL"][-1][0], mbp_us(ms))
        roll = rng.random()
        if roll < 0.1:  # a trade: the levels do not change
            emit(symbol, ms, action="T", side="B" if side == "bid" else "A")
            continue
        if roll < 0.4 and len(levels) > 3:  # a cancel: a level leaves, one below the top ten may come up
            levels.pop(rng.choice(sorted(levels)))
        else:  # an add or modify, inside the spread's side of the book
            best = max(books[symbol]["bid"]) if side == "bid" else min(books[symbol]["ask"])
            step = Decimal("-0.01") if side == "bid" else Decimal("0.01")
            levels[best + step * rng.randint(0, 16)] = rng.randint(1, 500)
        emit(symbol, ms, action="C" if roll < 0.4 else "A", side="B" if side == "bid" else "A")

    mappings = {symbol: [(MBP_DAY, MBP_DAY + timedelta(days=1), iid)] for symbol, iid in ids.items()}
    plain = dbn_files.encode(dbn_files.metadata("mbp-10", mappings), records)
    dump = dbn_files.write(tmp_path / "xnas-mbp10-2024-11-01.dbn", plain)
    fmt = BOOK_FORMATS["databento-mbp10"]
    report = BookImporter(settings).import_file(dump, fmt, ReadOptions(exchange="nyse", chunk_rows=100))
    assert [b.line for b in report.bad] == bad_numbers
    assert "bid_px_00 200.000000001 has more than 8 decimal places" in report.bad[0].reason
    assert "instrument_id 99 has no symbol mapping" in report.bad[1].reason
    assert report.rows_read == len(records)
    (gap,) = book_gaps(settings)
    assert (gap["symbol"], gap["status"]) == ("AAPL", HEALED)
    # Each instrument's first record and its first of each minute after (14:01, 14:02), and AAPL's after the hole.
    assert stored(settings, "book_snapshots") == 2 * 3 + 1

    def oracle(symbol: str, micros: int) -> Book | None:
        last = [book for t, book in good[symbol] if t <= micros]
        return last[-1] if last else None

    edges = [t + d for t in unknown["AAPL"] for d in (-1, 0, 1)]
    minutes = [us(MBP_START + timedelta(minutes=m)) + d for m in (1, 2) for d in (-1, 0, 350_000, 800_000)]
    times = {s: [us(MBP_START) - 1, *minutes, *marks([t for t, _ in good[s]], step=8)] for s in ids}
    times["AAPL"] += edges
    assert check_books(settings, "nyse", times, oracle, unknown) >= 50

    # The same records zstd-compressed, as Databento delivers them: nothing new.
    rows = stored(settings, "book_updates"), stored(settings, "book_snapshots")
    packed = dbn_files.write(tmp_path / "xnas-mbp10-2024-11-01.dbn.zst", plain)
    again = BookImporter(settings).import_file(packed, fmt, ReadOptions(exchange="nyse"))
    assert (again.written, again.duplicates) == (0, sum(rows))
    assert (stored(settings, "book_updates"), stored(settings, "book_snapshots")) == rows
