"""The columnar replay produces what the per-line replay produces: on random Binance trade dumps (good rows spelt every
way the dumps and the parser allow, malformed rows of every kind, blank lines, headers, BOMs, CRLF), the messages
`encode_file` writes are byte for byte the per-line path's (parse, then fastavro), in the same order and with the same
key, and the same lines are refused for the same reasons. Both stamp rows with the same clock here: that is the one
field the two paths fill differently (per row, per block)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from k2_core.exceptions import SourceError
from k2_core.model.avro import Decoder, encode
from k2_core.model.avro_bulk import BulkEncoder
from k2_core.model.registry import FileSchemaRegistry
from k2_core.settings import Settings
from k2_stream.replay import BadLine, Prefetch, encode_file, open_lines, parse_binance_trades, replay_formats

REGISTRY = FileSchemaRegistry(Settings().kafka.schemas_dir)
SCHEMA_ID, SCHEMA = REGISTRY.latest("market.crypto.trades-value")
RECEIVED = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
SYMBOL = "BTCUSDT"
HEADER = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"

# Spellings of each field, good and bad. Values the per-line path would parse but cannot encode (ids past int64,
# times past the year 9999: it crashes on those, where the columnar path reports the line) are left out.
IDS = ["1", "3000000001", "007", " 42 ", "9223372036854775807", "-1", "x1", "", "1.0", "1e3", "+1", "١٢"]
DECIMALS = [
    "42000.01000000",
    "0.00150000",
    "1",
    "0.1",
    "9999999999.99999999",
    "00000000001.5",
    "10000000000",
    "0",
    "0.00000000",
    "-5",
    "-0",
    "0.000000001",
    "1.000000000",
    "1e2",
    "1E-8",
    "1E-9",
    "NaN",
    "Infinity",
    "abc",
    "",
    " 2.5 ",
    "5.",
    ".5",
    "1_000",
    "١٢٣.٤",
]
QUOTES = ["63.00001500", "NaN", "-1", "1e400", "x", "", "0"]
TIMES = [
    "1700000000123",
    "1700000000123456",
    "0",
    "99999999999999",
    "100000000000000",
    "253402300799999999",
    " 1700000000123 ",
    "17e11",
    "-1",
    "",
]
BOOLS = ["true", "True", "TRUE", "false", "False", "FALSE", " true", "tRuE", "yes", "1", ""]


@st.composite
def rows(draw: st.DrawFn) -> str:
    """A row of seven fields, mostly well spelt; or of five or eight (never six: that is the futures layout, which
    the columnar reader reads and the per-line parser does not)."""

    def pick(spellings: list[str]) -> str:
        return draw(st.one_of(st.sampled_from(spellings[:2]), st.sampled_from(spellings)))

    fields = [pick(IDS), pick(DECIMALS), pick(DECIMALS), pick(QUOTES), pick(TIMES), pick(BOOLS), pick(BOOLS)]
    columns = draw(st.sampled_from([7, 7, 7, 7, 7, 7, 5, 8]))
    if columns == 8:
        fields.append("extra")
    return ",".join(fields[:columns])


well_spelt = st.builds(
    lambda i, price, qty, ms, maker: f"{i},{price / 100:.8f},{qty / 1e8:.8f},1.5,{ms},{maker},True",
    st.integers(1, 10**12),
    st.integers(1, 10**11),
    st.integers(1, 10**9),
    st.integers(10**12, 2 * 10**15),
    st.sampled_from(["True", "False"]),
)
odd_lines = st.sampled_from(["", "   ", HEADER, "garbage", ",,,,,,", "1,\udcff,1,1,1700000000000,true,true"])
lines = st.one_of(well_spelt, well_spelt, rows(), odd_lines)


@st.composite
def dumps(draw: st.DrawFn) -> bytes:
    body = draw(st.lists(lines, min_size=draw(st.sampled_from([0, 1, 20])), max_size=60))
    if draw(st.booleans()):
        body = [HEADER, *body]
    endings = draw(st.lists(st.sampled_from(["\n", "\n", "\r\n", "\r"]), min_size=len(body), max_size=len(body)))
    text = "".join(line + end for line, end in zip(body, endings, strict=True))
    if text and draw(st.booleans()):
        text = text.rstrip("\r\n")  # no newline at the end
    raw = text.encode("utf-8", errors="surrogateescape")  # \udcff: an undecodable byte, 0xff
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + raw


def per_line(path: Path) -> tuple[list[bytes], list[tuple[int, str]]]:
    with open_lines(path) as text:
        parsed = list(parse_binance_trades(text, "binance", SYMBOL, clock=lambda: RECEIVED))
    bodies = [encode(SCHEMA_ID, SCHEMA, p) for p in parsed if not isinstance(p, BadLine)]
    return bodies, [(p.line_number, p.reason) for p in parsed if isinstance(p, BadLine)]


def columnar(path: Path, block_rows: int) -> tuple[list[bytes], list[tuple[int, str]], set[bytes]]:
    blocks = list(
        encode_file(
            path,
            "binance-trades",
            BulkEncoder(SCHEMA, SCHEMA_ID),
            exchange="binance",
            symbol=SYMBOL,
            clock=lambda: RECEIVED,
            block_rows=block_rows,
        )
    )
    assert all(b.key_of_row is None for b in blocks), "one symbol per file: one key per block"
    keys = {key for b in blocks if len(b) for key in b.keys}
    bad = [(line.line_number, line.reason) for b in blocks for line in b.bad]
    return [m for b in blocks for m in b.rows], bad, keys


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dump=dumps(), block_rows=st.integers(1, 8))
def test_columnar_messages_are_the_per_line_messages(tmp_path: Path, dump: bytes, block_rows: int) -> None:
    path = tmp_path / "dump.csv"
    path.write_bytes(dump)
    bodies, bad = per_line(path)
    columnar_bodies, columnar_bad, keys = columnar(path, block_rows)
    assert [line for line, _ in columnar_bad] == [line for line, _ in bad]
    assert columnar_bad == bad
    assert columnar_bodies == bodies
    assert keys <= {SYMBOL.encode()}
    event(f"good rows: {'none' if not bodies else '1-9' if len(bodies) < 10 else '10+'}")
    event(f"bad lines: {'none' if not bad else '1-9' if len(bad) < 10 else '10+'}")


def test_a_large_dump_in_blocks_is_the_per_line_dump(tmp_path: Path) -> None:
    """Many blocks of the reader (8 MB of text each) and of the encoder, a malformed line in some."""
    path = tmp_path / "BTCUSDT-trades-2024-01-01.csv"
    rows = [
        f"{3_000_000_000 + i},{42000 + i % 977 / 100:.8f},0.0{i % 9 + 1},1,{1_704_067_200_000 + i},true,true"
        for i in range(150_000)
    ]
    for i in (5, 70_001, 149_999):
        rows[i] = rows[i].replace(",true,true", ",maybe,true")
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    bodies, bad = per_line(path)
    columnar_bodies, columnar_bad, _ = columnar(path, 1 << 15)
    assert [line for line, _ in bad] == [7, 70_003, 150_001]
    assert columnar_bad == bad
    assert columnar_bodies == bodies


def test_blocks_are_stamped_when_encoded(tmp_path: Path) -> None:
    path = tmp_path / "dump.csv"
    path.write_text("".join(f"{i},1.5,1,1.5,1700000000000,true,true\n" for i in range(1, 11)))
    ticks = iter(datetime(2025, 1, 1, 0, 0, s, tzinfo=UTC) for s in range(60))
    blocks = list(
        encode_file(
            path,
            "binance-trades",
            BulkEncoder(SCHEMA, SCHEMA_ID),
            exchange="binance",
            symbol=SYMBOL,
            clock=lambda: next(ticks),
            block_rows=4,
        )
    )
    assert [len(b) for b in blocks] == [4, 4, 2]
    stamps = [Decoder(REGISTRY).decode(m)["ingestion_timestamp"].second for b in blocks for m in b.rows]
    assert stamps == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_many_symbols_are_keyed_row_by_row(tmp_path: Path) -> None:
    path = tmp_path / "tardis.csv"
    path.write_text(
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
        "binance,BTCUSDT,1704067200000000,1704067200001000,1,buy,42000.5,0.1\n"
        "binance,ETHUSDT,1704067200000001,1704067200001001,2,sell,2300.5,1.5\n"
        "binance,BTCUSDT,1704067200000002,1704067200001002,3,buy,42000.6,0.2\n"
    )
    [block] = encode_file(path, "tardis-trades", BulkEncoder(SCHEMA, SCHEMA_ID), exchange="binance", symbol=None)
    assert block.key_of_row is not None
    assert [block.keys[k] for k in block.key_of_row.tolist()] == [b"BTCUSDT", b"ETHUSDT", b"BTCUSDT"]


@pytest.mark.parametrize(
    ("fmt", "subject", "text"),
    [
        (
            "tardis-quotes",
            "market.crypto.quotes-value",
            "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount\n"
            "binance,btcusdt,1704067200000000,1704067200001000,0.5,42000.5,42000.4,1.25\n"
            "binance,ETHUSDT,1704067200000001,1704067200001001,3,2300.5,2300.25,0\n"
            "binance,BTCUSDT,1704067200000002,1704067200001002,,42000.6,42000.5,2\n"
            "binance,BTCUSDT,1704067200000003,1704067200001003,0.1,42000.7,42000.6,0.00000001\n",
        ),
        (
            "binance-bookticker",
            "market.crypto.quotes-value",
            "update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time\n"
            "1,42000.4,1.5,42000.5,0.25,1704067200000,1704067200001\n"
            "7,42000.3,0,42000.6,2,0,1704067200002\n",
        ),
        (
            "tardis-trades",
            "market.crypto.trades-value",
            "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
            "binance,BTCUSDT,1704067200000000,1704067200001000,t-1,buy,42000.5,0.1\n"
            "binance,ETHUSDT,1704067200000001,1704067200001001,,unknown,2300.5,1.5\n",
        ),
    ],
)
def test_other_formats_encode_their_rows_as_fastavro_does(tmp_path: Path, fmt: str, subject: str, text: str) -> None:
    """Any reader's blocks, quotes included, in the schema of their kind: each message is fastavro's for its row."""
    path = tmp_path / "BTCUSDT-bookTicker-2024-01-01.csv"
    path.write_text(text)
    schema_id, schema = REGISTRY.latest(subject)
    blocks = list(
        encode_file(path, fmt, BulkEncoder(schema, schema_id), exchange="binance", symbol=None, clock=lambda: RECEIVED)
    )
    decoder = Decoder(REGISTRY)
    records = [decoder.decode(m) for b in blocks for m in b.rows]
    assert records, "the file's good rows"
    assert [m for b in blocks for m in b.rows] == [encode(schema_id, schema, r) for r in records]
    assert all(r["ingestion_timestamp"] == RECEIVED for r in records)


def test_formats_of_each_path() -> None:
    assert replay_formats(per_line=True) == ["binance-trades"]
    assert {"binance-trades", "binance-aggtrades", "tardis-trades"} <= set(replay_formats())


def test_the_reader_thread_hands_on_items_and_errors() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise SourceError("cannot read dump.zip: truncated")

    prefetch = Prefetch(items(), depth=1)
    got: list[int] = []
    with pytest.raises(SourceError, match="truncated"):
        got.extend(prefetch)
    prefetch.close()
    assert got == [1, 2]


def test_a_closed_reader_thread_stops_and_closes_its_source() -> None:
    closed: list[bool] = []

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                n += 1
                yield n
        finally:
            closed.append(True)

    prefetch = Prefetch(endless(), depth=2)
    first = next(iter(prefetch))
    prefetch.close()
    assert first == 1
    assert closed == [True]
