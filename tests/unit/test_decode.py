"""Batch decode equals the per-message reference (Decoder + validate) on random batches with poison messages and
writers of both schema versions mixed (version 1 next to version 2 with its optional fields null, empty or filled):
the same rows kept with the same values, the same messages dead-lettered with the same reasons, and the columns a
version-2 writer carries only when one is in the batch."""

from __future__ import annotations

import re
import struct
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2_core.exceptions import DecodeError, ValidationError
from k2_core.model.avro import Decoder, encode
from k2_core.model.records import check_size, validate
from k2_core.model.registry import FileSchemaRegistry
from k2_core.model.tables import MARKET_TABLES, TableDef
from k2_core.model.topics import Kind
from k2_core.settings import RecordSettings, Settings
from k2_stream.decode import BatchDecoder, _decimal_size, varint_size

REGISTRY = FileSchemaRegistry(Settings().kafka.schemas_dir)
SUBJECTS: dict[Kind, str] = {"trades": "market.equities.trades-value", "quotes": "market.equities.quotes-value"}
NOW = datetime.now(UTC)
LIMITS = RecordSettings(max_message_bytes=400)


def version_2_fields(kind: Kind, i: int) -> dict[str, Any]:
    """The optional fields of version 2, cycling through null, empty and filled values (deterministic in `i`)."""
    if kind == "trades":
        conditions: list[list[str] | None] = [None, [], ["@"], ["@", "F", "T"], ["\u00e9" * 30], [""]]
        ids = [None, "", "B-1", "x" * 70]
        return {
            "ts_recv": None if i % 4 == 0 else NOW - timedelta(seconds=60, microseconds=i) + timedelta(microseconds=7),
            "conditions": conditions[i % len(conditions)],
            "buyer_order_id": ids[i % len(ids)],
            "seller_order_id": ids[(i + 1) % len(ids)],
        }
    counts = [None, 0, 1, -1, 63, 64, 2**31 - 1, -(2**31)]
    return {
        "bid_count": counts[i % len(counts)],
        "ask_count": counts[(i + 3) % len(counts)],
        "ts_recv": None if i % 3 == 0 else NOW - timedelta(seconds=59),
    }


def record(kind: Kind, i: int, flaw: str) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "symbol": "BHP" if i % 3 else "CBA.AX",
        "exchange": "asx",
        "exchange_timestamp": NOW - timedelta(seconds=60, microseconds=i),
        "exchange_sequence_number": i + 1,
        "ingestion_timestamp": NOW - timedelta(seconds=30),
    }
    if kind == "trades":
        rec |= {"price": Decimal("45.12345678") + i, "volume": Decimal(i), "side": "buy", "trade_id": f"T-{i}"}
    else:
        rec |= {
            "bid_price": Decimal("1.5"),
            "bid_size": Decimal(i),
            "ask_price": Decimal("1.6"),
            "ask_size": Decimal("0.00000001"),
        }
    price = "price" if kind == "trades" else "bid_price"
    flaws: dict[str, dict[str, Any]] = {
        "exchange": {"exchange": "nyse"},
        "symbol": {"symbol": "bhp"},
        "symbol_newline": {"symbol": "BHP\n"},  # Python's `$` accepts it; the reference path decides
        "seq": {"exchange_sequence_number": 0},
        "price_zero": {price: Decimal(0)},
        "price_negative": {price: Decimal("-1.5")},
        "price_huge": {price: Decimal("10000000000")},
        "price_max": {price: Decimal("9999999999.99999999")},
        "price_beyond_int64": {price: Decimal("100000000000000")},
        "future": {"exchange_timestamp": NOW + timedelta(hours=1), "ingestion_timestamp": NOW + timedelta(hours=1)},
        "ancient": {"exchange_timestamp": datetime(1980, 1, 1, tzinfo=UTC)},
        "event_after_receipt": {"exchange_timestamp": NOW - timedelta(seconds=1)},
    }
    if kind == "trades":
        flaws |= {
            "side": {"side": "BUY"},
            "trade_id": {"trade_id": "with space"},
            "trade_id_long": {"trade_id": "x" * 129},
            "trade_id_unicode": {"trade_id": "T\u00e9"},
            "volume_negative": {"volume": Decimal("-1")},
        }
    return rec | flaws.get(flaw, {})


