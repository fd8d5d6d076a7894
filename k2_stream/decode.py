"""Batch decode: one topic's messages of a micro-batch decoded as columnar Avro blocks, one per writer schema,
then validated with vector checks, with the per-message path (`k2_core.model.avro.Decoder` +
`k2_core.model.records.validate`) as the reference for every message the fast path cannot vouch for.

A topic carries messages of several versions of its subject at once (old producers keep writing version 1 while
new ones write version 2). The messages of each writer schema are read as one block with that writer schema, so no
schema resolution happens per message; the block's columns are then conformed to the table's: the columns of the
table the writer carries, the ones it lacks (a newer version's optional fields) null. The batch's table has the
columns some writer in it carried: a batch of version-1 messages only never makes the table grow a column.

A writer schema takes the fast path when reading it as a block gives exactly what resolving each record to the
reader (the subject's newest version) gives: the reader reads it (k2_core.model.compat), each field they share has
the same type (no promotion), every reader field it lacks defaults to null, and every one of its fields has a type
the length check below can size. Any other writer schema, and any message whose id the registry does not know, goes
the per-message way (an unknown id is a dead letter with its reason, like any undecodable message).

The message bodies (Confluent header included, as a 5-byte fixed field) are framed as one block of an Avro object
container file and read by polars' columnar Avro reader. A block read has no message boundaries, so each decoded
record's encoded length is recomputed from its values and compared with its message's body length: the records
before the first mismatch were each read from exactly their own bytes (by induction), the mismatching message goes
the per-message way, and the rest is decoded again as a new block. A block the reader refuses is split in halves
until the bad message is alone. The length check knows strings, longs and ints (varints), timestamps, DECIMAL(18,8)
bytes, arrays of strings (one block of items and the closing zero, as fastavro and Java write them) and unions of
null with any of those (a one-byte branch index). A varint, decimal or array encoded in more bytes than the minimum
counts as a mismatch too, which only costs the fast path. So a poison message costs a few re-reads, never the
batch, and never lets a misaligned record through.

The vector checks (k2_core.ingest.validate) apply the rule values `validate` applies (k2_core.model.records: the
fields, bounds and `TimeWindow` are stated there once) and are at least as strict (the batch's clock is earlier than
the one `validate` would read): a record that passes them passes `validate`. A record that fails them is decoded and
validated again alone, so its fate and its dead-letter reason are exactly the per-message path's.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Collection, Sequence
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
from k2_core.model.compat import backward_reasons
from k2_core.model.records import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    MAX_DECIMAL,
    check_size,
    validate,
)
from k2_core.model.registry import ParsedSchema
from k2_core.model.tables import TableDef, conform
from k2_core.model.topics import Kind
from k2_core.settings import RecordSettings

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

HEADER_BYTES = 5  # Confluent wire format: magic byte + 4-byte schema id
MIN_BLOCK = 8  # a failing block this small is decoded message by message instead of split further
_SYNC = b"\x00" * 16
_MAX_UNSCALED = int(MAX_DECIMAL.scaleb(DECIMAL_SCALE))  # the bound on |value|, on the unscaled integer
# Field types the length check understands; a schema with any other type is decoded message by message.
_STRING, _LONG, _DECIMAL, _STRINGS = "string", "long", "decimal", "strings"
_MISMATCH = -(1 << 40)  # a size no message has: forces the record's message the per-message way


@dataclass(frozen=True)
class FieldKind:
    """A writer field as the length check sizes it: its kind, and whether it is a union of null and that kind."""

    name: str
    kind: str
    optional: bool = False


def zigzag_varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_ONE_BYTE = np.uint64(1 << 7)  # the first zigzag value a varint needs two bytes for
_EXACT_FLOAT = np.uint64(1 << 53)  # below it every uint64 is exact as a float64
_POWERS_OF_TWO = np.array([1 << k for k in range(64)], dtype=np.uint64)


def _bit_length(u: npt.NDArray[np.uint64]) -> Int64Array:
    """Each value's bit length, read off its float exponent (exact below 2**53; larger values are counted)."""
    _, bits = np.frexp(u.astype(np.float64))
    bits = bits.astype(np.int64)
    big = u >= _EXACT_FLOAT
    if big.any():
        bits[big] = np.searchsorted(_POWERS_OF_TWO, u[big], side="right")
    return bits


