"""Every schema change must be BACKWARD compatible: the newest reader reads every earlier version's data.

The rule is k2_core.model.compat (static, with reasons); fastavro's own schema resolution, run on a sample record,
is the independent check that what the rule accepts really decodes, and that what it refuses for a missing default
really fails."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow
from typer.testing import CliRunner

from k2_cli.main import app
from k2_core.exceptions import ConfigError
from k2_core.model.avro import Decoder, encode
from k2_core.model.compat import backward_reasons, check_subject
from k2_core.model.registry import FileSchemaRegistry, parse
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import KINDS
from k2_core.settings import KafkaSettings

SCHEMAS_DIR = KafkaSettings().schemas_dir
REGISTRY = FileSchemaRegistry(SCHEMAS_DIR)


def sample(schema: dict[str, Any], named: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A record with a value for every field, by Avro type (defaults where a field has one); an array of records
    (a book's levels) holds one sample record."""
    named = {} if named is None else named
    out: dict[str, Any] = {}
    for f in schema["fields"]:
        t = f["type"]
        logical = t.get("logicalType") if isinstance(t, dict) else None
        if isinstance(t, dict) and t.get("type") == "array":
            items = t["items"]
            if isinstance(items, dict):
                named[items["name"]] = items
            out[f["name"]] = [sample(named[items] if isinstance(items, str) else items, named)]
        elif "default" in f:
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
    if "book_" not in subject:  # the book subjects are new: version 1 only
        assert len(versions) >= 2, "every trades and quotes subject has versions 1 and 2"
    for i, (_, reader) in enumerate(versions):
        for _, writer in versions[:i]:
            assert backward_reasons(reader, writer) == [], f"{subject}: a newer version cannot read an older one"
            assert backward_compatible(reader, writer), f"{subject}: fastavro cannot resolve what the rule accepts"


@pytest.mark.parametrize("kind", KINDS)
def test_the_newest_version_carries_exactly_the_table_columns(kind: str) -> None:
    """The feed schema and the table are defined apart (Avro, k2_core.model.tables): their names and value types
    must agree, or the ingester would drop a field or the table would grow a column no feed fills."""
    subject = f"market.equities.{kind}-value"
    _, newest = REGISTRY.versions(subject)[-1]
    table_def = MARKET_TABLES[kind]  # type: ignore[index]
    assert [f["name"] for f in newest["fields"]] == list(table_def.column_names)
    sample_row = fastavro.schemaless_reader(_encoded(newest), parse(newest), parse(newest))
    arrow = schema_to_pyarrow(table_def.full_schema, include_field_ids=False)
    import pyarrow as pa

    assert pa.Table.from_pylist([sample_row], schema=arrow).to_pylist() == [sample_row]


def _encoded(schema: dict[str, Any]) -> io.BytesIO:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parse(schema), _filled(schema))
    buf.seek(0)
    return buf


def _filled(schema: dict[str, Any]) -> dict[str, Any]:
    """A sample whose optional fields hold values (not their null defaults)."""
    out = sample({**schema, "fields": [f for f in schema["fields"] if "default" not in f]})
    values = {"long": 7, "int": 7, "string": "X"}
    for f in schema["fields"]:
        if "default" in f:
            branch = next(b for b in f["type"] if b != "null")
            if isinstance(branch, dict) and branch.get("type") == "array":
                out[f["name"]] = ["A", "B"]
            elif isinstance(branch, dict) and branch.get("logicalType") == "timestamp-micros":
                out[f["name"]] = datetime(2026, 11, 25, 1, 2, 3, 456999, tzinfo=UTC)
            else:
                out[f["name"]] = values[branch]
    return out


def test_the_check_rejects_a_field_added_without_default() -> None:
    trade = json.loads((SCHEMAS_DIR / "trade.v1.avsc").read_text())
    breaking = {**trade, "fields": [*trade["fields"], {"name": "venue", "type": "string"}]}
    compatible = {**trade, "fields": [*trade["fields"], {"name": "venue", "type": "string", "default": ""}]}
    assert not backward_compatible(breaking, trade)
    assert backward_compatible(compatible, trade)
    assert backward_reasons(compatible, trade) == []
    (reason,) = backward_reasons(breaking, trade)
    assert reason.startswith("k2.market.Trade.venue: field added without a default")


def _trade_with(**changes: Any) -> dict[str, Any]:
    """Version 2 of the trade schema with fields replaced (name -> new field, or None to drop it)."""
    trade = json.loads((SCHEMAS_DIR / "trade.v2.avsc").read_text())
    fields = []
    for f in trade["fields"]:
        if f["name"] in changes:
            if changes[f["name"]] is not None:
                fields.append({"name": f["name"], **changes[f["name"]]})
        else:
            fields.append(f)
    return {**trade, "fields": fields}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exchange_sequence_number": {"type": "int"}}, "type changed from long to int, which Avro cannot promote"),
        ({"side": {"type": "long"}}, "type changed from string to long"),
        (
            {"price": {"type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 6}}},
            "decimal scale changed from 8 to 6",
        ),
        (
            {"exchange_timestamp": {"type": {"type": "long", "logicalType": "timestamp-millis"}}},
            "logical type changed from timestamp-micros to timestamp-millis",
        ),
        ({"buyer_order_id": {"type": "string"}}, "type changed from null to string"),
        ({"ts_recv": {"type": ["null", "long"], "default": "soon"}}, "default 'soon' is not a null"),
        (
            {"conditions": {"type": ["null", {"type": "array", "items": "long"}], "default": None}},
            "type changed from string to long",
        ),
    ],
)
def test_incompatible_changes_are_refused_with_their_reason(changes: dict[str, Any], reason: str) -> None:
    verdict = check_subject(
        "market.equities.trades-value", _trade_with(**changes), REGISTRY.versions("market.equities.trades-value")
    )
    assert not verdict.compatible
    assert reason in verdict.explain(), verdict.explain()


