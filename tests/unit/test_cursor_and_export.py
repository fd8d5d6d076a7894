"""Pagination cursors and the export writers shared by the API and the CLI."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr, ValidationError

from k2_core.exceptions import ConfigError, QueryError
from k2_core.model.tables import TRADES
from k2_core.read.cursor import KEY_FILE, Cursor, CursorCodec, cursor_key, fingerprint
from k2_core.read.export import Exporter, to_bytes
from k2_core.settings import QuerySettings, Settings
from tests.support import factories
from tests.support.cursors import resigned_cursor, unsigned_cursor

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


KEY = b"k" * 32
CODEC = CursorCodec(KEY)


def test_cursor_round_trip_and_pins() -> None:
    print_ = fingerprint("trades", "BHP")
    cursor = Cursor((1_700_000_000_000_000, 42), 7, print_, quote_snapshot_id=9)
    assert CODEC.decode(CODEC.encode(cursor), print_, 2) == cursor
    assert CODEC.decode(CODEC.encode(Cursor((5,), None, print_)), print_, 1).snapshot_id is None


def _signed(body: dict[str, object]) -> str:
    """A cursor signed with the right key around a body the server would never write."""
    text = unsigned_cursor(body)
    signature = hmac.new(KEY, b"k2 cursor\x00" + text.encode(), hashlib.sha256).digest()
    return f"{text}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"


PRINT = fingerprint("trades", "BHP")
ISSUED = CODEC.encode(Cursor((1_700_000_000_000_000, 42), 7, PRINT))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not a cursor!", "cursor is not a cursor this API issued"),
        ("\u00e9t\u00e9.abc", "cursor is not a cursor this API issued"),
        (ISSUED.partition(".")[0], "cursor is not a cursor this API issued"),
        (ISSUED + "A" * 2000, "cursor is too long"),
        (ISSUED[:-3] + "AAA", "cursor does not carry this server's signature"),
        (CursorCodec(b"o" * 32).encode(Cursor((1, 2), None, PRINT)), "cursor does not carry this server's signature"),
        (unsigned_cursor({"v": 2, "a": [10**18, 1], "s": None, "f": PRINT}), "cursor is not a cursor this API issued"),
        (
            resigned_cursor(ISSUED, {"v": 2, "a": [10**18, 1], "s": 7, "f": PRINT}),
            "cursor does not carry this server's signature",
        ),
        (_signed({"v": 2, "a": [1], "s": None, "f": PRINT}), "cursor is malformed"),
        (_signed({"v": 2, "a": ["1", 2], "s": 1, "f": PRINT}), "cursor is malformed"),
        (_signed({"v": 2, "a": [2**63, 2], "s": 1, "f": PRINT}), "cursor is malformed"),
        (_signed({"v": 2, "a": [1, 2], "s": -(2**63) - 1, "f": PRINT}), "cursor is malformed"),
        (_signed({"v": 2, "a": [1.5, 2], "s": 1, "f": PRINT}), "cursor is malformed"),
        (_signed({"v": 1, "a": [1, 2], "s": 1, "f": PRINT}), "cursor is malformed"),
        (_signed([1, 2]), "cursor is malformed"),  # type: ignore[arg-type]
        (CODEC.encode(Cursor((1, 2), None, "other")), "cursor belongs to a different query"),
        (CODEC.encode(Cursor((10**18, 2), None, PRINT)), "cursor position lies outside the query's window"),
    ],
)
def test_bad_cursors_are_query_errors_naming_cursor(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=f"^{message}"):
        CODEC.decode(text, PRINT, 2, first_within=(0, 2_000_000_000_000_000))


def test_the_cursor_key_is_made_once_per_home_private_and_shared(tmp_path: Path) -> None:
    home = Settings(home=tmp_path / "home")
    with ThreadPoolExecutor(8) as pool:  # processes of one installation starting together
        made = set(pool.map(lambda _: cursor_key(home), range(16)))
    assert len(made) == 1
    key = made.pop()
    assert len(key) == 32
    path = tmp_path / "home" / KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert cursor_key(home) == key
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no temporary file left behind
    assert cursor_key(Settings(home=tmp_path / "other")) != key

    configured = Settings(home=tmp_path / "third", query=QuerySettings(cursor_secret=SecretStr("s" * 32)))
    assert cursor_key(configured) == b"s" * 32
    assert not (tmp_path / "third" / KEY_FILE).exists()
    assert QuerySettings(cursor_secret=SecretStr("")).cursor_secret is None
    with pytest.raises(ValidationError, match="cursor_secret must be at least 32 bytes"):
        QuerySettings(cursor_secret=SecretStr("short"))

    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        cursor_key(home)
    path.chmod(0o600)
    path.write_text("not hex")
    with pytest.raises(ConfigError, match="is damaged"):
        cursor_key(home)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match=r"cannot create the cursor key .* set K2_QUERY_CURSOR_SECRET"):
        cursor_key(Settings(home=tmp_path / "a-file" / "home"))


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
