"""The bulk Avro encoder writes, for every row of a table, the very bytes fastavro writes for that row as a record
(`k2_core.model.avro.encode`): on random trades and quotes, on a schema with every type it supports, across block
boundaries, and at the edges of each encoding (varint lengths, the decimal byte counts fastavro chooses)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2_core.exceptions import EncodeError
from k2_core.model.avro import Decoder, encode
from k2_core.model.avro_bulk import BulkEncoder
from k2_core.model.registry import FileSchemaRegistry, ParsedSchema, parse
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import Kind
from k2_core.settings import Settings

REGISTRY = FileSchemaRegistry(Settings().kafka.schemas_dir)
SUBJECTS: dict[Kind, str] = {"trades": "market.crypto.trades-value", "quotes": "market.crypto.quotes-value"}
INT64 = (-(2**63), 2**63 - 1)

# Any text Arrow can hold (UTF-8: no lone surrogates), of any script.
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
timestamps = st.datetimes(  # hypothesis takes naive bounds and adds the zone
    min_value=datetime(1, 1, 1),  # noqa: DTZ001
    max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@st.composite
def decimals(draw: st.DrawFn, precision: int = 18, scale: int = 8) -> Decimal:
    """A DECIMAL(precision, scale) value written with 0 to `scale` places, of either sign, small or near the bound."""
    places = draw(st.integers(0, scale))
    bound = 10 ** (precision - scale + places) - 1
    # powers of two: where fastavro's byte count and the minimal one part (-128 is ff80 to fastavro)
    power = st.builds(lambda k, sign: sign * 2**k, st.integers(0, bound.bit_length() - 1), st.sampled_from((-1, 1)))
    unscaled = draw(st.one_of(st.integers(-bound, bound), st.integers(-300, 300), power))
    return Decimal(f"{unscaled}E-{places}")  # exact: scaleb would round to the context's 28 digits


def market_records(kind: Kind) -> st.SearchStrategy[dict[str, Any]]:
    common: dict[str, st.SearchStrategy[Any]] = {
        "symbol": texts,
        "exchange": texts,
        "exchange_timestamp": timestamps,
        "exchange_sequence_number": st.integers(*INT64),
        "ingestion_timestamp": timestamps,
    }
    if kind == "trades":
        fields = {"price": decimals(), "volume": decimals(), "side": texts, "trade_id": texts}
    else:
        fields = {name: decimals() for name in ("bid_price", "bid_size", "ask_price", "ask_size")}
    return st.fixed_dictionaries(common | fields)


def arrow_values(arrow: pa.Schema, record: dict[str, Any]) -> dict[str, Any]:
    """The record with its decimals at the column's scale (pyarrow will not mix exponents in one column); fastavro
    is given the record as drawn, fewer places and all."""
    out = dict(record)
    with localcontext() as context:
        context.prec = 60
        for f in arrow:
            if pa.types.is_decimal(f.type) and out[f.name] is not None:
                out[f.name] = out[f.name].quantize(Decimal(1).scaleb(-f.type.scale))
    return out


def market_extras(kind: Kind) -> st.SearchStrategy[dict[str, Any]]:
    """Version 2's optional fields, each present or null."""
    if kind == "trades":
        fields: dict[str, st.SearchStrategy[Any]] = {
            "ts_recv": st.none() | timestamps,
            "conditions": st.none() | st.lists(texts, max_size=4),
            "buyer_order_id": st.none() | texts,
            "seller_order_id": st.none() | texts,
        }
    else:
        counts = st.none() | st.integers(-(2**31), 2**31 - 1)
        fields = {"bid_count": counts, "ask_count": counts, "ts_recv": st.none() | timestamps}
    return st.fixed_dictionaries(fields)


