"""Input rules for K2's read path, shared by the Python query functions, the HTTP API and the CLI.

Every rule lives here once so that the three front doors reject the same inputs with the same words. Each
failure raises `QueryError` whose message starts with the offending parameter's name, because the message is
all an API client or CLI user sees. Raw strings are accepted where front doors receive them (query strings,
argv), so callers do not each grow their own parsing.

Time conventions: ISO-8601 (`2024-01-02`, `2024-01-02T09:30:00Z`, `2024-01-02T19:30:00+10:00`); a time
without an offset is taken as UTC, because exchange timestamps are stored in UTC and a server's local zone
says nothing about the market. Ranges are half-open, `start <= t < end`, so adjacent windows never
double-count a row.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from k2_core.exceptions import ConfigError, QueryError
from k2_core.model import calendars
from k2_core.model.bars import INTERVALS, Interval
from k2_core.model.buckets import ALIGNS, Align, BarInterval, parse_interval
from k2_core.model.topics import Kind
from k2_core.settings import ApiSettings, MarketHours, QuerySettings, Settings

GapStatus = Literal["open", "filled", "unrecoverable"]


TimeInput = datetime | date | str | None

SYMBOL_PATTERN = re.compile(r"[A-Z0-9][A-Z0-9.\-]{0,19}")
# Only used when no topic layout is at hand to name the real exchanges.
EXCHANGE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
GAP_STATUSES: tuple[GapStatus, ...] = ("open", "filled", "unrecoverable")
DEFAULT_WINDOW = timedelta(days=1)
_API_DEFAULTS = ApiSettings()
_QUERY_DEFAULTS = QuerySettings()


@dataclass(frozen=True)
class TimeRange:
    """A validated half-open UTC window `[start, end)`."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class MarketQuery:
    """A fully validated trades/quotes request with its defaults filled in, so a front door can echo exactly
    the window and limit that were used."""

    symbol: str
    exchange: str
    start: datetime
    end: datetime
    limit: int

    @property
    def window(self) -> TimeRange:
        return TimeRange(self.start, self.end)


@dataclass
class Limits:
    """How much one request may ask for: rows per page (when not said, and at most), the widest window and the most
    bars, so that no request can pull a whole table into a server's memory. Mutable, so that a tool may lift one."""

    default_limit: int = _API_DEFAULTS.default_limit
    max_limit: int = _API_DEFAULTS.max_limit
    max_window: timedelta | None = timedelta(days=_QUERY_DEFAULTS.max_range_days)
    max_bars: int = _QUERY_DEFAULTS.max_bars

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            default_limit=settings.api.default_limit,
            max_limit=settings.api.max_limit,
            max_window=timedelta(days=settings.query.max_range_days),
            max_bars=settings.query.max_bars,
        )


@dataclass(frozen=True)
class AsOf:
    """A time-travel request: read a table as it was at one snapshot, or at the snapshot current at a time.
    Exactly one of the two is set."""

    snapshot_id: int | None = None
    timestamp: datetime | None = None


def validate_symbol(symbol: str, parameter: str = "symbol") -> str:
    """Reject anything but an uppercase ticker: the stored symbols are uppercase, so a lowercase query would
    silently match nothing, and the pattern also keeps odd characters out of logs and SQL parameters."""
    # fullmatch, not `$`: `$` would accept a trailing newline.
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise QueryError(
            f"{parameter} must be an uppercase ticker of 1-20 characters A-Z, 0-9, '.' or '-' starting with a "
            f"letter or digit (e.g. BHP, BRK.B, BTCUSDT); got {symbol!r}"
        )
    return symbol


def validate_exchange(exchange: str, known: Collection[str] | None, parameter: str = "exchange") -> str:
    """Only exchanges in the topic layout have data; naming them in the message saves the caller a lookup.
    `known=None` (no layout at hand) still insists on a lowercase name, the form exchanges are stored in."""
    if known is None:
        if not isinstance(exchange, str) or not EXCHANGE_PATTERN.fullmatch(exchange):
            raise QueryError(f"{parameter} must be a lowercase exchange name such as asx; got {exchange!r}")
    elif exchange not in known:
        raise QueryError(f"{parameter} must be one of {', '.join(sorted(known))}; got {exchange!r}")
    return exchange


def validate_exchanges(
    exchanges: str | Collection[str], known: Collection[str] | None, parameter: str = "exchange"
) -> tuple[str, ...]:
    """One exchange or a list of them (read together), each checked as `validate_exchange`, de-duplicated and
    sorted so that the same set is one cache entry."""
    items = [exchanges] if isinstance(exchanges, str) else list(exchanges)
    if not items:
        raise QueryError(f"{parameter} must name at least one exchange")
    return tuple(sorted({validate_exchange(e, known, parameter) for e in items}))


