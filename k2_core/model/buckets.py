"""Which bar a moment belongs to, for any interval from 1 second to 1 month and three alignments.

`k2_core.model.bars` says what a bar *is* (its columns, from the trades it covers); this module says which trades a
bar covers. A bar is a set of *segments* `[seg_start, seg_end)` of UTC time (one segment, except a session bar of
several days, which covers each day's session hours only) and is reported by its `bar_start`, a UTC instant.

Alignments:

- `utc` (default): fixed widths (`<N>s`, `<N>m`, `<N>h`, `<N>d`) on the UTC epoch, as K2 always did; weeks start
  Monday 00:00Z, months on the 1st at 00:00Z.
- `exchange`: in the exchange's time zone (`MarketHours.timezone`). Sub-day bars start at local midnight plus whole
  widths *of wall-clock time* (1h bars start on local hours); where a wall-clock time does not exist (spring forward)
  there is no boundary and the bar before is longer, where it exists twice (fall back) both instants are boundaries.
  Days are local calendar days (23 or 25 hours across a DST change), weeks start Monday, months on the 1st;
  `<N>d` / `<N>w` bars are counted from 1970-01-01 / Monday 1970-01-05 so a bar never depends on the window asked.
- `session`: anchored at each session's actual open (`k2_core.model.calendars`: the exchange's trading calendar, so no
  session on a holiday and an early close on a half day; or, for an exchange without a calendar code, the weekly
  `MarketHours`); sub-day bars run open, open + width, ... and the last ends at that session's close; a day (week,
  month) bar covers the sessions labelled with a trading date in that local calendar period and starts at the first
  of their opens. Trades outside sessions belong to no session bar. Weekly hours with `open == close` mean a 24-hour
  session starting at `open`.

All calendar arithmetic is `zoneinfo` (exact across DST); segments are generated per local day, vectorised with numpy
on days whose UTC offset does not change, so even 500,000 bars are generated in well under a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from k2_core.model import calendars
from k2_core.settings import MarketHours

Align = Literal["utc", "exchange", "session"]
ALIGNS: tuple[str, ...] = get_args(Align)

_UNITS = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_PATTERN = re.compile(r"^([1-9][0-9]{0,7})(s|m|h|d|w|mo)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1)
_EPOCH_MONDAY = date(1970, 1, 5)
_US = timedelta(microseconds=1)
MAX_FIXED = timedelta(days=31)  # "up to one month": the longest month
MAX_WEEKS = 4

SEGMENTS_SCHEMA = pa.schema(
    [
        pa.field("seg_start", pa.int64(), nullable=False),
        pa.field("seg_end", pa.int64(), nullable=False),
        pa.field("bucket_us", pa.int64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class BarInterval:
    """`count` units: s, m, h, d (fixed widths) or w, mo (calendar)."""

    count: int
    unit: str

    @property
    def text(self) -> str:
        return f"{self.count}{self.unit}"

    @property
    def fixed(self) -> timedelta | None:
        """The width of a fixed-width interval (s, m, h, d); None for weeks and months."""
        return self.count * _UNITS[self.unit] if self.unit in _UNITS else None

    @property
    def nominal(self) -> timedelta:
        """A lower bound of a bar's length, for bounding how many bars a window spans."""
        if self.unit == "w":
            return timedelta(days=7 * self.count)
        if self.unit == "mo":
            return timedelta(days=28)
        assert self.fixed is not None
        return self.fixed if self.unit != "d" else self.fixed - timedelta(hours=1)


def parse_interval(text: str) -> BarInterval:
    """`<N>s`, `<N>m`, `<N>h`, `<N>d`, `<N>w` or `<N>mo`, from 1 second to 1 month. Raises ValueError saying why."""
    found = _PATTERN.match(text.strip()) if isinstance(text, str) else None
    if found is None:
        raise ValueError(
            f"must be <N>s, <N>m, <N>h, <N>d, <N>w or <N>mo with N a positive integer (e.g. 30s, 4h, 1w, 1mo); "
            f"got {text!r}"
        )
    interval = BarInterval(int(found.group(1)), found.group(2))
    too_long = (
        (interval.unit == "mo" and interval.count > 1)
        or (interval.unit == "w" and interval.count > MAX_WEEKS)
        or (interval.fixed is not None and interval.fixed > MAX_FIXED)
    )
    if too_long:
        raise ValueError(f"must be at most one month (31d, 4w or 1mo); got {text!r}")
    return interval


