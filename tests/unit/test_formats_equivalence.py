"""The columnar binance-trades reader reads exactly what the replay's per-line parser reads: the same records, the
same refused lines with the same reasons, for random files of good, odd and broken lines (any line ending, a
byte-order mark, undecodable bytes, blank lines, a header, values spelt every way Python's Decimal accepts), read
in blocks of any size and cut into chunks of any size."""

from __future__ import annotations

import io
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from k2_core.ingest.formats import blocks
from k2_core.ingest.formats.binance import TRADE_LAYOUTS, sniff
from k2_stream.replay import BadLine, open_lines, parse_binance_trades
from tests.support.formats import RECEIVED, read

MAX_MICROS = 253_402_300_799_999_999
HEADER = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"

digits = st.text("0123456789", min_size=1, max_size=12)
spaces = st.sampled_from(["", "", "", " ", "\t", "  "])


@st.composite
def decimals(draw: st.DrawFn) -> str:
    """Decimal text as files write it, and as they get it wrong."""
    kind = draw(st.integers(2, 9))
    if kind <= 4:  # canonical: up to 10 integer digits, up to 8 places
        whole = draw(st.integers(0, 10**10 - 1))
        places = draw(st.integers(0, 8))
        fraction = draw(st.text("0123456789", min_size=places, max_size=places))
        return f"{whole}.{fraction}" if places else str(whole)
    if kind == 5:  # too many places (trailing zeros too), too many digits, zero
        if draw(st.booleans()):  # places past the 8th, all zeros: Arrow reads them, the exact rules refuse them
            fraction = draw(st.text("0123456789", min_size=6, max_size=8))
            return f"{draw(st.integers(0, 99))}.{fraction}{'0' * draw(st.integers(1, 3))}"
        return draw(
            st.sampled_from(["1.123456789", "0.000000001", "10000000000", "0", "0.00000000", "1.0E-8", "10E-9"])
        )
    if kind == 6:  # what Decimal reads but a dump would not write
        sign = draw(st.sampled_from(["", "+", "-"]))
        exponent = draw(st.sampled_from(["", "e1", "E-3", "e+2", "e-9", "E10"]))
        dot = draw(st.sampled_from(["", ".", ".5", "5."]))
        return draw(spaces) + sign + draw(digits) + dot + exponent + draw(spaces)
    if kind == 7:
        return draw(st.sampled_from(["nan", "NaN", "inf", "-Infinity", "sNaN", "1_000", "", " ", "abc", "1,5", "0x10"]))
    return draw(st.text("0123456789.eE+- naif", max_size=8))


@st.composite
def integers(draw: st.DrawFn, largest: int) -> str:
    kind = draw(st.integers(0, 5))
    if kind <= 3:
        return str(draw(st.integers(0, largest)))
    if kind == 4:  # leading zeros, spaces: int() reads them
        return draw(spaces) + "000" + str(draw(st.integers(0, 10**6))) + draw(spaces)
    return draw(st.sampled_from(["", "-1", "+1", "1.0", "1e3", "abc", "0x1f", "١٢"]))


times = st.one_of(
    st.integers(0, 10**14 - 1),  # ms
    st.integers(10**14, MAX_MICROS),  # µs
    st.integers(1_704_067_200_000, 1_704_153_600_000),  # a day of 2024 in ms
)
booleans = st.one_of(
    st.sampled_from(["True", "False", "true", "false", "TRUE", "FALSE"]),
    st.sampled_from([" True", "tRuE", "false ", "yes", "1", "", "Tru"]),
)


@st.composite
def good_rows(draw: st.DrawFn) -> list[str]:
    price = f"{draw(st.integers(1, 10**10 - 1))}.{draw(st.integers(0, 10**8 - 1)):08d}"
    qty = f"{draw(st.integers(0, 10**5))}.{draw(st.integers(1, 10**8 - 1)):08d}"
    quote = f"{draw(st.integers(0, 10**12))}.{draw(st.integers(0, 10**8 - 1)):08d}"
    return [str(draw(st.integers(0, 2**63 - 1))), price, qty, quote, str(draw(times)), draw(booleans), "True"]


