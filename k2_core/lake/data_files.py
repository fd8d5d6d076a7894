"""A written data file's Iceberg entry as JSON, so the process that commits it need not read the file again.

A coordinated worker (k2_core.ingest.coordination) writes its data files and hands them to the committer. Reading
each file's Parquet footer back to rebuild its entry (`parquet_file_to_data_file`) was 85% of the committer's time
at 32 workers in `bench/scaleout_sim.py` (28 ms a file, most of it converting and checking the file's schema): the
committer was the ceiling. The worker already holds the entry pyiceberg computed when it wrote the file, from the
same Parquet metadata, so it sends it along. The committer uses it only when it is for the table's current
partition spec and names a file of the request; otherwise (an older worker, a spec changed meanwhile) it reads the
footer as before.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.typedef import Record

_SCALARS = (int, str, bool, type(None))


def _counts(values: Mapping[int, int] | None) -> dict[str, int] | None:
    return None if values is None else {str(k): int(v) for k, v in values.items()}


def _bounds(values: Mapping[int, bytes] | None) -> dict[str, str] | None:
    return None if values is None else {str(k): base64.b64encode(v).decode() for k, v in values.items()}


def encode_data_file(data_file: DataFile, spec_id: int) -> dict[str, Any] | None:
    """The entry as JSON-able values, with the id of the partition spec the file was written for (pyiceberg's
    writer does not keep it on the entry: pass the table's default spec id of the write); None when it cannot
    travel (not a Parquet data file, or a partition value JSON does not keep exactly): the receiver then reads the
    file's footer."""
    partition = list(data_file.partition._data) if data_file.partition is not None else []
    if data_file.content is not DataFileContent.DATA or data_file.file_format is not FileFormat.PARQUET:
        return None
    if not all(isinstance(v, _SCALARS) for v in partition):
        return None
    return {
        "file_path": data_file.file_path,
        "spec_id": spec_id,
        "partition": partition,
        "record_count": data_file.record_count,
        "file_size_in_bytes": data_file.file_size_in_bytes,
        "column_sizes": _counts(data_file.column_sizes),
        "value_counts": _counts(data_file.value_counts),
        "null_value_counts": _counts(data_file.null_value_counts),
        "nan_value_counts": _counts(data_file.nan_value_counts),
        "lower_bounds": _bounds(data_file.lower_bounds),
        "upper_bounds": _bounds(data_file.upper_bounds),
        "split_offsets": None if data_file.split_offsets is None else list(data_file.split_offsets),
    }


def decode_data_file(raw: Mapping[str, Any]) -> DataFile:
    """The entry `encode_data_file` wrote. Raises `ValueError` (or `KeyError`, `TypeError`) on a malformed one."""

    def counts(key: str) -> dict[int, int] | None:
        value = raw.get(key)
        return None if value is None else {int(k): int(v) for k, v in value.items()}

    def bounds(key: str) -> dict[int, bytes] | None:
        value = raw.get(key)
        return None if value is None else {int(k): base64.b64decode(v, validate=True) for k, v in value.items()}

    partition = raw["partition"]
    if not isinstance(partition, list) or not all(isinstance(v, _SCALARS) for v in partition):
        raise ValueError("partition must be a list of scalars")
    offsets = raw.get("split_offsets")
    entry = DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=str(raw["file_path"]),
        file_format=FileFormat.PARQUET,
        partition=Record(*partition),
        record_count=int(raw["record_count"]),
        file_size_in_bytes=int(raw["file_size_in_bytes"]),
        column_sizes=counts("column_sizes"),
        value_counts=counts("value_counts"),
        null_value_counts=counts("null_value_counts"),
        nan_value_counts=counts("nan_value_counts"),
        lower_bounds=bounds("lower_bounds"),
        upper_bounds=bounds("upper_bounds"),
        split_offsets=None if offsets is None else [int(o) for o in offsets],
        sort_order_id=None,
        equality_ids=None,
        key_metadata=None,
    )
    entry.spec_id = int(raw["spec_id"])
    return entry
