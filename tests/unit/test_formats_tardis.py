"""Tardis.dev downloadable CSV files (trades, quotes) read from samples written to docs.tardis.dev's layout: a header,
gzip-compressed, microsecond times, rows carrying their own symbol."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from k2_core.exceptions import SourceError
from k2_core.ingest.formats import FORMATS, BadRow
from tests.support.formats import RECEIVED, read, write_gz

TRADES_HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
QUOTES_HEADER = "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount\n"


def test_the_tardis_formats_are_registered() -> None:
    assert {name: (f.kind, f.needs_symbol) for name, f in FORMATS.items() if name.startswith("tardis")} == {
        "tardis-trades": ("trades", False),
        "tardis-quotes": ("quotes", False),
    }


def test_trades_read_exactly_from_a_gzip(tmp_path: Path) -> None:
    path = write_gz(
        tmp_path / "deribit_trades_2020-04-01_BTC-PERPETUAL.csv.gz",
        TRADES_HEADER + "deribit,BTC-PERPETUAL,1585699202957000,1585699203089980,62301473,buy,6425.5,1200\n"
        "deribit,BTC-PERPETUAL,1585699203957123,1585699204089980,62301474,sell,6425,150.12345678\n",
    )
    got = read("tardis-trades", path, exchange="deribit")
    assert got.rows == [
        {
            "symbol": "BTC-PERPETUAL",
            "exchange": "deribit",
            "exchange_timestamp": datetime(2020, 4, 1, 0, 0, 2, 957000, tzinfo=UTC),
            "exchange_sequence_number": 1,
            "price": Decimal("6425.5"),
            "volume": Decimal("1200"),
            "side": "buy",
            "trade_id": "62301473",
            "ingestion_timestamp": RECEIVED,
        },
        {
            "symbol": "BTC-PERPETUAL",
            "exchange": "deribit",
            "exchange_timestamp": datetime(2020, 4, 1, 0, 0, 3, 957123, tzinfo=UTC),
            "exchange_sequence_number": 2,
            "price": Decimal("6425"),
            "volume": Decimal("150.12345678"),
            "side": "sell",
            "trade_id": "62301474",
            "ingestion_timestamp": RECEIVED,
        },
    ]


def test_the_exchange_is_the_imports_and_symbols_are_upper_cased(tmp_path: Path) -> None:
    path = tmp_path / "binance-futures_trades_2024-01-02_btcusdt.csv"
    path.write_text(TRADES_HEADER + "binance-futures,btcusdt,1704153600000000,1704153600001000,7,unknown,42000.1,0.5\n")
    row = read("tardis-trades", path, exchange="binance").rows[0]
    assert (row["exchange"], row["symbol"], row["side"]) == ("binance", "BTCUSDT", "unknown")


def test_sequence_numbers_are_ordinals_per_symbol_and_utc_day_across_chunks(tmp_path: Path) -> None:
    day_end, next_day = 1704153599000000, 1704153600000000  # 2024-01-01T23:59:59Z, 2024-01-02T00:00:00Z
    rows = [
        ("BTCUSDT", day_end, "11"),
        ("ETHUSDT", day_end, "21"),
        ("BTCUSDT", day_end + 1, ""),  # no trade id: the sequence number stands in
        ("BTCUSDT", next_day, "12"),
        ("ETHUSDT", day_end + 2, "22"),
        ("BTCUSDT", next_day + 1, "13"),
    ]
    text = TRADES_HEADER + "".join(f"binance,{s},{t},{t + 5},{i},buy,1.5,2\n" for s, t, i in rows)
    path = write_gz(tmp_path / "binance_trades_2024-01-01.csv.gz", text)
    got = read("tardis-trades", path, chunk_rows=2)
    assert [(r["symbol"], r["exchange_sequence_number"], r["trade_id"]) for r in got.rows] == [
        ("BTCUSDT", 1, "11"),
        ("ETHUSDT", 1, "21"),
        ("BTCUSDT", 2, "2"),
        ("BTCUSDT", 1, "12"),
        ("ETHUSDT", 2, "22"),
        ("BTCUSDT", 2, "13"),
    ]
    assert got.ends == [2, 4, 6]
    assert read("tardis-trades", path, chunk_rows=5).rows == got.rows


def test_bad_trades_are_refused_by_line_and_do_not_take_a_number(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        TRADES_HEADER + "binance,BTCUSDT,1704153600000000,1,1,buy,42000.1,0.5\n"
        "binance,BTCUSDT,1704153600000001,1,2,bought,42000.1,0.5\n"
        "binance,BTCUSDT,1704153600000002,1,3,sell,42000.123456789,0.5\n"
        "binance,,1704153600000003,1,4,sell,42000.1,0.5\n"
        "binance,BTCUSDT,1704153600000004,1,5,sell,42000.1\n"
        "binance,BTCUSDT,2024-01-02,1,6,sell,42000.1,0.5\n"
        "binance,BTCUSDT,1704153600000006,1,7,sell,42000.1,0\n"
        "binance,BTCUSDT,1704153600000007,1,8,Sell,1e-5,0.5\n"  # spelt unusually, but a number and a side
    )
    got = read("tardis-trades", path)
    assert got.bad == [
        BadRow(3, "side 'bought' is not buy, sell or unknown"),
        BadRow(4, "price '42000.123456789' has more than 8 decimal places"),
        BadRow(5, "symbol is empty"),
        BadRow(6, "expected 8 columns, got 7"),
        BadRow(7, "timestamp '2024-01-02' is not a non-negative integer"),
        BadRow(8, "amount '0' must be positive"),
    ]
    assert [(r["trade_id"], r["exchange_sequence_number"], r["side"], r["price"]) for r in got.rows] == [
        ("1", 1, "buy", Decimal("42000.1")),
        ("8", 2, "sell", Decimal("0.00001")),
    ]


def test_columns_are_found_by_name(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("symbol,price,amount,side,id,timestamp,extra\nETHUSDT,2000.5,1,sell,x-1,1704153600000000,?\n")
    row = read("tardis-trades", path).rows[0]
    assert (row["symbol"], row["price"], row["volume"], row["side"], row["trade_id"]) == (
        "ETHUSDT",
        Decimal("2000.5"),
        Decimal(1),
        "sell",
        "x-1",
    )


def test_a_file_without_the_tardis_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("binance,BTCUSDT,1704153600000000,1,1,buy,42000.1,0.5\n")
    with pytest.raises(SourceError, match="not a Tardis trades file: its first line has no symbol, timestamp"):
        read("tardis-trades", path)


def test_an_empty_gzip_holds_no_rows(tmp_path: Path) -> None:
    """Tardis serves an empty gzip for a day without data."""
    assert read("tardis-trades", write_gz(tmp_path / "t.csv.gz", b"")).chunks == []
    assert read("tardis-quotes", write_gz(tmp_path / "q.csv.gz", QUOTES_HEADER)).chunks == []


def test_quotes_read_exactly_and_a_missing_side_is_refused(tmp_path: Path) -> None:
    path = write_gz(
        tmp_path / "huobi-dm-swap_quotes_2020-04-01_BTC-USD.csv.gz",
        QUOTES_HEADER + "huobi-dm-swap,BTC-USD,1585699201147000,1585699201270777,86,6423,6422.9,112\n"
        "huobi-dm-swap,BTC-USD,1585699202147000,1585699202270777,86,6423,,\n"
        "huobi-dm-swap,BTC-USD,1585699203147000,1585699203270777,,,6422.9,112\n"
        "huobi-dm-swap,BTC-USD,1585699204147000,1585699204270777,0,6424,6423.5,0\n",
    )
    got = read("tardis-quotes", path, exchange="huobi")
    assert got.bad == [
        BadRow(3, "bid price is empty (no bid)"),
        BadRow(4, "ask amount is empty (no ask)"),
    ]
    assert got.rows == [
        {
            "symbol": "BTC-USD",
            "exchange": "huobi",
            "exchange_timestamp": datetime(2020, 4, 1, 0, 0, 1, 147000, tzinfo=UTC),
            "exchange_sequence_number": 1,
            "bid_price": Decimal("6422.9"),
            "bid_size": Decimal("112"),
            "ask_price": Decimal("6423"),
            "ask_size": Decimal("86"),
            "ingestion_timestamp": RECEIVED,
        },
        {
            "symbol": "BTC-USD",
            "exchange": "huobi",
            "exchange_timestamp": datetime(2020, 4, 1, 0, 0, 4, 147000, tzinfo=UTC),
            "exchange_sequence_number": 2,
            "bid_price": Decimal("6423.5"),
            "bid_size": Decimal("0"),
            "ask_price": Decimal("6424"),
            "ask_size": Decimal("0"),
            "ingestion_timestamp": RECEIVED,
        },
    ]
