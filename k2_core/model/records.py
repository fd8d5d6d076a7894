"""Rules every market record must meet before it is stored; a record that breaks one is dead-lettered.

The limits that are a matter of policy (how old, how far in the future, how large) come from `RecordSettings`
(`K2_RECORDS_*`); callers that pass none get the defaults. The rules are stated once, here, as public values
(`SYMBOL_RE`, `PRICE_FIELDS`, `MAX_DECIMAL`, `TimeWindow`, ...): `validate` applies them to one record, and the batch
decoder (`k2_stream.decode`) applies the same values to whole columns, so the two paths cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from k2_core.exceptions import MessageTooLargeError, ValidationError
from k2_core.model.topics import Kind
from k2_core.settings import RecordSettings

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,19}$")
# Printable, no control characters: a body decoded with the wrong schema turns binary into strings, and this
# is where that shows.
TRADE_ID_BYTES = (0x21, 0x7E)  # the byte range a trade id's characters come from
TRADE_ID_MAX_CHARS = 128
TRADE_ID_RE = re.compile(f"[\\x{TRADE_ID_BYTES[0]:02x}-\\x{TRADE_ID_BYTES[1]:02x}]{{1,{TRADE_ID_MAX_CHARS}}}")
SIDES = frozenset({"buy", "sell", "unknown"})
FIRST_SEQUENCE = 1  # exchange sequence numbers start here; 0 or below is a garbled record
# Prices and sizes are DECIMAL(18,8) end to end: 10 integer digits, 8 decimal places.
DECIMAL_PRECISION, DECIMAL_SCALE = 18, 8
MAX_DECIMAL = Decimal(10) ** (DECIMAL_PRECISION - DECIMAL_SCALE)  # exclusive bound on |value|
PRICE_FIELDS: Mapping[Kind, tuple[str, ...]] = {  # each > 0
    "trades": ("price",),
    "quotes": ("bid_price", "ask_price"),
}
SIZE_FIELDS: Mapping[Kind, tuple[str, ...]] = {  # each >= 0
    "trades": ("volume",),
    "quotes": ("bid_size", "ask_size"),
}
_QUANTUM = Decimal(1).scaleb(-DECIMAL_SCALE)
_DEFAULT_LIMITS = RecordSettings()


@dataclass(frozen=True)
class TimeWindow:
    """When a record's timestamps may fall, as seen from the validating process's clock `now`: on or after
    `earliest`, at most `latest`, and an exchange event may follow its own receipt by at most `skew`. Anything else
    is a wrong clock or a unit mix-up (ms for µs), not a market event."""

    earliest: datetime
    latest: datetime
    skew: timedelta

    @classmethod
    def at(cls, now: datetime, limits: RecordSettings | None = None) -> TimeWindow:
        limits = limits or _DEFAULT_LIMITS
        skew = timedelta(seconds=limits.future_tolerance_seconds)
        return cls(datetime.combine(limits.earliest_date, time(), tzinfo=UTC), now + skew, skew)


def check_size(payload: bytes | None, max_bytes: int) -> None:
    """Refuse a message before decoding it: a 10 MB blob is not a market record, whatever it decodes to."""
    size = len(payload or b"")
    if size > max_bytes:
        raise MessageTooLargeError(
            f"message too large: {size} bytes > {max_bytes} (K2_RECORDS_MAX_MESSAGE_BYTES); not decoded"
        )


def _check_decimal(name: str, value: Any, positive: bool) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValidationError(f"{name} is not a finite decimal: {value!r}")
    exponent = value.as_tuple().exponent  # an int: the value is finite
    if isinstance(exponent, int) and exponent < -DECIMAL_SCALE and value != value.quantize(_QUANTUM):
        raise ValidationError(f"{name} has more than {DECIMAL_SCALE} decimal places: {value}")
    if abs(value) >= MAX_DECIMAL:
        raise ValidationError(f"{name} does not fit DECIMAL(18,8): {value}")
    if positive and value <= 0:
        raise ValidationError(f"{name} must be > 0, got {value}")
    if value < 0:
        raise ValidationError(f"{name} must be >= 0, got {value}")


def _check_time(name: str, value: Any, window: TimeWindow) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValidationError(f"{name} is missing or not a UTC timestamp")
    if value < window.earliest:
        raise ValidationError(
            f"{name} {value.isoformat()} is before {window.earliest.date().isoformat()} (K2_RECORDS_EARLIEST_DATE)"
        )
    if value > window.latest:
        raise ValidationError(
            f"{name} {value.isoformat()} is in the future (more than the allowed clock skew past "
            f"{window.latest.isoformat()}, K2_RECORDS_FUTURE_TOLERANCE_SECONDS)"
        )
    return value


def validate(
    kind: Kind,
    exchange: str,
    record: dict[str, Any],
    limits: RecordSettings | None = None,
    *,
    now: datetime | None = None,
) -> None:
    """`exchange` is the one the topic belongs to: a record claiming another is refused, not re-routed.

    Time: both timestamps must be on or after `limits.earliest_date` and no further than the tolerance past
    `now` (the validating process's clock), and the exchange event may not follow its own receipt by more
    than the tolerance either: either would be a wrong clock or a unit mix-up (ms for µs), not a market event."""
    limits = limits or _DEFAULT_LIMITS
    window = TimeWindow.at(now or datetime.now(UTC), limits)
    if record.get("exchange") != exchange:
        raise ValidationError(f"record exchange {record.get('exchange')!r} does not match topic exchange {exchange!r}")
    symbol = record.get("symbol")
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
        raise ValidationError(f"invalid symbol {symbol!r}")
    seq = record.get("exchange_sequence_number")
    if not isinstance(seq, int) or seq < FIRST_SEQUENCE:
        raise ValidationError(f"exchange_sequence_number must be >= {FIRST_SEQUENCE}, got {seq!r}")
    ingested = _check_time("ingestion_timestamp", record.get("ingestion_timestamp"), window)
    happened = _check_time("exchange_timestamp", record.get("exchange_timestamp"), window)
    if happened > ingested + window.skew:
        raise ValidationError(
            f"exchange_timestamp {happened.isoformat()} is after its ingestion_timestamp {ingested.isoformat()} by "
            f"more than {limits.future_tolerance_seconds:g}s (K2_RECORDS_FUTURE_TOLERANCE_SECONDS)"
        )
    for name in PRICE_FIELDS[kind]:
        _check_decimal(name, record.get(name), positive=True)
    for name in SIZE_FIELDS[kind]:
        _check_decimal(name, record.get(name), positive=False)
    if kind == "trades":
        side = record.get("side")
        if side not in SIDES:
            raise ValidationError(f"side must be one of {', '.join(sorted(SIDES))}; got {side!r}")
        trade_id = record.get("trade_id")
        if not isinstance(trade_id, str) or not TRADE_ID_RE.fullmatch(trade_id):
            raise ValidationError(
                f"trade_id must be 1-{TRADE_ID_MAX_CHARS} printable ASCII characters; got {trade_id!r}"
            )
