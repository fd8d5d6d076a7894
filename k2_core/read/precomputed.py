"""Serving bars from the precomputed OHLCV tables (`market.ohlcv_1m`, `market.ohlcv_1d`) when provably fresh.

The Dagster assets (`k2_core.upkeep.ohlcv`) rebuild one UTC day of a bar table per commit and record the
trades snapshot they read. A day's precomputed bars equal what `k2_core.model.bars` would compute now exactly when no
trades commit since that snapshot touched the day. That is checked on the manifest list of the trades snapshot
being read, without opening a data file: a manifest newer than the source snapshot whose day-partition range
includes the day means the day changed (or may have: the check is conservative) and the day is computed from
trades instead, unless the day's files (data and delete files) are exactly those of the source snapshot (a manifest
rewritten with its entries unchanged fails the manifest test; planning the day at both snapshots settles it). Once
the ingesters' retention has expired the source snapshot (minutes after the build), the day's files at the snapshot
read are planned and compared with the digest the build recorded (`DaySource`). Days never built, or built before
digests were recorded and whose source snapshot has expired, are computed.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.manifest import ManifestFile
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DateType

from k2_core.duck import sql_text, sql_time
from k2_core.lake import scan
from k2_core.logging import get_logger
from k2_core.model.bars import BARS_ARROW_SCHEMA, day_files, day_source, files_digest
from k2_core.model.days import EPOCH_DAY, day_bounds
from k2_core.model.tables import TableDef

logger = get_logger(__name__)


def days_between(start: datetime, end: datetime) -> list[date]:
    """The UTC days a half-open window touches."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def fresh_days(trades: Table, bars: Table, days: list[date], trades_snapshot_id: int) -> list[date]:
    """The days among `days` whose bars in `bars` were built from trades identical to `trades_snapshot_id`'s."""
    read = trades.snapshot_by_id(trades_snapshot_id)
    if read is None or read.sequence_number is None:
        return []
    manifests = read.manifests(trades.io)
    specs = trades.metadata.specs()
    fresh = []
    for day in days:
        built = day_source(bars, day)
        if built is None:
            continue
        source = trades.snapshot_by_id(built.snapshot_id)
        if source is None or source.sequence_number is None:
            # Expired (the ingesters keep minutes of snapshots): the day's files as the build recorded them decide.
            if built.files is not None and files_digest(day_files(trades, day, trades_snapshot_id)) == built.files:
                fresh.append(day)
            continue
        if source.sequence_number > read.sequence_number:
            continue
        changed = any(
            (m.sequence_number or 0) > source.sequence_number and _may_hold_day(m, specs, day) for m in manifests
        )
        if not changed or _same_files(trades, day, source.snapshot_id, trades_snapshot_id):
            fresh.append(day)
    return fresh


def _same_files(trades: Table, day: date, source_id: int, read_id: int) -> bool:
    """The exact check behind the manifest test, which a manifest merely rewritten since (its entries carried over
    unchanged, as a commit to another day may do) fails; it plans the day at both snapshots, so it is taken only
    then."""
    return day_files(trades, day, source_id) == day_files(trades, day, read_id)


def _may_hold_day(manifest: ManifestFile, specs: dict[int, PartitionSpec], day: date) -> bool:
    """Whether a manifest's day-partition summary includes `day`; True whenever it cannot tell."""
    spec = specs.get(manifest.partition_spec_id)
    summaries = manifest.partitions
    if spec is None or not summaries or not spec.fields:
        return True
    for field, summary in zip(spec.fields, summaries, strict=False):
        if not isinstance(field.transform, DayTransform):
            continue
        if summary.lower_bound is None or summary.upper_bound is None:
            return True
        low = EPOCH_DAY + timedelta(days=int(from_bytes(DateType(), summary.lower_bound)))
        high = EPOCH_DAY + timedelta(days=int(from_bytes(DateType(), summary.upper_bound)))
        return low <= day <= high
    return True


def read_days(bars: Table, symbol: str, exchange: str, days: list[date], start: datetime, end: datetime) -> pa.Table:
    """The precomputed bars of one stream on `days`, restricted to `[start, end)`, in bar order."""
    if not days:
        return BARS_ARROW_SCHEMA.empty_table()
    row_filter = And(
        And(EqualTo(term="symbol", value=symbol), EqualTo(term="exchange", value=exchange)),
        And(
            GreaterThanOrEqual(term="bar_start", value=start.isoformat()),
            LessThan(term="bar_start", value=end.isoformat()),
        ),
    )
    rows = bars.scan(row_filter=row_filter).to_arrow().select(BARS_ARROW_SCHEMA.names).cast(BARS_ARROW_SCHEMA)
    wanted = pa.array([day_bounds(d)[0] for d in days], pa.timestamp("us", tz="UTC"))
    bar_days = pc.floor_temporal(rows.column("bar_start"), unit="day")
    return rows.filter(pc.is_in(bar_days, value_set=wanted)).sort_by("bar_start")


def read_exchange_days(
    bars: Table,
    bars_def: TableDef,
    exchange: str,
    days: list[date],
    start: datetime,
    end: datetime,
    *,
    plans: scan.PlanCache | None = None,
) -> pa.Table:
    """The precomputed bars of every symbol of `exchange` on `days`, restricted to `[start, end)`, in no particular
    order (sorting them here cost more than reading them: callers order them as they need, `exchange_bars.placed`):
    one scan of the bar table's current snapshot (the one `fresh_days` judged), read by DuckDB; its plan cached in
    `plans` (per snapshot, so never stale)."""
    if not days:
        return BARS_ARROW_SCHEMA.empty_table()
    row_filter = And(
        EqualTo(term="exchange", value=exchange),
        And(
            GreaterThanOrEqual(term="bar_start", value=start.isoformat()),
            LessThan(term="bar_start", value=end.isoformat()),
        ),
    )
    wanted = ", ".join(f"DATE '{d.isoformat()}'" for d in days)
    # Every day of the window fresh (the usual case): the time bounds alone select the rows.
    on_days = (
        ""
        if set(days) >= set(days_between(start, end))
        else f" AND CAST(timezone('UTC', bar_start) AS DATE) IN ({wanted})"
    )
    with scan.connect() as con:
        scan.register(
            con,
            "bars",
            bars,
            bars_def,
            row_filter,
            bars.metadata.current_snapshot_id,
            {"exchange": exchange, "start": start, "end": end},
            plans=plans,
        )
        rows = con.sql(
            f"SELECT {', '.join(BARS_ARROW_SCHEMA.names)} FROM bars WHERE exchange = {sql_text(exchange)} "
            f"AND bar_start >= {sql_time(start)} AND bar_start < {sql_time(end)} "
            f"{on_days}"
        ).to_arrow_table()
    return rows.cast(BARS_ARROW_SCHEMA)
