"""A block of rows parsed by its fields: the fast path over whole columns, then the exact path over each row the
fast path left out (a blank line, a wrong column count, a value spelt unusually or wrong), merged back in file order.

The exact path is per-row Python, so its cost is proportional to the rows that need it: none in a clean dump. It
checks a row's fields in column order and reports the first that is wrong, as the replay does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2_core.exceptions import ReplayFormatError
from k2_core.ingest.formats.base import BadRow
from k2_core.ingest.formats.fields import Field

# The text of a row's fields, in the order of the format's fields, for the exact path: None for a line that holds no
# row (blank); raises ReplayFormatError for one that cannot hold one (a wrong column count).
RowTexts = Callable[[int], Sequence[str] | None]


@dataclass(frozen=True)
class RowRule:
    """A rule over a whole row, applied after its fields are read: `broken` marks the rows that break it."""

    broken: Callable[[Mapping[str, pa.Array]], pa.Array]
    reason: str


@dataclass
class Parsed:
    """A block's good rows as one array per field key, in file order, with their lines; its bad rows; and the lines
    of all its data rows, good and bad (what chunks are cut by)."""

    values: dict[str, pa.Array]
    lines: np.ndarray
    bad: list[BadRow] = field(default_factory=list)
    data_lines: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def rows(self) -> int:
        return len(self.lines)


def parse_rows(
    fields: Sequence[Field],
    columns: Sequence[pa.Array],
    lines: np.ndarray,
    others: np.ndarray,
    row_texts: RowTexts,
    rules: Sequence[RowRule] = (),
) -> Parsed:
    """`columns[i]` is the text of `fields[i]` for the rows on `lines`; `others` are lines the fast path cannot take
    at all (wrong column count), read with `row_texts` like every row the fast path refuses."""
    fast: dict[str, pa.Array] = {}
    ok = pa.array(np.ones(len(lines), np.bool_))
    for spec, column in zip(fields, columns, strict=True):
        values, accepted = spec.column(column)
        ok = pc.and_(ok, accepted)
        if spec.type is not None:
            fast[spec.key] = values
    ok_rows = ok.to_numpy(zero_copy_only=False)
    if not ok_rows.all():
        fast = {key: values.filter(ok) for key, values in fast.items()}
        others = np.union1d(others, lines[~ok_rows])
    good_lines = lines[ok_rows]
    exact: dict[str, list[object]] = {spec.key: [] for spec in fields if spec.type is not None}
    exact_lines: list[int] = []
    bad: list[BadRow] = []
    for line in others.tolist():
        try:
            texts = row_texts(line)
            if texts is None:  # a blank line: no row at all
                continue
            row = [(spec, spec.value(text)) for spec, text in zip(fields, texts, strict=True)]
        except ReplayFormatError as exc:
            bad.append(BadRow(line, str(exc)))
            continue
        for spec, value in row:
            if spec.type is not None:
                exact[spec.key].append(value)
        exact_lines.append(line)
    values = fast
    if exact_lines:
        types = {spec.key: spec.type for spec in fields}
        values = {key: pa.concat_arrays([fast[key], pa.array(exact[key], types[key])]) for key in fast}
        good_lines = np.concatenate([good_lines, np.asarray(exact_lines, np.int64)])
        order = np.argsort(good_lines, kind="stable")
        good_lines = good_lines[order]
        values = {key: array.take(pa.array(order)) for key, array in values.items()}
    for rule in rules:
        broken = rule.broken(values).to_numpy(zero_copy_only=False)
        if broken.any():
            bad.extend(BadRow(int(line), rule.reason) for line in good_lines[broken])
            keep = pa.array(~broken)
            values = {key: array.filter(keep) for key, array in values.items()}
            good_lines = good_lines[~broken]
    data_lines = good_lines
    if bad:
        bad.sort(key=lambda row: row.line)
        data_lines = np.union1d(good_lines, np.asarray([row.line for row in bad], np.int64))
    return Parsed(values, good_lines, bad, data_lines)
