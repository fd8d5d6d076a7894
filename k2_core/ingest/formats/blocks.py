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
import pyarrow.compute as pc
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
    _line_count: int | None = field(default=None, repr=False)
    _ends: np.ndarray | None = field(default=None, repr=False)

    @property
    def line_count(self) -> int:
        if self._line_count is None:
            self._line_count = self.data.count(b"\n") + (0 if self.data.endswith(b"\n") else 1)
        return self._line_count

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


def text_blocks(stream: IO[bytes], block_bytes: int | None = None) -> Iterator[TextBlock]:
    """The stream as blocks of about `block_bytes` of whole lines (a longer line makes a longer block). A block's
    line count is only known once it is counted (`split` counts it for free), so the next block is numbered when
    it is read, after its predecessor was split."""
    block_bytes = block_bytes or BLOCK_BYTES
    pending = b""
    first = True
    previous: TextBlock | None = None
    while True:
        data = stream.read(block_bytes)
        at_end = not data
        if data and not data.endswith(b"\n"):
            rest = stream.readline(block_bytes)  # the rest of the line the read cut into
            data += rest
            at_end = not rest.endswith(b"\n") and len(rest) < block_bytes
        if pending:
            data, pending = pending + data, b""
        if not at_end and not data.endswith(b"\n"):
            # no \n within reach: lines ended by a lone \r, or one very long line
            cut = _last_line_end(data)
            if cut < 0:
                pending = data
                continue
            data, pending = data[: cut + 1], data[cut + 1 :]
        text = _normalised(data, first) if data else b""
        first = first and not data
        if text:
            previous = TextBlock(previous.next_line if previous else 1, text)
            yield previous
        if at_end:
            return


def column_bytes(texts: pa.Array) -> bytes:
    """The characters of a (large) string array's values, end to end: for a search of all of them at once."""
    if len(texts) == 0:
        return b""
    offsets = np.frombuffer(texts.buffers()[1], np.int64)[texts.offset : texts.offset + len(texts) + 1]
    return bytes(memoryview(texts.buffers()[2])[int(offsets[0]) : int(offsets[-1])])


@dataclass
class Split:
    """A block's lines that have the expected number of columns, as text columns, with each one's physical line;
    and the lines that do not, or that hold nothing but commas or nothing at all (a blank line), for the exact
    path."""

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
    texts = [column.combine_chunks() for column in table.columns]
    if quoted and (table.num_rows + len(odd) != block.line_count or any(b"\n" in column_bytes(text) for text in texts)):
        # a quoted value ran over a line end: rows are no longer lines, so every line goes the exact way
        everything = np.arange(block.first_line, block.next_line, dtype=np.int64)
        return Split([pa.array([], pa.large_string())] * columns, np.empty(0, np.int64), everything)
    if block._line_count is None:  # unquoted, every line is a row or an odd line: no need to count them again
        block._line_count = table.num_rows + len(odd)
    odd_lines = np.asarray(odd, np.int64)
    rows = np.arange(table.num_rows, dtype=np.int64)
    # the j-th odd line is preceded by (odd[j] - 1 - j) rows: a row comes after every odd line with at most its index
    preceding = odd_lines - 1 - np.arange(len(odd_lines), dtype=np.int64)
    lines = rows + np.searchsorted(preceding, rows, side="right") + block.first_line
    odd_lines += block.first_line - 1
    # an empty line is a row of empty fields: give it to the exact path, which tells it from a row of empty fields
    empty = np.ones(len(rows), np.bool_)
    for text in texts:
        empty &= pc.binary_length(text).to_numpy() == 0
    if empty.any():
        keep = pa.array(~empty)
        return Split([text.filter(keep) for text in texts], lines[~empty], np.union1d(odd_lines, lines[empty]))
    return Split(texts, lines, odd_lines)
