"""The record rules (k2_core.model.records) applied to whole Arrow columns: what the ingester's batch decoder and
`k2 import` both run over a batch before anything is planned or stored.

`surely_valid` is at least as strict as `validate` (the rule values are the same objects, and the batch's clock is
no later than the one `validate` would read): a row it passes passes `validate`. A row it fails is checked again
alone with `validate`, whose message is the reason the caller reports (a dead letter, an import's rejected row).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from k2_core.exceptions import ValidationError
from k2_core.ingest.dedup import to_us
from k2_core.model.records import (
    DECIMAL_SCALE,
    FIRST_SEQUENCE,
    MAX_DECIMAL,
    PRICE_FIELDS,
    SIDES,
    SIZE_FIELDS,
    SYMBOL_RE,
    TRADE_ID_BYTES,
    TRADE_ID_MAX_CHARS,
    TRADE_ID_RE,
    TimeWindow,
    validate,
)
from k2_core.model.topics import Kind
from k2_core.settings import RecordSettings

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MAX_UNSCALED = int(MAX_DECIMAL.scaleb(DECIMAL_SCALE))  # the bound on |value|, on the unscaled integer


def as_int64(arr: pa.ChunkedArray | pa.Array) -> Int64Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return np.asarray(arr.cast(pa.int64()), dtype=np.int64) if len(arr) else np.zeros(0, dtype=np.int64)


def unscaled(arr: pa.ChunkedArray | pa.Array) -> tuple[Int64Array, BoolArray]:
    """A decimal128 column's unscaled values as int64, and whether each fits int64 (else its value is junk)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.bool_)
    words = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=2 * (arr.offset + n))[2 * arr.offset :]
    lo = words[0::2]  # a strided view: no copy
    hi = words[1::2]
    return lo, hi == (lo >> 63)


def printable_ids(column: pa.ChunkedArray | pa.Array) -> BoolArray:
    """`TRADE_ID_RE` per value; when every byte of the column is in `TRADE_ID_BYTES`, a length check decides, else
    the regex runs."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(column.type):
        column = column.cast(pa.large_string())
    lengths = as_int64(pc.binary_length(column))
    ok = (lengths >= 1) & (lengths <= TRADE_ID_MAX_CHARS)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64, count=len(column) + 1 + column.offset)
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[column.offset] : offsets[-1]]
    lowest, highest = TRADE_ID_BYTES
    if data.size and (data.min() < lowest or data.max() > highest):
        ok &= np.asarray(
            pc.fill_null(pc.match_substring_regex(column, f"^{TRADE_ID_RE.pattern}\\z"), False), dtype=np.bool_
        )
    return ok


def surely_valid(kind: Kind, exchange: str, table: pa.Table, now: datetime, limits: RecordSettings) -> BoolArray:
    """True where the row surely passes `validate` for a record of `exchange` checked at `now`; a False row is to be
    checked alone (`reasons`)."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    window = TimeWindow.at(now, limits)
    skew_us = window.skew // timedelta(microseconds=1)
    earliest_us, latest_us = to_us(window.earliest), to_us(window.latest)

    def np_bool(arr: pa.ChunkedArray | pa.Array) -> BoolArray:
        return np.asarray(pc.fill_null(arr, False), dtype=np.bool_)

    def per_value(column: pa.ChunkedArray, test: Callable[[pa.Array], pa.Array]) -> BoolArray:
        """`test` run on the column's distinct values only (symbols, sides: a handful per batch)."""
        encoded = pc.dictionary_encode(column).combine_chunks()
        passed = np_bool(test(encoded.dictionary))
        return passed[np.asarray(encoded.indices, dtype=np.int64)]

    ok = per_value(table.column("exchange"), lambda v: pc.equal(v, exchange))
    ok &= per_value(table.column("symbol"), lambda v: pc.match_substring_regex(v, SYMBOL_RE.pattern))
    ok &= as_int64(table.column("exchange_sequence_number")) >= FIRST_SEQUENCE
    ingested = as_int64(table.column("ingestion_timestamp"))
    happened = as_int64(table.column("exchange_timestamp"))
    for ts in (ingested, happened):
        ok &= (ts >= earliest_us) & (ts <= latest_us)
    ok &= happened <= ingested + skew_us
    for name in PRICE_FIELDS[kind]:
        values, fits = unscaled(table.column(name))
        ok &= fits & (values > 0) & (values < MAX_UNSCALED)
    for name in SIZE_FIELDS[kind]:
        values, fits = unscaled(table.column(name))
        ok &= fits & (values >= 0) & (values < MAX_UNSCALED)
    if kind == "trades":
        sides = pa.array(sorted(SIDES), pa.large_string())
        ok &= per_value(table.column("side"), lambda v: pc.is_in(v.cast(pa.large_string()), value_set=sides))
        ok &= printable_ids(table.column("trade_id"))
    return ok


def reasons(kind: Kind, exchange: str, rows: pa.Table, now: datetime, limits: RecordSettings) -> list[tuple[int, str]]:
    """Each row of `rows` that `validate` refuses, by its index, with the reason; the rest are fine after all."""
    refused: list[tuple[int, str]] = []
    record: dict[str, Any]
    for i, record in enumerate(rows.to_pylist()):
        try:
            validate(kind, exchange, record, limits, now=now)
        except ValidationError as exc:
            refused.append((i, str(exc)))
    return refused