def parse_time(value: datetime | date | str, parameter: str) -> datetime:
    """An ISO-8601 string, datetime or date -> an aware UTC datetime (naive input is taken as UTC, a date is its
    UTC midnight)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise QueryError(
                f"{parameter} is not an ISO-8601 time: {value!r} (e.g. 2024-01-02T09:30:00Z; a time without an "
                "offset is taken as UTC)"
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):  # a whole UTC day starts at its midnight
        parsed = datetime.combine(value, time())
    else:
        raise QueryError(f"{parameter} must be an ISO-8601 string, a datetime or a date; got {type(value).__name__}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise QueryError(f"{parameter} is out of range in UTC: {value!r}") from None


MAX_SYMBOLS = 1000


def validate_symbols(symbols: Collection[str] | str | None, parameter: str = "symbol") -> tuple[str, ...] | None:
    """A list of tickers (or one comma-separated string, as a CLI or query string gives it), each checked as
    `validate_symbol`, de-duplicated and sorted so that the same set is one cache entry; None means "every symbol".
    Bounded, because each one is a term of the scan's filter."""
    if symbols is None:
        return None
    items = symbols.split(",") if isinstance(symbols, str) else list(symbols)
    items = [s.strip() if isinstance(s, str) else s for s in items]
    if not items or (isinstance(symbols, str) and not symbols.strip()):
        raise QueryError(f"{parameter} must name at least one ticker; got {symbols!r}")
    if len(items) > MAX_SYMBOLS:
        raise QueryError(f"{parameter} may name at most {MAX_SYMBOLS} tickers; got {len(items)}")
    return tuple(sorted({validate_symbol(s, parameter) for s in items}))


def validate_time_range(
    start: TimeInput,
    end: TimeInput,
    *,
    now: datetime | None = None,
    default_window: timedelta = DEFAULT_WINDOW,
    max_window: timedelta | None = None,
) -> TimeRange:
    """Fill in the defaults (end = now, start = end - one day) so the common "latest ticks" query needs no
    arguments, then insist on a non-empty window: an inverted range is a caller mistake, not an empty result.
    `max_window` bounds how much one request may ask for."""
    end_at = parse_time(end, "end") if end is not None else (now or datetime.now(UTC)).astimezone(UTC)
    if start is not None:
        start_at = parse_time(start, "start")
    elif end_at - datetime.min.replace(tzinfo=UTC) < default_window:
        raise QueryError(f"end is too early to look back {default_window} from (end={end_at.isoformat()})")
    else:
        start_at = end_at - default_window
    if start_at >= end_at:
        raise QueryError(
            f"start must be before end (start={start_at.isoformat()}, end={end_at.isoformat()}); "
            "the range is start <= t < end"
        )
    if max_window is not None and end_at - start_at > max_window:
        raise QueryError(
            f"end must be at most {_days(max_window)} after start (range too large: start={start_at.isoformat()}, "
            f"end={end_at.isoformat()}); split the request"
        )
    return TimeRange(start_at, end_at)


def _days(span: timedelta) -> str:
    days = span / timedelta(days=1)
    return f"{days:g} days" if days != 1 else "1 day"


def validate_limit(limit: int | None, *, default: int, maximum: int) -> int:
    """Bound every read so one request cannot pull a whole table into the API's memory."""
    if limit is None:
        return min(default, maximum)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise QueryError(f"limit must be an integer between 1 and {maximum}; got {limit!r}")
    return limit


def validate_gap_status(status: str) -> GapStatus:
    """The gap lifecycle has exactly three states; anything else is a typo that would match nothing."""
    if status not in GAP_STATUSES:
        raise QueryError(f"status must be one of {', '.join(GAP_STATUSES)}; got {status!r}")
    return status


MARKET_KINDS: tuple[Kind, ...] = ("trades", "quotes")


def validate_kinds(kinds: Collection[str] | str | None) -> tuple[Kind, ...]:
    """Which halves of a `latest_on` row to read: `trades`, `quotes` or both (a list or a comma list; None: both),
    in that order. Asking for one half reads only its table."""
    if kinds is None:
        return MARKET_KINDS
    items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    items = [k.strip() if isinstance(k, str) else k for k in items]
    if not items or any(k not in MARKET_KINDS for k in items):
        raise QueryError(f"kind must be trades, quotes or both (a comma list); got {kinds!r}")
    return tuple(k for k in MARKET_KINDS if k in items)


