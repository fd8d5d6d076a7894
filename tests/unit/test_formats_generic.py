"""A user's own CSV or Parquet export read through a column mapping: every mapped column, the times (ISO text in a
time zone, integers in a unit, Parquet timestamps), the decimals exactly, and the mapping's mistakes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from k2_core.exceptions import ConfigError
from k2_core.ingest.formats import FORMATS, BadRow
from tests.support.formats import RECEIVED, read

TRADE_MAP = {
    "price": "px",
    "volume": "qty",
    "exchange_timestamp": "ts",
    "symbol": "sym",
    "exchange_sequence_number": "seq",
    "side": "side",
    "trade_id": "tid",
}
QUOTE_MAP = {"exchange_timestamp": "time", "bid_price": "bid", "bid_size": "bsz", "ask_price": "ask", "ask_size": "asz"}


def test_the_generic_formats_are_registered_per_file_type_and_kind() -> None:
    assert {name: f.kind for name, f in FORMATS.items() if name.startswith("generic")} == {
        "generic-csv": "trades",
        "generic-csv-quotes": "quotes",
        "generic-parquet": "trades",
        "generic-parquet-quotes": "quotes",
    }


def test_a_csv_export_is_read_through_its_mapping(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        'sym,ts,px,qty,side,seq,tid,venue\n"AAPL",2024-01-02T14:30:00.123456Z,185.64,100,BUY,17,"T-1,a",XNAS\n'
        "msft,2024-01-02 09:30:00.5-05:00,376.04,5,sell,18,T-2,XNAS\n"
    )
    got = read("generic-csv", path, exchange="nasdaq", mapping=TRADE_MAP)
    assert got.rows == [
        {
            "symbol": "AAPL",
            "exchange": "nasdaq",
            "exchange_timestamp": datetime(2024, 1, 2, 14, 30, 0, 123456, tzinfo=UTC),
            "exchange_sequence_number": 17,
            "price": Decimal("185.64"),
            "volume": Decimal("100"),
            "side": "buy",
            "trade_id": "T-1,a",
            "ingestion_timestamp": RECEIVED,
        },
        {
            "symbol": "MSFT",
            "exchange": "nasdaq",
            "exchange_timestamp": datetime(2024, 1, 2, 14, 30, 0, 500000, tzinfo=UTC),
            "exchange_sequence_number": 18,
            "price": Decimal("376.04"),
            "volume": Decimal("5"),
            "side": "sell",
            "trade_id": "T-2",
            "ingestion_timestamp": RECEIVED,
        },
    ]


def test_naive_times_are_in_the_time_zone_given(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        "ts,px,qty\n"
        "2024-07-01 09:30:00,1,1\n"  # EDT: UTC-4
        "2024-01-02 09:30:00,1,1\n"  # EST: UTC-5
        "2024-03-10 02:30:00,1,1\n"  # skipped by the spring-forward change: no such time in New York
        "2024-11-03 01:30:00,1,1\n"  # repeated by the fall-back change: the earlier one
    )
    got = read(
        "generic-csv",
        path,
        symbol="SPY",
        mapping={"exchange_timestamp": "ts", "price": "px", "volume": "qty"},
        time_zone="America/New_York",
    )
    assert got.column("exchange_timestamp") == [
        datetime(2024, 7, 1, 13, 30, tzinfo=UTC),
        datetime(2024, 1, 2, 14, 30, tzinfo=UTC),
        datetime(2024, 11, 3, 5, 30, tzinfo=UTC),
    ]
    assert got.bad == [
        BadRow(4, "ts (exchange_timestamp) '2024-03-10 02:30:00' does not exist in America/New_York (a clock change)")
    ]


def test_integer_times_in_the_unit_given_and_ordinals_without_a_sequence(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text("t,p,v\n1704067200000,1.5,2\n1704067200001,1.5,2\n1704153600000,1.5,2\n1704153600001,1.5,2\n")
    got = read(
        "generic-csv",
        path,
        symbol="btcusd",
        mapping={"exchange_timestamp": "t", "price": "p", "volume": "v"},
        time_unit="ms",
        chunk_rows=3,
    )
    assert [
        (r["symbol"], r["exchange_timestamp"], r["exchange_sequence_number"], r["side"], r["trade_id"])
        for r in got.rows
    ] == [
        ("BTCUSD", datetime(2024, 1, 1, tzinfo=UTC), 1, "unknown", "1"),
        ("BTCUSD", datetime(2024, 1, 1, 0, 0, 0, 1000, tzinfo=UTC), 2, "unknown", "2"),
        ("BTCUSD", datetime(2024, 1, 2, tzinfo=UTC), 1, "unknown", "1"),
        ("BTCUSD", datetime(2024, 1, 2, 0, 0, 0, 1000, tzinfo=UTC), 2, "unknown", "2"),
    ]
    assert got.ends == [3, 4]


def test_bad_csv_rows_are_refused_by_line(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        "sym,ts,px,qty,side,seq,tid\n"
        "A,2024-01-02T00:00:00Z,1.5,1,buy,1,a\n"
        "A,2024-01-02T00:00:00Z,,1,buy,2,b\n"
        "A,2024-01-02T00:00:00Z,1.5,-1,buy,3,c\n"
        "A,not a time,1.5,1,buy,4,d\n"
        "A,2024-01-02T00:00:00Z,1.5,1,buy,-5,e\n"
        "A,2024-01-02T00:00:00Z,1.5\n"
        '"A,2024-01-02T00:00:00Z,1.5,1,buy,7,g\n'  # an unclosed quote: the rest of the line is one field
        "A,2024-01-02T00:00:00Z,1.5,1,buy,8,h\n"
    )
    got = read("generic-csv", path, mapping=TRADE_MAP)
    assert got.bad == [
        BadRow(3, "px (price) is empty"),
        BadRow(4, "qty (volume) '-1' must be positive"),
        BadRow(5, "ts (exchange_timestamp) 'not a time' is not an ISO 8601 date and time"),
        BadRow(6, "seq (exchange_sequence_number) '-5' is not a non-negative integer"),
        BadRow(7, "expected 7 columns, got 3"),
        BadRow(8, "expected 7 columns, got 1"),
    ]
    assert got.column("trade_id") == ["a", "h"]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"price": "px", "volume": "qty"}, "needs exchange_timestamp mapped"),
        ({**TRADE_MAP, "bid_price": "bid"}, "cannot map bid_price for trades"),
        ({**TRADE_MAP, "price": "price_usd", "volume": "size"}, "has no column price_usd, size"),
        ({"price": "px", "volume": "qty", "exchange_timestamp": "ts"}, "--symbol"),
    ],
)
def test_mapping_mistakes_are_config_errors_naming_them(tmp_path: Path, mapping: dict[str, str], message: str) -> None:
    path = tmp_path / "export.csv"
    path.write_text("sym,ts,px,qty,side,seq,tid\nA,2024-01-02T00:00:00Z,1.5,1,buy,1,a\n")
    with pytest.raises(ConfigError, match=message):
        read("generic-csv", path, mapping=mapping)


def test_integer_times_without_a_unit_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text("sym,ts,px,qty,side,seq,tid\nA,1704153600,1.5,1,buy,1,a\n")
    with pytest.raises(ConfigError, match="give its unit"):
        read("generic-csv", path, mapping=TRADE_MAP)


def test_one_column_may_feed_two(tmp_path: Path) -> None:
    path = tmp_path / "quotes.csv"
    path.write_text("time,bid,ask,size\n2024-01-02T00:00:00Z,99.5,100.5,7\n")
    mapping = {
        "exchange_timestamp": "time",
        "bid_price": "bid",
        "ask_price": "ask",
        "bid_size": "size",
        "ask_size": "size",
    }
    row = read("generic-csv-quotes", path, symbol="XYZ", mapping=mapping).rows[0]
    assert (row["bid_size"], row["ask_size"]) == (Decimal(7), Decimal(7))


def test_csv_quotes(tmp_path: Path) -> None:
    path = tmp_path / "quotes.csv"
    path.write_text("time,bid,bsz,ask,asz\n2024-01-02T00:00:00Z,99.5,10,100.5,0\n2024-01-02T00:00:01Z,0,10,100.5,1\n")
    got = read("generic-csv-quotes", path, symbol="XYZ", mapping=QUOTE_MAP)
    assert got.rows == [
        {
            "symbol": "XYZ",
            "exchange": "binance",
            "exchange_timestamp": datetime(2024, 1, 2, tzinfo=UTC),
            "exchange_sequence_number": 1,
            "bid_price": Decimal("99.5"),
            "bid_size": Decimal("10"),
            "ask_price": Decimal("100.5"),
            "ask_size": Decimal("0"),
            "ingestion_timestamp": RECEIVED,
        }
    ]
    assert got.bad == [BadRow(3, "bid (bid_price) '0' must be positive")]


def test_a_parquet_export_is_read_by_its_types(tmp_path: Path) -> None:
    path = tmp_path / "export.parquet"
    table = pa.table(
        {
            "sym": ["ES", "ES", "NQ", "NQ", "NQ"],
            "ts": pa.array(
                [1704153600123456789, 1704153600123457000, 1704153600000000000, 1704153600000000001, None],
                pa.timestamp("ns", tz="UTC"),
            ),
            "px": pa.array(
                [Decimal("4750.25"), Decimal("4750.5"), Decimal("16800.123456789"), Decimal("16800"), Decimal(1)],
                pa.decimal128(20, 9),
            ),
            "qty": pa.array([0.1, 3.0, 1.0, 2.0, 1.0], pa.float64()),
            "seq": pa.array([7, 8, 1, 2, 3], pa.int64()),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    got = read(
        "generic-parquet",
        path,
        exchange="cme",
        mapping={
            "symbol": "sym",
            "exchange_timestamp": "ts",
            "price": "px",
            "volume": "qty",
            "exchange_sequence_number": "seq",
        },
        chunk_rows=2,
    )
    assert [
        (r["symbol"], r["exchange_timestamp"], r["price"], r["volume"], r["exchange_sequence_number"]) for r in got.rows
    ] == [
        ("ES", datetime(2024, 1, 2, 0, 0, 0, 123456, tzinfo=UTC), Decimal("4750.25"), Decimal("0.1"), 7),
        ("ES", datetime(2024, 1, 2, 0, 0, 0, 123457, tzinfo=UTC), Decimal("4750.5"), Decimal("3"), 8),
        ("NQ", datetime(2024, 1, 2, tzinfo=UTC), Decimal("16800"), Decimal("2"), 2),
    ]
    assert got.bad == [  # by 1-based row number
        BadRow(3, "px (price) '16800.123456789' has more than 8 decimal places"),
        BadRow(5, "ts (exchange_timestamp) is empty"),
    ]
    assert got.ends == [2, 4, 5]


def test_parquet_naive_timestamps_and_integer_times(tmp_path: Path) -> None:
    naive = tmp_path / "naive.parquet"
    pq.write_table(
        pa.table({"t": pa.array(["2024-07-01 09:30:00"]).cast(pa.timestamp("ms")), "b": [1.5], "s": [1], "a": [2.5]}),
        naive,
    )
    quotes_map = {"exchange_timestamp": "t", "bid_price": "b", "bid_size": "s", "ask_price": "a", "ask_size": "s"}
    got = read("generic-parquet-quotes", naive, symbol="SPY", mapping=quotes_map, time_zone="America/New_York")
    assert got.column("exchange_timestamp") == [datetime(2024, 7, 1, 13, 30, tzinfo=UTC)]
    assert (got.rows[0]["bid_price"], got.rows[0]["ask_price"], got.rows[0]["bid_size"]) == (
        Decimal("1.5"),
        Decimal("2.5"),
        Decimal(1),
    )
    integers = tmp_path / "integers.parquet"
    pq.write_table(pa.table({"t": [1704153600123456789], "b": [1.5], "s": [1], "a": [2.5]}), integers)
    with pytest.raises(ConfigError, match="give their unit"):
        read("generic-parquet-quotes", integers, symbol="SPY", mapping=quotes_map)
    got = read("generic-parquet-quotes", integers, symbol="SPY", mapping=quotes_map, time_unit="ns")
    assert got.column("exchange_timestamp") == [datetime(2024, 1, 2, 0, 0, 0, 123456, tzinfo=UTC)]
