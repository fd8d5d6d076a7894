"""UTC day partitions: the unit OHLCV rebuilds, compaction, quality checks and lineage events work in.

Every market table is partitioned by `day(<timestamp>)`, which Iceberg stores as days since the epoch; Dagster
names the same partitions `YYYY-MM-DD`. These helpers convert between the two and build the row filter that
selects exactly one day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, LessThan

EPOCH_DAY = date(1970, 1, 1)
DAY_FORMAT = "%Y-%m-%d"


def parse_day(text: str) -> date:
    """A `YYYY-MM-DD` partition key as a date; raises ValueError on anything else."""
    return datetime.strptime(text, DAY_FORMAT).replace(tzinfo=UTC).date()


def day_key(day: date) -> str:
    return day.strftime(DAY_FORMAT)


def from_partition_value(value: int | date) -> date:
    """A day-transform partition value (days since the epoch, or a date as `inspect` returns it) as a date."""
    return value if isinstance(value, date) else EPOCH_DAY + timedelta(days=value)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The half-open UTC interval [start, end) of a day."""
    start = datetime.combine(day, time(0, 0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def day_filter(column: str, day: date) -> BooleanExpression:
    """Rows whose `column` timestamp falls on `day` (UTC): prunes to that day's partition."""
    start, end = day_bounds(day)
    return And(GreaterThanOrEqual(term=column, value=start.isoformat()), LessThan(term=column, value=end.isoformat()))


def utc_today(now: datetime) -> date:
    return now.astimezone(UTC).date()
