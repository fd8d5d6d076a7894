"""Builds the sequence/dedup state from what the tables actually hold, and loads history into it on demand.

The state is derived, never stored on the side: on start and on every partition assignment the ingester reads the
keys of every row with an exchange time inside the window (`rebuild`), and a batch holding rows older than that
first loads those stream-days from the table (`load_history`). Rows are split into sessions by the tracker's rule
(in exchange-time order, a number below the one before starts a session) and collapsed into islands with DuckDB.
Whatever crashed, the state then matches the committed data exactly, so a replayed message dedups correctly, and a
replay or import of a day stored long ago changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    In,
    LessThan,
    LessThanOrEqual,
    Or,
)
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table

from k2_core.ingest.sequence import DAY_US, Recorded, SequenceTracker, Session, StreamKey
from k2_core.lake.lineage import files_added_since
from k2_core.model.topics import Kind

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEY_FIELDS = ("exchange", "symbol", "exchange_sequence_number", "exchange_timestamp", "ingestion_timestamp")
# What makes a stored row the same row: its stream, number and exchange time (numbers restart each session).
STORED_KEY = ("exchange", "symbol", "exchange_sequence_number", "exchange_timestamp")
MAX_FILTER_LITERALS = 10_000
OpenGaps = list[tuple[StreamKey, Recorded]]

# Islands of consecutive numbers per session: in (exchange time, number) order, a number not above the one before,
# at a later time, starts a new session of its stream (k2_core.ingest.sequence).
_SESSIONS_SQL = """
WITH r AS (
    SELECT exchange, symbol, exchange_sequence_number AS seq,
           epoch_us(exchange_timestamp) AS ts, epoch_us(ingestion_timestamp) AS ing
    FROM keys
),
o AS (
    SELECT *, CASE WHEN seq <= lag(seq) OVER w AND ts > lag(ts) OVER w THEN 1 ELSE 0 END AS brk
    FROM r WINDOW w AS (PARTITION BY exchange, symbol ORDER BY ts, seq)
),
s AS (
    SELECT *, sum(brk) OVER (PARTITION BY exchange, symbol ORDER BY ts, seq ROWS UNBOUNDED PRECEDING) AS sess FROM o
),
b AS (SELECT exchange, symbol, sess, min(ts) AS start_ts, max(ts) AS top_ts FROM s GROUP BY exchange, symbol, sess),
g AS (SELECT *, seq - dense_rank() OVER (PARTITION BY exchange, symbol, sess ORDER BY seq) AS grp FROM s)
SELECT g.exchange, g.symbol, g.sess, b.start_ts, b.top_ts, min(g.seq) AS lo, max(g.seq) AS hi, max(g.ing) AS touched
FROM g JOIN b USING (exchange, symbol, sess)
GROUP BY g.exchange, g.symbol, g.sess, b.start_ts, b.top_ts, g.grp
ORDER BY g.exchange, g.symbol, g.sess, lo
"""


def to_us(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


def _at(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).isoformat()


def sessions_of(data_type: Kind, keys: pa.Table) -> list[tuple[StreamKey, Session]]:
    """The sessions (with their islands) of key rows (`KEY_FIELDS`) of one data type."""
    if keys.num_rows == 0:
        return []
    out: list[tuple[StreamKey, Session]] = []
    current: tuple[str, str, int] | None = None
    con = duckdb.connect()
    try:
        con.register("keys", keys)
        for exchange, symbol, sess, start_ts, top_ts, lo, hi, touched in con.execute(_SESSIONS_SQL).fetchall():
            if (exchange, symbol, sess) != current:
                current = (exchange, symbol, sess)
                out.append(((data_type, exchange, symbol), Session(start_ts, top_ts=top_ts)))
            session = out[-1][1]
            session.los.append(lo)
            session.his.append(hi)
            session.touched.append(touched)
    finally:
        con.close()
    return out


def rebuild(tracker: SequenceTracker, tables: Mapping[Kind, Table], open_gaps: OpenGaps, now: datetime) -> int:
    """Load `tracker` from the tables (data type -> table): every row whose exchange time is inside the window, and
    the open gaps. Returns the number of keys read."""
    horizon = to_us(now) - tracker.window_us
    sessions: list[tuple[StreamKey, Session]] = []
    rows_read = 0
    for data_type, table in tables.items():
        if table.metadata.current_snapshot_id is None:
            continue
        keys = table.scan(
            row_filter=GreaterThanOrEqual(term="exchange_timestamp", value=_at(horizon)), selected_fields=KEY_FIELDS
        ).to_arrow()
        rows_read += keys.num_rows
        sessions.extend(sessions_of(data_type, keys))
    tracker.load(sessions, open_gaps)
    tracker.horizon_us = horizon
    return rows_read


def catch_up(
    tracker: SequenceTracker,
    tables: Mapping[Kind, Table],
    known: Mapping[Kind, int | None],
    open_gaps: OpenGaps,
) -> int | None:
    """Bring the tracker up to the tables when it was right as of snapshot `known[kind]` of each: merge in the keys of
    every file committed since (by other writers: after a rebalance, a restart of a peer, the gap backfill) and set
    the open gaps to what `sequence_gaps` holds. Cheap after a rebalance, where a rebuild reads the whole window.
    Returns the keys read, or None when a known snapshot has left the chain (then only `rebuild` will do)."""
    rows_read = 0
    for data_type, table in tables.items():
        table.refresh()
        added = files_added_since(table, known.get(data_type), appends_only=True)
        if added is None:
            return None
        if not added:
            continue
        keys = ArrowScan(table.metadata, table.io, table.schema().select(*KEY_FIELDS), AlwaysTrue()).to_table(
            [FileScanTask(f) for f in added]
        )
        rows_read += keys.num_rows
        tracker.add_sessions(sessions_of(data_type, keys), ())
    tracker.replace_recorded(open_gaps)
    return rows_read


def load_history(
    tracker: SequenceTracker,
    tables: Mapping[Kind, Table],
    wanted: Iterable[tuple[StreamKey, int]],
    open_gaps: OpenGaps,
    now: datetime,
) -> int:
    """Load whole stream-days (`(stream, day number)`) from before the tracker's horizon into it, with their open
    gaps, so that older rows are checked against what is stored. The sessions count as touched now: they are in use.
    Returns the number of keys read."""
    by_kind: dict[Kind, set[tuple[str, str, int]]] = {}
    for (data_type, exchange, symbol), day in wanted:
        by_kind.setdefault(data_type, set()).add((exchange, symbol, day))  # type: ignore[arg-type]
    rows_read = 0
    for data_type, streams in by_kind.items():
        table = tables[data_type]
        table.refresh()
        sessions: list[tuple[StreamKey, Session]] = []
        if table.metadata.current_snapshot_id is not None:
            keys = table.scan(row_filter=_stream_days(streams), selected_fields=KEY_FIELDS).to_arrow()
            rows_read += keys.num_rows
            sessions = sessions_of(data_type, keys)
        for _, session in sessions:
            session.touched = [to_us(now)] * len(session.touched)
        wanted_keys = {(data_type, exchange, symbol) for exchange, symbol, _ in streams}
        tracker.add_sessions(sessions, [(k, g) for k, g in open_gaps if k in wanted_keys])
        for exchange, symbol, day in streams:
            tracker.loaded_days.setdefault((data_type, exchange, symbol), set()).add(day)
    return rows_read


def _stream_days(streams: set[tuple[str, str, int]]) -> BooleanExpression:
    terms: list[BooleanExpression] = [
        And(
            And(EqualTo(term="symbol", value=symbol), EqualTo(term="exchange", value=exchange)),
            And(
                GreaterThanOrEqual(term="exchange_timestamp", value=_at(day * DAY_US)),
                LessThan(term="exchange_timestamp", value=_at((day + 1) * DAY_US)),
            ),
        )
        for exchange, symbol, day in sorted(streams)
    ]
    expr = terms[0]
    for term in terms[1:]:
        expr = Or(expr, term)
    return expr


def key_mask(candidates: pa.Table, present: pa.Table, key: tuple[str, ...] = STORED_KEY) -> npt.NDArray[np.bool_]:
    """Which rows of `candidates` have their `key` values among the rows of `present`."""
    if candidates.num_rows == 0 or present.num_rows == 0:
        return np.zeros(candidates.num_rows, dtype=np.bool_)
    con = duckdb.connect()
    try:
        con.register("present", present.select(list(key)))
        con.register(
            "candidate", candidates.select(list(key)).append_column("i", pa.array(np.arange(candidates.num_rows)))
        )
        on = " AND ".join(f"p.{k} = c.{k}" for k in key)
        hits = con.sql(f"SELECT EXISTS (SELECT 1 FROM present p WHERE {on}) AS hit FROM candidate c ORDER BY c.i")
        return np.asarray(hits.fetchnumpy()["hit"], dtype=np.bool_)
    finally:
        con.close()


def keys_in_files(
    table: Table, files: list[DataFile], rows: pa.Table, key: tuple[str, ...] = STORED_KEY
) -> npt.NDArray[np.bool_]:
    """Which of `rows` have their `key` columns' values in one of `files` (data files of `table`): the re-check a
    writer makes against only what other writers committed since it last looked, inside its commit attempt."""
    if not files or rows.num_rows == 0:
        return np.zeros(rows.num_rows, dtype=np.bool_)
    # A few late numbers narrow the read to their sequence numbers; a whole import chunk reads the files' keys.
    row_filter = (
        In(term="exchange_sequence_number", literals=set(rows.column("exchange_sequence_number").to_pylist()))
        if rows.num_rows <= MAX_FILTER_LITERALS
        else AlwaysTrue()
    )
    scan = ArrowScan(table.metadata, table.io, table.schema().select(*key), row_filter)
    return key_mask(rows, scan.to_table([FileScanTask(f) for f in files]), key)


def keys_in(table: Table, paths: Iterable[str], key: tuple[str, ...] = STORED_KEY) -> pa.Table:
    """The `key` columns of every row of the Parquet files at `paths` (written for `table`, committed or not)."""
    parts = []
    for path in paths:
        with table.io.new_input(path).open() as f:
            parts.append(pq.read_table(f, columns=list(key)))
    return pa.concat_tables(parts)


def already_stored(table: Table, rows: pa.Table) -> tuple[npt.NDArray[np.bool_], int | None]:
    """Which of `rows` (late numbers about to fill a gap) the table already holds, and the snapshot that says so:
    the gap backfill job may have written them since the ingester's state was built, and may yet until the
    ingester commits (its writer re-checks from that snapshot on). Late fills are rare, so this narrow read is
    cheap."""
    table.refresh()
    checked_at = table.metadata.current_snapshot_id
    if checked_at is None or rows.num_rows == 0:
        return np.zeros(rows.num_rows, dtype=np.bool_), checked_at
    times = pc.min_max(rows.column("exchange_timestamp")).as_py()
    row_filter = And(
        And(
            GreaterThanOrEqual(term="exchange_timestamp", value=times["min"].isoformat()),
            LessThanOrEqual(term="exchange_timestamp", value=times["max"].isoformat()),
        ),
        In(term="exchange_sequence_number", literals=set(rows.column("exchange_sequence_number").to_pylist())),
    )
    stored = table.scan(row_filter=row_filter, selected_fields=STORED_KEY, snapshot_id=checked_at).to_arrow()
    return key_mask(rows, stored), checked_at