def validate_market_query(
    symbol: str,
    exchange: str,
    start: TimeInput = None,
    end: TimeInput = None,
    limit: int | None = None,
    *,
    exchanges: Collection[str] | None,
    default_limit: int,
    max_limit: int,
    now: datetime | None = None,
    max_window: timedelta | None = None,
) -> MarketQuery:
    """Check a trades/quotes request in the order a caller reads it: what, where, when, how many."""
    symbol = validate_symbol(symbol)
    exchange = validate_exchange(exchange, exchanges)
    window = validate_time_range(start, end, now=now, max_window=max_window)
    return MarketQuery(
        symbol=symbol,
        exchange=exchange,
        start=window.start,
        end=window.end,
        limit=validate_limit(limit, default=default_limit, maximum=max_limit),
    )


def validate_interval(interval: str) -> Interval:
    """Bars come in a fixed set of widths, each dividing a UTC day, so bars of every width align on midnight."""
    if interval not in INTERVALS:
        raise QueryError(f"interval must be one of {', '.join(INTERVALS)}; got {interval!r}")
    return interval


def validate_bar_count(interval: Interval, window: TimeRange, max_bars: int) -> None:
    """Bound the bars one request can span (each can become a row), naming the interval: a coarser interval
    over the same window is the usual fix."""
    width = INTERVALS[interval]
    first = align_down(window.start, interval)
    count = -((first - window.end) // width)  # ceil((end - first) / width)
    if count > max_bars:
        raise QueryError(
            f"interval {interval} over {window.start.isoformat()}..{window.end.isoformat()} spans {count} bars, more "
            f"than the maximum {max_bars} (range too large): use a coarser interval or a shorter range"
        )


def align_down(moment: datetime, interval: Interval) -> datetime:
    """The start of the UTC-aligned bar holding `moment`."""
    width = INTERVALS[interval]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // width) * width


def validate_date(value: date | datetime | str, parameter: str = "date") -> TimeRange:
    """A UTC calendar day (`2024-01-02`) as the half-open window `[midnight, next midnight)`."""
    if isinstance(value, datetime):
        raise QueryError(f"{parameter} must be a date (YYYY-MM-DD), not a datetime; got {value.isoformat()}")
    if isinstance(value, date):
        day = value
    elif isinstance(value, str):
        try:
            day = date.fromisoformat(value.strip())
        except ValueError:
            raise QueryError(f"{parameter} must be a UTC date as YYYY-MM-DD; got {value!r}") from None
    else:
        raise QueryError(f"{parameter} must be a date or a YYYY-MM-DD string; got {type(value).__name__}")
    start = datetime.combine(day, time(), tzinfo=UTC)
    try:
        return TimeRange(start, start + timedelta(days=1))
    except OverflowError:
        raise QueryError(f"{parameter} is out of range: {value!r}") from None


def validate_snapshot_id(value: int | str) -> int:
    """Snapshot ids are 64-bit integers; the table check (does this snapshot exist?) happens when it is read."""
    if isinstance(value, bool):
        raise QueryError(f"as_of_snapshot must be an integer snapshot id; got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise QueryError(f"as_of_snapshot must be an integer snapshot id; got {value!r}") from None
    if not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise QueryError(f"as_of_snapshot must be a 64-bit integer snapshot id; got {value!r}")
    return value


def validate_as_of(as_of_snapshot: int | str | None = None, as_of: AsOf | TimeInput = None) -> AsOf | None:
    """At most one way of choosing a past snapshot; None means the table's current state. An `AsOf` a front door
    already validated passes as it is, so one query method serves both raw and validated input."""
    if as_of_snapshot is not None and as_of is not None:
        raise QueryError("as_of_snapshot and as_of are alternatives: give one or the other, not both")
    if isinstance(as_of, AsOf):
        return as_of
    if as_of_snapshot is not None:
        return AsOf(snapshot_id=validate_snapshot_id(as_of_snapshot))
    if as_of is not None:
        return AsOf(timestamp=parse_time(as_of, "as_of"))
    return None


Fill = Literal["none", "previous", "null", "linear"]
BarType = Literal["time", "tick", "volume", "dollar"]
FILLS: tuple[str, ...] = ("none", "previous", "null", "linear")
BAR_TYPES: tuple[str, ...] = ("time", "tick", "volume", "dollar")


@dataclass(frozen=True)
class BarSpec:
    """What kind of bars a request wants, validated: time bars of `interval` aligned by `align` with empty intervals
    filled by `fill`, or activity bars (`bar_type` tick, volume or dollar) closing at `size` trades, volume units or
    notional. `hours` are the exchange's market hours when the alignment needs them."""

    interval: BarInterval | None
    align: Align = "utc"
    fill: Fill = "none"
    bar_type: BarType = "time"
    size: Decimal | None = None
    hours: MarketHours | None = None

    @property
    def legacy(self) -> Interval | None:
        """The fixed interval of K2's original bars when these are exactly those bars (UTC, one of the seven widths,
        time bars): they may come from the precomputed tables and keep their original cursor and cache keys."""
        if self.bar_type != "time" or self.align != "utc" or self.interval is None:
            return None
        text = self.interval.text
        return text if text in INTERVALS else None

    @property
    def key(self) -> tuple[Any, ...]:
        """Everything that changes the answer, for cache keys and cursor fingerprints."""
        hours = None
        if self.hours is not None and self.align != "utc":
            hours = (
                self.hours.timezone,
                self.hours.open.isoformat(),
                self.hours.close.isoformat(),
                self.hours.weekdays,
                self.hours.calendar,
            )
        interval = self.interval.text if self.interval is not None else None
        return (
            interval,
            self.align,
            self.fill,
            self.bar_type,
            str(self.size) if self.size is not None else None,
            hours,
        )


def validate_bar_spec(
    interval: str | None,
    align: str = "utc",
    fill: str = "none",
    bar_type: str = "time",
    size: Decimal | int | float | str | None = None,
    *,
    hours: MarketHours | None = None,
    exchange: str = "",
) -> BarSpec:
    """Bar options, each failure naming its parameter. Time bars need an interval (1s .. 1mo) and no size; tick,
    volume and dollar bars need a positive size (a whole number of trades for tick bars) and take neither alignment
    nor fill. Exchange and session alignment need the exchange's market hours."""
    if bar_type not in BAR_TYPES:
        raise QueryError(f"bar_type must be one of {', '.join(BAR_TYPES)}; got {bar_type!r}")
    if align not in ALIGNS:
        raise QueryError(f"align must be one of {', '.join(ALIGNS)}; got {align!r}")
    if fill not in FILLS:
        raise QueryError(f"fill must be one of {', '.join(FILLS)}; got {fill!r}")
    if bar_type != "time":
        if size is None:
            raise QueryError(f"size is required for {bar_type} bars (trades, volume or notional per bar)")
        try:
            threshold = Decimal(str(size))
        except ArithmeticError:
            raise QueryError(f"size must be a positive number; got {size!r}") from None
        if not threshold.is_finite() or threshold <= 0:
            raise QueryError(f"size must be a positive number; got {size!r}")
        if bar_type == "tick" and threshold != threshold.to_integral_value():
            raise QueryError(f"size must be a whole number of trades for tick bars; got {size!r}")
        if fill != "none":
            raise QueryError(f"fill applies to time bars only, not {bar_type} bars")
        if align != "utc":
            raise QueryError(f"align applies to time bars only, not {bar_type} bars")
        return BarSpec(None, "utc", "none", bar_type, threshold)  # type: ignore[arg-type]
    if size is not None:
        raise QueryError("size applies to tick, volume and dollar bars only")
    try:
        parsed = parse_interval(interval or "")
    except ValueError as exc:
        raise QueryError(f"interval {exc}") from None
    if align != "utc":
        if hours is None:
            raise QueryError(f"align {align} needs the market hours of exchange {exchange}, and none are configured")
        try:
            ZoneInfo(hours.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise QueryError(
                f"align {align}: exchange {exchange} has an unknown time zone {hours.timezone!r}"
            ) from None
        try:
            calendars.check(hours)
        except ConfigError as exc:
            raise QueryError(f"align {align}: exchange {exchange}: {exc}") from None
        if parsed.unit in ("s", "m", "h") and parsed.fixed is not None and parsed.fixed > timedelta(days=1):
            raise QueryError(f"interval {parsed.text} is longer than a day: with align={align} use <N>d, <N>w or 1mo")
    return BarSpec(parsed, align, fill, "time", None, hours if align != "utc" else None)  # type: ignore[arg-type]


def validate_spec_bar_count(spec: BarSpec, window: TimeRange, max_bars: int) -> None:
    """`validate_bar_count` for any interval: bounded by the interval's shortest possible bar."""
    assert spec.interval is not None
    count = -((window.start - window.end) // spec.interval.nominal)
    if count > max_bars:
        raise QueryError(
            f"interval {spec.interval.text} over {window.start.isoformat()}..{window.end.isoformat()} spans up to "
            f"{count} bars, more than the maximum {max_bars} (range too large): use a coarser interval or a shorter "
            "range"
        )
