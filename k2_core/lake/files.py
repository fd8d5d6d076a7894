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

import pyarrow as pa
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, TableProperties
from pyiceberg.utils.properties import property_as_bool

from k2_core.logging import get_logger

log = get_logger(__name__)

# One output file per chunk: the chunking already decided the sizes.
_NO_SPLIT = str(2**62)


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


def write_files(table: Table, data: pa.Table) -> list[DataFile]:
    """Write `data` (any partitions, in the table's Arrow schema) as data files split the way `Table.append` splits
    them. Nothing is committed: the files become part of the table only through `append_files`."""
    if not data.num_rows:
        return []
    return list(_dataframe_to_data_files(table.metadata, data, table.io, write_uuid=uuid.uuid4()))


def append_files(table: Table, files: Iterable[DataFile], properties: dict[str, str]) -> int | None:
    """Commit one `append` snapshot adding `files`, merging manifests when the table asks for it as
    `Table.append` does; returns its id. Raises `CommitFailedException` when another writer committed first: the
    same files can then be committed again."""
    merge = property_as_bool(
        table.metadata.properties,
        TableProperties.MANIFEST_MERGE_ENABLED,
        TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT,
    )
    with table.transaction() as txn:
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
    with table.transaction() as txn, txn.update_snapshot(snapshot_properties=properties).overwrite() as op:
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