def varint_size(values: Int64Array) -> Int64Array:
    """Bytes of the zigzag varint Avro writes for each int64: 7 bits of the zigzag value a byte."""
    values = values.astype(np.int64, copy=False)
    u = ((values << 1) ^ (values >> 63)).view(np.uint64)
    if not len(u):
        return np.zeros(0, dtype=np.int64)
    top = u.max()
    if top < _ONE_BYTE:  # lengths, counts, small numbers: one byte each
        return np.ones(len(u), dtype=np.int64)
    return np.maximum((_bit_length(u) + 6) // 7, 1)


def _plain(t: Any) -> Any:
    """{"type": "long"} -> "long" (a primitive with nothing on it), anything else as it is."""
    if isinstance(t, dict) and set(t) == {"type"} and isinstance(t["type"], str):
        return t["type"]
    return t


def _type_kind(t: Any) -> str | None:
    """The length-check kind of a (non-union) Avro type, or None if it cannot size it."""
    t = _plain(t)
    if t == "string":
        return _STRING
    if t in ("long", "int"):
        return _LONG
    if isinstance(t, dict):
        logical = t.get("logicalType")
        if t.get("type") == "long" and logical == "timestamp-micros":
            return _LONG
        if t.get("type") == "bytes" and logical == "decimal":
            if t.get("precision") == DECIMAL_PRECISION and t.get("scale", 0) == DECIMAL_SCALE:
                return _DECIMAL
            return None
        if t.get("type") == "array" and _plain(t.get("items")) == "string":
            return _STRINGS
    return None


def _field_kinds(schema: ParsedSchema) -> list[FieldKind] | None:
    """Each field of a flat record schema as the length check sizes it, or None if a field has a type it cannot."""
    if schema.get("type") != "record":
        return None
    kinds: list[FieldKind] = []
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, list):
            branches = [b for b in t if b != "null"]
            kind = _type_kind(branches[0]) if len(t) == 2 and len(branches) == 1 else None
            optional = True
        else:
            kind, optional = _type_kind(t), False
        if kind is None:
            return None
        kinds.append(FieldKind(f["name"], kind, optional))
    return kinds


def _normal(t: Any) -> Any:
    """A type without what does not change its encoding or values (docs, aliases, defaults inside)."""
    t = _plain(t)
    if isinstance(t, list):
        return [_normal(b) for b in t]
    if isinstance(t, dict):
        return {k: _normal(v) for k, v in t.items() if k not in ("doc", "aliases", "default")}
    return t


def _reads_as_block(reader: ParsedSchema, writer: ParsedSchema) -> bool:
    """Whether a block read with `writer`, its columns taken by name, equals resolving each record to `reader`:
    the reader reads the writer, shared fields have one type (no promotion), and every reader field the writer
    lacks defaults to null."""
    if backward_reasons(reader, writer):
        return False
    written = {f["name"]: f for f in writer["fields"]}
    for f in reader["fields"]:
        old = written.get(f["name"])
        if old is None:
            if f.get("default", ...) is not None:
                return False
        elif _normal(old["type"]) != _normal(f["type"]):
            return False
    return True


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
    """Bytes of the minimal two's-complement encoding (what Java writes; fastavro writes -2**7, -2**15, ... a byte
    longer, which only sends such a message the per-message way) plus its length prefix."""
    magnitude = np.where(unscaled < 0, ~unscaled, unscaled).view(np.uint64)
    nbytes = _bit_length(magnitude) // 8 + 1  # + the sign bit, rounded up to bytes
    return varint_size(nbytes) + nbytes


def _string_sizes(column: pa.Array) -> Int64Array:
    lengths = as_int64(pc.fill_null(pc.binary_length(column), 0))
    return varint_size(lengths) + lengths


def _strings_sizes(column: pa.Array) -> Int64Array:
    """An array of strings as fastavro and Java write it: the item count (when not empty), the items, a zero."""
    counts = as_int64(pc.fill_null(pc.list_value_length(column), 0))
    items = pc.list_flatten(column)
    per_row = np.zeros(len(column), dtype=np.int64)
    if len(items):
        parents = np.asarray(pc.list_parent_indices(column), dtype=np.int64)
        sums = np.bincount(parents, weights=_string_sizes(items), minlength=len(column))
        per_row = np.rint(sums).astype(np.int64)  # exact: far below 2**53
    return np.where(counts > 0, varint_size(counts), 0) + per_row + 1


@dataclass(frozen=True)
class WriterPlan:
    """How the block path reads one writer schema: its fields as the length check sizes them, the table columns it
    carries (the reader's fields it has that are table columns), and its container header."""

    schema_id: int
    fields: tuple[FieldKind, ...]
    columns: tuple[str, ...]
    header: bytes


