"""When each exchange trades: its sessions (open and close instants per trading day, holidays and early closes
included), from the `exchange_calendars` package where the exchange names a calendar code, else from its weekly
`MarketHours`.

An exchange's `MarketHours.calendar` (`XASX`, `XNYS`, `24/7`, any code `exchange_calendars` knows) makes its
sessions the real ones: no session on a holiday, an early close on a half day. Without a code (a config written
before calendars, a venue the package does not cover) the weekly hours apply, as they always did. Days outside the
calendar's range (`FIRST_DAY` .. two years after the year it was loaded) also fall back to the weekly hours.

Building a calendar takes a fraction of a second, so each code is built once per process, lazily, over that bounded
range, and kept only as numpy arrays: nothing here touches pandas after loading. Session bars
(`k2_core.model.buckets`) and the freshness check (`k2_core.upkeep.quality`) both read sessions from here, so a bar
and a staleness verdict never disagree on whether the market was open.

A session is labelled by its local trading date (`exchange_calendars`' convention), which is the day a session bar
of a day, week or month is grouped by. Lunch breaks (calendars that have them) count as closed for freshness; session
bars span them.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from k2_core.exceptions import ConfigError
from k2_core.settings import MarketHours

FIRST_DAY = date(1990, 1, 1)
YEARS_AHEAD = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class Sessions:
    """Trading sessions in order: `labels` (local trading dates, datetime64[D]) and their `opens`, `closes`,
    `break_starts`, `break_ends` as epoch microseconds (a session without a break has `break_start == break_end`).
    `zone` is the time zone the labels are dates in."""

    labels: np.ndarray
    opens: np.ndarray
    closes: np.ndarray
    break_starts: np.ndarray
    break_ends: np.ndarray
    zone: ZoneInfo

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, i: int) -> date:
        return date.fromisoformat(str(self.labels[i]))


@dataclass(frozen=True)
class _Loaded:
    """One exchange_calendars calendar as arrays, over `[first, last]` (its first and last session labels)."""

    code: str
    sessions: Sessions
    first: date
    last: date


_lock = threading.Lock()
_loaded: dict[str, _Loaded] = {}


def calendar(code: str) -> _Loaded:
    """The calendar `code`, built on first use and kept for the life of the process. Raises ConfigError for a code
    `exchange_calendars` does not know."""
    found = _loaded.get(code)
    if found is not None:
        return found
    with _lock:
        found = _loaded.get(code)
        if found is None:
            found = _loaded[code] = _load(code)
    return found


def _load(code: str) -> _Loaded:
    from pandas.errors import Pandas4Warning

    end = date(datetime.now(UTC).year + YEARS_AHEAD, 12, 31)
    with warnings.catch_warnings():
        # exchange_calendars 4.13 reads `Series.values` of tz-aware columns, which pandas 3.1 deprecates; the values
        # it gets are the UTC instants it means, so the warning is noise for us.
        warnings.simplefilter("ignore", Pandas4Warning)
        import exchange_calendars as xcals

        if code not in xcals.get_calendar_names(include_aliases=True):
            raise ConfigError(
                f"market_hours calendar {code!r} is not an exchange_calendars code (e.g. XNYS, XASX, 24/7)"
            )
        cal = xcals.get_calendar(code, start=FIRST_DAY.isoformat(), end=end.isoformat())
        schedule = cal.schedule
        zone = ZoneInfo(str(cal.tz))

        def micros(column: str) -> np.ndarray:
            utc = schedule[column].dt.tz_convert(None).to_numpy().astype("datetime64[us]")
            return utc.astype(np.int64)

        labels = schedule.index.to_numpy().astype("datetime64[D]")
        opens, closes = micros("open"), micros("close")
        missing = np.isnat(schedule["break_start"].dt.tz_convert(None).to_numpy())
        break_starts = np.where(missing, closes, micros("break_start"))  # NaT (no break) -> an empty break
        break_ends = np.where(missing, closes, micros("break_end"))
    sessions = Sessions(labels, opens, closes, break_starts, break_ends, zone)
    return _Loaded(code, sessions, date.fromisoformat(str(labels[0])), date.fromisoformat(str(labels[-1])))


def check(hours: MarketHours) -> None:
    """Load the exchange's calendar now (if it names one), so a bad code fails here (ConfigError), not mid-query."""
    if hours.calendar is not None:
        calendar(hours.calendar)


