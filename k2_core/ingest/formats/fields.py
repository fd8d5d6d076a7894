"""The rules a field of a historical file is read by, each stated twice over the same text.

`Field.column` is the fast path: Arrow kernels over a whole column, accepting only a value's canonical spelling
(`42000.01000000`, `1704067200000`, `True`), which is how nearly every row of a real dump is written. `Field.value`
is the exact path: Python over one value, deciding every value the fast path left out, and saying why one is
refused. The fast path accepts a subset of what the exact path accepts, and gives the same value for it, so a row
reads the same whichever path it takes; the exact path is the replay parser's own rules (`k2_stream.replay`, which
the property tests hold the readers to): decimals exactly as written, at most 8 places, under 10**10, never NaN or
infinite; integers as plain digits.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2_core.exceptions import ConfigError, ReplayFormatError
from k2_core.ingest.formats.blocks import column_bytes
from k2_core.model.records import DECIMAL_PRECISION, DECIMAL_SCALE, MAX_DECIMAL, SIDES
from k2_core.model.tables import SIDES as BOOK_SIDES

DECIMAL = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
TIMESTAMP = pa.timestamp("us", tz="UTC")
TEXT = pa.large_string()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last microsecond a Python datetime can hold (9999-12-31T23:59:59.999999Z): a later time is no market event,
# and could not be handed on as a datetime.
MAX_MICROS = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
INT64_MAX = 2**63 - 1
# Binance moved its spot dumps from millisecond to microsecond times (2025): a microsecond stamp of any date after
# 1973 is at least this, and a millisecond stamp stays below it until the year 5138 (k2_stream.replay says the same).
MICROSECOND_THRESHOLD = 10**14
MICROS_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}  # "ns" divides by 1000
TIME_UNITS = ("s", "ms", "us", "ns")
# At most this many digits is an int64 whatever the digits: the fast path's integers.
_FAST_DIGITS = 18

# Canonical spellings, the only ones the fast path reads.
_DECIMAL_TEXT = rf"^[0-9]{{1,{DECIMAL_PRECISION - DECIMAL_SCALE}}}(?:\.[0-9]{{1,{DECIMAL_SCALE}}})?$"
_NUMBER_TEXT = r"^[0-9]+(?:\.[0-9]+)?$"
_SYMBOL_TEXT = r"^[!-~]+$"  # printable ASCII without spaces: upper-casing it is the same in Arrow and in Python
_ISO_TEXT = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})?$"
_ZONED_TEXT = r"(?:Z|[+-][0-9]{2}:[0-9]{2})$"
_TRUE = ("true", "True", "TRUE")
_FALSE = ("false", "False", "FALSE")
_BOOLS = {"true": True, "false": False}
_DIGITS = re.compile(r"[0-9]+")
_FRACTION = re.compile(r"(\.[0-9]{6})[0-9]+")  # digits past the microsecond, cut as ns times are


def _all(mask: pa.Array) -> bool:
    return bool(mask.false_count == 0 and mask.null_count == 0)


def _filled(texts: pa.Array, ok: pa.Array, placeholder: str) -> pa.Array:
    """`texts` with every row the fast path refused replaced by a value that converts, so that one cast converts the
    column; the refused rows' values are never used."""
    return texts if _all(ok) else pc.if_else(ok, texts, pa.scalar(placeholder, texts.type))


def _any_exponent(texts: pa.Array) -> bool:
    """Whether any text holds an e or E: one scan of the column's bytes (a copy and two memchr), not one per value."""
    data = column_bytes(texts.cast(TEXT))
    return b"e" in data or b"E" in data


def _plain_places(texts: pa.Array) -> pa.Array:
    """Which texts have no exponent and at most DECIMAL_SCALE digits after their point (`texts` large strings)."""
    dot = pc.find_substring(texts, ".").to_numpy()
    places = pc.binary_length(texts).to_numpy() - dot - 1
    plain = (dot < 0) | (places <= DECIMAL_SCALE)
    if _any_exponent(texts):
        plain &= ~pc.or_(pc.match_substring(texts, "e"), pc.match_substring(texts, "E")).to_numpy(zero_copy_only=False)
    return pa.array(plain)


