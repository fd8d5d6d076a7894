"""Confluent Schema Registry adapter (the compose stack). Producers register the repo's newest schema for a
subject (idempotent: an identical schema keeps its id); consumers resolve writer schemas by id.

A version is registered only if it reads every version the registry already holds for its subject (BACKWARD,
k2_core.model.compat): the registry's own compatibility setting may be laxer than K2's rule (NONE, or a
per-subject override), and its refusal would say less. So the check runs here first and refuses with the reasons
(`IncompatibleSchemaError`), before anything is registered or produced.

An id the registry does not know (HTTP 404) is a `SchemaRegistryError`: the message carrying it is dead-lettered.
A registry that does not answer, or answers with a server error, is a `SchemaRegistryUnavailableError`: nothing is
known about the message, so the ingester retries the batch instead of dead-lettering good data.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError as ConfluentRegistryError
from pydantic import SecretStr

from k2_core.exceptions import IncompatibleSchemaError, SchemaRegistryError, SchemaRegistryUnavailableError
from k2_core.model.compat import check_subject
from k2_core.model.registry import FileSchemaRegistry, ParsedSchema, SchemaRegistry, parse

NOT_FOUND = 404


class ConfluentSchemaRegistry:
    def __init__(self, url: SecretStr, schemas_dir: Path, client: SchemaRegistryClient | None = None) -> None:
        # The URL may carry basic-auth credentials (`https://user:pass@host`): revealed to the client alone.
        self.client = client or SchemaRegistryClient({"url": url.get_secret_value()})
        self.local = FileSchemaRegistry(schemas_dir)
        self._latest: dict[str, tuple[int, ParsedSchema]] = {}
        self._by_id: dict[int, ParsedSchema] = {}

    def latest(self, subject: str) -> tuple[int, ParsedSchema]:
        if subject not in self._latest:
            local_id, _ = self.local.latest(subject)
            raw = self.local.raw[local_id]
            verdict = check_subject(subject, raw, self.versions(subject))
            if not verdict.compatible:
                raise IncompatibleSchemaError(
                    f"refusing to register {raw.get('name')} (schemas/avro id {local_id}) under {subject}: it is not "
                    f"BACKWARD compatible with the registered versions\n{verdict.explain()}"
                )
            schema_id = self._call(
                f"register {subject}", lambda: self.client.register_schema(subject, Schema(json.dumps(raw), "AVRO"))
            )
            self._latest[subject] = (schema_id, parse(raw))
        return self._latest[subject]

    def by_id(self, schema_id: int) -> ParsedSchema:
        if schema_id not in self._by_id:
            schema = self._call(f"look up schema id {schema_id}", lambda: self.client.get_schema(schema_id))
            self._by_id[schema_id] = parse(json.loads(schema.schema_str or "null"))
        return self._by_id[schema_id]

    def subject_names(self) -> list[str]:
        return sorted(self._call("list subjects", self.client.get_subjects))

    def versions(self, subject: str) -> list[tuple[int, dict[str, Any]]]:
        """The versions the registry holds for `subject`, oldest first (none for a subject it does not know)."""
        try:
            numbers = self._call(f"list versions of {subject}", lambda: self.client.get_versions(subject))
        except SchemaRegistryError:  # a subject not registered yet
            return []
        out = []
        for number in sorted(numbers):
            registered = self._call(
                f"read version {number} of {subject}", lambda n=number: self.client.get_version(subject, n)
            )
            out.append((int(registered.schema_id or 0), json.loads(registered.schema.schema_str or "null")))
        return out

    @staticmethod
    def _call(what: str, call: Any) -> Any:
        """`call()`, its failures told apart: not found (the registry answered: the thing does not exist) from
        unavailable (it could not answer)."""
        try:
            return call()
        except ConfluentRegistryError as exc:
            if exc.http_status_code == NOT_FOUND:
                raise SchemaRegistryError(f"cannot {what}: {exc}") from exc
            raise SchemaRegistryUnavailableError(f"cannot {what}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise SchemaRegistryUnavailableError(f"cannot {what}: {exc}") from exc
        except Exception as exc:  # the HTTP client's own transport errors: no answer at all
            raise SchemaRegistryUnavailableError(f"cannot {what}: {type(exc).__name__}: {exc}") from exc


@cache
def _file_registry(schemas_dir: Path) -> FileSchemaRegistry:
    return FileSchemaRegistry(schemas_dir)


def make_registry(url: SecretStr, schemas_dir: Path) -> SchemaRegistry:
    """Confluent's registry when a URL is configured, else the file-backed one (the embedded default)."""
    return ConfluentSchemaRegistry(url, schemas_dir) if url.get_secret_value() else _file_registry(schemas_dir)
