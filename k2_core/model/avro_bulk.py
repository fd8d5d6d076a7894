"""Whole Arrow tables as Confluent-framed Avro messages, encoded column by column with numpy.

`encode` (k2_core.model.avro) writes one record per call through fastavro, a few microseconds each: a replay of a
recorded file spent most of its time there. `BulkEncoder` writes the same bytes for every row of a table at once,
byte for byte what fastavro's `schemaless_writer` writes (the property tests hold it to that), so a consumer cannot
tell which one wrote a message.

How: every field of a block of rows becomes one or two *segments*, a uint8 matrix with a row per record and as
many columns as the field's longest encoding in the block, plus each row's true length (a varint is 1 to 10 bytes, a
string its length prefix and then its bytes, left-aligned and padded). The segments of all fields, in schema order,
side by side make one matrix whose rows are the records with padding between their fields; a boolean mask of the
bytes that are not padding, applied to that matrix, yields the records' bytes back to back in row-major order, which
is the messages one after the other. Rows are taken a block at a time so the matrices stay small.

The Avro encodings written (Avro 1.11 specification, "Binary encoding"), as fastavro writes them:

- int, long (and timestamp-micros, a long): zigzag, then a varint of 7-bit groups, least significant first;
- string, bytes: the byte length as a long, then the bytes (strings as UTF-8, as Arrow holds them);
- decimal on bytes: the unscaled integer big-endian two's complement in `(bit_length(|v|) + 8) // 8` bytes, as a
  bytes value. That is the minimal two's complement for every value except the negative powers of two from -2**7 on
  (-128 takes 2 bytes, ff80, where 80 would do); fastavro writes it so, and so does this;
- boolean: one byte; float, double: IEEE 754 little-endian;
- enum: the symbol's index as an int;
- array: one block holding every item behind their count, then the empty block (a 0) that ends it; an empty array is
  the 0 alone;
- a union of null and one other type: the branch index as a long, then the value (nothing for null). A field whose
  default is null may have no column at all: every row writes null, as fastavro writes a record without the field.

Any other construct (nested records, maps, fixed, other unions, other logical types) is refused with an EncodeError
when the encoder is built, not written approximately.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from k2_core.exceptions import EncodeError
from k2_core.model.registry import ParsedSchema

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

MAGIC = 0
HEADER_BYTES = 5  # magic byte + 4-byte big-endian schema id
# Rows encoded together: enough to amortise numpy's per-call cost, few enough for the block's matrices (about 100
# bytes a row for a trade) to stay in cache. Blocks with long strings hold fewer rows (BLOCK_BYTES).
BLOCK_ROWS = 1 << 15
BLOCK_BYTES = 8 << 20
_VARINT_MAX = 10
_INT32 = (-(2**31), 2**31 - 1)
_VARIABLE = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
_SEVEN_BIT_STEPS = np.array([1 << (7 * k) for k in range(1, _VARINT_MAX)], dtype=np.uint64)  # a varint's next byte
_SIGN_BIT_STEPS = np.array([1 << (8 * k - 1) for k in range(1, 9)], dtype=np.uint64)  # two's complement's next byte


@dataclass(frozen=True)
class EncodedRows:
    """Messages back to back in `data`; message i is `data[offsets[i]:offsets[i + 1]]`."""

    data: bytes
    offsets: I64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def __iter__(self) -> Iterator[bytes]:
        data = self.data
        bounds = self.offsets.tolist()
        for start, end in pairwise(bounds):
            yield data[start:end]

    def tolist(self) -> list[bytes]:
        return list(self)


@dataclass
class _Segment:
    """A field's bytes for a block: row i's are `bytes[i, :lengths[i]]`. `full`: every row uses every column (a
    fixed-size encoding), so no mask needs computing."""

    bytes: U8
    lengths: I64
    full: bool = False


# ---- the encodings, each over a block's values ---------------------------------------------------------------------


def _byte_sizes(magnitude: npt.NDArray[np.uint64]) -> I64:
    """`(bit_length(m) + 8) // 8` of each uint64: 1 below 2**7, 2 below 2**15, ... (exact, unlike a float log2)."""
    return np.searchsorted(_SIGN_BIT_STEPS, magnitude, side="right").astype(np.int64) + 1


def _uniform(lengths: I64) -> bool:
    return len(lengths) > 0 and int(lengths.min()) == int(lengths.max())


def _varints(values: I64) -> _Segment:
    """Zigzag varints of int64 values: what Avro writes for an int or a long."""
    n = len(values)
    zigzag = ((values << 1) ^ (values >> 63)).view(np.uint64)
    lengths = np.searchsorted(_SEVEN_BIT_STEPS, zigzag, side="right").astype(np.int64) + 1
    width = int(lengths.max()) if n else 0
    out = np.empty((n, width), dtype=np.uint8)
    full = _uniform(lengths)  # typical: a block's timestamps or sequence numbers all take the same bytes
    for k in range(width):
        group = ((zigzag >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        if full:
            out[:, k] = group | np.uint8(0x80 if k + 1 < width else 0)
        else:
            out[:, k] = group | ((lengths > k + 1).astype(np.uint8) << np.uint8(7))
    return _Segment(out, lengths, full)


def _padded(data: U8, starts: I64, lengths: I64) -> U8:
    """Row i holds `data[starts[i]:starts[i] + lengths[i]]`, left-aligned, the rest of the row junk."""
    width = int(lengths.max()) if len(lengths) else 0
    if width == 0 or len(data) == 0:
        return np.zeros((len(lengths), width), dtype=np.uint8)
    index = starts[:, None] + np.arange(width, dtype=np.int64)[None, :]
    np.minimum(index, len(data) - 1, out=index)
    return data[index]


def _binary_parts(column: pa.Array) -> tuple[U8, I64, I64]:
    """A string or binary column's data buffer, each value's start in it and its byte length."""
    if pa.types.is_string(column.type) or pa.types.is_binary(column.type):
        offset_type: type[np.int32] | type[np.int64] = np.int32
    else:
        offset_type = np.int64
    n = len(column)
    buffers = column.buffers()
    raw = np.frombuffer(buffers[1], dtype=offset_type, count=column.offset + n + 1)[column.offset :]
    offsets: I64 = raw.astype(np.int64, copy=False)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return data, offsets[:-1], np.diff(offsets)


def _strings(column: pa.Array) -> list[_Segment]:
    data, starts, lengths = _binary_parts(column)
    if _uniform(lengths):
        # values of one length (a symbol, an exchange, ids of as many digits) lie in the buffer as a matrix already
        size = int(lengths[0])
        first = int(starts[0])
        values = data[first : first + size * len(lengths)].reshape(len(lengths), size)
        return [_varints(lengths), _Segment(values, lengths, full=True)]
    return [_varints(lengths), _Segment(_padded(data, starts, lengths), lengths)]


def _decimal_words(column: pa.Array) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], U8]:
    """A decimal128 column's unscaled values: low and high 64-bit words, and the 16 bytes big-endian."""
    n = len(column)
    raw = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=16 * (column.offset + n))[16 * column.offset :]
    words = raw.view(np.uint64).reshape(n, 2)
    return words[:, 0], words[:, 1], raw.reshape(n, 16)[:, ::-1]


