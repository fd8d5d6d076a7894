"""The Confluent Schema Registry adapter against confluent-kafka's own in-memory registry client: a version is
registered only if it reads every version the registry holds (else refused with the reasons, nothing registered), an
unknown id is a dead letter's reason, and a registry that cannot answer is told apart from one that says "no"."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import MockSchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError as ConfluentRegistryError
from pydantic import SecretStr

from k2_core.exceptions import (
    DecodeError,
    IncompatibleSchemaError,
    SchemaRegistryError,
    SchemaRegistryUnavailableError,
)
from k2_core.model.avro import Decoder
from k2_core.settings import KafkaSettings
from k2_stream.registry_confluent import ConfluentSchemaRegistry

SCHEMAS = KafkaSettings().schemas_dir
SUBJECT = "market.equities.trades-value"


def avsc(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())


def adapter(*registered: dict[str, Any]) -> tuple[ConfluentSchemaRegistry, MockSchemaRegistryClient]:
    client = MockSchemaRegistryClient({"url": "mock://k2-test"})
    for schema in registered:
        client.register_schema(SUBJECT, Schema(json.dumps(schema), "AVRO"))
    return ConfluentSchemaRegistry(SecretStr("mock://k2-test"), SCHEMAS, client=client), client


def test_the_newest_version_is_registered_after_the_ones_it_reads() -> None:
    registry, client = adapter(avsc("trade.v1.avsc"))
    schema_id, schema = registry.latest(SUBJECT)
    assert sorted(client.get_versions(SUBJECT)) == [1, 2]
    assert [f["name"] for f in schema["fields"]][-1] == "seller_order_id"
    assert registry.by_id(schema_id)["name"] == "k2.market.Trade"
    assert [sid for sid, _ in registry.versions(SUBJECT)][-1] == schema_id


def test_a_version_that_cannot_read_a_registered_one_is_refused_before_registering() -> None:
    """Someone registered a version with prices at scale 6: K2's version 2 would read those prices a hundred times
    too large. The producer path refuses, says why, and registers nothing."""
    other = avsc("trade.v1.avsc")
    other["fields"] = [{**f, "type": {**f["type"], "scale": 6}} if f["name"] == "price" else f for f in other["fields"]]
    registry, client = adapter(other)
    with pytest.raises(IncompatibleSchemaError) as refused:
        registry.latest(SUBJECT)
    message = str(refused.value)
    assert "not BACKWARD compatible with the registered versions" in message
    assert "cannot read version 1" in message
    assert "k2.market.Trade.price: decimal scale changed from 6 to 8" in message
    assert client.get_versions(SUBJECT) == [1]


class Failing(MockSchemaRegistryClient):
    """A registry client whose lookups fail as `error` says."""

    def __init__(self, error: Exception) -> None:
        super().__init__({"url": "mock://failing"})
        self.error = error

    def get_schema(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


def test_an_unknown_id_is_a_dead_letter_and_an_unanswering_registry_is_retried() -> None:
    registry, _ = adapter(avsc("trade.v1.avsc"))
    with pytest.raises(SchemaRegistryError, match="look up schema id 999"):
        registry.by_id(999)
    frame = b"\x00" + (999).to_bytes(4, "big") + b"\x00"
    with pytest.raises(DecodeError, match="schema id 999"):
        Decoder(registry).decode(frame)

    for error in (
        ConfluentRegistryError(503, 50301, "Service unavailable"),
        ConnectionRefusedError("connection refused"),
        RuntimeError("transport failed"),  # the HTTP client's own errors
    ):
        down = ConfluentSchemaRegistry(SecretStr("mock://failing"), SCHEMAS, client=Failing(error))
        with pytest.raises(SchemaRegistryUnavailableError):
            down.by_id(3)
        with pytest.raises(SchemaRegistryUnavailableError):  # not a DecodeError: the message is not dead-lettered
            Decoder(down).decode(b"\x00\x00\x00\x00\x03\x00")