def _integers(texts: pa.Array) -> tuple[np.ndarray, pa.Array]:
    ok = pc.and_(pc.ascii_is_decimal(texts), pc.less_equal(pc.binary_length(texts), _FAST_DIGITS))
    return _filled(texts, ok, "0").cast(pa.int64()).to_numpy(), ok


def _micros(values: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative integers in `unit` ("auto": Binance's ms-or-µs) as microseconds, and which fit a datetime."""
    if unit == "auto":
        micros = np.where(values >= MICROSECOND_THRESHOLD, values, values * 1000)
    elif unit == "ns":
        micros = values // 1000
    else:
        factor = MICROS_PER_UNIT[unit]
        fits = values <= MAX_MICROS // factor
        micros = np.where(fits, values, 0) * factor
        return micros, fits
    return micros, micros <= MAX_MICROS


def _micros_of(value: int, unit: str) -> int:
    if unit == "auto":
        return value if value >= MICROSECOND_THRESHOLD else value * 1000
    if unit == "ns":
        return value // 1000
    return value * MICROS_PER_UNIT[unit]


@dataclass(frozen=True)
class Field(ABC):
    """One field of a row: `key` names its value among the row's values, `label` names it in a refusal's reason.
    `missing`, when set, is the reason an empty field is refused with (when unset, an empty field is refused as
    any other malformed text is: the replay's own wording)."""

    key: str
    label: str
    missing: str | None = None

    type: pa.DataType | None = None  # the Arrow type of the values; None: checked, not kept

    @abstractmethod
    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        """The values of a column of text, and which rows the fast path read (the others' values are placeholders)."""

    @abstractmethod
    def parse(self, text: str) -> Any:
        """One value, exactly; raises ReplayFormatError saying what is wrong with it."""

    def value(self, text: str) -> Any:
        if self.missing is not None and not text.strip():
            raise ReplayFormatError(self.missing)
        return self.parse(text)


@dataclass(frozen=True)
class DecimalField(Field):
    """A price (`positive`) or a size (zero allowed), exactly as written, as DECIMAL(18, 8)."""

    positive: bool = True
    type: pa.DataType | None = DECIMAL

    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        try:
            # Arrow's decimal syntax is a subset of Python's, with the same values; only a spelling past 8 places
            # (trailing zeros, an exponent) is read by Arrow and refused by the exact rules, so those go the exact way
            values = texts.cast(DECIMAL)
            ok = _plain_places(texts)
        except pa.ArrowInvalid:  # some value is not an Arrow decimal of 10 digits and 8 places: check each
            ok = pc.match_substring_regex(texts, _DECIMAL_TEXT)
            values = _filled(texts, ok, "1").cast(DECIMAL)
        zero = pa.scalar(Decimal(0), DECIMAL)
        return values, pc.and_(ok, pc.greater(values, zero) if self.positive else pc.greater_equal(values, zero))

    def parse(self, text: str) -> Decimal:
        # the replay's `_decimal`, check for check and word for word
        try:
            value = Decimal(text.strip())
        except InvalidOperation as exc:
            raise ReplayFormatError(f"{self.label} {text!r} is not a number") from exc
        if not value.is_finite():
            raise ReplayFormatError(f"{self.label} {text!r} is not a finite number")
        if self.positive and value <= 0:
            raise ReplayFormatError(f"{self.label} {text!r} must be positive")
        if value < 0:
            raise ReplayFormatError(f"{self.label} {text!r} must not be negative")
        if value.as_tuple().exponent < -DECIMAL_SCALE:  # type: ignore[operator]  # finite: the exponent is an int
            raise ReplayFormatError(f"{self.label} {text!r} has more than {DECIMAL_SCALE} decimal places")
        if value >= MAX_DECIMAL:
            raise ReplayFormatError(f"{self.label} {text!r} does not fit decimal(18, {DECIMAL_SCALE})")
        return value


@dataclass(frozen=True)
class NumberField(Field):
    """A number the row must hold but K2 does not keep (Binance's quote quantity): checked, not converted."""

    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        try:
            # Arrow's float syntax is a subset of Python's Decimal's (nan and inf included): a column that casts
            # holds numbers only
            texts.cast(pa.float64())
            return None, pa.array(np.ones(len(texts), np.bool_))
        except pa.ArrowInvalid:
            return None, pc.match_substring_regex(texts, _NUMBER_TEXT)

    def parse(self, text: str) -> None:
        try:
            Decimal(text.strip())
        except InvalidOperation as exc:
            raise ReplayFormatError(f"{self.label} {text!r} is not a number") from exc


@dataclass(frozen=True)
class IntegerField(Field):
    """A non-negative integer in plain digits (ids, sequence numbers), as int64."""

    type: pa.DataType | None = pa.int64()  # noqa: RUF009  # an immutable Arrow type

    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        values, ok = _integers(texts)
        return pa.array(values, pa.int64()), ok

    def parse(self, text: str) -> int:
        stripped = text.strip()
        if not _DIGITS.fullmatch(stripped):
            raise ReplayFormatError(f"{self.label} {text!r} is not a non-negative integer")
        value = int(stripped)
        if value > INT64_MAX:
            raise ReplayFormatError(f"{self.label} {text!r} is out of range")
        return value


@dataclass(frozen=True)
class BooleanField(Field):
    """true or false, in any case."""

    type: pa.DataType | None = pa.bool_()  # noqa: RUF009  # an immutable Arrow type

    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        ok = pc.is_in(texts, value_set=pa.array(_TRUE + _FALSE, TEXT))
        return pc.is_in(texts, value_set=pa.array(_TRUE, TEXT)), ok

    def parse(self, text: str) -> bool:
        try:
            return _BOOLS[text.strip().lower()]
        except KeyError as exc:
            raise ReplayFormatError(f"{self.label} {text!r} is not true or false") from exc


@dataclass(frozen=True)
class EpochTimeField(Field):
    """A time as a non-negative integer count of `unit` since 1970-01-01 UTC: s, ms, us, ns (cut to the
    microsecond), or "auto" for Binance's dumps (ms before 2025, µs after: MICROSECOND_THRESHOLD). `optional`: an
    empty field or 0 means no time (Binance bookTicker's transaction time), held as 0 µs for a row rule to judge."""

    unit: str = "auto"
    optional: bool = False
    type: pa.DataType | None = pa.int64()  # noqa: RUF009  # µs; the format makes it a timestamp

    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        values, ok = _integers(texts)
        micros, fits = _micros(values, self.unit)
        ok = pc.and_(ok, pa.array(fits))
        return pa.array(micros, pa.int64()), ok

    def parse(self, text: str) -> int:
        stripped = text.strip()
        if self.optional and not stripped:
            return 0
        if not _DIGITS.fullmatch(stripped):
            raise ReplayFormatError(f"{self.label} {text!r} is not a non-negative integer")
        micros = _micros_of(int(stripped), self.unit)
        if micros > MAX_MICROS:
            raise ReplayFormatError(f"{self.label} {text!r} is out of range (after 9999-12-31)")
        return micros


@dataclass(frozen=True)
class IsoTimeField(Field):
    """An ISO 8601 date and time (2024-01-02T03:04:05.123456Z, a space for the T, an offset or none): a time
    without an offset is in `time_zone` (the earlier instant where a clock change repeats it; one a change skips is
    refused). Digits past the microsecond are cut. A bare integer is not guessed at: its unit must be given."""

    time_zone: str = "UTC"
    type: pa.DataType | None = pa.int64()  # noqa: RUF009  # µs

    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        ok = pc.match_substring_regex(texts, _ISO_TEXT)
        micros = np.zeros(len(texts), np.int64)
        zoned = pc.and_(ok, pc.match_substring_regex(texts, _ZONED_TEXT)).to_numpy(zero_copy_only=False)
        naive = ok.to_numpy(zero_copy_only=False) & ~zoned
        if self.time_zone != "UTC" and naive.any():
            # Arrow knows a zone's clock changes only as far as its tz database lists them (to 2037); Python's
            # zoneinfo carries the rule on: later (and pre-1970) local times go the exact way
            years = pc.utf8_slice_codeunits(texts, 0, 4)
            listed = pc.and_(pc.greater_equal(years, "1970"), pc.less_equal(years, "2037"))
            naive &= listed.to_numpy(zero_copy_only=False)
            ok = pa.array(zoned | naive)
        try:
            if zoned.any():
                micros[zoned] = texts.filter(pa.array(zoned)).cast(TIMESTAMP).cast(pa.int64()).to_numpy()
            if naive.any():
                local = texts.filter(pa.array(naive)).cast(pa.timestamp("us"))
                utc = pc.assume_timezone(local, timezone=self.time_zone, ambiguous="earliest", nonexistent="raise")
                micros[naive] = utc.cast(pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            # a well-spelt impossible time (month 13, a skipped local time) somewhere: let the exact path find it
            return pa.array(micros), pa.array(np.zeros(len(texts), np.bool_))
        return pa.array(micros), pc.and_(ok, pa.array(micros >= 0))

    def parse(self, text: str) -> int:
        stripped = text.strip()
        if _DIGITS.fullmatch(stripped):
            raise ConfigError(
                f"{self.label} {text!r} is a number, not an ISO 8601 time: give its unit (time_unit s, ms, us or ns)"
            )
        try:
            value = datetime.fromisoformat(_FRACTION.sub(r"\1", stripped))
        except ValueError as exc:
            raise ReplayFormatError(f"{self.label} {text!r} is not an ISO 8601 date and time") from exc
        if value.tzinfo is None:
            zone = ZoneInfo(self.time_zone)
            local = value
            value = value.replace(tzinfo=zone)
            if value.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != local:
                raise ReplayFormatError(f"{self.label} {text!r} does not exist in {self.time_zone} (a clock change)")
        micros = (value - EPOCH) // timedelta(microseconds=1)
        if micros < 0:
            raise ReplayFormatError(f"{self.label} {text!r} is before 1970")
        if micros > MAX_MICROS:  # an offset can take 9999-12-31 past the year's end
            raise ReplayFormatError(f"{self.label} {text!r} is out of range (after 9999-12-31)")
        return micros


@dataclass(frozen=True)
class SymbolField(Field):
    """An instrument as the file names it, in upper case (btcusdt -> BTCUSDT); whether it is a valid K2 symbol is
    the consumer's rule (k2_core.model.records)."""

    type: pa.DataType | None = TEXT

    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        return pc.utf8_upper(texts), pc.match_substring_regex(texts, _SYMBOL_TEXT)

    def parse(self, text: str) -> str:
        symbol = text.strip().upper()
        if not symbol:
            raise ReplayFormatError(f"{self.label} is empty")
        return symbol


@dataclass(frozen=True)
class SideField(Field):
    """The aggressor's side: buy, sell or unknown (in any case)."""

    type: pa.DataType | None = TEXT

    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        return texts, pc.is_in(texts, value_set=pa.array(sorted(SIDES), TEXT))

    def parse(self, text: str) -> str:
        side = text.strip().lower()
        if side not in SIDES:
            raise ReplayFormatError(f"{self.label} {text!r} is not buy, sell or unknown")
        return side


@dataclass(frozen=True)
class BookSideField(Field):
    """A side of a level-2 book: bid or ask (in any case)."""

    type: pa.DataType | None = TEXT

    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        return texts, pc.is_in(texts, value_set=pa.array(list(BOOK_SIDES), TEXT))

    def parse(self, text: str) -> str:
        side = text.strip().lower()
        if side not in BOOK_SIDES:
            raise ReplayFormatError(f"{self.label} {text!r} is not bid or ask")
        return side


@dataclass(frozen=True)
class TextField(Field):
    """Free text kept as written (a trade id); empty when the file has none (the format says what stands in)."""

    type: pa.DataType | None = TEXT

    def column(self, texts: pa.Array) -> tuple[pa.Array | None, pa.Array]:
        return texts, pa.array(np.ones(len(texts), np.bool_))

    def parse(self, text: str) -> str:
        return text
