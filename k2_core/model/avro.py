"""Avro records in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body."""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro

from k2_core.exceptions import DecodeError, SchemaRegistryError
from k2_core.model.registry import ParsedSchema, SchemaRegistry

MAGIC = 0
_HEADER = struct.Struct(">bI")


def encode(schema_id: int, schema: ParsedSchema, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(_HEADER.pack(MAGIC, schema_id))
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def schema_id_of(payload: bytes | None) -> int:
    if payload is None or len(payload) < _HEADER.size:
        raise DecodeError(f"message too short for the Confluent wire format ({len(payload or b'')} bytes)")
    magic, schema_id = _HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise DecodeError(f"bad magic byte {magic} (expected {MAGIC})")
    return int(schema_id)


class Decoder:
    """Decodes framed records, resolving each writer schema once and reading with the subject's reader schema."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self._schemas: dict[int, ParsedSchema] = {}

    def writer(self, schema_id: int) -> ParsedSchema:
        """The writer schema of a wire-format id, looked up once. An id the registry does not know is a
        `DecodeError` (the message is dead-lettered); a registry that cannot answer raises
        `SchemaRegistryUnavailableError` (the batch is retried), since nothing is known about the message yet."""
        writer = self._schemas.get(schema_id)
        if writer is None:
            try:
                writer = self._schemas[schema_id] = self.registry.by_id(schema_id)
            except SchemaRegistryError as exc:
                raise DecodeError(str(exc)) from exc
        return writer

    def decode(self, payload: bytes | None, reader: ParsedSchema | None = None) -> dict[str, Any]:
        schema_id = schema_id_of(payload)
        assert payload is not None
        writer = self.writer(schema_id)
        buf = io.BytesIO(payload)
        buf.seek(_HEADER.size)
        try:
            record = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # fastavro raises anything from EOFError to ValueError
            raise DecodeError(f"undecodable Avro body for schema id {schema_id}: {exc!r}") from exc
        if buf.tell() != len(payload):
            raise DecodeError(f"{len(payload) - buf.tell()} trailing bytes after the Avro record")
        if not isinstance(record, dict):
            raise DecodeError("Avro body is not a record")
        return record
