"""Pages and streams in exchange order, `(exchange_timestamp, exchange_sequence_number)`.

A page is found by keyset, not offset: it starts after the last row of the previous page (`k2_core.read.cursor`), so
rows committed meanwhile never shift a listing. One row more than asked for is read to know whether another page
exists. A whole day is streamed instead, in record batches, so it is never held in Python at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2_core.lake import scan
from k2_core.read.cursor import Cursor, from_micros
from k2_core.read.params import TimeRange
from k2_core.read.routing import EXCHANGE_ORDER, TIME_COLUMN, Route, Sources, Stream

# Rows of many instruments in one listing: by time, then symbol, then each instrument's own exchange order.
EXCHANGE_LISTING_ORDER = f"{TIME_COLUMN}, symbol, exchange_sequence_number"


def page(
    sources: Sources, stream: Stream, window: TimeRange, limit: int, route: Route, position: Cursor | None
) -> pa.Table:
    """Up to limit + 1 rows after the cursor (the extra row says whether another page exists). A whole
    exchange's listing (`stream.symbol` None) is in `EXCHANGE_LISTING_ORDER`, its cursor holding the last symbol."""
    where = "TRUE"
    params: dict[str, Any] = {}
    whole_exchange = stream.symbol is None
    if position is not None:
        after_ts, after_seq = position.after
        params |= {"after_ts": from_micros(after_ts), "after_seq": after_seq}
        later = "exchange_sequence_number > $after_seq"
        if whole_exchange:
            params["after_symbol"] = position.symbol or ""
            later = f"symbol > $after_symbol OR (symbol = $after_symbol AND {later})"
        where = f"{TIME_COLUMN} >= $after_ts AND ({TIME_COLUMN} > $after_ts OR {later})"
    n = limit + 1
    order = EXCHANGE_LISTING_ORDER if whole_exchange else EXCHANGE_ORDER
    schema = sources.columns(stream, route)
    with scan.connect() as con:
        plan = sources.market_view(con, stream, window, route)
        if not whole_exchange and not route.realtime and plan is not None and len(plan.data_files) == 1:
            # One file, and the rest of the window fits in the page: read it whole in file order, unsorted and
            # unlimited (both cost DuckDB more than the read). Every file K2 writes holds each instrument's
            # rows in exchange order, so the sort below is a check that almost never has to sort.
            (count,) = con.sql(f"SELECT count(*) FROM market WHERE {where}", params=params).fetchall()[0]
            if count < n:
                result = con.sql(f"SELECT * FROM market WHERE {where}", params=params).to_arrow_table()
                if not in_exchange_order(result):
                    result = result.sort_by([(TIME_COLUMN, "ascending"), ("exchange_sequence_number", "ascending")])
                return scan.cast_to(result, schema)
        result = con.sql(
            f"SELECT * FROM market WHERE {where} ORDER BY {order} LIMIT $n", params=params | {"n": n}
        ).to_arrow_table()
    return scan.cast_to(result, schema)


def cut(rows: pa.Table, limit: int) -> tuple[pa.Table, dict[str, Any] | None]:
    """A page of at most `limit` rows, and its last row when more follow (the position the next cursor holds),
    else None: the listing ends here."""
    if rows.num_rows <= limit:
        return rows, None
    rows = rows.slice(0, limit)
    return rows, rows.slice(limit - 1).to_pylist()[0]


def day_batches(
    sources: Sources, stream: Stream, window: TimeRange, route: Route, batch_size: int
) -> Iterator[pa.RecordBatch]:
    """The stream's rows in `window` in exchange order, `batch_size` at a time: DuckDB sorts (spilling to disk if
    it must) and hands batches over one at a time."""
    schema = sources.columns(stream, route)
    with scan.connect() as con:
        sources.market_view(con, stream, window, route)
        reader = con.sql(f"SELECT * FROM market ORDER BY {EXCHANGE_ORDER}").fetch_record_batch(batch_size)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield pa.RecordBatch.from_arrays([batch.column(f.name).cast(f.type) for f in schema], schema=schema)


def in_exchange_order(rows: pa.Table) -> bool:
    """True if `rows` are sorted by (exchange_timestamp, exchange_sequence_number)."""
    if rows.num_rows < 2:
        return True
    ts = pc.cast(rows.column(TIME_COLUMN), pa.int64()).to_numpy()
    seq = rows.column("exchange_sequence_number").to_numpy()
    later, same = ts[1:] > ts[:-1], ts[1:] == ts[:-1]
    return bool(np.all(later | (same & (seq[1:] >= seq[:-1]))))


def order_key(row: Mapping[str, Any]) -> tuple[datetime, int]:
    """A row's place in exchange order."""
    return row[TIME_COLUMN], int(row["exchange_sequence_number"])