def _decimals(column: pa.Array) -> list[_Segment]:
    """fastavro's decimal bytes: `(bit_length(|v|) + 8) // 8` bytes of two's complement, behind their length."""
    n = len(column)
    lo, hi, big_endian = _decimal_words(column)
    negative = hi >= np.uint64(1 << 63)
    # |v| as two 64-bit words: the two's complement negation of a negative value
    mag_lo = np.where(negative, ~lo + np.uint64(1), lo)
    mag_hi = np.where(negative, ~hi + (lo == 0).astype(np.uint64), hi)
    # (bit_length + 8) // 8 over 128 bits: 8 more bytes than the high word's count when the high word is in use
    sizes = (
        _byte_sizes(mag_lo) if not mag_hi.any() else np.where(mag_hi != 0, 8 + _byte_sizes(mag_hi), _byte_sizes(mag_lo))
    )
    width = int(sizes.max()) if n else 0
    out = np.empty((n, 1 + width), dtype=np.uint8)
    out[:, 0] = (sizes << 1).astype(np.uint8)  # the length as a one-byte zigzag varint: at most 16, so 32
    full = _uniform(sizes)
    if full:
        out[:, 1:] = big_endian[:, 16 - width :]
    elif width:
        index = (16 - sizes)[:, None] + np.arange(width, dtype=np.int64)[None, :]
        np.minimum(index, 15, out=index)
        out[:, 1:] = np.take_along_axis(big_endian, index, axis=1)
    return [_Segment(out, 1 + sizes, full)]