def assert_as_fastavro(schema_id: int, schema: ParsedSchema, arrow: pa.Schema, records: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist([arrow_values(arrow, r) for r in records], schema=arrow)
    encoder = BulkEncoder(schema, schema_id)
    expected = [encode(schema_id, schema, r) for r in records]
    assert encoder.encode(table).tolist() == expected
    # small blocks: a block's rows are often all of one width, and the encoder takes a shortcut for those
    assert encoder.encode(table, block_rows=3).tolist() == expected
    assert [m for block in encoder.blocks(table, block_rows=2) for m in block] == expected


@settings(max_examples=100, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["trades", "quotes"]), extras=st.booleans())
def test_market_records_encode_as_fastavro_does(data: st.DataObject, kind: Kind, extras: bool) -> None:
    """Every registered version of the subject; the newest one's optional fields present, or absent from the table
    (and from the record fastavro is given) altogether."""
    records = data.draw(st.lists(market_records(kind), max_size=40))
    arrow = MARKET_TABLES[kind].arrow_schema
    if extras:
        records = [r | data.draw(market_extras(kind)) for r in records]
        arrow = MARKET_TABLES[kind].arrow_schema_with([f.name for f in MARKET_TABLES[kind].extra_columns])
    for schema_id, _ in REGISTRY.versions(SUBJECTS[kind]):
        assert_as_fastavro(schema_id, REGISTRY.by_id(schema_id), arrow, records)


EVERY_TYPE = parse(
    {
        "type": "record",
        "name": "Every",
        "namespace": "k2.test",
        "fields": [
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "b", "type": "boolean"},
            {"name": "d", "type": "double"},
            {"name": "f", "type": "float"},
            {"name": "raw", "type": "bytes"},
            {"name": "s", "type": "string"},
            {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]}},
            {"name": "wide", "type": {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 4}},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "maybe_s", "type": ["null", "string"]},
            {"name": "l_or_null", "type": ["long", "null"]},
            {"name": "maybe_e", "type": ["null", "k2.test.Colour"]},
            {
                "name": "maybe_wide",
                "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 4}],
            },
            {"name": "maybe_ts", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "nums", "type": {"type": "array", "items": "long"}},
            {"name": "maybe_tags", "type": ["null", {"type": "array", "items": "string"}], "default": None},
            {"name": "absent", "type": ["null", "string"], "default": None},
        ],
    }
)
EVERY_ARROW = pa.schema(
    [
        ("i", pa.int32()),
        ("l", pa.int64()),
        ("b", pa.bool_()),
        ("d", pa.float64()),
        ("f", pa.float32()),
        ("raw", pa.binary()),
        ("s", pa.string()),
        ("e", pa.string()),
        ("wide", pa.decimal128(38, 4)),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("maybe_s", pa.large_string()),
        ("l_or_null", pa.int64()),
        ("maybe_e", pa.string()),
        ("maybe_wide", pa.decimal128(38, 4)),
        ("maybe_ts", pa.timestamp("us", tz="UTC")),
        ("tags", pa.list_(pa.string())),
        ("nums", pa.large_list(pa.int64())),
        ("maybe_tags", pa.list_(pa.large_string())),
    ]
)
colours = st.sampled_from(["RED", "GREEN", "BLUE"])
every_record = st.fixed_dictionaries(
    {
        "i": st.integers(-(2**31), 2**31 - 1),
        "l": st.integers(*INT64),
        "b": st.booleans(),
        "d": st.floats(allow_nan=False),
        "f": st.floats(width=32, allow_nan=False),
        "raw": st.binary(max_size=40),
        "s": texts,
        "e": colours,
        "wide": decimals(38, 4),
        "ts": timestamps,
        "maybe_s": st.none() | texts,
        "l_or_null": st.none() | st.integers(*INT64),
        "maybe_e": st.none() | colours,
        "maybe_wide": st.none() | decimals(38, 4),
        "maybe_ts": st.none() | timestamps,
        "tags": st.lists(texts, max_size=5),
        "nums": st.lists(st.integers(*INT64), max_size=5),
        "maybe_tags": st.none() | st.lists(texts, max_size=3),
    }
)


@settings(max_examples=100, deadline=None)
@given(records=st.lists(every_record, max_size=30))
def test_every_supported_type_encodes_as_fastavro_does(records: list[dict[str, Any]]) -> None:
    assert_as_fastavro(7, EVERY_TYPE, EVERY_ARROW, records)


def powers_of_two(limit: int) -> list[int]:
    """±2**k and its neighbours: where a varint or a two's complement takes one more byte."""
    out = {0}
    for k in range(limit):
        for v in (2**k - 1, 2**k, 2**k + 1):
            out |= {v, -v}
    return sorted(out)


