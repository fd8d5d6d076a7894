"""A user's own export, CSV or Parquet, read through a column mapping (`ReadOptions.mapping`: K2 column -> the
file's column, e.g. price=px, volume=qty, exchange_timestamp=ts, symbol=sym).

Four formats, one per file type and data type, so that `--format` alone says what a file holds:
`generic-csv` and `generic-parquet` read trades, `generic-csv-quotes` and `generic-parquet-quotes` read quotes.

What must be mapped: exchange_timestamp and, for trades, price and volume; for quotes, bid_price, bid_size,
ask_price and ask_size. What may be: symbol (else `--symbol` names the one instrument of the file),
exchange_sequence_number (else each row is numbered by its ordinal within its (symbol, UTC day) among the file's
good rows, k2_core.ingest.formats.ordinals), and for trades side (buy, sell or unknown; else unknown) and trade_id
(else the sequence number). A mapped column the file lacks, or a mapping key K2 does not know, is a ConfigError.

Times: with `time_unit` (s, ms, us, ns) an integer count of it since the epoch (ns cut to the µs); without, ISO 8601
text (2024-01-02T03:04:05.123Z), a time without an offset being in `time_zone`. Parquet timestamp columns are read
as they are typed (a naive one in `time_zone`). Prices and sizes are read as written (a Parquet decimal or integer
exactly; a float by its shortest decimal spelling), by the same rules as every format: at most 8 places, prices
above 0, sizes at least 0 and trade volumes above 0.

CSV: a header row names the columns; "..." quotes a field. A bad row's line is its physical line (the header is
line 1). Parquet: a bad row's line is its 1-based row number.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from k2_core.exceptions import ConfigError, SourceError
from k2_core.ingest.formats import register
from k2_core.ingest.formats.base import Chunk, FileFormat, ReadOptions
from k2_core.ingest.formats.blocks import TextBlock
from k2_core.ingest.formats.chunks import Chunker, assemble
from k2_core.ingest.formats.delimited import Layout, fields_of, read_delimited
from k2_core.ingest.formats.fields import (
    TEXT,
    TIME_UNITS,
    DecimalField,
    EpochTimeField,
    Field,
    IntegerField,
    IsoTimeField,
    SideField,
    SymbolField,
    TextField,
)
from k2_core.ingest.formats.ordinals import DayOrdinals
from k2_core.ingest.formats.parse import parse_rows
from k2_core.ingest.formats.sources import open_source
from k2_core.model.records import DECIMAL_SCALE
from k2_core.model.topics import Kind

PARQUET_BATCH_ROWS = 1 << 18

REQUIRED: Mapping[Kind, tuple[str, ...]] = {
    "trades": ("exchange_timestamp", "price", "volume"),
    "quotes": ("exchange_timestamp", "bid_price", "bid_size", "ask_price", "ask_size"),
}
OPTIONAL: Mapping[Kind, tuple[str, ...]] = {
    "trades": ("symbol", "exchange_sequence_number", "side", "trade_id"),
    "quotes": ("symbol", "exchange_sequence_number"),
}
_POSITIVE = frozenset({"price", "volume", "bid_price", "ask_price"})  # a trade of nothing is no trade


def check_options(kind: Kind, options: ReadOptions) -> dict[str, str]:
    """The mapping, checked against what a generic file of `kind` needs; raises ConfigError saying what is wrong."""
    mapping = dict(options.mapping)
    known = REQUIRED[kind] + OPTIONAL[kind]
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise ConfigError(f"cannot map {', '.join(unknown)} for {kind}: the columns to map are {', '.join(known)}")
    absent = [column for column in REQUIRED[kind] if column not in mapping]
    if absent:
        raise ConfigError(f"a generic {kind} file needs {', '.join(absent)} mapped to its columns (--map K2=COLUMN)")
    if "symbol" not in mapping and not options.symbol:
        raise ConfigError("map a symbol column (--map symbol=COLUMN) or name the file's one symbol (--symbol)")
    if options.time_unit is not None and options.time_unit not in TIME_UNITS:
        raise ConfigError(f"time unit {options.time_unit!r} is not one of {', '.join(TIME_UNITS)}")
    try:
        ZoneInfo(options.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {options.time_zone!r}") from exc
    return mapping


def _label(k2: str, column: str) -> str:
    return column if column == k2 else f"{column} ({k2})"


def _time_field(label: str, options: ReadOptions) -> Field:
    missing = f"{label} is empty"
    if options.time_unit is not None:
        return EpochTimeField("exchange_timestamp", label, missing, unit=options.time_unit)
    return IsoTimeField("exchange_timestamp", label, missing, time_zone=options.time_zone)


def field_for(k2: str, column: str, options: ReadOptions) -> Field:
    label = _label(k2, column)
    missing = f"{label} is empty"
    if k2 == "exchange_timestamp":
        return _time_field(label, options)
    if k2 == "symbol":
        return SymbolField(k2, label, missing)
    if k2 == "exchange_sequence_number":
        return IntegerField(k2, label, missing)
    if k2 == "side":
        return SideField(k2, label, missing)
    if k2 == "trade_id":
        return TextField(k2, label)
    return DecimalField(k2, label, missing, positive=k2 in _POSITIVE)


def _missing_columns(path: Path, mapping: Mapping[str, str], columns: Sequence[str]) -> None:
    absent = [source for source in mapping.values() if source not in columns]
    if absent:
        raise ConfigError(
            f"{path} has no column {', '.join(absent)} (mapped by --map); its columns are {', '.join(columns)}"
        )


def _keep(values: Mapping[str, pa.Array]) -> dict[str, pa.Array]:
    return dict(values)


# --- CSV -----------------------------------------------------------------------------------------------------------


def sniff_csv(path: Path, mapping: Mapping[str, str], options: ReadOptions, block: TextBlock) -> tuple[Layout, bool]:
    header = [column.strip() for column in fields_of(block.line(block.first_line), quoted=True)]
    _missing_columns(path, mapping, header)
    # fields in file order (the first wrong one is told); one column may feed two fields (a quote's two sizes)
    read = sorted(
        ((header.index(column), field_for(k2, column, options)) for k2, column in mapping.items()),
        key=lambda item: item[0],
    )
    positions = tuple(position for position, _ in read)
    return Layout(len(header), tuple(spec for _, spec in read), positions, _keep, quoted=True), True


def _read_csv(kind: Kind, path: Path, options: ReadOptions) -> Iterator[Chunk]:
    mapping = check_options(kind, options)
    sniff = partial(sniff_csv, path, mapping, options)
    return read_delimited(path, options, kind, sniff, None if "symbol" in mapping else (options.symbol or "").upper())


# --- Parquet -------------------------------------------------------------------------------------------------------


def _texts(column: pa.Array) -> pa.Array:
    """A Parquet column as the text the fields read (null as empty). A decimal typed with more than 8 places is
    spelt with 8 where its value has no more (4750.250000000 is 4750.25000000), so that it is judged by its value,
    not by its type's scale."""
    kind = column.type
    if pa.types.is_decimal(kind) and kind.scale > DECIMAL_SCALE:
        cut = column.cast(
            pa.decimal128(kind.precision, DECIMAL_SCALE)
            if kind.precision <= 38
            else pa.decimal256(kind.precision, DECIMAL_SCALE),
            safe=False,
        )
        exact = pc.equal(cut.cast(kind), column)
        return pc.fill_null(pc.if_else(exact, cut.cast(TEXT), column.cast(TEXT)), "")
    return pc.fill_null(column.cast(TEXT), "")