FIELD_TEXT = (
    integers(2**63 - 1),
    decimals(),
    decimals(),
    decimals(),
    st.one_of(times.map(str), integers(10**15)),
    booleans,
    booleans,
)


@st.composite
def rows(draw: st.DrawFn) -> str:
    """A good row with up to two of its fields drawn from everything that field might hold."""
    fields = draw(good_rows())
    for index in draw(st.lists(st.integers(0, 6), max_size=2)):
        fields[index] = draw(FIELD_TEXT[index])
    return ",".join(fields)


@st.composite
def decimal_rows(draw: st.DrawFn) -> str:
    """A good row but for its price or its quantity: the fields whose fast path is the subtlest."""
    fields = draw(good_rows())
    fields[draw(st.integers(1, 2))] = draw(decimals())
    return ",".join(fields)


lines = st.one_of(
    good_rows().map(",".join),
    rows(),
    decimal_rows(),
    decimal_rows(),
    st.sampled_from(["", " ", "\t", "  \t "]),  # blank
    st.lists(st.text("0123456789.aeT,\"' ", max_size=6), min_size=1, max_size=9).map(",".join),  # any count
    st.text(max_size=20).filter(lambda text: "\n" not in text and "\r" not in text),  # any unicode
    st.just(HEADER),  # a header anywhere but line 1 is a bad row
)


@st.composite
def files(draw: st.DrawFn) -> bytes:
    first = draw(st.sampled_from([HEADER, "id,price", "", None]))
    body = draw(st.lists(lines, max_size=25))
    text_lines = body if first is None else [first, *body]
    endings = draw(
        st.lists(st.sampled_from(["\n", "\n", "\r\n", "\r"]), min_size=len(text_lines), max_size=len(text_lines))
    )
    text = "".join(line + end for line, end in zip(text_lines, endings, strict=True))
    if text and draw(st.booleans()):
        text = text.rstrip("\r\n")  # no newline after the last line
    data = text.encode()
    if draw(st.integers(0, 9)) == 0:
        data = b"\xef\xbb\xbf" + data
    if data and draw(st.integers(0, 9)) == 0:  # undecodable bytes
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\x00"])) + data[at:]
    return data


def reference(path: Path) -> tuple[list[dict[str, object]], list[tuple[int, str]]]:
    with open_lines(path) as text:
        parsed = list(parse_binance_trades(text, "binance", "BTCUSDT", clock=lambda: RECEIVED))
    records = [p for p in parsed if not isinstance(p, BadLine)]
    bad = [(p.line_number, p.reason) for p in parsed if isinstance(p, BadLine)]
    return records, bad  # type: ignore[return-value]


def spot(data: bytes, block_bytes: int) -> bool:
    """Whether the reader takes the file for a spot dump (7 columns): the replay knows no other."""
    first = next(blocks.text_blocks(io.BytesIO(data), block_bytes), None)
    return first is None or sniff(TRADE_LAYOUTS, first)[0].columns == 7


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=files(), chunk_rows=st.integers(1, 6), block_bytes=st.sampled_from([7, 16, 64, 1 << 20]))
def test_the_columnar_reader_reads_what_the_replay_parser_reads(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk_rows: int, block_bytes: int
) -> None:
    assume(spot(data, block_bytes))
    path = tmp_path_factory.mktemp("eq") / "BTCUSDT-trades-2024-01-01.csv"
    path.write_bytes(data)
    expected_records, expected_bad = reference(path)
    with mock.patch.object(blocks, "BLOCK_BYTES", block_bytes):
        got = read("binance-trades", path, chunk_rows=chunk_rows)
    assert [(row.line, row.reason) for row in got.bad] == expected_bad
    assert got.rows == expected_records
    data_rows = len(expected_records) + len(expected_bad)
    assert got.ends == list(range(chunk_rows, data_rows, chunk_rows)) + ([data_rows] if data_rows else [])
