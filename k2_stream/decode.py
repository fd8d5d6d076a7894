"""Batch decode: one topic's messages of a micro-batch decoded as a single columnar Avro block, then validated with
vector checks, with the per-message path (`k2_core.model.avro.Decoder` + `k2_core.model.records.validate`) as the
reference for every message the fast path cannot vouch for.

The message bodies (Confluent header stripped) are framed as one block of an Avro object container file and read
by polars' columnar Avro reader. A block read has no message boundaries, so each decoded record's encoded length
is recomputed from its values and compared with its message's body length: the records before the first mismatch
were each read from exactly their own bytes (by induction), the mismatching message goes the per-message way, and
the rest is decoded again as a new block. A block the reader refuses is split in halves until the bad message is
alone. A varint or decimal encoded in more bytes than the minimum counts as a mismatch too, which only costs the
fast path. So a poison message costs a few re-reads, never the batch, and never lets a misaligned record through.

The vector checks (k2_core.ingest.validate) apply the rule values `validate` applies (k2_core.model.records: the
fields, bounds and `TimeWindow` are stated there once) and are at least as strict (the batch's clock is earlier than
the one `validate` would read): a record that passes them passes `validate`. A record that fails them is decoded and
validated again alone, so its fate and its dead-letter reason are exactly the per-message path's.

Only messages whose writer schema is the subject's reader schema take the fast path; older writer schemas need
schema resolution, which the per-message path does.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from polars.exceptions import PanicException, PolarsError

from k2_core.exceptions import DecodeError, MessageTooLargeError, ValidationError
from k2_core.ingest.validate import as_int64, surely_valid, unscaled
from k2_core.model.avro import Decoder
from k2_core.model.records import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    MAX_DECIMAL,
    check_size,
    validate,
)
from k2_core.model.registry import ParsedSchema
from k2_core.model.topics import Kind
from k2_core.settings import RecordSettings

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

HEADER_BYTES = 5  # Confluent wire format: magic byte + 4-byte schema id
MIN_BLOCK = 8  # a failing block this small is decoded message by message instead of split further
_SYNC = b"\x00" * 16
_MAX_UNSCALED = int(MAX_DECIMAL.scaleb(DECIMAL_SCALE))  # the bound on |value|, on the unscaled integer
# Field types the length check understands; a schema with any other type is decoded message by message.
_STRING, _LONG, _DECIMAL = "string", "long", "decimal"


def zigzag_varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def varint_size(values: Int64Array) -> Int64Array:
    """Bytes of the zigzag varint Avro writes for each int64."""
    z = (values.astype(np.int64) << 1) ^ (values.astype(np.int64) >> 63)
    u = z.view(np.uint64)
    size = np.ones(len(u), dtype=np.int64)
    for k in range(1, 10):
        size += u >= np.uint64(1 << (7 * k))
    return size


def _field_kinds(schema: ParsedSchema) -> list[tuple[str, str]] | None:
    """(name, kind) per field of a flat record schema, or None if a field has a type the length check cannot size."""
    if schema.get("type") != "record":
        return None
    kinds: list[tuple[str, str]] = []
    for f in schema["fields"]:
        t = f["type"]
        if t == "string":
            kinds.append((f["name"], _STRING))
        elif t == "long" or (
            isinstance(t, dict)
            and t.get("type") == "long"
            and t.get("logicalType")
            in (
                None,
                "timestamp-micros",
            )
        ):
            kinds.append((f["name"], _LONG))
        elif isinstance(t, dict) and t.get("type") == "bytes" and t.get("logicalType") == "decimal":
            if t.get("precision") != DECIMAL_PRECISION or t.get("scale") != DECIMAL_SCALE:
                return None
            kinds.append((f["name"], _DECIMAL))
        else:
            return None
    return kinds


WIRE_HEADER_FIELD = "__k2_wire_header"


def _container_header(schema: ParsedSchema) -> bytes:
    """An object-container header whose record schema is `schema` behind a 5-byte `fixed` field: each framed
    message (Confluent header included) is then one record as it stands, so a run of messages is a block as is."""
    framed = dict(schema)
    framed["fields"] = [
        {"name": WIRE_HEADER_FIELD, "type": {"type": "fixed", "name": "K2WireHeader", "size": HEADER_BYTES}},
        *schema["fields"],
    ]
    meta = {"avro.schema": json.dumps(framed).encode(), "avro.codec": b"null"}
    out = bytearray(b"Obj\x01")
    out += zigzag_varint(len(meta))
    for key, value in meta.items():
        out += zigzag_varint(len(key)) + key.encode() + zigzag_varint(len(value)) + value
    out += zigzag_varint(0) + _SYNC
    return bytes(out)


def _decimal_size(unscaled: Int64Array) -> Int64Array:
    """Bytes of the minimal two's-complement encoding (what fastavro and Java write) plus its length prefix."""
    magnitude = np.where(unscaled < 0, ~unscaled, unscaled).view(np.uint64)
    bits = np.zeros(len(magnitude), dtype=np.int64)
    m = magnitude.copy()
    for shift in (32, 16, 8, 4, 2, 1):
        big = m >= np.uint64(1 << shift)
        bits += np.where(big, shift, 0)
        m = np.where(big, m >> np.uint64(shift), m)
    bits += (m > 0).astype(np.int64)
    nbytes = (bits + 1 + 7) // 8  # + sign bit
    return varint_size(nbytes) + nbytes


