"""The book tracker (k2_core.ingest.book_sequence) filled from the tables, one instrument at a time, reading only
the newest day that holds it.

What the tracker needs of a book is its newest stored update and feed snapshot by exchange time (their numbers and
times): a continuation, a re-delivery and a gap are all decided against those. The book tables are partitioned by
the UTC day of that time, so the newest row of an instrument is in the newest day partition holding any row of it:
the days are read newest first, each older day only for the instruments not found yet, and the search stops once
every instrument asked for is found. An instrument stored nowhere (a new one) is searched through every day, on
file statistics first (pyiceberg skips the files whose symbol bounds exclude it). So a restart reads about a day of
keys, however long the history, and decides exactly as a tracker that had read all of it.

Instruments are filled when first needed (the book ingester asks for those of each batch that the tracker does not
hold yet), and the books still unknown are filled at once, so they are reported from the start. `book_validity`
(one row per change of a book's state, small) is read whole once per reset.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime

import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, In, Or
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import FileScanTask, Table
from pyiceberg.transforms import DayTransform

from k2_core.ingest.book_sequence import BookStreams, Instrument
from k2_core.logging import get_logger
from k2_core.model.tables import BOOK_INVALID, SOURCE_FEED

log = get_logger(__name__)

BOOK_KEY = ("exchange", "symbol", "exchange_sequence_number", "exchange_timestamp")


def instruments_filter(instruments: Iterable[Instrument]) -> BooleanExpression:
    """A row filter for exactly these (exchange, symbol) pairs: one `symbol IN (...)` per exchange."""
    by_exchange: dict[str, set[str]] = defaultdict(set)
    for exchange, symbol in instruments:
        by_exchange[exchange].add(symbol)
    terms: list[BooleanExpression] = [
        And(EqualTo(term="exchange", value=e), In(term="symbol", literals=tuple(sorted(syms))))
        for e, syms in sorted(by_exchange.items())
    ]
    expr = terms[0]
    for term in terms[1:]:
        expr = Or(expr, term)
    return expr


def _days(table: Table, tasks: list[FileScanTask]) -> dict[int | None, list[FileScanTask]]:
    """The files by the day partition they hold; all under None when a file's spec is not one by day (then the
    search reads them all at once: still exact, only not bounded)."""
    specs = table.specs()
    out: dict[int | None, list[FileScanTask]] = defaultdict(list)
    for task in tasks:
        fields = specs[task.file.spec_id].fields
        by_day = len(fields) == 1 and isinstance(fields[0].transform, DayTransform)
        out[task.file.partition[0] if by_day else None].append(task)
    if None in out and len(out) > 1:
        return {None: [t for tasks_of_day in out.values() for t in tasks_of_day]}
    return out


def newest_keys(
    table: Table, instruments: Iterable[Instrument], where: BooleanExpression | None = None
) -> tuple[pa.Table, int]:
    """The key rows (`BOOK_KEY`) of each instrument's newest day in `table` (rows also matching `where`), and how
    many day partitions were read. Instruments without a row are absent from the result."""
    missing = set(instruments)
    schema = table.schema().select(*BOOK_KEY)
    empty = schema.as_arrow().empty_table()
    if not missing or table.metadata.current_snapshot_id is None:
        return empty, 0
    extra = where if where is not None else AlwaysTrue()
    tasks = list(table.scan(row_filter=And(instruments_filter(missing), extra)).plan_files())
    found: list[pa.Table] = []
    days_read = 0
    by_day = _days(table, tasks)
    for day in sorted(by_day, key=lambda d: -1 if d is None else d, reverse=True):
        day_tasks = by_day[day]
        if not missing:
            break
        keys = ArrowScan(table.metadata, table.io, schema, And(instruments_filter(missing), extra)).to_table(day_tasks)
        days_read += 1
        if keys.num_rows:
            found.append(keys)
            missing -= set(zip(keys.column("exchange").to_pylist(), keys.column("symbol").to_pylist(), strict=True))
    return (pa.concat_tables(found) if found else empty), days_read


class BookState:
    """The tracker and what it is filled from: the book tables, the open gaps' ids, and `book_validity` as read at
    the last `reset`."""

    def __init__(
        self,
        updates: Table,
        snapshots: Table,
        validity: Table,
        open_gap_ids: Callable[[], dict[Instrument, str]],
        streams: BookStreams,
    ) -> None:
        self.updates, self.snapshots, self.validity = updates, snapshots, validity
        self.streams = streams
        self._open_gap_ids = open_gap_ids
        self._validity = validity.schema().as_arrow().empty_table()
        self._gap_ids: dict[Instrument, str] = {}

    def reset(self) -> None:
        """Forget every book (on an assignment, after a failed write) and fill at once the ones stored as unknown."""
        self.streams.streams.clear()
        for table in (self.updates, self.snapshots, self.validity):
            table.refresh()
        self._validity = self.validity.scan().to_arrow()
        self._gap_ids = self._open_gap_ids()
        newest: dict[Instrument, tuple[datetime, int, str]] = {}
        for row in self._validity.select(["exchange", "symbol", "at", "sequence", "state"]).to_pylist():
            key = (row["exchange"], row["symbol"])
            if key not in newest or (row["at"], row["sequence"]) >= newest[key][:2]:
                newest[key] = (row["at"], row["sequence"], row["state"])
        self.ensure([key for key, (_, _, state) in newest.items() if state == BOOK_INVALID])

    def ensure(self, instruments: Iterable[Instrument]) -> None:
        """Fill the tracker with what is stored of each instrument it does not hold yet."""
        missing = {key for key in instruments if key not in self.streams.streams}
        if not missing:
            return
        self.updates.refresh()
        self.snapshots.refresh()
        updates, update_days = newest_keys(self.updates, missing)
        snapshots, snapshot_days = newest_keys(self.snapshots, missing, EqualTo(term="source", value=SOURCE_FEED))
        self.streams.add(missing, updates, snapshots, self._validity, self._gap_ids)
        log.info(
            "book tracker filled",
            extra={
                "instruments": len(missing),
                "update_days_read": update_days,
                "snapshot_days_read": snapshot_days,
                "keys_read": updates.num_rows + snapshots.num_rows,
            },
        )