def epoch_aligned(interval: BarInterval, align: Align) -> bool:
    """Whether bars are fixed widths on the UTC epoch, so a trade's bar is arithmetic on its time."""
    return align == "utc" and interval.fixed is not None


def bucket_of(moment: datetime, width: timedelta) -> datetime:
    return _EPOCH + ((moment - _EPOCH) // width) * width


def segments(interval: BarInterval, align: Align, hours: MarketHours | None, lo: datetime, hi: datetime) -> pa.Table:
    """Every segment of every bar overlapping `[lo, hi)` (and possibly a few more around it), sorted by seg_start,
    as epoch microseconds: `seg_start, seg_end, bucket_us` (the bar's start)."""
    if epoch_aligned(interval, align):
        assert interval.fixed is not None
        width = interval.fixed // _US
        first = _micros(bucket_of(lo, interval.fixed))
        starts = np.arange(first, _micros(hi), width, dtype=np.int64)
        return _table(starts, starts + width, starts)
    zone = ZoneInfo(hours.timezone) if hours is not None and align != "utc" else ZoneInfo("UTC")
    first_day = lo.astimezone(zone).date() - timedelta(days=40)  # reaches back to the start of a month or 4 weeks
    last_day = hi.astimezone(zone).date() + timedelta(days=40)  # and on to the end of the last one
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    if align == "session":
        assert hours is not None
        table = _session_segments(interval, hours, first_day, last_day)
    elif interval.fixed is not None and interval.unit != "d":
        table = _subday_segments(interval.fixed, zone, days)
    else:
        table = _calendar_segments(interval, zone, days)
    keep = np.logical_and(
        table.column("seg_end").to_numpy() > _micros(lo), table.column("seg_start").to_numpy() < _micros(hi)
    )
    return table.filter(pa.array(keep))


def bar_starts(table: pa.Table, lo: datetime, hi: datetime) -> np.ndarray:
    """The distinct bar starts of `segments(...)` within `[lo, hi)`, in order: every interval of a filled answer."""
    starts = np.unique(table.column("bucket_us").to_numpy())
    return starts[(starts >= _micros(lo)) & (starts < _micros(hi))]


def widen(table: pa.Table, lo: datetime, hi: datetime) -> tuple[datetime, datetime]:
    """Round `[lo, hi)` out to whole bars: start down to the start of the bar holding it, end up to the end of the
    bar holding its last microsecond (times outside every bar, e.g. overnight for sessions, stay)."""
    seg_start = table.column("seg_start").to_numpy()
    seg_end = table.column("seg_end").to_numpy()
    bucket = table.column("bucket_us").to_numpy()
    start, end = _micros(lo), _micros(hi)
    holding = (seg_start <= start) & (start < seg_end)
    if holding.any():
        start = int(bucket[holding][0])
    holding = (seg_start < end) & (end - 1 < seg_end)
    if holding.any():
        bar = bucket[holding][0]
        end = int(seg_end[bucket == bar].max())
    return _from_micros(start), _from_micros(end)


def _subday_segments(width: timedelta, zone: ZoneInfo, days: list[date]) -> pa.Table:
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    step = width // _US
    for day in days:
        day_start, day_end = _at(day, timedelta(0), zone), _at(day + timedelta(days=1), timedelta(0), zone)
        if day_end - day_start == timedelta(days=1):  # no DST change this day: wall clock == elapsed time
            begin = np.arange(_micros(day_start), _micros(day_end), step, dtype=np.int64)
        else:
            walls = [width * k for k in range(-(-timedelta(days=1) // width))]
            begin = np.array(sorted({_micros(t) for wall in walls for t in _instants(day, wall, zone)}), np.int64)
        starts.append(begin)
        ends.append(np.append(begin[1:], _micros(day_end)))
    start = np.concatenate(starts)
    return _table(start, np.concatenate(ends), start)


def _group(interval: BarInterval, day: date) -> int:
    if interval.unit == "mo":
        return day.year * 12 + day.month - 1
    if interval.unit == "w":
        return (day - _EPOCH_MONDAY).days // (7 * interval.count)
    return (day - _EPOCH_DAY).days // interval.count


def _calendar_segments(interval: BarInterval, zone: ZoneInfo, days: list[date]) -> pa.Table:
    """Bars of whole local days: `<N>d`, `<N>w`, `1mo` (and `utc`-aligned weeks and months, with zone UTC)."""
    firsts = [day for i, day in enumerate(days) if i == 0 or _group(interval, day) != _group(interval, days[i - 1])]
    bounds = np.array([_micros(_at(day, timedelta(0), zone)) for day in firsts], np.int64)
    starts, ends = bounds[:-1], bounds[1:]
    return _table(starts, ends, starts)


def _session_segments(interval: BarInterval, hours: MarketHours, first: date, last: date) -> pa.Table:
    """Session bars over the sessions labelled `first` .. `last` (`k2_core.model.calendars`: the exchange's calendar,
    holidays and early closes included, or its weekly hours)."""
    found = calendars.sessions(hours, first, last)
    zone = found.zone
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    buckets: list[np.ndarray] = []
    group, group_start = None, 0
    subday = interval.fixed is not None and interval.unit != "d"
    for i in range(len(found)):
        open_us, close_us = int(found.opens[i]), int(found.closes[i])
        if subday:
            assert interval.fixed is not None
            begin = _session_starts(interval.fixed, _from_micros(open_us), _from_micros(close_us), zone)
            starts.append(begin)
            ends.append(np.append(begin[1:], close_us))
            buckets.append(begin)
            continue
        key = _group(interval, found.label(i))
        if key != group:
            group, group_start = key, open_us
        starts.append(np.array([open_us], np.int64))
        ends.append(np.array([close_us], np.int64))
        buckets.append(np.array([group_start], np.int64))
    if not starts:
        return SEGMENTS_SCHEMA.empty_table()
    return _table(np.concatenate(starts), np.concatenate(ends), np.concatenate(buckets))


def _session_starts(width: timedelta, opens: datetime, closes: datetime, zone: ZoneInfo) -> np.ndarray:
    """Sub-day bar starts of one session: open, open + width, ... before the close, in wall-clock widths (so across
    a DST change inside a session, bars still start on the local clock's whole widths from the open)."""
    if opens.astimezone(zone).utcoffset() == closes.astimezone(zone).utcoffset():  # no DST change inside
        return np.arange(_micros(opens), _micros(closes), width // _US, dtype=np.int64)
    local_open = opens.astimezone(zone).replace(tzinfo=None)
    local_close = closes.astimezone(zone).replace(tzinfo=None)
    count = -(-(local_close - local_open) // width)
    found = {_micros(t) for k in range(count) for t in _naive_instants(local_open + width * k, zone)}
    return np.array(sorted(t for t in found if _micros(opens) <= t < _micros(closes)), np.int64)


_at = calendars.at


def _instants(day: date, wall: timedelta, zone: ZoneInfo) -> list[datetime]:
    """Every UTC instant showing wall-clock time `day 00:00 + wall`: none, one, or two (fall back)."""
    return _naive_instants(datetime.combine(day, time(0)) + wall, zone)


def _naive_instants(naive: datetime, zone: ZoneInfo) -> list[datetime]:
    """Every UTC instant showing local wall-clock time `naive`: none, one, or two (fall back)."""
    found = set()
    for fold in (0, 1):
        instant = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == naive:
            found.add(instant)
    return sorted(found)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _US


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _table(starts: np.ndarray, ends: np.ndarray, buckets: np.ndarray) -> pa.Table:
    return pa.table(
        {"seg_start": pa.array(starts, pa.int64()), "seg_end": pa.array(ends), "bucket_us": pa.array(buckets)},
        schema=SEGMENTS_SCHEMA,
    )