def _fixed(values: npt.NDArray[Any], size: int) -> list[_Segment]:
    n = len(values)
    out = np.ascontiguousarray(values).view(np.uint8).reshape(n, size)
    return [_Segment(out, np.full(n, size, dtype=np.int64), full=True)]


# ---- the fields, compiled once per schema --------------------------------------------------------------------------

Encode = Callable[[pa.Array], list[_Segment]]


def _fill_nulls(column: pa.Array) -> pa.Array:
    """Nulls replaced by a value of the type, so an encoding sees no nulls; the null rows' bytes are masked out."""
    kind = column.type
    if pa.types.is_decimal(kind) or pa.types.is_timestamp(kind):
        placeholder: pa.Scalar = pa.scalar(0, pa.int64()).cast(kind)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        placeholder = pa.scalar("", kind)
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        placeholder = pa.scalar(b"", kind)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        placeholder = pa.scalar([], kind)
    else:
        placeholder = pa.scalar(False if pa.types.is_boolean(kind) else 0, kind)
    return pc.fill_null(column, placeholder)


@dataclass(frozen=True)
class _Field:
    name: str
    encode: Encode
    nullable: bool = False
    null_first: bool = True  # the union's null branch is index 0 (["null", T]), else 1 ([T, "null"])
    fill: Callable[[pa.Array], pa.Array] = _fill_nulls
    # null by default: a table without the column writes null, as fastavro writes a record without the field (a
    # file's rows have no value for a field a later schema version added)
    default_null: bool = False


def _int64(column: pa.Array, name: str, low: int | None = None, high: int | None = None) -> I64:
    try:
        values = column.cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # a uint64 past int64
        raise EncodeError(f"field {name}: {exc}") from exc
    array = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
    if low is not None and high is not None and len(array) and (array.min() < low or array.max() > high):
        raise EncodeError(f"field {name}: a value is outside the Avro int range")
    return array


def _long(name: str, low: int | None = None, high: int | None = None) -> Encode:
    def encode(column: pa.Array) -> list[_Segment]:
        if not pa.types.is_integer(column.type):
            raise EncodeError(f"field {name}: an integer column is needed, got {column.type}")
        return [_varints(_int64(column, name, low, high))]

    return encode


def _timestamp_micros(name: str) -> Encode:
    def encode(column: pa.Array) -> list[_Segment]:
        if pa.types.is_timestamp(column.type):
            try:
                # to µs first (safe: a cast that would drop nanoseconds is refused), then its int64 count
                column = column.cast(pa.timestamp("us", tz=column.type.tz)).view(pa.int64())
            except pa.ArrowInvalid as exc:
                raise EncodeError(f"field {name}: {exc}") from exc
        elif not pa.types.is_integer(column.type):
            raise EncodeError(f"field {name}: a timestamp or integer column is needed, got {column.type}")
        return [_varints(_int64(column, name))]

    return encode