def message(kind: Kind, i: int, flaw: str, version: int = 2) -> bytes | None:
    """Message `i` written by version `version` of the subject (version 1: an old producer)."""
    schema_id, _ = REGISTRY.versions(SUBJECTS[kind])[version - 1]
    rec = record(kind, i, flaw) | (version_2_fields(kind, i) if version == 2 else {})
    raw = encode(schema_id, REGISTRY.by_id(schema_id), rec)
    if flaw == "array_in_blocks" and kind == "trades" and version == 2:
        # Valid Avro no K2 producer writes: conditions ["@", "F"] as two blocks, the second with a negative count
        # and its byte size. Only the per-message reader may vouch for it.
        v1_id, _ = REGISTRY.versions(SUBJECTS[kind])[0]
        base = encode(v1_id, REGISTRY.by_id(v1_id), rec)
        blocks = b"\x02" + b"\x02\x02@" + b"\x01\x04\x02F" + b"\x00"  # [1 item "@"] [-1 item, 2 bytes: "F"] end
        raw = raw[:5] + base[5:] + b"\x00" + blocks + b"\x00\x00"
    poison: dict[str, bytes | None] = {
        "none": None,
        "empty": b"",
        "short": b"\x00\x00",
        "magic": b"\x01" + raw[1:],
        "unknown_schema": b"\x00" + struct.pack(">I", 99) + raw[5:],
        "other_schema": b"\x00" + struct.pack(">I", 2 if kind == "trades" else 1) + raw[5:],
        "other_version": b"\x00" + struct.pack(">I", REGISTRY.versions(SUBJECTS[kind])[2 - version][0]) + raw[5:],
        "truncated": raw[:-3],
        "truncated_hard": raw[: len(raw) // 2],
        "trailing": raw + b"\x02",
        "too_large": raw + b"\x00" * 400,
        "junk": b"\x00\x00\x00\x00\x01" + b"\xff" * 30,
        "bad_utf8": raw[:6] + b"\xff" + raw[7:],
    }
    return poison.get(flaw, raw)


FLAWS = [
    "exchange",
    "symbol",
    "symbol_newline",
    "seq",
    "price_zero",
    "price_negative",
    "price_huge",
    "price_max",
    "price_beyond_int64",
    "future",
    "ancient",
    "event_after_receipt",
    "side",
    "trade_id",
    "trade_id_long",
    "trade_id_unicode",
    "volume_negative",
    "none",
    "empty",
    "short",
    "magic",
    "unknown_schema",
    "other_schema",
    "other_version",
    "array_in_blocks",
    "truncated",
    "truncated_hard",
    "trailing",
    "too_large",
    "junk",
    "bad_utf8",
]


def same_clock(dead: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Reasons quote the validating clock, which differs between two runs."""
    return [(i, re.sub(r"past \S+,", "past <now>,", reason)) for i, reason in dead]


def reference(kind: Kind, values: list[bytes | None]) -> tuple[list[dict[str, Any]], list[tuple[int, str]], set[str]]:
    """Rows, dead letters, and the columns the kept records' writers carry (their fields that are table columns)."""
    decoder = Decoder(REGISTRY)
    _, reader = REGISTRY.latest(SUBJECTS[kind])
    table_def: TableDef = MARKET_TABLES[kind]
    kept, dead = [], []
    columns = set(table_def.arrow_schema.names)
    for i, value in enumerate(values):
        try:
            check_size(value, LIMITS.max_message_bytes)
            rec = decoder.decode(value, reader)
            validate(kind, "asx", rec, LIMITS)
        except (DecodeError, ValidationError) as exc:
            dead.append((i, f"{type(exc).__name__}: {exc}"))
            continue
        kept.append({"_pos": i, **rec})
        assert value is not None
        writer = REGISTRY.by_id(int.from_bytes(value[1:5], "big"))
        columns |= {f["name"] for f in writer["fields"]} & set(table_def.column_names)
    return kept, dead, columns


def batch_decode(
    kind: Kind, values: list[bytes | None]
) -> tuple[list[dict[str, Any]], list[tuple[int, str]], int, list[str]]:
    reader_id, reader = REGISTRY.latest(SUBJECTS[kind])
    out = BatchDecoder(Decoder(REGISTRY), LIMITS).decode(
        kind, "asx", reader_id, reader, values, MARKET_TABLES[kind], NOW
    )
    rows = [{"_pos": int(p), **r} for p, r in zip(out.positions, out.table.to_pylist(), strict=True)]
    return sorted(rows, key=lambda r: r["_pos"]), sorted(out.dead), out.columnar, out.table.column_names


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["trades", "quotes"]),
    flaws=st.lists(
        st.tuples(st.one_of(st.just(""), st.sampled_from(FLAWS)), st.sampled_from([1, 2])), min_size=0, max_size=120
    ),
)
def test_batch_decode_equals_the_per_message_reference(kind: Kind, flaws: list[tuple[str, int]]) -> None:
    values = [message(kind, i, flaw, version) for i, (flaw, version) in enumerate(flaws)]
    ref_rows, ref_dead, ref_columns = reference(kind, values)
    rows, dead, _, columns = batch_decode(kind, values)
    assert same_clock(dead) == same_clock(ref_dead)
    assert columns == [c for c in MARKET_TABLES[kind].column_names if c in ref_columns]  # in the table's order
    assert rows == [{k: r[k] for k in ("_pos", *columns)} for r in ref_rows]