def sessions(hours: MarketHours, first: date, last: date) -> Sessions:
    """Every session labelled `first` .. `last` (local trading dates, inclusive), in order."""
    if hours.calendar is None:
        return weekly_sessions(hours, first, last)
    loaded = calendar(hours.calendar)
    own = loaded.sessions
    lo, hi = np.datetime64(max(first, loaded.first), "D"), np.datetime64(min(last, loaded.last), "D")
    a, b = int(np.searchsorted(own.labels, lo, "left")), int(np.searchsorted(own.labels, hi, "right"))
    parts = [_slice(own, a, b)] if lo <= hi else []
    if first < loaded.first:
        parts.insert(0, weekly_sessions(hours, first, min(last, loaded.first - timedelta(days=1)), own.zone))
    if last > loaded.last:
        parts.append(weekly_sessions(hours, max(first, loaded.last + timedelta(days=1)), last, own.zone))
    return _concat(parts, own.zone)


def is_open(hours: MarketHours, now: datetime) -> bool:
    """Whether the exchange trades at `now`: inside a session, and not in its break."""
    around = sessions(hours, (now - timedelta(days=3)).date(), (now + timedelta(days=2)).date())
    t = micros(now)
    inside = (around.opens <= t) & (t < around.closes)
    in_break = (around.break_starts <= t) & (t < around.break_ends)
    return bool((inside & ~in_break).any())


def weekly_sessions(hours: MarketHours, first: date, last: date, zone: ZoneInfo | None = None) -> Sessions:
    """The sessions of the hand-written weekly hours: on each of `weekdays`, open to close in the exchange's time zone
    (`close <= open`: it closes the next day, so `open == close` is a 24-hour session)."""
    zone = zone or ZoneInfo(hours.timezone)
    open_wall = _wall(hours.open)
    close_wall = _wall(hours.close)
    if close_wall <= open_wall:
        close_wall += timedelta(days=1)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    days = [day for day in days if day.weekday() in hours.weekdays]
    opens = np.array([micros(at(day, open_wall, zone)) for day in days], np.int64)
    closes = np.array([micros(at(day, close_wall, zone)) for day in days], np.int64)
    labels = np.array(days, dtype="datetime64[D]") if days else np.array([], dtype="datetime64[D]")
    return Sessions(labels, opens, closes, closes.copy(), closes.copy(), zone)


def at(day: date, wall: timedelta, zone: ZoneInfo) -> datetime:
    """The UTC instant of local wall-clock time `day 00:00 + wall` (the earlier one if it happens twice; if it does
    not exist, the instant the clocks jumped to)."""
    local = datetime.combine(day, time(0), tzinfo=zone) + wall
    return local.astimezone(UTC).astimezone(zone).astimezone(UTC)


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _US


def _wall(t: time) -> timedelta:
    return timedelta(hours=t.hour, minutes=t.minute, seconds=t.second)


def _slice(s: Sessions, a: int, b: int) -> Sessions:
    return Sessions(s.labels[a:b], s.opens[a:b], s.closes[a:b], s.break_starts[a:b], s.break_ends[a:b], s.zone)


def _concat(parts: list[Sessions], zone: ZoneInfo) -> Sessions:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        empty = np.array([], np.int64)
        return Sessions(np.array([], dtype="datetime64[D]"), empty, empty, empty, empty, zone)

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    return Sessions(
        joined("labels"), joined("opens"), joined("closes"), joined("break_starts"), joined("break_ends"), zone
    )
