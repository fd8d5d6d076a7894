"""The reading every delimited-text format shares: blocks of lines, split into columns, parsed by the format's fields,
assembled into the market table's schema, cut into chunks.

A format says how its file is laid out (`Layout`: the column count, which column each field is read from, how the
fields become K2 columns), and how to tell that from the file's first block (`Sniff`, which also says whether line 1
is a header, so that the header is neither a row nor a refusal).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from k2_core.exceptions import ReplayFormatError
from k2_core.ingest.formats.base import Chunk, ReadOptions
from k2_core.ingest.formats.blocks import TextBlock, split, text_blocks
from k2_core.ingest.formats.chunks import Chunker, assemble
from k2_core.ingest.formats.fields import Field
from k2_core.ingest.formats.ordinals import DayOrdinals
from k2_core.ingest.formats.parse import Parsed, RowRule, parse_rows
from k2_core.ingest.formats.sources import open_source
from k2_core.model.topics import Kind

Build = Callable[[Mapping[str, pa.Array]], dict[str, pa.Array]]


@dataclass(frozen=True)
class Layout:
    """How a file's rows are laid out: `columns` fields a row, `fields[i]` read from column `positions[i]`, then
    `build` turns the fields' values into the K2 columns the format knows (k2_core.ingest.formats.chunks)."""

    columns: int
    fields: tuple[Field, ...]
    positions: tuple[int, ...]
    build: Build
    rules: tuple[RowRule, ...] = ()
    quoted: bool = False  # "..." quotes a field (generic exports); the dumps never quote


# The layout, from the file's first block, and whether its first line is a header.
Sniff = Callable[[TextBlock], tuple[Layout, bool]]


def fields_of(text: str, quoted: bool) -> list[str]:
    """A line's fields as the exact path sees them: plain splitting for the dumps (as the replay splits them: a
    stray quote is a character like any other), the csv module's for quoted files."""
    return next(csv.reader([text])) if quoted else text.split(",")


def parse_block(block: TextBlock, layout: Layout) -> Parsed:
    split_rows = split(block, layout.columns, quoted=layout.quoted)

    def row_texts(line: int) -> Sequence[str] | None:
        text = block.line(line)
        if not text.strip():
            return None
        fields = fields_of(text, layout.quoted)
        if len(fields) != layout.columns:
            raise ReplayFormatError(f"expected {layout.columns} columns, got {len(fields)}")
        return [fields[position] for position in layout.positions]

    columns = [split_rows.columns[position] for position in layout.positions]
    return parse_rows(layout.fields, columns, split_rows.lines, split_rows.odd, row_texts, layout.rules)


def read_delimited(
    path: Path, options: ReadOptions, kind: Kind, sniff: Sniff, symbol: str | None = None
) -> Iterator[Chunk]:
    """The chunks of a delimited text file; `symbol` for formats whose rows carry none."""
    chunker = Chunker(kind, options.chunk_rows)
    ordinals = DayOrdinals()
    layout: Layout | None = None
    with open_source(path) as stream:
        for whole in text_blocks(stream):
            block: TextBlock | None = whole
            if layout is None:
                layout, header = sniff(whole)
                block = whole.without_first_line() if header else whole
            if block is None:
                continue
            parsed = parse_block(block, layout)
            table = assemble(kind, layout.build(parsed.values), options, ordinals, symbol)
            yield from chunker.add(table, parsed.lines, parsed.bad, parsed.data_lines)
    yield from chunker.finish()
