"""Rules every market record must meet before it is stored; a record that breaks one is dead-lettered.

The limits that are a matter of policy (how old, how far in the future, how large) come from `RecordSettings`
(`K2_RECORDS_*`); callers that pass none get the defaults. A dead letter's reason is one line starting with the
exception's class name (`DecodeError: ...`), and `reason_class` folds it into the short, bounded label the DLQ
metric and the `k2.error.class` header carry.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

from k2_core.exceptions import MessageTooLargeError, ValidationError
from k2_core.model.topics import Kind
from k2_core.settings import RecordSettings

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,19}$")
# Printable, no control characters: a body decoded with the wrong schema turns binary into strings, and this
# is where that shows.
TRADE_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
SIDES = frozenset({"buy", "sell", "unknown"})
_MAX_DECIMAL = Decimal(10) ** 10  # DECIMAL(18,8) holds 10 integer digits
_PRICE_FIELDS: dict[str, tuple[str, ...]] = {
    "trades": ("price",),
    "quotes": ("bid_price", "ask_price"),
}
_SIZE_FIELDS: dict[str, tuple[str, ...]] = {
    "trades": ("volume",),
    "quotes": ("bid_size", "ask_size"),
}
_DEFAULT_LIMITS = RecordSettings()

ReasonClass = Literal["decode_error", "validation_error", "too_large", "shed", "other"]
_REASON_CLASSES: dict[str, ReasonClass] = {
    "DecodeError": "decode_error",
    "ValidationError": "validation_error",
    "MessageTooLargeError": "too_large",
    "shed": "shed",
}


def reason_class(reason: str) -> ReasonClass:
    """The bounded class of a dead letter's reason (`DecodeError: ...` -> `decode_error`), for metric labels:
    the full reason quotes the bad value, so it belongs in the header and the log, never in a label."""
    return _REASON_CLASSES.get(reason.split(":", 1)[0].strip(), "other")


# A dead letter must be producible: librdkafka refuses messages over ~1 MB by default, and a dead letter that
# cannot be sent would stall its partition (the batch is retried forever). Larger bodies are cut to this.
DEAD_LETTER_MAX_BODY = 512 * 1024


def dead_letter_body(value: bytes | None) -> tuple[bytes | None, dict[str, bytes]]:
    """The body a dead letter carries and the headers that say whether it was cut (`k2.truncated`,
    `k2.original_bytes`); the untouched original stays at `k2.source.*` for the topic's retention."""
    if value is None or len(value) <= DEAD_LETTER_MAX_BODY:
        return value, {}
    return value[:DEAD_LETTER_MAX_BODY], {"k2.truncated": b"true", "k2.original_bytes": str(len(value)).encode()}


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
    if value.as_tuple().exponent < -8 and value != value.quantize(Decimal("1e-8")):  # type: ignore[operator]
        raise ValidationError(f"{name} has more than 8 decimal places: {value}")
    if abs(value) >= _MAX_DECIMAL:
        raise ValidationError(f"{name} does not fit DECIMAL(18,8): {value}")
    if positive and value <= 0:
        raise ValidationError(f"{name} must be > 0, got {value}")
    if value < 0:
        raise ValidationError(f"{name} must be >= 0, got {value}")


def _check_time(name: str, value: Any, earliest: datetime, latest: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValidationError(f"{name} is missing or not a UTC timestamp")
    if value < earliest:
        raise ValidationError(
            f"{name} {value.isoformat()} is before {earliest.date().isoformat()} (K2_RECORDS_EARLIEST_DATE)"
        )
    if value > latest:
        raise ValidationError(
            f"{name} {value.isoformat()} is in the future (more than the allowed clock skew past "
            f"{latest.isoformat()}, K2_RECORDS_FUTURE_TOLERANCE_SECONDS)"
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
    if record.get("exchange") != exchange:
        raise ValidationError(f"record exchange {record.get('exchange')!r} does not match topic exchange {exchange!r}")
    symbol = record.get("symbol")
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
        raise ValidationError(f"invalid symbol {symbol!r}")
    seq = record.get("exchange_sequence_number")
    if not isinstance(seq, int) or seq < 1:
        raise ValidationError(f"exchange_sequence_number must be >= 1, got {seq!r}")
    tolerance = timedelta(seconds=limits.future_tolerance_seconds)
    earliest = datetime.combine(limits.earliest_date, time(), tzinfo=UTC)
    latest = (now or datetime.now(UTC)) + tolerance
    ingested = _check_time("ingestion_timestamp", record.get("ingestion_timestamp"), earliest, latest)
    happened = _check_time("exchange_timestamp", record.get("exchange_timestamp"), earliest, latest)
    if happened > ingested + tolerance:
        raise ValidationError(
            f"exchange_timestamp {happened.isoformat()} is after its ingestion_timestamp {ingested.isoformat()} by "
            f"more than {limits.future_tolerance_seconds:g}s (K2_RECORDS_FUTURE_TOLERANCE_SECONDS)"
        )
    for name in _PRICE_FIELDS[kind]:
        _check_decimal(name, record.get(name), positive=True)
    for name in _SIZE_FIELDS[kind]:
        _check_decimal(name, record.get(name), positive=False)
    if kind == "trades":
        side = record.get("side")
        if side not in SIDES:
            raise ValidationError(f"side must be one of {', '.join(sorted(SIDES))}; got {side!r}")
        trade_id = record.get("trade_id")
        if not isinstance(trade_id, str) or not TRADE_ID_RE.fullmatch(trade_id):
            raise ValidationError(f"trade_id must be 1-128 printable ASCII characters; got {trade_id!r}")