@dataclass
class DecodedBatch:
    """The valid records of one topic's messages (unsorted, in the table's created columns plus the extra columns
    some writer in the batch carried), the input position of each row, and the messages refused with their
    dead-letter reasons."""

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
        self._plans: dict[tuple[int, int, str], WriterPlan | None] = {}
        self._carried: dict[tuple[int, int, str], tuple[str, ...]] = {}

    def decode(
        self,
        kind: Kind,
        exchange: str,
        reader_id: int,
        reader: ParsedSchema,
        values: Sequence[bytes | None],
        table_def: TableDef,
        now: datetime,
    ) -> DecodedBatch:
        n = len(values)
        if n < MIN_BLOCK:
            return self._per_message(kind, exchange, reader_id, reader, values, range(n), table_def, [], [])
        try:
            lens = np.fromiter(map(len, values), dtype=np.int64, count=n)  # type: ignore[arg-type]
        except TypeError:  # a message without a value
            lens = np.array([len(v) if v is not None else -1 for v in values], dtype=np.int64)
        ok = (lens >= HEADER_BYTES) & (lens <= self.limits.max_message_bytes)
        joined = None
        if ok.all():
            joined = b"".join(values)  # type: ignore[arg-type]
            buf = np.frombuffer(joined, dtype=np.uint8)
            starts = np.zeros(n, dtype=np.int64)
            np.cumsum(lens[:-1], out=starts[1:])
        else:
            # Messages too short or too large never enter the block; they are still laid out in `buf`.
            buf = np.frombuffer(b"".join(v or b"" for v in values), dtype=np.uint8)
            sizes = np.maximum(lens, 0)
            starts = np.zeros(n, dtype=np.int64)
            np.cumsum(sizes[:-1], out=starts[1:])
        framed = np.flatnonzero(ok)
        header = buf[starts[framed][:, None] + np.arange(HEADER_BYTES)].astype(np.uint32)
        framed = framed[header[:, 0] == 0]
        header = header[header[:, 0] == 0]
        schema_ids = (header[:, 1] << 24) | (header[:, 2] << 16) | (header[:, 3] << 8) | header[:, 4]
        fast = np.zeros(n, dtype=np.bool_)
        pending: list[tuple[WriterPlan, Int64Array]] = []
        for schema_id in np.unique(schema_ids).tolist():
            plan = self._plan(int(schema_id), reader_id, reader, table_def)
            if plan is None:
                continue
            part = framed[schema_ids == schema_id]
            fast[part] = True
            pending.append((plan, part))
        tables: list[pa.Table] = []
        positions: list[Int64Array] = []
        slow: list[int] = np.flatnonzero(~fast).tolist()
        columnar = 0
        while pending:
            plan, part = pending.pop()
            if len(part) < MIN_BLOCK:
                slow.extend(part.tolist())
                continue
            body_lens = lens[part]
            table = self._read_block(plan, joined, buf, starts[part], body_lens)
            if table is None:
                mid = len(part) // 2
                pending += [(plan, part[mid:]), (plan, part[:mid])]
                continue
            mismatch = np.flatnonzero(self._encoded_sizes(table, plan.fields) + HEADER_BYTES != body_lens)
            good = len(part) if mismatch.size == 0 else int(mismatch[0])
            if good < len(part):
                slow.append(int(part[good]))
                if good + 1 < len(part):
                    pending.append((plan, part[good + 1 :]))
                table = table.slice(0, good)
            columnar += good
            valid = self._checks(kind, exchange, table, now)
            if not valid.all():
                slow.extend(part[:good][~valid].tolist())
                table = table.filter(pa.array(valid))
            tables.append(conform(table, table_def.arrow_schema_with(plan.columns)))
            positions.append(part[:good][valid])
        result = self._per_message(
            kind, exchange, reader_id, reader, values, sorted(slow), table_def, tables, positions
        )
        result.columnar = columnar
        return result

    # ---- which writer schemas the block reader takes ------------------------------------------------------------

    def _plan(self, schema_id: int, reader_id: int, reader: ParsedSchema, table_def: TableDef) -> WriterPlan | None:
        """How to read `schema_id`'s messages as a block, or None when they go one by one. An id the registry does
        not know is not remembered: its messages are dead letters now, and it may be registered later."""
        key = (schema_id, reader_id, table_def.name)
        if key in self._plans:
            return self._plans[key]
        try:
            writer = self.decoder.writer(schema_id)
        except DecodeError:
            return None
        fields = _field_kinds(writer)
        plan = None
        if fields is not None and _reads_as_block(reader, writer):
            columns = self._columns(schema_id, reader_id, reader, table_def)
            plan = WriterPlan(schema_id, tuple(fields), columns, _container_header(writer))
        self._plans[key] = plan
        return plan

    def _columns(self, schema_id: int, reader_id: int, reader: ParsedSchema, table_def: TableDef) -> tuple[str, ...]:
        """The table columns a writer schema's records carry once read: fields of both the writer and the reader."""
        key = (schema_id, reader_id, table_def.name)
        columns = self._carried.get(key)
        if columns is None:
            both = {f["name"] for f in self.decoder.writer(schema_id)["fields"]} & {f["name"] for f in reader["fields"]}
            columns = self._carried[key] = tuple(c for c in table_def.column_names if c in both)
        return columns

    # ---- the block reader --------------------------------------------------------------------------------------

    def _read_block(
        self,
        plan: WriterPlan,
        joined: bytes | None,
        buf: npt.NDArray[np.uint8],
        starts: Int64Array,
        lens: Int64Array,
    ) -> pa.Table | None:
        """Read whole framed messages (`starts`/`lens` into `buf`, whose bytes are `joined` when every message is
        in it) as one container block of `plan`'s schema."""
        total = int(lens.sum())
        first, end = int(starts[0]), int(starts[-1] + lens[-1])
        if joined is not None and end - first == total == len(joined):  # all of them: no copy to make
            body = joined
        elif end - first == total:  # consecutive messages: the block is a slice of the batch's bytes
            body = buf[first:end].tobytes()
        else:  # keep each message's bytes, in order: a mask that is 1 from each message's start to its end
            edges = np.zeros(len(buf) + 1, dtype=np.int8)
            edges[starts] = 1
            edges[starts + lens] -= 1
            body = buf[np.cumsum(edges[:-1], dtype=np.int8).view(np.bool_)].tobytes()
        block = b"".join((plan.header, zigzag_varint(len(lens)), zigzag_varint(total), body, _SYNC))
        try:
            table = pl.read_avro(io.BytesIO(block), columns=[f.name for f in plan.fields]).to_arrow()
        except (PolarsError, PanicException, OSError, ValueError, OverflowError, struct.error):
            return None
        return table if table.num_rows == len(lens) else None

    @staticmethod
    def _encoded_sizes(table: pa.Table, fields: Collection[FieldKind]) -> Int64Array:
        total = np.zeros(table.num_rows, dtype=np.int64)
        for f in fields:
            col = table.column(f.name).combine_chunks()
            if f.kind == _STRING:
                size = _string_sizes(col)
            elif f.kind == _LONG:
                size = varint_size(as_int64(pc.fill_null(col.cast(pa.int64()), 0)))
            elif f.kind == _STRINGS:
                size = _strings_sizes(col)
            else:
                values, fits = unscaled(col)
                # A value beyond int64 is beyond DECIMAL(18,8): force a mismatch so the message goes alone.
                size = np.where(fits, _decimal_size(values), _MISMATCH)
            if f.optional:  # the union's branch index, and the value only when there is one
                present = ~np.asarray(col.is_null(), dtype=np.bool_)
                size = 1 + np.where(present, size, 0)
            total += size
        return total

    # ---- vector validation -------------------------------------------------------------------------------------

    def _checks(self, kind: Kind, exchange: str, table: pa.Table, now: datetime) -> BoolArray:
        """True where the record surely passes `validate`; False rows are re-checked one by one."""
        return surely_valid(kind, exchange, table, now, self.limits)

    # ---- the reference path ------------------------------------------------------------------------------------

    def _per_message(
        self,
        kind: Kind,
        exchange: str,
        reader_id: int,
        reader: ParsedSchema,
        values: Sequence[bytes | None],
        indices: Sequence[int],
        table_def: TableDef,
        tables: list[pa.Table],
        positions: list[Int64Array],
    ) -> DecodedBatch:
        records: list[dict[str, Any]] = []
        kept: list[int] = []
        dead: list[tuple[int, str]] = []
        carried: set[str] = set()
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
            assert value is not None  # decoded
            carried.update(self._columns(int.from_bytes(value[1:HEADER_BYTES], "big"), reader_id, reader, table_def))
        if records:
            tables.append(pa.Table.from_pylist(records, schema=table_def.arrow_schema_with(carried)))
            positions.append(np.array(kept, dtype=np.int64))
        schema = table_def.arrow_schema_with({name for t in tables for name in t.column_names})
        table = pa.concat_tables([conform(t, schema) for t in tables]) if tables else schema.empty_table()
        pos = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
        return DecodedBatch(table, pos, dead, 0, len(indices))