@pytest.mark.parametrize(
    "changes",
    [
        {"trade_id": None},  # a field removed: old data's value is skipped
        {"side": {"type": "bytes"}},  # string -> bytes
        {"buyer_order_id": {"type": ["null", "string", "long"], "default": None}},  # a union widened
        {"price": {"type": {"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 8}}},  # wider
        {"venue": {"type": ["null", "string"], "default": None}},  # a new optional field
    ],
)
def test_compatible_changes_pass(changes: dict[str, Any]) -> None:
    candidate = _trade_with(**changes)
    if "venue" in changes:
        candidate["fields"].append({"name": "venue", **changes["venue"]})
    verdict = check_subject(
        "market.equities.trades-value", candidate, REGISTRY.versions("market.equities.trades-value")
    )
    assert verdict.compatible, verdict.explain()
    for _, old in REGISTRY.versions("market.equities.trades-value"):
        assert backward_compatible(candidate, old)


def test_promotions_enums_and_named_types() -> None:
    def record(*fields: dict[str, Any], name: str = "R", aliases: list[str] | None = None) -> dict[str, Any]:
        return {"type": "record", "name": name, "namespace": "k2", "fields": list(fields), "aliases": aliases or []}

    old = record(
        {"name": "n", "type": "int"}, {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}
    )
    assert backward_reasons(record({"name": "n", "type": "double"}, old["fields"][1]), old) == []
    narrowed = record(old["fields"][0], {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}})
    assert "dropped symbols ['B']" in backward_reasons(narrowed, old)[0]
    with_default = {"type": "enum", "name": "E", "symbols": ["A"], "default": "A"}
    assert backward_reasons(record(old["fields"][0], {"name": "e", "type": with_default}), old) == []
    renamed = record(*old["fields"], name="S")
    assert "record name changed from k2.R to k2.S" in backward_reasons(renamed, old)[0]
    assert backward_reasons(record(*old["fields"], name="S", aliases=["R"]), old) == []


def test_the_file_registry_refuses_an_incompatible_history(tmp_path: Path) -> None:
    """A registry.yaml whose newer version cannot read an older one does not load: no producer or ingester starts
    on it, and the message says which field and why."""
    trade = json.loads((SCHEMAS_DIR / "trade.v1.avsc").read_text())
    (tmp_path / "trade.v1.avsc").write_text(json.dumps(trade))
    bad = {**trade, "fields": [*trade["fields"], {"name": "venue", "type": "string"}]}
    (tmp_path / "trade.v2.avsc").write_text(json.dumps(bad))
    (tmp_path / "registry.yaml").write_text(
        "schemas:\n  1: trade.v1.avsc\n  3: trade.v2.avsc\nsubjects:\n  market.equities.trades-value: [1, 3]\n"
    )
    with pytest.raises(
        ConfigError, match=r"(?s)not BACKWARD compatible.*version 2 \(schema id 3\).*venue: field added"
    ):
        FileSchemaRegistry(tmp_path)


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


def test_k2_schemas_check_says_why_and_exits_1(tmp_path: Path) -> None:
    candidate = _trade_with(trade_id={"type": "long"}, venue=None)
    candidate["fields"].append({"name": "venue", "type": "string"})
    bad = tmp_path / "trade.v3.avsc"
    bad.write_text(json.dumps(candidate))
    wide = {"COLUMNS": "300"}
    result = CliRunner().invoke(
        app, ["schemas", "check", str(bad), "--subject", "market.crypto.trades-value"], env=wide
    )
    assert result.exit_code == 1, result.output
    assert "NOT BACKWARD compatible" in result.output
    assert "cannot read version 1 (schema id 1)" in result.output
    assert "k2.market.Trade.trade_id: type changed from string to long" in result.output
    assert "k2.market.Trade.venue: field added without a default" in result.output

    good = tmp_path / "trade.v2.avsc"
    good.write_text((SCHEMAS_DIR / "trade.v2.avsc").read_text())
    result = CliRunner().invoke(
        app, ["schemas", "check", str(good), "--subject", "market.crypto.trades-value"], env=wide
    )
    assert result.exit_code == 0, result.output
    assert "compatible" in result.output
    assert "v1 (id 1), v2 (id 3)" in result.output

    missing = CliRunner().invoke(app, ["schemas", "check", str(good), "--subject", "no.such-value"], env=wide)
    assert missing.exit_code == 2
    assert "unknown subject 'no.such-value'" in missing.output


def test_k2_schemas_list_and_show() -> None:
    wide = {"COLUMNS": "300"}
    listed = CliRunner().invoke(app, ["schemas", "list"], env=wide)
    assert listed.exit_code == 0, listed.output
    assert "market.equities.trades-value" in listed.output
    assert "v1: 1, v2: 3" in listed.output
    shown = CliRunner().invoke(app, ["schemas", "show", "market.equities.quotes-value", "--version", "1"], env=wide)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == json.loads((SCHEMAS_DIR / "quote.v1.avsc").read_text())
