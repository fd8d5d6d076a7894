"""Recorded-file replay: real exchange dumps through the same producer path as a live feed.

Parsing is a pure generator over lines, so every rule about the file format is testable without Kafka;
`replay_file` only streams a file through it into the producer. A malformed line is skipped and reported
with its line number rather than failing the replay: public dumps do contain the odd broken row, and one
should not cost the millions around it.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from k2_core.exceptions import ConfigError, K2Error, ReplayFormatError
from k2_core.logging import get_logger
from k2_core.model.registry import SchemaRegistry
from k2_core.model.topics import Kind
from k2_core.settings import Settings
from k2_stream.simulator.session import GracefulStop, open_producer

log = get_logger(__name__)

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{1,20}$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Binance moved its dumps from millisecond to microsecond timestamps (2025); a microsecond stamp of any
# date after 1973 is at least this, and a millisecond stamp stays below it until the year 5138.
MICROSECOND_THRESHOLD = 10**14
# The Avro and Iceberg decimals are (18, 8): at most 8 places and 10 integer digits.
PLACES = 8
MAX_DECIMAL = Decimal(10) ** (18 - PLACES)
BINANCE_TRADE_COLUMNS = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match")
_BOOLS = {"true": True, "false": False}
_DIGITS = re.compile(r"[0-9]+")
_HEADER_FIELD = re.compile(r"[A-Za-z_ ]+")
# Pacing sleeps only once at least this far ahead, so fast replays sleep in chunks, not per row.
MIN_PAUSE_SECONDS = 0.01


@dataclass(frozen=True)
class BadLine:
    """A line that was skipped, and why."""

    line_number: int
    reason: str

    def error(self) -> ReplayFormatError:
        return ReplayFormatError(f"line {self.line_number}: {self.reason}")


ParsedLine = dict[str, Any] | BadLine


def _decimal(text: str, name: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ReplayFormatError(f"{name} {text!r} is not a number") from exc
    if not value.is_finite():
        raise ReplayFormatError(f"{name} {text!r} is not a finite number")
    if value <= 0:
        raise ReplayFormatError(f"{name} {text!r} must be positive")
    if value.as_tuple().exponent < -PLACES:  # type: ignore[operator]  # finite, so the exponent is an int
        raise ReplayFormatError(f"{name} {text!r} has more than {PLACES} decimal places")
    if value >= MAX_DECIMAL:
        raise ReplayFormatError(f"{name} {text!r} does not fit decimal(18, {PLACES})")
    return value


def _integer(text: str, name: str) -> int:
    stripped = text.strip()
    if not _DIGITS.fullmatch(stripped):
        raise ReplayFormatError(f"{name} {text!r} is not a non-negative integer")
    return int(stripped)


def _boolean(text: str, name: str) -> bool:
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError as exc:
        raise ReplayFormatError(f"{name} {text!r} is not true or false") from exc


def binance_time(value: int) -> datetime:
    """A Binance trade time (ms in older dumps, µs in newer ones) as an aware UTC datetime, exactly."""
    micros = value if value >= MICROSECOND_THRESHOLD else value * 1000
    return EPOCH + timedelta(microseconds=micros)


def parse_binance_trade(fields: list[str], exchange: str, symbol: str, received: datetime) -> dict[str, Any]:
    """One row of a Binance trade dump as a trade record; raises ReplayFormatError saying what is wrong."""
    if len(fields) != len(BINANCE_TRADE_COLUMNS):
        raise ReplayFormatError(f"expected {len(BINANCE_TRADE_COLUMNS)} columns, got {len(fields)}")
    trade_id = _integer(fields[0], "trade id")
    price = _decimal(fields[1], "price")
    qty = _decimal(fields[2], "qty")
    try:
        Decimal(fields[3].strip())
    except InvalidOperation as exc:
        raise ReplayFormatError(f"quote qty {fields[3]!r} is not a number") from exc
    timestamp = _integer(fields[4], "time")
    buyer_is_maker = _boolean(fields[5], "is_buyer_maker")
    _boolean(fields[6], "is_best_match")
    return {
        "symbol": symbol,
        "exchange": exchange,
        "exchange_timestamp": binance_time(timestamp),
        "exchange_sequence_number": trade_id,
        "price": price,
        "volume": qty,
        # The buyer being the resting maker means the seller crossed the spread: a sell-side aggressor.
        "side": "sell" if buyer_is_maker else "buy",
        "trade_id": str(trade_id),
        "ingestion_timestamp": received,
    }


def _is_header(fields: list[str]) -> bool:
    return _HEADER_FIELD.fullmatch(fields[0].strip()) is not None


def parse_binance_trades(
    lines: Iterable[str], exchange: str, symbol: str, clock: Callable[[], datetime] | None = None
) -> Iterator[ParsedLine]:
    """Trade records for the rows of a Binance trade dump, or a BadLine (1-based line number and reason)
    for each malformed row. A header row is recognised on line 1 only; blank lines are ignored.

    `ingestion_timestamp` is the parse time: a replay's receive time is when K2 read the row.
    """
    now = clock or (lambda: datetime.now(UTC))
    # Plain splitting, not the csv module: the dumps never quote, and a physical line per row keeps the
    # reported line numbers exact even when a broken row holds a stray quote.
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        fields = text.split(",")
        if number == 1 and _is_header(fields):
            continue
        try:
            yield parse_binance_trade(fields, exchange, symbol, now())
        except ReplayFormatError as exc:
            yield BadLine(number, str(exc))


Parser = Callable[[Iterable[str], str, str], Iterator[ParsedLine]]


@dataclass(frozen=True)
class ReplayFormat:
    kind: Kind
    parse: Parser
    description: str


FORMATS: dict[str, ReplayFormat] = {
    "binance-trades": ReplayFormat(
        "trades",
        parse_binance_trades,
        "Binance public trade dump CSV: id, price, qty, quote_qty, time, is_buyer_maker, is_best_match",
    ),
}


def replay_format(name: str) -> ReplayFormat:
    try:
        return FORMATS[name]
    except KeyError as exc:
        raise ConfigError(f"unknown replay format {name!r}; known: {sorted(FORMATS)}") from exc


def check_symbol(symbol: str) -> str:
    if not SYMBOL_PATTERN.match(symbol):
        raise ConfigError(f"symbol {symbol!r} must match {SYMBOL_PATTERN.pattern}")
    return symbol


@contextmanager
def open_lines(path: Path) -> Iterator[TextIO]:
    """The file's text, streamed; a .zip (how Binance publishes dumps) must hold exactly one member.
    Undecodable bytes become replacement characters, so they surface as a malformed line, not a crash."""
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/")]
                if len(members) != 1:
                    raise ReplayFormatError(f"{path}: expected one file in the archive, found {members}")
                with archive.open(members[0]) as raw:
                    yield io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        else:
            with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
                yield fh
    except (OSError, zipfile.BadZipFile) as exc:
        raise K2Error(f"cannot read {path}: {exc}") from exc


@dataclass
class ReplaySummary:
    path: Path
    produced: int = 0
    skipped: list[BadLine] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    interrupted: bool = False
    # what the broker acknowledged, per partition, and its cluster: for waiting on the ingester (k2_stream.acks)
    delivered: dict[tuple[str, int], array[int]] = field(default_factory=dict)
    cluster_id: str = ""

    @property
    def skipped_lines(self) -> list[int]:
        return [b.line_number for b in self.skipped]


def replay_file(
    settings: Settings,
    path: Path,
    *,
    exchange: str,
    symbol: str,
    fmt: str,
    rate: float | None = None,
    registry: SchemaRegistry | None = None,
    on_bad_line: Callable[[BadLine], None] | None = None,
) -> ReplaySummary:
    """Produce a recorded file's rows to the exchange's topic at up to `rate` rows per second (None or 0:
    as fast as the broker takes them). Each malformed line is logged, passed to `on_bad_line` and skipped.
    SIGINT/SIGTERM stop the replay after the current row, flushed, with `interrupted` set."""
    spec = replay_format(fmt)
    check_symbol(symbol)
    if rate is not None and rate < 0:
        raise ConfigError(f"rate must be >= 0, got {rate}")
    summary = ReplaySummary(path)
    start = time.monotonic()
    with open_lines(path) as lines, GracefulStop() as stop:
        producer = open_producer(settings, exchange, registry, track_deliveries=True)
        for parsed in spec.parse(lines, exchange, symbol):
            if stop.requested:
                summary.interrupted = True
                break
            if isinstance(parsed, BadLine):
                summary.skipped.append(parsed)
                log.warning(
                    "skipped malformed line",
                    extra={"path": str(path), "line_number": parsed.line_number, "reason": parsed.reason},
                )
                if on_bad_line is not None:
                    on_bad_line(parsed)
                continue
            producer.send(spec.kind, parsed)
            summary.produced += 1
            if rate:
                pause = start + summary.produced / rate - time.monotonic()
                if pause > MIN_PAUSE_SECONDS:
                    time.sleep(pause)
        producer.flush()
    summary.delivered, summary.cluster_id = producer.delivered, producer.cluster_id
    summary.elapsed_seconds = time.monotonic() - start
    log.info(
        "replay finished",
        extra={
            "path": str(path),
            "exchange": exchange,
            "symbol": symbol,
            "produced": summary.produced,
            "skipped": len(summary.skipped),
        },
    )
    return summary