@pytest.mark.parametrize("kind", ["trades", "quotes"])
def test_both_versions_in_one_batch_are_read_as_blocks(kind: Kind) -> None:
    """Interleaved version-1 and version-2 messages: each version's messages are one block of its own schema, no
    message goes the per-message way, version-1 rows read the new columns as null."""
    values = [message(kind, i, "", 1 + (i % 3 == 0)) for i in range(900)]
    rows, dead, columnar, columns = batch_decode(kind, values)
    ref_rows, _, _ = reference(kind, values)
    assert not dead
    assert columnar == 900
    assert columns == list(MARKET_TABLES[kind].column_names)
    assert rows == ref_rows
    extra = MARKET_TABLES[kind].extra_columns[0].name
    assert all(r[extra] is None for r in rows if r["_pos"] % 3)


@pytest.mark.parametrize("kind", ["trades", "quotes"])
def test_a_batch_of_version_1_only_carries_no_new_column(kind: Kind) -> None:
    values = [message(kind, i, "", 1) for i in range(100)]
    rows, dead, columnar, columns = batch_decode(kind, values)
    assert (len(rows), dead, columnar) == (100, [], 100)
    assert columns == MARKET_TABLES[kind].arrow_schema.names


@pytest.mark.parametrize("kind", ["trades", "quotes"])
def test_one_poison_message_does_not_cost_the_block(kind: Kind) -> None:
    flaws = [""] * 1000
    flaws[500] = "trailing"
    flaws[700] = "truncated"
    values = [message(kind, i, f) for i, f in enumerate(flaws)]
    rows, dead, columnar, _ = batch_decode(kind, values)
    assert [i for i, _ in dead] == [500, 700]
    assert len(rows) == 998
    assert columnar >= 950  # a block the reader refuses is halved until the bad message is alone


def _each_side_of_every_power_of_two() -> list[int]:
    """2**k - 1, 2**k and 2**k + 1 and their negatives within int64: where a size can change, and where float64
    stops being exact (2**53) for the sizes read off a float's exponent."""
    out = {v for k in range(64) for d in (-1, 0, 1) for v in ((1 << k) + d, -((1 << k) + d))}
    return sorted(v for v in out if -(2**63) <= v < 2**63)


def test_varint_sizes_match_avro() -> None:
    values = [*_each_side_of_every_power_of_two(), *np.random.default_rng(7).integers(-(2**63), 2**63 - 1, 5000)]
    expected = []
    for v in values:
        z = ((int(v) << 1) ^ (int(v) >> 63)) & (2**64 - 1)
        expected.append(max(1, (z.bit_length() + 6) // 7))
    assert varint_size(np.array(values, dtype=np.int64)).tolist() == expected
    assert varint_size(np.arange(64, dtype=np.int64)).tolist() == [1] * 64  # the one-byte shortcut


def test_decimal_sizes_are_the_minimal_twos_complement() -> None:
    """A DECIMAL(18,8)'s bytes as Java writes them (`BigInteger.toByteArray`: bitLength / 8 + 1 bytes) with their
    length prefix, at every size boundary (fastavro writes -2**7, -2**15, ... one byte longer: a mismatch that only
    sends such a message the per-message way)."""
    unscaled = [v for v in _each_side_of_every_power_of_two() if abs(v) < 10**18]
    expected = [1 + ((v if v >= 0 else ~v).bit_length() // 8 + 1) for v in unscaled]
    assert _decimal_size(np.array(unscaled, dtype=np.int64)).tolist() == expected


def test_an_array_in_several_blocks_goes_the_per_message_way() -> None:
    """Avro lets a writer split an array into blocks (a negative count carries the block's byte size); the length
    check cannot vouch for that message, so the reference path reads it, and its neighbours stay in the block."""
    flaws = [""] * 100
    flaws[50] = "array_in_blocks"
    values = [message("trades", i, f, 2) for i, f in enumerate(flaws)]
    rows, dead, columnar, _ = batch_decode("trades", values)
    ref_rows, _, _ = reference("trades", values)
    assert (dead, columnar) == ([], 99)
    assert rows == ref_rows
    assert rows[50]["conditions"] == ["@", "F"]
