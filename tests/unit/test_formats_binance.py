"""Binance public-data dumps (trades, aggTrades, bookTicker) read from samples written to Binance's published layout
(binance-public-data README): spot without a header, futures with one, zipped as Binance ships them."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from k2_core.exceptions import ConfigError, SourceError
from k2_core.ingest.formats import FORMATS, BadRow
from k2_core.ingest.formats.binance import symbol_from_filename
from tests.support.formats import RECEIVED, read, write_zip

SPOT_TRADES = (
    "51175358,17.80180000,5.69000000,101.29224200,1583709433583,True,True\n"
    "51175359,17.80190000,0.10000000,1.78019000,1583709433583,False,True\n"
)
FUTURES_TRADES = "id,price,qty,quote_qty,time,is_buyer_maker\n28457,4.00000100,12.00000000,48.00,1499865549590,true\n"


def test_the_binance_formats_are_registered_with_their_kind_and_need_a_symbol() -> None:
    assert {name: (f.kind, f.needs_symbol) for name, f in FORMATS.items() if name.startswith("binance")} == {
        "binance-trades": ("trades", True),
        "binance-aggtrades": ("trades", True),
        "binance-bookticker": ("quotes", True),
    }


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("BTCUSDT-trades-2024-01-01.zip", "BTCUSDT"),
        ("BTCUSDT-aggTrades-2024-01.csv", "BTCUSDT"),
        ("ETHUSDT-bookTicker-2023-07-15.zip", "ETHUSDT"),
        ("BTCUSD_PERP-trades-2024-01-01.zip", "BTCUSD_PERP"),  # COIN-M: K2's symbol rule refuses it later, not here
        ("btcusdt-trades-2024-01-01.csv", "BTCUSDT"),
        ("trades.csv", None),
        ("BTCUSDT-1m-2024-01-01.zip", None),  # klines are no format of K2's
    ],
)
def test_the_symbol_comes_from_binances_file_name(name: str, symbol: str | None) -> None:
    assert symbol_from_filename(Path(name)) == symbol


def test_spot_trades_read_from_a_zip_exactly(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "BNBUSDT-trades-2020-03.zip", "BNBUSDT-trades-2020-03.csv", SPOT_TRADES)
    got = read("binance-trades", path)
    assert got.rows == [
        {
            "symbol": "BNBUSDT",
            "exchange": "binance",
            "exchange_timestamp": datetime(2020, 3, 8, 23, 17, 13, 583000, tzinfo=UTC),
            "exchange_sequence_number": 51175358,
            "price": Decimal("17.80180000"),
            "volume": Decimal("5.69000000"),
            "side": "sell",  # the buyer was the maker: a seller crossed the spread
            "trade_id": "51175358",
            "ingestion_timestamp": RECEIVED,
        },
        {
            "symbol": "BNBUSDT",
            "exchange": "binance",
            "exchange_timestamp": datetime(2020, 3, 8, 23, 17, 13, 583000, tzinfo=UTC),
            "exchange_sequence_number": 51175359,
            "price": Decimal("17.80190000"),
            "volume": Decimal("0.10000000"),
            "side": "buy",
            "trade_id": "51175359",
            "ingestion_timestamp": RECEIVED,
        },
    ]
    assert got.bad == []
    assert got.ends == [2]


def test_spot_dumps_since_2025_hold_microseconds(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades-2025-01-01.csv"
    path.write_text(
        "1,94000.1,0.1,9400.01,1735689600123456,False,True\n2,94000.2,0.1,9400.02,1735689600123,False,True\n"
    )
    assert read("binance-trades", path).column("exchange_timestamp") == [
        datetime(2025, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
        datetime(2025, 1, 1, 0, 0, 0, 123000, tzinfo=UTC),
    ]


def test_futures_trades_have_six_columns_and_a_header(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "BTCUSDT-trades-2017-07.zip", "BTCUSDT-trades-2017-07.csv", FUTURES_TRADES)
    got = read("binance-trades", path)
    assert [(r["exchange_sequence_number"], r["price"], r["volume"], r["side"]) for r in got.rows] == [
        (28457, Decimal("4.00000100"), Decimal("12"), "sell")
    ]
    assert got.column("exchange_timestamp") == [datetime(2017, 7, 12, 13, 19, 9, 590000, tzinfo=UTC)]
    assert got.ends == [1]  # the header is no data row


def test_a_coin_m_futures_file_reads_by_its_header_like_usd_m(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSD_200626-trades-2020-06.csv"
    path.write_text("id,price,qty,base_qty,time,is_buyer_maker\n28457,9635.0,1,0.01037883,1591250192508,true\n")
    got = read("binance-trades", path, symbol="btcusd_200626")
    assert got.rows[0]["symbol"] == "BTCUSD_200626"
    assert (got.rows[0]["price"], got.rows[0]["volume"]) == (Decimal("9635"), Decimal("1"))


def test_a_headerless_file_takes_the_layout_most_of_its_lines_have(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades-2019-12-31.csv"
    path.write_text(
        "1,7000.1,0.5,3500.05,1577750400000,True,True\n"  # a spot line in a futures file: refused
        "2,7000.2,0.5,3500.1,1577750400001,false\n"
        "3,7000.3,0.5,3500.15,1577750400002,true\n"
    )
    got = read("binance-trades", path)
    assert got.column("exchange_sequence_number") == [2, 3]
    assert got.bad == [BadRow(1, "expected 6 columns, got 7")]


def test_bad_rows_are_reported_by_physical_line_with_the_reason_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades-2024-01-01.csv"
    path.write_text(
        "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n"  # line 1: the header
        "1,42000.00000000,0.1,4200,1704067200000,True,True\n"
        "2,42000.123456789,0.1,4200,1704067200000,True,True\n"
        "\n"  # line 4: blank, ignored
        "3,42000,0.1,4200,1704067200000,True\n"
        "4,42000,0.1,4200,abc,True,True\n"
        "5,-1,0.1,4200,1704067200000,True,True\n"
        "6,42000,0,4200,1704067200000,True,True\n"
        "7,42000,0.1,x,1704067200000,True,True\n"
        "8,12345678901,0.1,4200,1704067200000,True,True\n"
        "9,nan,0.1,4200,1704067200000,True,True\n"
        "1O,42000,0.1,4200,1704067200000,True,True\n"
        "11,42000,0.1,4200,1704067200000,maybe,True\n"
        "12, 42000.5 ,0.1,4200,1704067200000,true ,TRUE\n"  # spaces and case: read, as the replay reads them
    )
    got = read("binance-trades", path, chunk_rows=4)
    assert got.bad == [
        BadRow(3, "price '42000.123456789' has more than 8 decimal places"),
        BadRow(5, "expected 7 columns, got 6"),
        BadRow(6, "time 'abc' is not a non-negative integer"),
        BadRow(7, "price '-1' must be positive"),
        BadRow(8, "qty '0' must be positive"),
        BadRow(9, "quote qty 'x' is not a number"),
        BadRow(10, "price '12345678901' does not fit decimal(18, 8)"),
        BadRow(11, "price 'nan' is not a finite number"),
        BadRow(12, "trade id '1O' is not a non-negative integer"),
        BadRow(13, "is_buyer_maker 'maybe' is not true or false"),
    ]
    assert got.column("exchange_sequence_number") == [1, 12]
    assert got.rows[1]["price"] == Decimal("42000.5")
    # 12 data rows (the header and the blank line are none), cut every 4
    assert got.ends == [4, 8, 12]
    assert [[row.line for row in chunk.bad] for chunk in got.chunks] == [[3, 5, 6], [7, 8, 9, 10], [11, 12, 13]]


def test_without_a_symbol_or_a_binance_file_name_the_reader_refuses(tmp_path: Path) -> None:
    path = tmp_path / "trades.csv"
    path.write_text(SPOT_TRADES)
    with pytest.raises(ConfigError, match="--symbol"):
        read("binance-trades", path)
    assert read("binance-trades", path, symbol="bnbusdt").column("symbol") == ["BNBUSDT", "BNBUSDT"]


def test_a_zip_of_two_files_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "BTCUSDT-trades-2024-01-01.zip", "a.csv", SPOT_TRADES)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("b.csv", SPOT_TRADES)
    with pytest.raises(SourceError, match="exactly one file, this one holds 2"):
        read("binance-trades", path)


def test_agg_trades_spot_and_futures(tmp_path: Path) -> None:
    spot = tmp_path / "BTCUSDT-aggTrades-2020-12-25.zip"
    write_zip(spot, "BTCUSDT-aggTrades-2020-12-25.csv", "0,0.20000000,50.00000000,0,0,1608872400000,False,True\n")
    futures = tmp_path / "BTCUSDT-aggTrades-2017-06-30.csv"
    futures.write_text(
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
        "26129,0.01633102,4.70443515,27781,27781,1498793709153,true\n"
        "26130,0.01633102,1,27790,27782,1498793709153,true\n"
    )
    assert read("binance-aggtrades", spot).rows == [
        {
            "symbol": "BTCUSDT",
            "exchange": "binance",
            "exchange_timestamp": datetime(2020, 12, 25, 5, 0, tzinfo=UTC),
            "exchange_sequence_number": 0,
            "price": Decimal("0.2"),
            "volume": Decimal("50"),
            "side": "buy",
            "trade_id": "0",
            "ingestion_timestamp": RECEIVED,
        }
    ]
    got = read("binance-aggtrades", futures)
    assert [(r["exchange_sequence_number"], r["price"], r["volume"], r["side"]) for r in got.rows] == [
        (26129, Decimal("0.01633102"), Decimal("4.70443515"), "sell")
    ]
    assert got.column("exchange_timestamp") == [datetime(2017, 6, 30, 3, 35, 9, 153000, tzinfo=UTC)]
    assert got.bad == [BadRow(3, "first trade id is after last trade id")]


BOOK_TICKER_HEADER = "update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time\n"


def test_book_ticker_quotes_are_numbered_by_their_ordinal_within_the_day_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "ETHUSDT-bookTicker-2023-07-14.csv"
    path.write_text(
        BOOK_TICKER_HEADER
        + "3062820799546,26.67000000,172.00000000,26.67100000,582.00000000,1689379199000,1689379199006\n"
        "3062820799550,26.67000000,0,26.67100000,1,1689379199500,1689379199506\n"
        "3062820799549,26.68,1,26.68100000,1,0,1689379199900\n"  # no transaction time: the event time stands in
        "3062820799551,26.68,1,26.68100000,1,,\n"  # neither: refused
        "3062820799552,0,1,26.681,1,1689379200098,1689379200104\n"  # a bid of 0 is no price: refused
        "3062820799553,26.69,1,26.691,1,1689379200098,1689379200104\n"  # the next UTC day starts again at 1
        "3062820799554,26.69,1,26.692,1,1689379200099,1689379200105\n"
    )
    got = read("binance-bookticker", path, chunk_rows=2)
    assert got.bad == [
        BadRow(5, "neither transaction time nor event time is given"),
        BadRow(6, "best bid price '0' must be positive"),
    ]
    assert [(r["exchange_timestamp"], r["exchange_sequence_number"]) for r in got.rows] == [
        (datetime(2023, 7, 14, 23, 59, 59, tzinfo=UTC), 1),
        (datetime(2023, 7, 14, 23, 59, 59, 500000, tzinfo=UTC), 2),
        (datetime(2023, 7, 14, 23, 59, 59, 900000, tzinfo=UTC), 3),
        (datetime(2023, 7, 15, 0, 0, 0, 98000, tzinfo=UTC), 1),
        (datetime(2023, 7, 15, 0, 0, 0, 99000, tzinfo=UTC), 2),
    ]
    first = got.rows[0]
    assert (first["bid_price"], first["bid_size"], first["ask_price"], first["ask_size"]) == (
        Decimal("26.67"),
        Decimal("172"),
        Decimal("26.671"),
        Decimal("582"),
    )
    assert got.rows[1]["bid_size"] == Decimal(0)  # a size may be 0
    assert got.ends == [2, 4, 6, 7]
    # reading the file again numbers every quote the same (the dedup key): nothing depends on the chunking
    assert read("binance-bookticker", path, chunk_rows=100).rows == got.rows
