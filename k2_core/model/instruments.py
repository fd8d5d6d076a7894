"""Reference data: what an instrument is (`market.instruments`) and the files it is loaded from.

The files are `config/instruments/<exchange>.csv` (`K2_INSTRUMENTS_DIR`), one per exchange, the exchange being the
file's name: CSV because an operator edits it by hand and a diff of it reads as a table. Columns, in any order:

    symbol,asset_class,currency,tick_size,lot_size,isin,figi,listed,delisted,strict

`symbol`, `asset_class`, `currency`, `tick_size` and `lot_size` are required in every row; `isin`, `figi`, `listed`,
`delisted` (ISO dates, `listed` <= `delisted`) may be empty; `strict` is `true` or `false` (empty: false). Ticks and
lots are exact decimals with at most 8 places, like the prices and sizes they divide. A file that breaks any rule is
refused whole with a `ConfigError` naming the file, the line and the field, so a load never stores half a file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pyarrow as pa

from k2_core.exceptions import ConfigError
from k2_core.model.records import DECIMAL_SCALE, MAX_DECIMAL, SYMBOL_RE
from k2_core.model.tables import INSTRUMENTS

COLUMNS = ("symbol", "asset_class", "currency", "tick_size", "lot_size", "isin", "figi", "listed", "delisted", "strict")
REQUIRED = ("symbol", "asset_class", "currency", "tick_size", "lot_size")
EXCHANGE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
ASSET_CLASS_RE = re.compile(r"^[a-z][a-z_]{0,31}$")
CURRENCY_RE = re.compile(r"^[A-Z0-9]{3,10}$")
ISIN_RE = re.compile(r"^[A-Z]{2}[A-Z0-9]{9}[0-9]$")
# Two letters (no vowels), G, then eight characters of the same alphabet or digits, and a check digit.
FIGI_RE = re.compile(r"^[B-DF-HJ-NP-TV-Z]{2}G[B-DF-HJ-NP-TV-Z0-9]{8}[0-9]$")
_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0", ""}
FILE_SUFFIX = ".csv"


@dataclass(frozen=True)
class Instrument:
    """One row of `market.instruments`."""

    symbol: str
    exchange: str
    asset_class: str
    currency: str
    tick_size: Decimal
    lot_size: Decimal
    isin: str | None = None
    figi: str | None = None
    listed: date | None = None
    delisted: date | None = None
    strict: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Instrument:
        """A row as the table gives it back (`to_pylist`)."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


def isin_check_digit_ok(isin: str) -> bool:
    """ISO 6166: letters become two digits (A = 10), then the Luhn check over the digit string."""
    digits = "".join(str(int(c, 36)) for c in isin)
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n // 10 + n % 10
    return total % 10 == 0


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{text!r} must be a positive decimal")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -DECIMAL_SCALE and value != value.quantize(Decimal(1).scaleb(-8)):
        raise ValueError(f"{text!r} has more than {DECIMAL_SCALE} decimal places")
    if value >= MAX_DECIMAL:
        raise ValueError(f"{text!r} does not fit DECIMAL(18,8)")
    return value.quantize(Decimal(1).scaleb(-DECIMAL_SCALE))


def _date(text: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date (YYYY-MM-DD)") from None


def _optional(pattern: re.Pattern[str], what: str) -> Any:
    def parse(text: str) -> str | None:
        if not text:
            return None
        if not pattern.match(text):
            raise ValueError(f"{text!r} is not a valid {what}")
        if what == "ISIN" and not isin_check_digit_ok(text):
            raise ValueError(f"{text!r} fails the ISIN check digit")
        return text

    return parse


def _required(pattern: re.Pattern[str], what: str) -> Any:
    def parse(text: str) -> str:
        if not pattern.match(text):
            raise ValueError(f"{text!r} is not a valid {what}")
        return text

    return parse


def _strict(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not true or false")


_PARSERS: dict[str, Any] = {
    "symbol": _required(SYMBOL_RE, "symbol (uppercase letters, digits, '.', '-')"),
    "asset_class": _required(ASSET_CLASS_RE, "asset class (lowercase, e.g. equities)"),
    "currency": _required(CURRENCY_RE, "currency (uppercase code, e.g. AUD)"),
    "tick_size": _decimal,
    "lot_size": _decimal,
    "isin": _optional(ISIN_RE, "ISIN"),
    "figi": _optional(FIGI_RE, "FIGI"),
    "listed": _date,
    "delisted": _date,
    "strict": _strict,
}


def parse_file(path: Path) -> list[Instrument]:
    """One exchange's file, every row checked; raises `ConfigError` naming the file, line and field."""
    exchange = path.name.removesuffix(FILE_SUFFIX)
    if not EXCHANGE_RE.match(exchange):
        raise ConfigError(f"{path}: the file name must be <exchange>{FILE_SUFFIX} with a lowercase exchange name")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or duplicated:
        problems = []
        if missing:
            problems.append(f"missing column(s) {missing}")
        if unknown:
            problems.append(f"unknown column(s) {unknown} (known: {list(COLUMNS)})")
        if duplicated:
            problems.append(f"repeated column(s) {duplicated}")
        raise ConfigError(f"{path}:1: header: {'; '.join(problems)}")
    out: list[Instrument] = []
    seen: dict[str, int] = {}
    for cells in reader:
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise ConfigError(f"{path}:{line}: has {len(cells)} fields, the header {len(header)}")
        values: dict[str, Any] = {"exchange": exchange}
        for name, cell in zip(header, cells, strict=True):
            try:
                values[name] = _PARSERS[name](cell.strip())
            except ValueError as exc:
                raise ConfigError(f"{path}:{line}: {name}: {exc}") from None
        instrument = Instrument(**values)
        if instrument.listed and instrument.delisted and instrument.delisted < instrument.listed:
            raise ConfigError(f"{path}:{line}: delisted: {instrument.delisted} is before listed {instrument.listed}")
        if instrument.symbol in seen:
            raise ConfigError(
                f"{path}:{line}: symbol: {instrument.symbol} is listed already on line {seen[instrument.symbol]}"
            )
        seen[instrument.symbol] = line
        out.append(instrument)
    return out


def reference_files(directory: Path) -> list[Path]:
    """The reference files of `directory`, in name order; a missing directory is a `ConfigError`."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such directory of instrument files (K2_INSTRUMENTS_DIR)")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(FILE_SUFFIX))


def parse_dir(directory: Path) -> list[Instrument]:
    """Every instrument of every file of `directory`, by (exchange, symbol)."""
    instruments = [i for path in reference_files(directory) for i in parse_file(path)]
    return sorted(instruments, key=lambda i: (i.exchange, i.symbol))


def fingerprint(instruments: Iterable[Instrument]) -> str:
    """A digest of the rows themselves (not of the files' bytes): a comment or reordered line changes nothing."""
    rows = sorted((asdict(i) for i in instruments), key=lambda r: (r["exchange"], r["symbol"]))
    text = json.dumps(rows, default=str, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def to_arrow(instruments: Sequence[Instrument]) -> pa.Table:
    return INSTRUMENTS.to_arrow([asdict(i) for i in instruments])
