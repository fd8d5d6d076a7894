"""The shapes of answers across a schema change, without a lake: the API's models describe every column a market table
may have (its created ones required, the version-2 ones optional, with the table's docs), the feed schema is the
created columns then the version-2 ones, and DuckDB's projection of files written under several schemas picks each
column by field id."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.schema import Schema
from pyiceberg.types import ListType, LongType, NestedField, StringType

from k2_api.models import Quote, Trade
from k2_core import duck
from k2_core.lake.scan import FileColumns, duck_type, projection_sql
from k2_core.model.tables import EXTRA_COLUMNS, MARKET_TABLES, arrow_schema_of, feed_schema, trades_with_quote_schema
from k2_core.model.topics import Kind

MODELS = {"trades": Trade, "quotes": Quote}


@pytest.mark.parametrize("kind", ["trades", "quotes"])
def test_the_api_models_describe_every_column_a_table_may_have(kind: Kind) -> None:
    model = MODELS[kind]
    fields = model.model_fields
    assert list(fields) == feed_schema(kind).names  # same names, same order: a column is never left out
    for name in MARKET_TABLES[kind].arrow_schema.names:
        assert fields[name].is_required()
    for column in EXTRA_COLUMNS[kind]:
        assert not fields[column.name].is_required()
        assert fields[column.name].default is None
        assert column.doc is not None
        assert column.doc in (fields[column.name].description or "")


def test_the_feed_schema_is_the_created_columns_then_the_new_ones() -> None:
    trades = feed_schema("trades")
    assert trades.names[:9] == MARKET_TABLES["trades"].arrow_schema.names
    assert trades.field("conditions").type == pa.large_list(pa.field("element", pa.large_string(), nullable=False))
    assert all(trades.field(c.name).nullable for c in EXTRA_COLUMNS["trades"])
    assert all(f.metadata is None for f in trades)  # no docs in answers: DuckDB's reads carry none
    joined = trades_with_quote_schema(trades)
    assert joined.names[: len(trades)] == trades.names
    assert joined.names[len(trades) :] == [
        "quote_timestamp",
        "quote_sequence_number",
        "bid_price",
        "bid_size",
        "ask_price",
        "ask_size",
    ]


@pytest.mark.parametrize("kind", ["trades", "quotes"])
def test_duckdb_types_of_iceberg_types_make_typed_nulls(kind: Kind) -> None:
    fields = [
        NestedField(f.field_id, f.name, f.field_type, required=False)
        for f in (*MARKET_TABLES[kind].schema.fields, *EXTRA_COLUMNS[kind])
    ]
    with duck.connect() as con:
        nulls = con.sql(
            "SELECT " + ", ".join(f'NULL::{duck_type(f.field_type)} AS "{f.name}"' for f in fields)
        ).to_arrow_table()
    want = arrow_schema_of(Schema(*fields))
    assert nulls.cast(want).schema == want  # every type casts to the table's Arrow type


def test_files_of_several_schemas_are_read_by_field_id(tmp_path: Path) -> None:
    """Three files: the first schema, one with a column added, one written after that column was renamed. The
    projection in the newest schema reads each by field id; a file without field ids is left to pyiceberg."""
    ids = {"seq": 1, "sym": 2, "tags": 3}

    def write(name: str, columns: dict[str, pa.Array], renamed: dict[str, str] | None = None) -> str:
        fields = [
            pa.field(col, arr.type, metadata={b"PARQUET:field_id": str(ids[(renamed or {}).get(col, col)]).encode()})
            for col, arr in columns.items()
        ]
        path = str(tmp_path / name)
        pq.write_table(pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields)), path)
        return path

    v1 = write("v1.parquet", {"seq": pa.array([1, 2]), "sym": pa.array(["A", "B"])})
    v2 = write("v2.parquet", {"seq": pa.array([3]), "sym": pa.array(["C"]), "tags": pa.array([["x", "y"]])})
    v3 = write(
        "v3.parquet", {"seq": pa.array([4]), "symbol": pa.array(["D"]), "tags": pa.array([[]], pa.list_(pa.string()))},
        renamed={"symbol": "sym"},
    )  # fmt: skip
    schema = Schema(
        NestedField(1, "seq", LongType(), required=True),
        NestedField(2, "symbol", StringType(), required=True),
        NestedField(3, "tags", ListType(4, StringType()), required=False),
    )
    files = FileColumns()
    select = projection_sql(schema, [v1, v2, v3], files)
    assert select is not None
    assert select.count("read_parquet") == 3  # three kinds of file
    with duck.connect() as con:
        rows = con.sql(f"SELECT * FROM ({select}) ORDER BY seq").fetchall()
    assert rows == [(1, "A", None), (2, "B", None), (3, "C", ["x", "y"]), (4, "D", [])]
    plain = str(tmp_path / "plain.parquet")
    pq.write_table(pa.table({"seq": [5]}), plain)
    assert files.of(plain) is None
    assert projection_sql(schema, [v1, plain], files) is None
    alike = projection_sql(schema, [v1, v1], files)
    assert alike is not None
    assert alike.count("read_parquet") == 1
