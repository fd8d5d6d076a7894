"""Confluent Schema Registry adapter (the compose stack). Producers register the repo's newest schema for a
subject (idempotent: an identical schema keeps its id); consumers resolve writer schemas by id."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError as ConfluentRegistryError
from pydantic import SecretStr

from k2_core.exceptions import SchemaRegistryError
from k2_core.model.registry import FileSchemaRegistry, ParsedSchema, SchemaRegistry, parse


class ConfluentSchemaRegistry:
    def __init__(self, url: SecretStr, schemas_dir: Path) -> None:
        # The URL may carry basic-auth credentials (`https://user:pass@host`): revealed to the client alone.
        self.client = SchemaRegistryClient({"url": url.get_secret_value()})
        self.local = FileSchemaRegistry(schemas_dir)
        self._latest: dict[str, tuple[int, ParsedSchema]] = {}
        self._by_id: dict[int, ParsedSchema] = {}

    def latest(self, subject: str) -> tuple[int, ParsedSchema]:
        if subject not in self._latest:
            local_id, _ = self.local.latest(subject)
            raw = self.local.raw[local_id]
            try:
                schema_id = self.client.register_schema(subject, Schema(json.dumps(raw), "AVRO"))
            except ConfluentRegistryError as exc:
                raise SchemaRegistryError(f"cannot register {subject}: {exc}") from exc
            self._latest[subject] = (schema_id, parse(raw))
        return self._latest[subject]

    def by_id(self, schema_id: int) -> ParsedSchema:
        if schema_id not in self._by_id:
            try:
                schema = self.client.get_schema(schema_id)
            except ConfluentRegistryError as exc:
                raise SchemaRegistryError(f"unknown schema id {schema_id}: {exc}") from exc
            self._by_id[schema_id] = parse(json.loads(schema.schema_str or "null"))
        return self._by_id[schema_id]


@cache
def _file_registry(schemas_dir: Path) -> FileSchemaRegistry:
    return FileSchemaRegistry(schemas_dir)


def make_registry(url: SecretStr, schemas_dir: Path) -> SchemaRegistry:
    """Confluent's registry when a URL is configured, else the file-backed one (the embedded default)."""
    return ConfluentSchemaRegistry(url, schemas_dir) if url.get_secret_value() else _file_registry(schemas_dir)
