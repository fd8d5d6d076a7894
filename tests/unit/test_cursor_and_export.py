"""Pagination cursors and the export writers shared by the API and the CLI."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from k2_core.exceptions import QueryError
from k2_core.model.tables import TRADES
from k2_core.read.cursor import Cursor, decode_cursor, fingerprint
from k2_core.read.export import Exporter, to_bytes
from tests.support import factories

ROWS = [
    factories.trade(
        "BHP",
        1,
        datetime(2024, 1, 2, 10, 0, 0, 5, tzinfo=UTC),
        Decimal("0E-8"),
        "0.00000001",
        trade_id='a,"b"',
        ingestion_timestamp=datetime(2024, 1, 2, tzinfo=UTC),
    )
]


def test_cursor_round_trip_and_pins() -> None:
    print_ = fingerprint("trades", "BHP")
    cursor = Cursor((1_700_000_000_000_000, 42), 7, print_, quote_snapshot_id=9)
    assert decode_cursor(cursor.encode(), print_, 2) == cursor
    assert decode_cursor(Cursor((5,), None, print_).encode(), print_, 1).snapshot_id is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not a cursor!", "cursor is not a cursor this API issued"),
        (base64.urlsafe_b64encode(b"[1, 2]").decode(), "cursor is malformed"),
        (base64.urlsafe_b64encode(json.dumps({"v": 1, "a": [1], "s": None, "f": "x"}).encode()).decode(), "malformed"),
        (
            base64.urlsafe_b64encode(json.dumps({"v": 1, "a": ["1", 2], "s": 1, "f": "x"}).encode()).decode(),
            "malformed",
        ),
        (Cursor((1, 2), None, "other").encode(), "cursor belongs to a different query"),
    ],
)
def test_bad_cursors_are_query_errors_naming_cursor(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=f"^{message}" if message.startswith("cursor") else message):
        decode_cursor(text, fingerprint("trades", "BHP"), 2)


def test_csv_keeps_decimals_fixed_point_and_times_iso() -> None:
    text = to_bytes(TRADES.to_arrow(ROWS), "csv").decode()
    header, line = text.splitlines()
    assert header.startswith('"symbol","exchange","exchange_timestamp"')
    assert '"0.00000000","0.00000001"' in line  # quoted as text, read back as numbers by CSV readers
    assert pa_csv.read_csv(io.BytesIO(text.encode())).column("volume").to_pylist() == [1e-08]
    assert "2024-01-02T10:00:00.000005Z" in line
    assert pa_csv.read_csv(io.BytesIO(text.encode())).column("trade_id").to_pylist() == ['a,"b"']


def test_arrow_and_parquet_keep_the_table_types() -> None:
    table = TRADES.to_arrow(ROWS * 3)
    from_arrow = pa.ipc.open_stream(to_bytes(table, "arrow")).read_all()
    from_parquet = pq.read_table(io.BytesIO(to_bytes(table, "parquet")))
    assert from_arrow.equals(table)
    assert from_parquet.schema.field("price").type == pa.decimal128(18, 8)
    assert from_parquet.to_pylist() == table.to_pylist()


def test_ndjson_and_empty_exports() -> None:
    (line,) = to_bytes(TRADES.to_arrow(ROWS), "ndjson").decode().splitlines()
    row = json.loads(line)
    assert (row["price"], row["volume"], row["exchange_timestamp"]) == (
        "0.00000000",
        "0.00000001",
        "2024-01-02T10:00:00.000005Z",
    )
    sink = io.BytesIO()
    with Exporter(sink, "csv", TRADES.arrow_schema):
        pass
    assert sink.getvalue().decode().startswith('"symbol","exchange"')
