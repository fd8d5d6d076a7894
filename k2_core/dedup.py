"""Rebuilds the 24 h dedup / sequence state from what the tables actually hold.

The state is derived, never stored on the side: on start and on every partition assignment the ingester reads
the (exchange, symbol, sequence) keys ingested inside the window and collapses them into islands with DuckDB.
Whatever crashed, the state then matches the committed data exactly, so replayed messages dedup correctly.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, GreaterThanOrEqual, In, LessThanOrEqual
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table

from k2_core.sequence import SequenceTracker, StreamKey
from k2_core.topics import Kind

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEY_FIELDS = ("exchange", "symbol", "exchange_sequence_number", "exchange_timestamp", "ingestion_timestamp")

# Islands of consecutive numbers per stream, after the latest sequence reset (the last seq 1 by exchange time).
_ISLANDS_SQL = """
WITH r AS (
    SELECT exchange, symbol, exchange_sequence_number AS seq,
           epoch_us(exchange_timestamp) AS ts, epoch_us(ingestion_timestamp) AS ing
    FROM keys
),
b AS (SELECT exchange, symbol, max(ts) FILTER (WHERE seq = 1) AS start_ts FROM r GROUP BY exchange, symbol),
s AS (
    SELECT r.* FROM r JOIN b USING (exchange, symbol) WHERE b.start_ts IS NULL OR r.ts >= b.start_ts
),
g AS (SELECT *, seq - dense_rank() OVER (PARTITION BY exchange, symbol ORDER BY seq) AS grp FROM s)
SELECT exchange, symbol, min(seq) AS lo, max(seq) AS hi, max(ing) AS touched, arg_max(ts, seq) AS top_ts
FROM g GROUP BY exchange, symbol, grp
"""


def to_us(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


def rebuild(
    tracker: SequenceTracker,
    tables: Mapping[Kind, Table],
    open_gaps: list[tuple[StreamKey, int, int]],
    now: datetime,
) -> int:
    """Load `tracker` from the tables (data type -> table); returns the number of keys read."""
    cutoff = now - timedelta(microseconds=tracker.window_us)
    islands: list[tuple[StreamKey, int, int, int, int]] = []
    rows_read = 0
    con = duckdb.connect()
    try:
        for data_type, table in tables.items():
            if table.metadata.current_snapshot_id is None:
                continue
            keys = table.scan(
                row_filter=GreaterThanOrEqual(term="ingestion_timestamp", value=cutoff.isoformat()),
                selected_fields=KEY_FIELDS,
            ).to_arrow()
            rows_read += keys.num_rows
            if keys.num_rows == 0:
                continue
            con.register("keys", keys)
            for exchange, symbol, lo, hi, touched, top_ts in con.execute(_ISLANDS_SQL).fetchall():
                islands.append(((data_type, exchange, symbol), lo, hi, touched, top_ts))
            con.unregister("keys")
    finally:
        con.close()
    tracker.load(islands, open_gaps)
    return rows_read


def keys_in_files(table: Table, files: list[DataFile], rows: pa.Table, key: tuple[str, ...]) -> npt.NDArray[np.bool_]:
    """Which of `rows` have their `key` columns' values in one of `files` (data files of `table`): the re-check a
    writer makes against only what other writers committed since it last looked, inside its commit attempt."""
    if not files or rows.num_rows == 0:
        return np.zeros(rows.num_rows, dtype=np.bool_)
    row_filter = In(term="exchange_sequence_number", literals=set(rows.column("exchange_sequence_number").to_pylist()))
    scan = ArrowScan(table.metadata, table.io, table.schema().select(*key), row_filter)
    found = scan.to_table([FileScanTask(f) for f in files]).select(list(key))
    if found.num_rows == 0:
        return np.zeros(rows.num_rows, dtype=np.bool_)
    con = duckdb.connect()
    try:
        con.register("found", found)
        con.register("candidate", rows.select(list(key)).append_column("i", pa.array(np.arange(rows.num_rows))))
        on = " AND ".join(f"f.{k} = c.{k}" for k in key)
        hits = con.sql(f"SELECT EXISTS (SELECT 1 FROM found f WHERE {on}) FROM candidate c ORDER BY c.i").fetchall()
    finally:
        con.close()
    return np.array([h[0] for h in hits], dtype=np.bool_)


def already_stored(table: Table, rows: pa.Table) -> npt.NDArray[np.bool_]:
    """Which of `rows` (late numbers about to fill a gap) the table already holds: the gap backfill job may have
    written them since the ingester's state was built. Late fills are rare, so this narrow read is cheap."""
    table.refresh()
    if table.metadata.current_snapshot_id is None or rows.num_rows == 0:
        return np.zeros(rows.num_rows, dtype=np.bool_)
    times = pc.min_max(rows.column("exchange_timestamp")).as_py()
    row_filter = And(
        And(
            GreaterThanOrEqual(term="exchange_timestamp", value=times["min"].isoformat()),
            LessThanOrEqual(term="exchange_timestamp", value=times["max"].isoformat()),
        ),
        In(term="exchange_sequence_number", literals=set(rows.column("exchange_sequence_number").to_pylist())),
    )
    stored = table.scan(row_filter=row_filter, selected_fields=("exchange", "symbol", "exchange_sequence_number"))
    con = duckdb.connect()
    try:
        con.register("stored", stored.to_arrow())
        late = rows.select(["exchange", "symbol", "exchange_sequence_number"])
        con.register("late", late.append_column("i", pa.array(np.arange(late.num_rows))))
        hits = con.sql(
            "SELECT EXISTS (SELECT 1 FROM stored s WHERE s.exchange = l.exchange AND s.symbol = l.symbol "
            "AND s.exchange_sequence_number = l.exchange_sequence_number) FROM late l ORDER BY l.i"
        ).fetchall()
    finally:
        con.close()
    return np.array([h[0] for h in hits], dtype=np.bool_)
