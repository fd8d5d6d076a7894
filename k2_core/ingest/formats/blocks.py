"""A text file read as blocks of whole physical lines, and a block split into columns with each row's line number.

Lines are what a refusal is reported by, so they are counted as the replay counts them (Python's universal
newlines): `\\n`, `\\r\\n` and a lone `\\r` each end a line, a UTF-8 byte-order mark opens the file unseen, and
undecodable bytes are replaced, so that they surface as a malformed row rather than a crash. A block is split by
pyarrow's CSV parser, one row per physical line (quoting off, unless the format quotes, and then any block whose
quotes run over a line end is left to the exact path line by line); lines of the wrong column count are known only
by number, and the row-to-line mapping is computed from those numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

BLOCK_BYTES = 8 << 20
_BOM = b"\xef\xbb\xbf"
_NEWLINE = 10


@dataclass
class TextBlock:
    """Consecutive whole lines of a text file, the first of them physical line `first_line` (1-based): newlines
    normalised to `\\n`, valid UTF-8."""

    first_line: int
    data: bytes
    _ends: np.ndarray | None = field(default=None, repr=False)

    @property
    def line_count(self) -> int:
        return self.data.count(b"\n") + (0 if self.data.endswith(b"\n") else 1)

    @property
    def next_line(self) -> int:
        return self.first_line + self.line_count

    def line(self, number: int) -> str:
        """The text of physical line `number`, without its newline."""
        if self._ends is None:
            self._ends = np.flatnonzero(np.frombuffer(self.data, np.uint8) == _NEWLINE)
        index = number - self.first_line
        start = 0 if index == 0 else int(self._ends[index - 1]) + 1
        end = int(self._ends[index]) if index < len(self._ends) else len(self.data)
        return self.data[start:end].decode("utf-8")

    def lines(self) -> Iterator[tuple[int, str]]:
        for offset, text in enumerate(self.data.decode("utf-8").split("\n")):
            if offset < self.line_count:
                yield self.first_line + offset, text

    def without_first_line(self) -> TextBlock | None:
        """The block after its first line (a header); None if that was all of it."""
        end = self.data.find(b"\n")
        if end < 0 or end + 1 == len(self.data):
            return None
        return TextBlock(self.first_line + 1, self.data[end + 1 :])


def _normalised(data: bytes, first: bool) -> bytes:
    if first and data.startswith(_BOM):
        data = data[len(_BOM) :]
    if not data.isascii():
        data = data.decode("utf-8", errors="replace").encode("utf-8")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data


def _last_line_end(data: bytes) -> int:
    """Where the last complete line of `data` ends (the index of its newline), or -1. A `\\r` as the very last
    byte may be the first half of a `\\r\\n`, so it ends nothing yet."""
    end = data.rfind(b"\n")
    carriage = data.rfind(b"\r", end + 1, len(data) - 1)
    return max(end, carriage)


def text_blocks(stream: IO[bytes], block_bytes: int = BLOCK_BYTES) -> Iterator[TextBlock]:
    """The stream as blocks of about `block_bytes` of whole lines (a longer line makes a longer block)."""
    pending = b""
    line = 1
    first = True
    while True:
        raw = stream.read(block_bytes)
        data = pending + raw if pending else raw
        if not raw:
            cut = len(data) - 1
        else:
            cut = _last_line_end(data)
            if cut < 0:
                pending = data
                continue
        block, pending = data[: cut + 1], data[cut + 1 :]
        if block:
            text = _normalised(block, first)
            first = False
            if text:
                parsed = TextBlock(line, text)
                line = parsed.next_line
                yield parsed
        if not raw:
            return


@dataclass
class Split:
    """A block's lines that have the expected number of columns, as text columns, with each one's physical line;
    and the lines that do not (a blank line is among the rows, every column empty, when columns > 1)."""

    columns: list[pa.Array]
    lines: np.ndarray
    odd: np.ndarray


def split(block: TextBlock, columns: int, *, quoted: bool = False) -> Split:
    odd: list[int] = []

    def skip(row: pacsv.InvalidRow) -> str:
        odd.append(row.number)
        return "skip"

    names = [f"c{i}" for i in range(columns)]
    table = pacsv.read_csv(
        pa.py_buffer(block.data),
        read_options=pacsv.ReadOptions(use_threads=False, column_names=names, block_size=len(block.data) + 1),
        parse_options=pacsv.ParseOptions(
            quote_char='"' if quoted else False, ignore_empty_lines=False, invalid_row_handler=skip
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.large_string()),
            check_utf8=False,  # the block is valid UTF-8 already
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    count = block.line_count
    if table.num_rows + len(odd) != count:
        # a quoted value ran over a line end: rows are no longer lines, so every line goes the exact way
        everything = np.arange(block.first_line, block.next_line, dtype=np.int64)
        return Split([pa.array([], pa.large_string())] * columns, np.empty(0, np.int64), everything)
    odd_lines = np.asarray(odd, np.int64)
    rows = np.arange(table.num_rows, dtype=np.int64)
    # the j-th odd line is preceded by (odd[j] - 1 - j) rows: a row comes after every odd line with at most its index
    preceding = odd_lines - 1 - np.arange(len(odd_lines), dtype=np.int64)
    local = rows + 1 + np.searchsorted(preceding, rows, side="right")
    return Split(
        [column.combine_chunks() for column in table.columns],
        local + (block.first_line - 1),
        odd_lines + (block.first_line - 1),
    )