def _string(name: str, binary: bool) -> Encode:
    def encode(column: pa.Array) -> list[_Segment]:
        accepted = (
            (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type))
            if binary
            else (pa.types.is_string(column.type) or pa.types.is_large_string(column.type))
        )
        if not accepted:
            raise EncodeError(f"field {name}: a {'binary' if binary else 'string'} column is needed, got {column.type}")
        return _strings(column)

    return encode


def _decimal(name: str, precision: int, scale: int) -> Encode:
    def encode(column: pa.Array) -> list[_Segment]:
        kind = column.type
        if not pa.types.is_decimal128(kind) or kind.scale != scale or kind.precision > precision:
            raise EncodeError(f"field {name}: decimal({precision}, {scale}) needs a decimal128 column of that scale")
        return _decimals(column)

    return encode


def _boolean(name: str) -> Encode:
    def encode(column: pa.Array) -> list[_Segment]:
        if not pa.types.is_boolean(column.type):
            raise EncodeError(f"field {name}: a boolean column is needed, got {column.type}")
        return _fixed(np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.bool_).astype(np.uint8), 1)

    return encode


def _floating(name: str, size: int) -> Encode:
    dtype = np.dtype("<f8") if size == 8 else np.dtype("<f4")

    def encode(column: pa.Array) -> list[_Segment]:
        if not pa.types.is_floating(column.type):
            raise EncodeError(f"field {name}: a floating-point column is needed, got {column.type}")
        return _fixed(np.asarray(column.to_numpy(zero_copy_only=False), dtype=dtype), size)

    return encode


def _enum(name: str, symbols: Sequence[str]) -> Encode:
    table = pa.array(list(symbols), pa.large_string())

    def encode(column: pa.Array) -> list[_Segment]:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise EncodeError(f"field {name}: an enum needs a string column, got {column.type}")
        index = pc.index_in(column.cast(pa.large_string()), value_set=table)
        if index.null_count:
            raise EncodeError(f"field {name}: a value is not one of the enum's symbols {list(symbols)}")
        return [_varints(np.asarray(index.to_numpy(zero_copy_only=False), dtype=np.int64))]

    return encode


def _array(name: str, items: Encode) -> Encode:
    """fastavro's arrays: one block of all the items behind their count, then the empty block (0) that ends the
    array; an empty array is that 0 alone."""

    def encode(column: pa.Array) -> list[_Segment]:
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            raise EncodeError(f"field {name}: an array needs a list column, got {column.type}")
        counts = np.asarray(
            pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False), dtype=np.int64
        )
        values = pc.list_flatten(column)
        if values.null_count:
            raise EncodeError(f"field {name}: null among an array's items")
        data, item_lengths = _assemble(items(values), len(values))
        ends = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(item_lengths, out=ends[1:])
        first = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=first[1:])
        starts = ends[first[:-1]]
        spans = ends[first[1:]] - starts
        count = _varints(counts)
        n = len(counts)
        return [
            _Segment(count.bytes, np.where(counts > 0, count.lengths, 0)),
            _Segment(_padded(np.frombuffer(data, dtype=np.uint8), starts, spans), spans),
            _Segment(np.zeros((n, 1), dtype=np.uint8), np.ones(n, dtype=np.int64), full=True),
        ]

    return encode


def _enum_fill(symbols: Sequence[str]) -> Callable[[pa.Array], pa.Array]:
    def fill(column: pa.Array) -> pa.Array:
        return pc.fill_null(column, pa.scalar(symbols[0], column.type))

    return fill