@dataclass
class DecodedBatch:
    """The valid records of one topic's messages (unsorted, in the table's Arrow schema), the input position of
    each row, and the messages refused with their dead-letter reasons."""

    table: pa.Table
    positions: Int64Array
    dead: list[tuple[int, str]] = field(default_factory=list)
    columnar: int = 0  # messages decoded by the block reader
    per_message: int = 0  # messages decoded one by one


class BatchDecoder:
    """Decodes one topic's messages at a time: `kind` and `exchange` are the topic's."""

    def __init__(self, decoder: Decoder, limits: RecordSettings) -> None:
        self.decoder = decoder
        self.limits = limits
        self._headers: dict[int, bytes] = {}
        self._kinds: dict[int, list[tuple[str, str]] | None] = {}

    def decode(
        self,
        kind: Kind,
        exchange: str,
        reader_id: int,
        reader: ParsedSchema,
        values: Sequence[bytes | None],
        arrow_schema: pa.Schema,
        now: datetime,
    ) -> DecodedBatch:
        n = len(values)
        fields = self._kinds.get(reader_id, ...)
        if fields is ...:
            fields = self._kinds[reader_id] = _field_kinds(reader)
        if fields is None or n < MIN_BLOCK:
            return self._per_message(kind, exchange, reader, values, range(n), arrow_schema, [], [])
        try:
            lens = np.fromiter(map(len, values), dtype=np.int64, count=n)  # type: ignore[arg-type]
        except TypeError:  # a message without a value
            lens = np.array([len(v) if v is not None else -1 for v in values], dtype=np.int64)
        ok = (lens >= HEADER_BYTES) & (lens <= self.limits.max_message_bytes)
        if ok.all():
            buf = np.frombuffer(b"".join(values), dtype=np.uint8)  # type: ignore[arg-type]
            starts = np.zeros(n, dtype=np.int64)
            np.cumsum(lens[:-1], out=starts[1:])
        else:
            # Messages too short or too large never enter the block; they are still laid out in `buf`.
            buf = np.frombuffer(b"".join(v or b"" for v in values), dtype=np.uint8)
            sizes = np.maximum(lens, 0)
            starts = np.zeros(n, dtype=np.int64)
            np.cumsum(sizes[:-1], out=starts[1:])
        header = buf[starts[ok][:, None] + np.arange(HEADER_BYTES)].astype(np.uint32)
        schema_ids = (header[:, 1] << 24) | (header[:, 2] << 16) | (header[:, 3] << 8) | header[:, 4]
        fast = np.zeros(n, dtype=np.bool_)
        fast[ok] = (header[:, 0] == 0) & (schema_ids == reader_id)
        fast_idx = np.flatnonzero(fast)
        tables: list[pa.Table] = []
        positions: list[Int64Array] = []
        slow: list[int] = np.flatnonzero(~fast).tolist()
        pending = [fast_idx] if fast_idx.size else []
        columnar = 0
        while pending:
            part = pending.pop()
            if len(part) < MIN_BLOCK:
                slow.extend(part.tolist())
                continue
            body_lens = lens[part]
            table = self._read_block(reader, reader_id, buf, starts[part], body_lens)
            if table is None:
                mid = len(part) // 2
                pending += [part[mid:], part[:mid]]
                continue
            mismatch = np.flatnonzero(self._encoded_sizes(table, fields) + HEADER_BYTES != body_lens)
            good = len(part) if mismatch.size == 0 else int(mismatch[0])
            if good < len(part):
                slow.append(int(part[good]))
                if good + 1 < len(part):
                    pending.append(part[good + 1 :])
                table = table.slice(0, good)
            columnar += good
            valid = self._checks(kind, exchange, table, now)
            if not valid.all():
                slow.extend(part[:good][~valid].tolist())
                table = table.filter(pa.array(valid))
            tables.append(self._conform(table, arrow_schema))
            positions.append(part[:good][valid])
        result = self._per_message(kind, exchange, reader, values, sorted(slow), arrow_schema, tables, positions)
        result.columnar = columnar
        return result

    # ---- the block reader --------------------------------------------------------------------------------------

    def _read_block(
        self,
        reader: ParsedSchema,
        reader_id: int,
        buf: npt.NDArray[np.uint8],
        starts: Int64Array,
        lens: Int64Array,
    ) -> pa.Table | None:
        """Read whole framed messages (`starts`/`lens` into `buf`) as one container block."""
        header = self._headers.get(reader_id)
        if header is None:
            header = self._headers[reader_id] = _container_header(reader)
        total = int(lens.sum())
        first, end = int(starts[0]), int(starts[-1] + lens[-1])
        if end - first == total:  # consecutive messages: the block is a slice of the batch's bytes
            body = buf[first:end].tobytes()
        else:  # keep each message's bytes, in order: a mask that is 1 from each message's start to its end
            edges = np.zeros(len(buf) + 1, dtype=np.int8)
            edges[starts] = 1
            edges[starts + lens] -= 1
            body = buf[np.cumsum(edges[:-1], dtype=np.int8).view(np.bool_)].tobytes()
        block = b"".join((header, zigzag_varint(len(lens)), zigzag_varint(total), body, _SYNC))
        try:
            table = pl.read_avro(io.BytesIO(block), columns=[f["name"] for f in reader["fields"]]).to_arrow()
        except (PolarsError, PanicException, OSError, ValueError, OverflowError, struct.error):
            return None
        return table if table.num_rows == len(lens) else None

    @staticmethod
    def _encoded_sizes(table: pa.Table, fields: list[tuple[str, str]]) -> Int64Array:
        total = np.zeros(table.num_rows, dtype=np.int64)
        for name, kind in fields:
            col = table.column(name)
            if kind == _STRING:
                lengths = as_int64(pc.binary_length(col))
                total += varint_size(lengths) + lengths
            elif kind == _LONG:
                total += varint_size(as_int64(col))
            else:
                values, fits = unscaled(col)
                # A value beyond int64 is beyond DECIMAL(18,8): force a mismatch so the message goes alone.
                total += np.where(fits, _decimal_size(values), -(1 << 40))
        return total

    # ---- vector validation -------------------------------------------------------------------------------------

    def _checks(self, kind: Kind, exchange: str, table: pa.Table, now: datetime) -> BoolArray:
        """True where the record surely passes `validate`; False rows are re-checked one by one."""
        return surely_valid(kind, exchange, table, now, self.limits)

    @staticmethod
    def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
        columns = [table.column(f.name).cast(f.type) for f in schema]
        return pa.Table.from_arrays(columns, schema=schema)

    # ---- the reference path ------------------------------------------------------------------------------------

    def _per_message(
        self,
        kind: Kind,
        exchange: str,
        reader: ParsedSchema,
        values: Sequence[bytes | None],
        indices: Sequence[int],
        arrow_schema: pa.Schema,
        tables: list[pa.Table],
        positions: list[Int64Array],
    ) -> DecodedBatch:
        records: list[dict[str, Any]] = []
        kept: list[int] = []
        dead: list[tuple[int, str]] = []
        for i in indices:
            value = values[i]
            try:
                check_size(value, self.limits.max_message_bytes)
                record = self.decoder.decode(value, reader)
                validate(kind, exchange, record, self.limits)
            except (DecodeError, ValidationError, MessageTooLargeError) as exc:
                dead.append((i, f"{type(exc).__name__}: {exc}"))
                continue
            records.append(record)
            kept.append(i)
        if records:
            tables.append(pa.Table.from_pylist(records, schema=arrow_schema))
            positions.append(np.array(kept, dtype=np.int64))
        table = pa.concat_tables(tables) if tables else arrow_schema.empty_table()
        pos = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
        return DecodedBatch(table, pos, dead, 0, len(indices))
