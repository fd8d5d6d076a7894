"""Rules every market record must meet before it is stored; a record that breaks one is dead-lettered."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from k2_core.exceptions import ValidationError
from k2_core.topics import Kind

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,19}$")
_MAX_DECIMAL = Decimal(10) ** 10  # DECIMAL(18,8) holds 10 integer digits
_PRICE_FIELDS: dict[str, tuple[str, ...]] = {
    "trades": ("price",),
    "quotes": ("bid_price", "ask_price"),
}
_SIZE_FIELDS: dict[str, tuple[str, ...]] = {
    "trades": ("volume",),
    "quotes": ("bid_size", "ask_size"),
}


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


def validate(kind: Kind, exchange: str, record: dict[str, Any]) -> None:
    """`exchange` is the one the topic belongs to: a record claiming another is refused, not re-routed."""
    if record.get("exchange") != exchange:
        raise ValidationError(f"record exchange {record.get('exchange')!r} does not match topic exchange {exchange!r}")
    symbol = record.get("symbol")
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
        raise ValidationError(f"invalid symbol {symbol!r}")
    seq = record.get("exchange_sequence_number")
    if not isinstance(seq, int) or seq < 1:
        raise ValidationError(f"exchange_sequence_number must be >= 1, got {seq!r}")
    for name in ("exchange_timestamp", "ingestion_timestamp"):
        if not isinstance(record.get(name), datetime):
            raise ValidationError(f"{name} is missing or not a timestamp")
    for name in _PRICE_FIELDS[kind]:
        _check_decimal(name, record.get(name), positive=True)
    for name in _SIZE_FIELDS[kind]:
        _check_decimal(name, record.get(name), positive=False)
