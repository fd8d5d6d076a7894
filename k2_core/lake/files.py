"""File-level writes: write Arrow data as uncommitted Iceberg data files, then commit exactly those files.

pyiceberg's `overwrite` commits a delete snapshot and an append snapshot and plans the delete from a predicate;
compaction and the OHLCV rebuild need one `overwrite` snapshot that removes exactly the files they read and adds
exactly the files they wrote, so a concurrent append (a file they never saw) always survives. The ingester writes
its batch once and, when another writer commits first, commits the same files again instead of rewriting them.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
from pyiceberg.io.pyarrow import _dataframe_to_data_files, _determine_partitions, pyarrow_to_schema, write_file
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, TableProperties, WriteTask
from pyiceberg.transforms import DayTransform
from pyiceberg.utils.properties import property_as_bool, property_as_int

from k2_core.lake.transaction import transaction
from k2_core.logging import get_logger

log = get_logger(__name__)

# One output file per chunk: the chunking already decided the sizes.
_NO_SPLIT = str(2**62)
DAY_MICROS = 86_400_000_000


def write_chunks(table: Table, chunks: Iterable[pa.Table]) -> list[DataFile]:
    """Write each chunk (rows of one partition, in the table's Arrow schema) as exactly one data file. Nothing is
    committed: the files become part of the table only through `replace_files`."""
    metadata = table.metadata.model_copy(
        update={"properties": {**table.metadata.properties, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES: _NO_SPLIT}}
    )
    write_uuid = uuid.uuid4()
    counter = itertools.count(0)
    files: list[DataFile] = []
    for chunk in chunks:
        if chunk.num_rows:
            files.extend(_dataframe_to_data_files(metadata, chunk, table.io, write_uuid=write_uuid, counter=counter))
    return files


def write_files(table: Table, data: pa.Table, pieces: int = 1) -> list[DataFile]:
    """Write `data` (any partitions, in the table's Arrow schema) as data files split the way `Table.append` splits
    them. Nothing is committed: the files become part of the table only through `append_files`.

    Rows already sorted by a day-partitioned table's time column (what the ingester and `k2 import` write) skip
    pyiceberg's partition split, which filters a copy of the batch per partition: each day is a slice. `pieces`
    files per day are written at once (the Parquet writer runs outside the GIL), for a large batch on many cores."""
    if not data.num_rows:
        return []
    runs = _day_runs(table, data)
    if runs is None:
        return list(_dataframe_to_data_files(table.metadata, data, table.io, write_uuid=uuid.uuid4()))
    metadata = table.metadata
    task_schema = pyarrow_to_schema(
        data.schema, name_mapping=metadata.schema().name_mapping, format_version=metadata.format_version
    )
    target = property_as_int(
        metadata.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    write_uuid, counter = uuid.uuid4(), itertools.count(0)
    tasks = []
    for start, end in runs:
        day = data.slice(start, end - start)
        key = next(iter(_determine_partitions(metadata.spec(), metadata.schema(), day.slice(0, 1)))).partition_key
        files = max(pieces, -(-day.nbytes // (target or day.nbytes or 1)))  # never past the target size (in memory)
        cuts = np.linspace(0, day.num_rows, min(files, day.num_rows) + 1, dtype=np.int64)
        for lo, hi in itertools.pairwise(cuts.tolist()):
            batches = day.slice(lo, hi - lo).to_batches()
            tasks.append(WriteTask(write_uuid, next(counter), task_schema, batches, partition_key=key))
    return list(write_file(table.io, metadata, iter(tasks)))


def _day_runs(table: Table, data: pa.Table) -> list[tuple[int, int]] | None:
    """The [start, end) rows of each day when the table is partitioned by the day of one timestamp column and `data`
    is sorted by it; None otherwise."""
    spec = table.metadata.spec()
    if len(spec.fields) != 1 or not isinstance(spec.fields[0].transform, DayTransform):
        return None
    name = table.metadata.schema().find_column_name(spec.fields[0].source_id)
    if name is None or name not in data.column_names:
        return None
    column = data.column(name)
    if not pa.types.is_timestamp(column.type) or column.null_count:
        return None
    micros = np.asarray(column.cast(pa.timestamp("us", column.type.tz)).cast(pa.int64()), dtype=np.int64)
    days = micros // DAY_MICROS
    steps = np.diff(days)
    if (steps < 0).any():
        return None
    edges = [0, *(np.flatnonzero(steps) + 1).tolist(), len(days)]
    return list(itertools.pairwise(edges))


def append_files(table: Table, files: Iterable[DataFile], properties: dict[str, str]) -> int | None:
    """Commit one `append` snapshot adding `files`, merging manifests when the table asks for it as
    `Table.append` does; returns its id. Raises `CommitFailedException` when another writer committed first: the
    same files can then be committed again."""
    merge = property_as_bool(
        table.metadata.properties,
        TableProperties.MANIFEST_MERGE_ENABLED,
        TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT,
    )
    with transaction(table) as txn:
        update = txn.update_snapshot(snapshot_properties=properties)
        with update.merge_append() if merge else update.fast_append() as op:
            for data_file in files:
                op.append_data_file(data_file)
    return table.metadata.current_snapshot_id


def replace_files(
    table: Table, remove: Iterable[DataFile], add: Iterable[DataFile], properties: dict[str, str]
) -> int | None:
    """Commit one `overwrite` snapshot removing `remove` and adding `add`; returns its id. Raises pyiceberg's
    `CommitFailedException` when another writer committed first, and `ValidationException` when a file to remove is
    no longer in the table. With nothing to remove or add, the snapshot still records `properties`."""
    remove, add = list(remove), list(add)
    with transaction(table) as txn, txn.update_snapshot(snapshot_properties=properties).overwrite() as op:
        for data_file in remove:
            op.delete_data_file(data_file)
        for data_file in add:
            op.append_data_file(data_file)
    return table.metadata.current_snapshot_id


def delete_uncommitted(table: Table, files: Iterable[DataFile]) -> None:
    """Best effort: remove files this process wrote but never committed (orphan cleanup would catch them later)."""
    for data_file in files:
        try:
            table.io.delete(data_file.file_path)
        except OSError as exc:
            log.warning("cannot delete uncommitted file", extra={"path": data_file.file_path, "error": str(exc)})
