"""The machinery every format shares: each field's fast path accepts only what its exact path accepts, with the same
value; lines are numbered as Python's universal newlines number them, in blocks of any size; rows are numbered per
(symbol, UTC day) across calls; chunks are cut at exact counts of data rows."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2_core.exceptions import ConfigError, ReplayFormatError
from k2_core.ingest.formats.base import BadRow
from k2_core.ingest.formats.blocks import split, text_blocks
from k2_core.ingest.formats.chunks import Chunker
from k2_core.ingest.formats.delimited import Layout, fields_of, parse_block
from k2_core.ingest.formats.fields import (
    TEXT,
    BooleanField,
    DecimalField,
    EpochTimeField,
    Field,
    IntegerField,
    IsoTimeField,
    NumberField,
    SideField,
    SymbolField,
    TextField,
)
from k2_core.ingest.formats.ordinals import DayOrdinals

FIELDS: list[Field] = [
    DecimalField("price", "price"),
    DecimalField("size", "size", positive=False),
    NumberField("n", "number"),
    IntegerField("id", "id"),
    BooleanField("flag", "flag"),
    EpochTimeField("t", "time"),
    EpochTimeField("t", "time", unit="s"),
    EpochTimeField("t", "time", unit="ns"),
    EpochTimeField("t", "time", optional=True),
    IsoTimeField("t", "time"),
    IsoTimeField("t", "time", time_zone="Europe/London"),
    IsoTimeField("t", "time", time_zone="America/New_York"),
    SymbolField("symbol", "symbol"),
    SideField("side", "side"),
]

texts = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{0,12}(\.[0-9]{0,11})?([eE][+-]?[0-9]{1,2})?\Z"),
    st.from_regex(r"\A[0-9]{1,20}\Z"),
    st.from_regex(
        r"\A(19|20|99)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[T ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
        r"(\.[0-9]{1,7})?(Z|[+-]0[0-9]:00)?\Z"
    ),
    st.sampled_from(
        ["true", "False", "TRUE", "tRue", "buy", "SELL", "unknown", "nan", "inf", "", " 1", "1 ", "btcusdt"]
    ),
    st.text(max_size=8),
)


def _exact(spec: Field, text: str) -> object:
    try:
        return spec.value(text)
    except (ReplayFormatError, ConfigError):
        return "refused"


@settings(max_examples=100, deadline=None)
@given(values=st.lists(texts, max_size=12), index=st.integers(0, len(FIELDS) - 1))
def test_a_fields_fast_path_accepts_only_what_its_exact_path_accepts_with_the_same_value(
    values: list[str], index: int
) -> None:
    spec = FIELDS[index]
    fast, ok = spec.column(pa.array(values, TEXT))
    accepted = ok.to_pylist()
    fast_values = fast.to_pylist() if fast is not None else [None] * len(values)
    for text, taken, value in zip(values, accepted, fast_values, strict=True):
        if taken:
            exact = _exact(spec, text)
            assert exact != "refused", (spec, text)
            if spec.type is not None:
                assert exact == value, (spec, text, value, exact)


def test_canonical_spellings_take_the_fast_path() -> None:
    """What the dumps write is read by the kernels alone: the exact path is for the odd row."""
    cases: list[tuple[Field, list[str]]] = [
        (DecimalField("p", "p"), ["42000.01000000", "0.00000001", "9999999999.99999999", "7"]),
        (IntegerField("i", "i"), ["0", "3000000001", "999999999999999999"]),
        (BooleanField("b", "b"), ["True", "False", "true", "false"]),
        (EpochTimeField("t", "t"), ["1704067200000", "1735689600000000"]),
        (IsoTimeField("t", "t"), ["2024-01-02T03:04:05Z", "2024-01-02 03:04:05.123456", "2024-01-02T03:04:05+01:00"]),
        (SideField("s", "s"), ["buy", "sell", "unknown"]),
        (NumberField("n", "n"), ["101.29224200", "48.00", "1"]),
    ]
    for spec, values in cases:
        assert spec.column(pa.array(values, TEXT))[1].to_pylist() == [True] * len(values), spec


@pytest.mark.parametrize(
    ("spec", "text", "value"),
    [
        (DecimalField("p", "price"), "1e2", Decimal(100)),
        (DecimalField("p", "price"), " 1.50 ", Decimal("1.5")),
        (DecimalField("p", "price"), "0000000000001.5", Decimal("1.5")),
        (DecimalField("s", "size", positive=False), "0", Decimal(0)),
        (EpochTimeField("t", "time", unit="ns"), "1704067200123456789", 1704067200123456),
        (EpochTimeField("t", "time", unit="s"), "1704067200", 1704067200000000),
        (IsoTimeField("t", "time", time_zone="Asia/Tokyo"), "2024-01-02T09:00:00.1234567", 1704153600123456),
    ],
)
def test_the_exact_path_reads_every_spelling_of_a_value(spec: Field, text: str, value: object) -> None:
    assert spec.value(text) == value


@pytest.mark.parametrize(
    ("spec", "text", "reason"),
    [
        (DecimalField("p", "price"), "1.000000000", "price '1.000000000' has more than 8 decimal places"),
        (DecimalField("s", "size", positive=False), "-0.5", "size '-0.5' must not be negative"),
        (DecimalField("s", "size", missing="size is empty"), " ", "size is empty"),
        (IntegerField("i", "id"), "9223372036854775808", "id '9223372036854775808' is out of range"),
        (
            EpochTimeField("t", "time", unit="s"),
            "253402300800",
            "time '253402300800' is out of range (after 9999-12-31)",
        ),
        (SymbolField("s", "symbol"), "  ", "symbol is empty"),
    ],
)
def test_the_exact_path_says_why_it_refuses(spec: Field, text: str, reason: str) -> None:
    with pytest.raises(ReplayFormatError) as refused:
        spec.value(text)
    assert str(refused.value) == reason


# --- lines and blocks ----------------------------------------------------------------------------------------------

line_texts = st.lists(st.text('ab," \t\x00é', max_size=6), max_size=12)
endings = st.sampled_from(["\n", "\r\n", "\r"])


@settings(max_examples=200, deadline=None)
@given(lines=line_texts, ends=st.lists(endings, min_size=12, max_size=12), last=st.booleans(), size=st.integers(1, 40))
def test_blocks_number_lines_as_universal_newlines_do(lines: list[str], ends: list[str], last: bool, size: int) -> None:
    text = "".join(line + end for line, end in zip(lines, ends, strict=False))
    if last and text:
        text = text.rstrip("\r\n")
    expected = io.StringIO(text, newline=None).read().split("\n")
    if expected and expected[-1] == "":
        expected.pop()  # the newline that ends the last line opens no line
    got: dict[int, str] = {}
    for block in text_blocks(io.BytesIO(text.encode()), size):
        parts = split(block, 3)  # counts the block's lines for the next block's numbering
        numbers = sorted(parts.lines.tolist() + parts.odd.tolist())
        assert numbers == list(range(block.first_line, block.first_line + len(numbers)))
        for number in range(block.first_line, block.next_line):
            got[number] = block.line(number)
        assert block.line_count == block.data.count(b"\n") + (0 if block.data.endswith(b"\n") else 1)
    assert got == dict(enumerate(expected, start=1))


@given(lines=line_texts)
def test_split_maps_every_row_to_its_line(lines: list[str]) -> None:
    blocks = list(text_blocks(io.BytesIO("".join(f"{line}\n" for line in lines).encode())))
    if not lines:
        assert blocks == []
        return
    (block,) = blocks
    parts = split(block, 2)
    rows = list(zip(*(column.to_pylist() for column in parts.columns), strict=True))
    for line, row in zip(parts.lines.tolist(), rows, strict=True):
        text = block.line(line)
        assert list(row) == text.split(",")
    # lines of another column count, and lines of nothing but the comma (or nothing: a blank line), go the exact way
    assert parts.odd.tolist() == [n for n, t in enumerate(lines, 1) if t.count(",") != 1 or t == ","]


# --- ordinals ------------------------------------------------------------------------------------------------------


def _micros(*moments: datetime) -> np.ndarray:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return np.array([(m - epoch) // timedelta(microseconds=1) for m in moments], np.int64)


def test_ordinals_count_per_symbol_and_utc_day_across_calls() -> None:
    ordinals = DayOrdinals()
    late, early = datetime(2024, 1, 1, 23, 59, tzinfo=UTC), datetime(2024, 1, 2, 0, 0, tzinfo=UTC)
    first = ordinals.number(pa.array(["A", "B", "A", "A"]), _micros(late, late, early, late))
    assert first.tolist() == [1, 1, 1, 2]
    second = ordinals.number("A", _micros(late, early, early))
    assert second.tolist() == [3, 2, 3]
    assert ordinals.number(pa.array(["B"]), _micros(early)).tolist() == [1]
    assert DayOrdinals().number("A", _micros(late)).tolist() == [1]  # another reading starts again
    before_1970 = _micros(datetime(1969, 12, 31, 23, 0, tzinfo=UTC), datetime(1970, 1, 1, 1, 0, tzinfo=UTC))
    assert DayOrdinals().number("A", before_1970).tolist() == [1, 1]


# --- chunks --------------------------------------------------------------------------------------------------------


def test_chunks_hold_exactly_chunk_rows_data_rows_good_or_bad() -> None:
    chunker = Chunker("trades", 3)

    def piece(good: list[int], bad: list[int]) -> tuple[pa.Table, np.ndarray, list[BadRow], np.ndarray]:
        table = pa.table({"line": pa.array(good, pa.int64())})
        return table, np.array(good, np.int64), [BadRow(b, "x") for b in bad], np.array(sorted(good + bad), np.int64)

    chunks = [
        *chunker.add(*piece([1, 2, 4, 7], [3, 5])),
        *chunker.add(*piece([], [9])),
        *chunker.add(*piece([10, 12], [])),
        *chunker.finish(),
    ]
    assert [c.end for c in chunks] == [3, 6, 9]
    assert [c.table.column("line").to_pylist() for c in chunks] == [[1, 2], [4, 7], [10, 12]]
    assert [[b.line for b in c.bad] for c in chunks] == [[3], [5], [9]]


@settings(max_examples=100, deadline=None)
@given(text=st.text('ab,"\n\r x', max_size=40), size=st.integers(1, 30))
def test_quoted_lines_are_rows_as_the_csv_module_reads_them_even_when_a_quote_runs_on(text: str, size: int) -> None:
    """A quote left open must not swallow the next line: a refusal, or a row, is still one physical line."""
    layout = Layout(3, (TextField("a", "a"), TextField("b", "b"), TextField("c", "c")), (0, 1, 2), dict, quoted=True)
    for block in text_blocks(io.BytesIO(text.encode()), size):
        parsed = parse_block(block, layout)
        values = zip(*(parsed.values[key].to_pylist() for key in "abc"), strict=True)
        rows = dict(zip(parsed.lines.tolist(), values, strict=True))
        bad = {row.line: row.reason for row in parsed.bad}
        for line in range(block.first_line, block.next_line):
            if not block.line(line).strip():
                assert line not in rows
                assert line not in bad
                continue
            fields = fields_of(block.line(line), quoted=True)
            if len(fields) == 3:
                assert rows[line] == tuple(fields)
            else:
                assert bad[line] == f"expected 3 columns, got {len(fields)}"
