"""The Binance trade-dump parser: header handling, timestamp units, side mapping and bad-line reporting."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from k2_core.exceptions import ConfigError, K2Error, ReplayFormatError
from k2_core.model.avro import Decoder, encode
from k2_core.model.registry import FileSchemaRegistry
from k2_core.settings import REPO_ROOT
from k2_stream.replay import (
    FORMATS,
    BadLine,
    ParsedLine,
    binance_time,
    check_symbol,
    open_lines,
    parse_binance_trades,
    replay_format,
)

RECEIVED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
HEADER = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n"
ROWS = [
    "3000000001,42000.01000000,0.00150000,63.00001500,1700000000123,True,True\n",
    "3000000002,42000.02000000,0.25000000,10500.00500000,1700000000456,False,True\n",
]


def parse(lines: list[str]) -> list[ParsedLine]:
    return list(parse_binance_trades(lines, "binance", "BTCUSDT", clock=lambda: RECEIVED))


def records(parsed: list[ParsedLine]) -> list[dict[str, Any]]:
    return [p for p in parsed if not isinstance(p, BadLine)]


def test_rows_become_trade_records() -> None:
    first, second = records(parse(ROWS))
    assert first == {
        "symbol": "BTCUSDT",
        "exchange": "binance",
        "exchange_timestamp": datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
        "exchange_sequence_number": 3000000001,
        "price": Decimal("42000.01"),
        "volume": Decimal("0.0015"),
        "side": "sell",
        "trade_id": "3000000001",
        "ingestion_timestamp": RECEIVED,
    }
    assert second["side"] == "buy", "buyer not the maker: the buyer was the aggressor"
    assert isinstance(second["price"], Decimal)


def test_header_is_optional() -> None:
    assert parse([HEADER, *ROWS]) == parse(ROWS)
    assert len(records(parse([HEADER, *ROWS]))) == 2


def test_header_only_on_line_one() -> None:
    [bad] = [p for p in parse([*ROWS, HEADER]) if isinstance(p, BadLine)]
    assert bad.line_number == 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1700000000123, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        (1700000000123456, datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),
        (99_999_999_999_999, datetime(5138, 11, 16, 9, 46, 39, 999000, tzinfo=UTC)),
        (10**14, datetime(1973, 3, 3, 9, 46, 40, tzinfo=UTC)),
    ],
)
def test_milliseconds_and_microseconds_by_magnitude(raw: int, expected: datetime) -> None:
    assert binance_time(raw) == expected


def test_microsecond_rows() -> None:
    [rec] = records(parse(["1,100.5,2,201,1735689600000001,false,true\n"]))
    assert rec["exchange_timestamp"] == datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("1,100,1,100,1700000000000,true\n", "expected 7 columns, got 6"),
        ("1,100,1,100,1700000000000,true,true,extra\n", "expected 7 columns, got 8"),
        ("1,abc,1,100,1700000000000,true,true\n", "price 'abc' is not a number"),
        ("1,-5,1,100,1700000000000,true,true\n", "price '-5' must be positive"),
        ("1,0,1,100,1700000000000,true,true\n", "price '0' must be positive"),
        ("1,NaN,1,100,1700000000000,true,true\n", "not a finite number"),
        ("1,100,0,100,1700000000000,true,true\n", "qty '0' must be positive"),
        ("1,100,1,x,1700000000000,true,true\n", "quote qty 'x' is not a number"),
        ("x1,100,1,100,1700000000000,true,true\n", "trade id 'x1' is not a non-negative integer"),
        ("-1,100,1,100,1700000000000,true,true\n", "trade id '-1'"),
        ("1,100,1,100,17e11,true,true\n", "time '17e11'"),
        ("1,100,1,100,1700000000000,yes,true\n", "is_buyer_maker 'yes' is not true or false"),
        ("1,100,1,100,1700000000000,true,maybe\n", "is_best_match 'maybe'"),
        ("1,0.000000001,1,100,1700000000000,true,true\n", "more than 8 decimal places"),
        ("1,12345678901,1,100,1700000000000,true,true\n", "does not fit decimal(18, 8)"),
    ],
)
def test_malformed_lines_are_reported_with_number_and_reason(line: str, reason: str) -> None:
    parsed = parse([HEADER, ROWS[0], line, ROWS[1]])
    assert len(records(parsed)) == 2, "good rows around a bad one still parse"
    [bad] = [p for p in parsed if isinstance(p, BadLine)]
    assert bad.line_number == 3
    assert reason in bad.reason
    assert isinstance(bad.error(), ReplayFormatError)
    assert "line 3" in str(bad.error())


def test_blank_lines_are_skipped_but_counted() -> None:
    parsed = parse([ROWS[0], "\n", "   \n", "garbage\n", ROWS[1]])
    assert [p.line_number for p in parsed if isinstance(p, BadLine)] == [4]
    assert len(records(parsed)) == 2


def test_crlf_and_bom_files(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "".join(ROWS)).replace("\n", "\r\n").encode())
    with open_lines(path) as lines:
        parsed = parse(list(lines))
    assert parsed == parse(ROWS)


def test_undecodable_bytes_are_a_bad_line_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "dump.csv"
    path.write_bytes(ROWS[0].encode() + b"1,\xff\xfe,1,1,1700000000000,true,true\n")
    with open_lines(path) as lines:
        parsed = parse(list(lines))
    assert [p.line_number for p in parsed if isinstance(p, BadLine)] == [2]


def test_zip_archives_are_streamed(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades-2024-01-01.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("BTCUSDT-trades-2024-01-01.csv", "".join(ROWS))
    with open_lines(path) as lines:
        assert len(records(parse(list(lines)))) == 2

    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a.csv", ROWS[0])
        archive.writestr("b.csv", ROWS[1])
    with pytest.raises(ReplayFormatError, match="expected one file"), open_lines(two):
        pass


def test_unreadable_files_are_k2_errors(tmp_path: Path) -> None:
    with pytest.raises(K2Error, match="cannot read"), open_lines(tmp_path / "missing.csv"):
        pass
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    with pytest.raises(K2Error, match="cannot read"), open_lines(broken):
        pass


def test_formats_and_symbols() -> None:
    assert replay_format("binance-trades").kind == "trades"
    with pytest.raises(ConfigError, match="binance-trades"):
        replay_format("lobster")
    assert check_symbol("BTCUSDT") == "BTCUSDT"
    assert check_symbol("1000PEPEUSDT") == "1000PEPEUSDT"
    for bad in ("btcusdt", "BTC-USDT", "", "A" * 21):
        with pytest.raises(ConfigError):
            check_symbol(bad)
    assert set(FORMATS) == {"binance-trades"}


def test_parsed_records_encode_with_the_trade_schema() -> None:
    registry = FileSchemaRegistry(REPO_ROOT / "schemas" / "avro")
    schema_id, schema = registry.latest("market.crypto.trades-value")
    decoder = Decoder(registry)
    for rec in records(parse(ROWS)):
        decoded = decoder.decode(encode(schema_id, schema, rec))
        assert {k: decoded[k] for k in rec} == rec
        assert all(v is None for k, v in decoded.items() if k not in rec)  # what a Binance dump does not say
