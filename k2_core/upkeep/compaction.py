"""Compaction of a closed day partition: the ingester's many small files rewritten into a few near a target size.

One compaction reads every data file of the day as of one snapshot, sorts the rows by the table's compaction keys
(out of core, in DuckDB; trades and quotes by instrument, then in exchange order: see `TableDef.cluster_keys`),
writes them in chunks sized so each file lands near the target, reads the written keys back and compares them with
the source's (row count and the exact multiset of keys), and only then commits one `overwrite` snapshot that removes
exactly the files it read and adds the ones it wrote.

The rewrite is in the table's current columns (k2_core.lake.evolution), whatever the files it reads were written
with: files from before a column was added give it as null, so after a compaction a day's files all have it.

A concurrent append (late data for that day) fails the commit; the retry keeps the files already written and
re-commits against the new snapshot, so the appended file stays in the table untouched. If a file the compaction
read has disappeared meanwhile (another compaction won), the rewrite is abandoned. The snapshot never carries
Kafka offsets: the ingester's offset walk passes over it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.exceptions import ValidationException
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from k2_core.exceptions import CommitConflictError, CompactionError
from k2_core.lake.evolution import arrow_schema
from k2_core.lake.files import delete_uncommitted, replace_files, write_chunks
from k2_core.lake.lineage import DayFiles
from k2_core.lake.offsets import WRITER_PROPERTY
from k2_core.lake.retry import commit_with_retries
from k2_core.logging import get_logger
from k2_core.model.days import day_filter, day_key
from k2_core.model.tables import DEDUP_KEY, TableDef, conform

log = get_logger(__name__)

WRITER = "compaction"
DAY_PROPERTY = "k2.compaction.day"
TIME_COLUMN = "exchange_timestamp"
KEY_COLUMNS = (*DEDUP_KEY, TIME_COLUMN)


@dataclass(frozen=True)
class CompactionResult:
    table: str
    day: date
    files_before: int
    files_written: int
    files_after: int
    rows: int
    bytes_before: int
    bytes_written: int
    snapshot_id: int | None
    skipped: str = ""


def expected_files(total_bytes: int, target_file_bytes: int) -> int:
    return max(1, math.ceil(total_bytes / target_file_bytes))


def needs_compaction(day: DayFiles, target_file_bytes: int, min_files: int) -> bool:
    """More than `min_files` files, and more than compaction would leave: a day compacted into many large files
    is never picked again."""
    return day.files > min_files and day.files > expected_files(day.bytes, target_file_bytes)


def _chunks(reader: pa.RecordBatchReader, rows_per_file: int, schema: pa.Schema) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows_per_file:
            table = pa.Table.from_batches(pending)
            yield conform(table.slice(0, rows_per_file), schema)
            rest = table.slice(rows_per_file)
            pending = rest.to_batches()
            count = rest.num_rows
    if count:
        yield conform(pa.Table.from_batches(pending), schema)


def _written_keys(table: Table, files: list[DataFile]) -> pa.Table:
    parts = []
    for data_file in files:
        with table.io.new_input(data_file.file_path).open() as stream:
            parts.append(pq.read_table(stream, columns=list(KEY_COLUMNS)))
    return pa.concat_tables(parts) if parts else pa.table({})


def _verify(source_keys: pa.Table, written_keys: pa.Table, expected_rows: int, written: list[DataFile]) -> None:
    recorded = sum(f.record_count for f in written)
    if not source_keys.num_rows == written_keys.num_rows == recorded == expected_rows:
        raise CompactionError(
            f"row count changed: source files hold {expected_rows}, read {source_keys.num_rows}, "
            f"wrote {written_keys.num_rows} (manifest says {recorded})"
        )
    cols = ", ".join(KEY_COLUMNS)
    with duckdb.connect() as con:
        con.register("src", source_keys)
        con.register("out", written_keys)
        row = con.execute(
            f"SELECT (SELECT count(*) FROM (SELECT {cols} FROM src EXCEPT ALL SELECT {cols} FROM out)),"
            f"       (SELECT count(*) FROM (SELECT {cols} FROM out EXCEPT ALL SELECT {cols} FROM src))"
        ).fetchone()
    if row is None or row[0] or row[1]:
        raise CompactionError(f"key set changed: {row} keys only in source / only in the rewrite")


def compact_day(
    table: Table,
    table_def: TableDef,
    day: date,
    *,
    target_file_bytes: int,
    retries: int,
    backoff_seconds: float,
    before_commit: Callable[[], None] | None = None,
) -> CompactionResult:
    """Rewrite `day` of `table` into files near `target_file_bytes`, verified, as one snapshot.
    `before_commit` runs once between verification and the first commit attempt (tests use it to race a writer)."""
    table.refresh()
    name = table_def.name
    base = table.metadata.current_snapshot_id
    if base is None:
        return CompactionResult(name, day, 0, 0, 0, 0, 0, 0, None, skipped="table is empty")
    scan = table.scan(row_filter=day_filter(TIME_COLUMN, day), snapshot_id=base)
    tasks = list(scan.plan_files())
    if any(task.delete_files for task in tasks):
        raise CompactionError(f"{name} {day_key(day)} has delete files; compaction only rewrites data files")
    source = [task.file for task in tasks]
    rows = sum(f.record_count for f in source)
    size = sum(f.file_size_in_bytes for f in source)
    if len(source) < 2:
        return CompactionResult(name, day, len(source), 0, len(source), rows, size, 0, base, skipped="nothing to merge")
    rows_per_file = math.ceil(rows / expected_files(size, target_file_bytes))

    keys = table_def.compaction_keys
    order = ", ".join([*keys, *(k for k in DEDUP_KEY if k not in keys)])
    with duckdb.connect() as con:
        con.register("day_rows", scan.to_arrow_batch_reader())
        sorted_rows = con.sql(f"SELECT * FROM day_rows ORDER BY {order}").to_arrow_reader(rows_per_file)
        written = write_chunks(table, _chunks(sorted_rows, rows_per_file, arrow_schema(table)))
    try:
        source_keys = table.scan(
            row_filter=day_filter(TIME_COLUMN, day), snapshot_id=base, selected_fields=KEY_COLUMNS
        ).to_arrow()
        _verify(source_keys, _written_keys(table, written), rows, written)
        if before_commit is not None:
            before_commit()
        props = {WRITER_PROPERTY: WRITER, DAY_PROPERTY: day_key(day)}

        def attempt(current: Table) -> int | None:
            try:
                return replace_files(current, source, written, props)
            except ValidationException as exc:
                raise CompactionError(f"{name} {day_key(day)} was rewritten by someone else meanwhile") from exc

        snapshot_id = commit_with_retries(
            table, attempt, retries=retries, backoff_seconds=backoff_seconds, what="compaction"
        )
    except (CompactionError, CommitConflictError):
        # Certainly not committed. After any other failure (e.g. an unknown commit state) the files may be live:
        # leave them to orphan cleanup, which only removes unreferenced files.
        delete_uncommitted(table, written)
        raise
    after = len(list(table.scan(row_filter=day_filter(TIME_COLUMN, day)).plan_files()))
    result = CompactionResult(
        name,
        day,
        len(source),
        len(written),
        after,
        rows,
        size,
        sum(f.file_size_in_bytes for f in written),
        snapshot_id,
    )
    log.info(
        "day compacted",
        extra={
            "table": name,
            "day": day_key(day),
            "files_before": result.files_before,
            "files_after": result.files_after,
            "rows": rows,
        },
    )
    return result