def _type_encoder(name: str, avro: Any, named: dict[str, Any]) -> Encode:
    if isinstance(avro, str) and avro in named:
        avro = named[avro]
    if isinstance(avro, dict):
        logical = avro.get("logicalType")
        base = avro.get("type")
        if base == "enum":
            return _enum(name, avro["symbols"])
        if base == "array":
            return _array(name, _type_encoder(name, _named(avro["items"], named), named))
        if logical == "decimal" and base == "bytes":
            return _decimal(name, int(avro["precision"]), int(avro.get("scale", 0)))
        if logical == "timestamp-micros" and base == "long":
            return _timestamp_micros(name)
        if logical is None and isinstance(base, str):
            return _type_encoder(name, base, named)
        raise EncodeError(f"field {name}: the bulk encoder does not write {avro}")
    if avro in ("long", "int"):
        return _long(name, *_INT32) if avro == "int" else _long(name)
    if avro in ("string", "bytes"):
        return _string(name, binary=avro == "bytes")
    if avro == "boolean":
        return _boolean(name)
    if avro in ("double", "float"):
        return _floating(name, 8 if avro == "double" else 4)
    raise EncodeError(f"field {name}: the bulk encoder does not write {avro!r}")


def _named(avro: Any, named: dict[str, Any]) -> Any:
    """The definition a type name stands for (a later field may name an enum an earlier one defined)."""
    if isinstance(avro, str):
        return named.get(avro, avro)
    if isinstance(avro, dict) and avro.get("type") == "enum":
        named[avro["name"]] = avro
    return avro


def _compile(schema: ParsedSchema) -> list[_Field]:
    if schema.get("type") != "record":
        raise EncodeError("the bulk encoder writes records only")
    named: dict[str, Any] = {}
    fields: list[_Field] = []
    for spec in schema["fields"]:
        name, avro = spec["name"], spec["type"]
        if isinstance(avro, list):
            if len(avro) != 2 or "null" not in avro or avro[0] == avro[1]:
                raise EncodeError(f"field {name}: only a union of null and one other type is written, got {avro}")
            other = _named(avro[1] if avro[0] == "null" else avro[0], named)
            enum = isinstance(other, dict) and other.get("type") == "enum"
            fill = _enum_fill(other["symbols"]) if enum else _fill_nulls
            encoder = _type_encoder(name, other, named)
            null_first = avro[0] == "null"
            default_null = null_first and "default" in spec and spec["default"] is None
            fields.append(_Field(name, encoder, True, null_first, fill, default_null))
        else:
            fields.append(_Field(name, _type_encoder(name, _named(avro, named), named)))
    return fields


# ---- the encoder ---------------------------------------------------------------------------------------------------


