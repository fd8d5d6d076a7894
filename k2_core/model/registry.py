"""Schema registry access: subjects -> versioned Avro schemas with global integer ids.

The embedded default needs no registry server: `FileSchemaRegistry` is built from the `.avsc` files and
`registry.yaml` in the repo, whose ids are permanent. The compose stack uses Confluent's Schema Registry
through `k2_stream.registry_confluent`, which implements the same protocol.

A subject's versions must each read every earlier version's data (BACKWARD, k2_core.model.compat): the file
registry refuses to load a `registry.yaml` that breaks this, so no producer or ingester starts on it, and the
Confluent adapter checks a version before it registers it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, cast

import fastavro
import yaml

from k2_core.exceptions import ConfigError, SchemaRegistryError
from k2_core.model.compat import check_history

ParsedSchema = dict[str, Any]


class SchemaRegistry(Protocol):
    def latest(self, subject: str) -> tuple[int, ParsedSchema]:
        """The newest (id, parsed schema) of a subject: what producers write with."""
        ...

    def by_id(self, schema_id: int) -> ParsedSchema:
        """The parsed writer schema for a wire-format id."""
        ...

    def subject_names(self) -> list[str]:
        """Every subject the registry knows, sorted."""
        ...

    def versions(self, subject: str) -> list[tuple[int, dict[str, Any]]]:
        """(id, raw schema) of each version of `subject`, oldest first: for compatibility checks and `k2 schemas`."""
        ...


def parse(schema: dict[str, Any]) -> ParsedSchema:
    return cast(ParsedSchema, fastavro.parse_schema(schema, _write_hint=False))


class FileSchemaRegistry:
    def __init__(self, schemas_dir: Path) -> None:
        index_path = schemas_dir / "registry.yaml"
        try:
            index = yaml.safe_load(index_path.read_text())
            self.raw: dict[int, dict[str, Any]] = {
                int(sid): json.loads((schemas_dir / fname).read_text()) for sid, fname in index["schemas"].items()
            }
            self.subjects: dict[str, list[int]] = {s: [int(i) for i in v] for s, v in index["subjects"].items()}
        except (OSError, KeyError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot load schema registry from {schemas_dir}: {exc}") from exc
        for subject, ids in self.subjects.items():
            unknown = [i for i in ids if i not in self.raw]
            if unknown:
                raise ConfigError(f"{index_path}: subject {subject} names unknown schema ids {unknown}")
        try:
            self._parsed = {sid: parse(s) for sid, s in self.raw.items()}
        except (fastavro.schema.SchemaParseException, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{schemas_dir}: a schema does not parse as Avro: {exc}") from exc
        problems = [p for subject in self.subjects for p in check_history(subject, self.versions(subject))]
        if problems:
            raise ConfigError(
                f"{index_path}: a subject's versions are not BACKWARD compatible:\n" + "\n".join(problems)
            )

    def latest(self, subject: str) -> tuple[int, ParsedSchema]:
        try:
            sid = self.subjects[subject][-1]
        except (KeyError, IndexError) as exc:
            raise SchemaRegistryError(f"unknown subject {subject!r}") from exc
        return sid, self._parsed[sid]

    def by_id(self, schema_id: int) -> ParsedSchema:
        try:
            return self._parsed[schema_id]
        except KeyError as exc:
            raise SchemaRegistryError(f"unknown schema id {schema_id}") from exc

    def subject_names(self) -> list[str]:
        return sorted(self.subjects)

    def versions(self, subject: str) -> list[tuple[int, dict[str, Any]]]:
        """(id, raw schema) oldest first: for compatibility checks."""
        try:
            ids = self.subjects[subject]
        except KeyError as exc:
            raise SchemaRegistryError(f"unknown subject {subject!r}") from exc
        return [(sid, self.raw[sid]) for sid in ids]
