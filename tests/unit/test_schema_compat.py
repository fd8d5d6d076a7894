"""Every schema change must be BACKWARD compatible: the newest reader reads every earlier version's data."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

from k2_core.model.avro import Decoder, encode
from k2_core.model.registry import FileSchemaRegistry, parse
from k2_core.settings import KafkaSettings

SCHEMAS_DIR = KafkaSettings().schemas_dir
REGISTRY = FileSchemaRegistry(SCHEMAS_DIR)


def sample(schema: dict[str, Any]) -> dict[str, Any]:
    """A record with a value for every field, by Avro type (defaults where a field has one)."""
    out: dict[str, Any] = {}
    for f in schema["fields"]:
        t = f["type"]
        logical = t.get("logicalType") if isinstance(t, dict) else None
        if "default" in f:
            out[f["name"]] = f["default"]
        elif logical == "decimal":
            out[f["name"]] = Decimal("123.45678900")
        elif logical == "timestamp-micros":
            out[f["name"]] = datetime(2026, 11, 25, 1, 2, 3, 456789, tzinfo=UTC)
        elif t == "long":
            out[f["name"]] = 42
        elif t == "string":
            out[f["name"]] = "X"
        else:
            raise AssertionError(f"sample() does not know type {t!r}")
    return out


def backward_compatible(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    """Write with `writer`, read with `reader` through Avro schema resolution."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parse(writer), sample(writer))
    buf.seek(0)
    try:
        fastavro.schemaless_reader(buf, parse(writer), parse(reader))
    except (fastavro.read.SchemaResolutionError, ValueError, KeyError):
        return False
    return True


@pytest.mark.parametrize("subject", sorted(REGISTRY.subjects))
def test_each_subject_is_backward_compatible(subject: str) -> None:
    versions = REGISTRY.versions(subject)
    for i, (_, reader) in enumerate(versions):
        for _, writer in versions[:i]:
            assert backward_compatible(reader, writer), f"{subject}: a newer version cannot read an older one"


def test_the_check_rejects_a_field_added_without_default() -> None:
    trade = json.loads((SCHEMAS_DIR / "trade.v1.avsc").read_text())
    breaking = {**trade, "fields": [*trade["fields"], {"name": "venue", "type": "string"}]}
    compatible = {**trade, "fields": [*trade["fields"], {"name": "venue", "type": "string", "default": ""}]}
    assert not backward_compatible(breaking, trade)
    assert backward_compatible(compatible, trade)


def test_every_registered_schema_round_trips_in_the_wire_format() -> None:
    decoder = Decoder(REGISTRY)
    for subject in REGISTRY.subjects:
        schema_id, schema = REGISTRY.latest(subject)
        record = sample(REGISTRY.raw[schema_id])
        payload = encode(schema_id, schema, record)
        assert payload[0] == 0
        assert int.from_bytes(payload[1:5], "big") == schema_id
        assert decoder.decode(payload) == record


def test_every_schema_file_is_registered() -> None:
    """A new .avsc that registry.yaml does not list would never reach a producer."""
    on_disk = {p.name for p in Path(SCHEMAS_DIR).glob("*.avsc")}
    assert on_disk == {f"{REGISTRY.raw[sid]['name'].lower()}.v{n + 1}.avsc" for sid, n in _versions().items()}


def _versions() -> dict[int, int]:
    """schema id -> its 0-based version within its record type, from registry.yaml's order."""
    seen: dict[str, int] = {}
    out: dict[int, int] = {}
    for sid in sorted(REGISTRY.raw):
        name = REGISTRY.raw[sid]["name"]
        out[sid] = seen.get(name, 0)
        seen[name] = out[sid] + 1
    return out