def _time_column(label: str, column: pa.Array, options: ReadOptions) -> tuple[Field, pa.Array]:
    """A Parquet time column as text, with the field that reads it: by its type, then by the options."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        if kind.tz is not None:
            micros = column.cast(pa.timestamp("us", tz=kind.tz), safe=False).cast(pa.int64())
            return EpochTimeField("exchange_timestamp", label, f"{label} is empty", unit="us"), _texts(micros)
        local = column.cast(pa.timestamp("us"), safe=False)
        return IsoTimeField("exchange_timestamp", label, f"{label} is empty", time_zone=options.time_zone), _texts(
            local
        )
    if pa.types.is_integer(kind) and options.time_unit is None:
        raise ConfigError(f"{label} holds integers: give their unit (time_unit s, ms, us or ns)")
    return _time_field(label, options), _texts(column)


def _read_parquet(kind: Kind, path: Path, options: ReadOptions) -> Iterator[Chunk]:
    mapping = check_options(kind, options)
    symbol = None if "symbol" in mapping else (options.symbol or "").upper()
    return _parquet_chunks(kind, path, options, mapping, symbol)


def _parquet_chunks(
    kind: Kind, path: Path, options: ReadOptions, mapping: Mapping[str, str], symbol: str | None
) -> Iterator[Chunk]:
    chunker = Chunker(kind, options.chunk_rows)
    ordinals = DayOrdinals()
    with open_source(path) as stream:
        try:
            # a plain file is read where it lies; a compressed one (Parquet compresses itself) is read whole first
            source = pq.ParquetFile(stream if isinstance(stream, io.BufferedReader) else pa.BufferReader(stream.read()))
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"{path} is not a Parquet file: {exc}") from exc
        _missing_columns(path, mapping, source.schema_arrow.names)
        order = sorted(mapping.items(), key=lambda item: source.schema_arrow.names.index(item[1]))
        base = 0
        for batch in source.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[c for _, c in order]):
            fields: list[Field] = []
            texts: list[pa.Array] = []
            for k2, column in order:
                values = batch.column(column)
                if k2 == "exchange_timestamp":
                    spec, text = _time_column(_label(k2, column), values, options)
                else:
                    spec, text = field_for(k2, column, options), _texts(values)
                fields.append(spec)
                texts.append(text)
            parsed = parse_rows(
                fields,
                texts,
                np.arange(base + 1, base + batch.num_rows + 1, dtype=np.int64),
                np.empty(0, np.int64),
                _row_texts(texts, base),
            )
            base += batch.num_rows
            table = assemble(kind, dict(parsed.values), options, ordinals, symbol)
            yield from chunker.add(table, parsed.lines, parsed.bad, parsed.data_lines)
    yield from chunker.finish()


def _row_texts(texts: Sequence[pa.Array], base: int) -> Callable[[int], list[str]]:
    def row(line: int) -> list[str]:
        return [column[line - base - 1].as_py() for column in texts]

    return row


# --- the formats ---------------------------------------------------------------------------------------------------

_MAPPING_HELP = "columns by --map price=COLUMN,..."
register(
    FileFormat(
        "generic-csv",
        "trades",
        partial(_read_csv, "trades"),
        f"trades from any CSV with a header, {_MAPPING_HELP} (exchange_timestamp, price, volume; optional symbol, "
        "exchange_sequence_number, side, trade_id)",
    )
)
register(
    FileFormat(
        "generic-csv-quotes",
        "quotes",
        partial(_read_csv, "quotes"),
        f"quotes from any CSV with a header, {_MAPPING_HELP} (exchange_timestamp, bid_price, bid_size, ask_price, "
        "ask_size; optional symbol, exchange_sequence_number)",
    )
)
register(
    FileFormat(
        "generic-parquet",
        "trades",
        partial(_read_parquet, "trades"),
        f"trades from any Parquet file, {_MAPPING_HELP} (as generic-csv)",
    )
)
register(
    FileFormat(
        "generic-parquet-quotes",
        "quotes",
        partial(_read_parquet, "quotes"),
        f"quotes from any Parquet file, {_MAPPING_HELP} (as generic-csv-quotes)",
    )
)
