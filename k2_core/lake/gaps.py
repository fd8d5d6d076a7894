"""Reading `market.sequence_gaps`: the one reader behind the ingester's open gaps, the backfill job's work list and
gap updates, and the query API's gap listing.

Each of them once read the table its own way, which let them disagree on what a gap row is (its types, what a table
without a snapshot returns). Here it is read once: the current snapshot, narrowed by gap ids and by equality on any
columns, newest detection first, in `GAPS`' own Arrow types. The table holds one row per gap, not per tick, so there
is no limit.
"""

from __future__ import annotations

from collections.abc import Collection

import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, In
from pyiceberg.table import Table

from k2_core.lake import scan
from k2_core.model.tables import GAPS


def read_gaps(
    table: Table,
    *,
    gap_ids: Collection[str] | None = None,
    plans: scan.PlanCache | None = None,
    direct_reads: bool = True,
    **equal: str,
) -> pa.Table:
    """The gaps among `gap_ids` (all if None) whose columns equal `equal` (e.g. `status="open"`), newest detection
    first. `plans` and `direct_reads` are the caller's scan settings (`k2_core.lake.scan`); callers refresh `table`."""
    row_filter: BooleanExpression = AlwaysTrue()
    params: dict[str, object] = dict(equal)
    asked: dict[str, object] = dict(equal)  # what the read logs
    conditions = [f'"{column}" = ${column}' for column in equal]
    for column, value in equal.items():
        row_filter = And(row_filter, EqualTo(term=column, value=value))
    if gap_ids is not None:
        ids = sorted(set(gap_ids))
        if not ids:
            return GAPS.arrow_schema.empty_table()
        row_filter = And(row_filter, In(term="gap_id", literals=ids))
        params["gap_ids"] = ids
        asked["gap_ids"] = f"{len(ids)} ids"
        conditions.append("list_contains($gap_ids, gap_id)")
    where = " AND ".join(conditions) or "TRUE"
    snapshot_id = table.metadata.current_snapshot_id
    with scan.connect() as con:
        scan.register(con, "gaps", table, GAPS, row_filter, snapshot_id, asked, plans=plans, direct_reads=direct_reads)
        result = con.sql(f"SELECT * FROM gaps WHERE {where} ORDER BY detected_at DESC, gap_id", params=params)
        return scan.cast_to(result.to_arrow_table(), GAPS.arrow_schema)