def test_edges_of_every_length_encode_as_fastavro_does() -> None:
    """-128 is ff80 in fastavro's bytes (not the minimal 80): the bulk encoder follows fastavro, not the minimum."""
    schema_id, schema = REGISTRY.latest(SUBJECTS["trades"])
    unscaled = [v for v in powers_of_two(60) if abs(v) < 10**18]
    records = [
        {
            "symbol": "S" * (k % 200),
            "exchange": "x",
            "exchange_timestamp": datetime(2024, 1, 1, tzinfo=UTC),
            "exchange_sequence_number": max(INT64[0], min(INT64[1], v)),
            "price": Decimal(v).scaleb(-8),
            "volume": Decimal(-v).scaleb(-8),
            "side": "buy",
            "trade_id": str(v),
            "ingestion_timestamp": datetime(2024, 1, 1, tzinfo=UTC),
        }
        for k, v in enumerate(unscaled)
    ]
    assert_as_fastavro(schema_id, schema, MARKET_TABLES["trades"].arrow_schema, records)
    longs = [{**records[0], "exchange_sequence_number": v} for v in powers_of_two(63) if INT64[0] <= v <= INT64[1]]
    assert_as_fastavro(schema_id, schema, MARKET_TABLES["trades"].arrow_schema, longs)


def test_messages_decode_back_to_the_rows() -> None:
    schema_id, schema = REGISTRY.latest(SUBJECTS["trades"])
    row = {
        "symbol": "BTCUSDT",
        "exchange": "binance",
        "exchange_timestamp": datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
        "exchange_sequence_number": 3_000_000_001,
        "price": Decimal("42000.01000000"),
        "volume": Decimal("0.00150000"),
        "side": "sell",
        "trade_id": "3000000001",
        "ingestion_timestamp": datetime(2024, 1, 2, tzinfo=UTC),
    }
    table = pa.Table.from_pylist([row] * 5, schema=MARKET_TABLES["trades"].arrow_schema)
    rows = BulkEncoder(schema, schema_id).encode(table)
    assert len(rows) == 5
    # the table has none of version 2's optional fields: each is written as its default, null
    extras = {"ts_recv": None, "conditions": None, "buyer_order_id": None, "seller_order_id": None}
    assert [Decoder(REGISTRY).decode(m) for m in rows] == [row | extras] * 5
    empty = BulkEncoder(schema, schema_id).encode(table.slice(0, 0))
    assert (len(empty), empty.tolist()) == (0, [])


def table_of(**columns: pa.Array) -> pa.Table:
    return pa.table(columns)


@pytest.mark.parametrize(
    ("schema", "table", "message"),
    [
        (
            {"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]},
            table_of(b=pa.array([1])),
            "no column",
        ),
        (
            {"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]},
            table_of(a=pa.array([1, None])),
            "null",
        ),
        (
            {"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]},
            table_of(a=pa.array(["1"])),
            "integer",
        ),
        (
            {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]},
            table_of(a=pa.array([2**31])),
            "int range",
        ),
        (
            {"type": "record", "name": "R", "fields": [{"name": "a", "type": ["null", "long"]}]},
            table_of(b=pa.array([1])),
            "no column",  # a union without a default of null needs its column
        ),
        (
            {"type": "record", "name": "R", "fields": [{"name": "a", "type": {"type": "array", "items": "long"}}]},
            table_of(a=pa.array([[1, None]])),
            "null among",
        ),
        (
            {
                "type": "record",
                "name": "R",
                "fields": [{"name": "a", "type": {"type": "enum", "name": "E", "symbols": ["X"]}}],
            },
            table_of(a=pa.array(["Y"])),
            "symbols",
        ),
        (
            {
                "type": "record",
                "name": "R",
                "fields": [
                    {"name": "a", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 8}}
                ],
            },
            table_of(a=pa.array([Decimal("1.5")], pa.decimal128(18, 4))),
            "scale",
        ),
    ],
)
def test_rows_the_schema_cannot_take_are_refused(schema: dict[str, Any], table: pa.Table, message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        BulkEncoder(parse(schema), 1).encode(table)


@pytest.mark.parametrize(
    "avro",
    [
        {"type": "array", "items": ["null", "long"]},
        {"type": "map", "values": "long"},
        {"type": "fixed", "name": "F", "size": 4},
        ["null", "long", "string"],
        ["long", "string"],
        {"type": "int", "logicalType": "date"},
        {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "long"}]},
    ],
)
def test_schemas_it_does_not_write_are_refused_up_front(avro: Any) -> None:
    with pytest.raises(EncodeError, match="field a"):
        BulkEncoder(parse({"type": "record", "name": "R", "fields": [{"name": "a", "type": avro}]}), 1)