class BulkEncoder:
    """Encodes tables with one writer schema, framed with its registry id."""

    def __init__(self, schema: ParsedSchema, schema_id: int) -> None:
        if not 0 <= schema_id < 2**32:
            raise EncodeError(f"schema id {schema_id} does not fit the wire format's 4 bytes")
        self.schema_id = schema_id
        self.header = bytes([MAGIC]) + schema_id.to_bytes(4, "big")
        self._fields = _compile(schema)

    def encode(self, table: pa.Table, block_rows: int = BLOCK_ROWS) -> EncodedRows:
        """Every row of `table` (columns by field name; others are ignored) as a framed message."""
        blocks = list(self.blocks(table, block_rows))
        if len(blocks) == 1:
            return blocks[0]
        starts = np.cumsum([0] + [len(b.data) for b in blocks[:-1]], dtype=np.int64)
        offsets = [np.zeros(1, np.int64)] + [b.offsets[1:] + start for b, start in zip(blocks, starts, strict=True)]
        return EncodedRows(b"".join(b.data for b in blocks), np.concatenate(offsets))

    def blocks(self, table: pa.Table, block_rows: int = BLOCK_ROWS) -> Iterator[EncodedRows]:
        """The rows of `table` as framed messages, a block of at most `block_rows` rows at a time (fewer when
        strings are long): for a caller that sends them as they come, without one buffer for the whole table."""
        missing = [f.name for f in self._fields if f.name not in table.column_names and not f.default_null]
        if missing:
            raise EncodeError(f"the table has no column for fields {missing}")
        columns = {f.name: table.column(f.name).combine_chunks() for f in self._fields if f.name in table.column_names}
        for f in self._fields:
            if f.name in columns and columns[f.name].null_count and not f.nullable:
                raise EncodeError(f"field {f.name}: null in a field without a null branch")
        n = table.num_rows
        if n == 0:
            yield EncodedRows(b"", np.zeros(1, np.int64))
            return
        step = max(1, min(block_rows, BLOCK_BYTES // self._row_bound(columns)))
        for start in range(0, n, step):
            block = {k: v.slice(start, step) for k, v in columns.items()}
            data, lengths = self._encode_block(block, min(step, n - start))
            offsets = np.zeros(len(lengths) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            yield EncodedRows(data, offsets)

    def _row_bound(self, columns: dict[str, pa.Array]) -> int:
        """An upper bound on a row's padded width (a union branch, a length, the longest value): sizes the blocks."""
        return HEADER_BYTES + sum(1 + _VARINT_MAX + _longest(column) for column in columns.values())

    def _encode_block(self, columns: dict[str, pa.Array], n: int) -> tuple[bytes, I64]:
        segments = [
            _Segment(
                np.broadcast_to(np.frombuffer(self.header, np.uint8), (n, HEADER_BYTES)),
                np.full(n, HEADER_BYTES, np.int64),
                full=True,
            )
        ]
        for f in self._fields:
            column = columns.get(f.name)
            if column is None:  # not in the table: null, the field's default
                segments.append(_Segment(np.zeros((n, 1), dtype=np.uint8), np.ones(n, np.int64), full=True))
                continue
            if not f.nullable:
                segments.extend(f.encode(column))
                continue
            valid = np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False), dtype=np.bool_)
            branch = valid if f.null_first else ~valid
            index = np.where(branch, np.uint8(2), np.uint8(0))[:, None]  # the branch index as a zigzag varint
            segments.append(_Segment(index, np.ones(n, np.int64), full=True))
            if valid.all():
                segments.extend(f.encode(column))
                continue
            for segment in f.encode(f.fill(column)):
                segments.append(_Segment(segment.bytes, np.where(valid, segment.lengths, 0)))
        return _assemble(segments, n)


def _longest(column: pa.Array) -> int:
    """At most how many bytes a value of `column` takes, its length prefix aside."""
    if any(test(column.type) for test in _VARIABLE):
        return int(pc.max(pc.binary_length(column)).as_py() or 0)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        count = int(pc.max(pc.list_value_length(column)).as_py() or 0)
        return 2 * _VARINT_MAX + count * (_VARINT_MAX + _longest(pc.list_flatten(column)))
    return 16  # a decimal's value takes at most 16 bytes, a varint 10, a double 8


def _assemble(segments: list[_Segment], n: int) -> tuple[bytes, I64]:
    """Each row's segments one after the other, the rows one after the other: the bytes, and each row's length."""
    segments = [s for s in segments if s.bytes.shape[1]]
    width = sum(s.bytes.shape[1] for s in segments)
    matrix = np.empty((n, width), dtype=np.uint8)
    lengths = np.zeros(n, dtype=np.int64)
    column_at = 0
    for s in segments:
        matrix[:, column_at : column_at + s.bytes.shape[1]] = s.bytes
        lengths += s.lengths
        column_at += s.bytes.shape[1]
    if all(s.full for s in segments):
        return matrix.tobytes(), lengths
    keep = np.ones((n, width), dtype=np.bool_)
    column_at = 0
    for s in segments:
        w = s.bytes.shape[1]
        if not s.full:
            np.less(np.arange(w)[None, :], s.lengths[:, None], out=keep[:, column_at : column_at + w])
        column_at += w
    return matrix[keep].tobytes(), lengths
