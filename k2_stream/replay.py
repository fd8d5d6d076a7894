"""Recorded-file replay: real exchange dumps into the market topics, as a live feed's messages.

Two paths, which produce the same messages (the property tests hold them to it, ingestion time aside):

- Columnar (`replay_file`, the default): the file is read by its `k2_core.ingest.formats` reader in Arrow blocks,
  the blocks are encoded to Avro in bulk (`k2_core.model.avro_bulk`) on a reader thread, and the main thread sends
  the encoded messages in a tight loop (`k2_stream.bulk`). Every step but the send is vectorised, and the reader's
  and encoder's work (Arrow and numpy, which release the GIL) overlaps the send.
- Per line (`replay_file_per_line`, `k2 replay-file --per-line`): a pure generator parses line by line into
  records, each encoded by fastavro and sent through the feeds' producer. The reference the columnar path is held
  to, and the benchmark's baseline (bench/replay.py).

A malformed line is skipped and reported with its line number rather than failing the replay: public dumps do
contain the odd broken row, and one should not cost the millions around it.
"""

from __future__ import annotations

import io
import queue
import re
import threading
import time
import zipfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Generic, TextIO, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from k2_core.exceptions import ConfigError, K2Error, ReplayFormatError
from k2_core.ingest.formats import FORMATS as FILE_FORMATS
from k2_core.ingest.formats import ReadOptions, file_format
from k2_core.logging import get_logger
from k2_core.model.avro_bulk import BulkEncoder, EncodedRows
from k2_core.model.registry import SchemaRegistry
from k2_core.model.topics import Kind
from k2_core.settings import Settings
from k2_stream.bulk import BulkProducer
from k2_stream.simulator.session import GracefulStop, open_bulk_producer, open_producer

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
# The columnar replay reads, encodes and hands on this many rows at a time: few enough to keep what is in flight small
# (~10 MB a block of trades), enough that the reader thread takes the GIL (each Arrow and numpy call returns to it)
# seldom per row (131k rows measured ~15% faster than 32k on this machine, at the same CPU per row).
READ_ROWS = 1 << 17
# It sends this many messages between looks at the stop flag (and the pacing clock).
SEND_GROUP = 4096
# Encoded blocks the reader thread may hold ready beyond the one being sent.
PREFETCH_BLOCKS = 2


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


def replay_formats(per_line: bool = False) -> list[str]:
    """The formats a replay reads: every `k2_core.ingest.formats` reader, or the per-line parsers' (`FORMATS`)."""
    return sorted(FORMATS if per_line else FILE_FORMATS)


# ---- the columnar path: its pure part -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedBlock:
    """Consecutive good rows of a file as framed messages, in file order, keyed by symbol; and the file's bad lines
    read since the block before (the lines of the same stretch of the file)."""

    rows: EncodedRows
    keys: list[bytes]  # the distinct symbols, encoded
    key_of_row: npt.NDArray[np.int64] | None  # each row's index into `keys`; None: every row's key is keys[0]
    bad: list[BadLine]

    def __len__(self) -> int:
        return len(self.rows)


def _keys(symbols: pa.ChunkedArray | pa.Array) -> tuple[list[bytes], npt.NDArray[np.int64] | None]:
    encoded = pc.dictionary_encode(symbols)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    keys = [str(symbol).encode() for symbol in encoded.dictionary.to_pylist()]
    if len(keys) <= 1:
        return keys, None
    return keys, np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)


def encode_file(
    path: Path,
    fmt: str,
    encoder: BulkEncoder,
    *,
    exchange: str,
    symbol: str | None,
    clock: Callable[[], datetime] | None = None,
    block_rows: int = READ_ROWS,
) -> Iterator[EncodedBlock]:
    """The file's good rows as framed messages, a block of at most `block_rows` at a time, and its bad lines.

    `ingestion_timestamp` is the time each block is encoded (`clock`): a replay's receive time is when K2 read the
    rows, as the per-line path stamps each row as it parses it."""
    now = clock or (lambda: datetime.now(UTC))
    options = ReadOptions(exchange=exchange, symbol=symbol, chunk_rows=block_rows)
    for chunk in file_format(fmt).read(path, options):
        bad = [BadLine(row.line, row.reason) for row in chunk.bad]
        table = chunk.table
        if table.num_rows:
            index = table.schema.get_field_index("ingestion_timestamp")
            stamp = pa.repeat(pa.scalar(now(), table.schema.field(index).type), table.num_rows)
            table = table.set_column(index, table.schema.field(index), stamp)
        keys, key_of_row = _keys(table.column("symbol"))
        yield EncodedBlock(encoder.encode(table), keys, key_of_row, bad)


T = TypeVar("T")


class Prefetch(Generic[T]):
    """An iterator run on a thread of its own, up to `depth` items ahead of its consumer: the replay's reading and
    encoding (Arrow and numpy, which release the GIL) overlap its sending (which holds it). An exception in the
    thread is raised to the consumer where the item would have been."""

    _END = object()

    def __init__(self, source: Iterator[T], depth: int) -> None:
        self._source = source
        self._queue: queue.Queue[tuple[object, Any]] = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="k2-replay-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except Exception as exc:  # noqa: BLE001  # whatever it is, the consumer raises it, as if it had read itself
            self._put((self._END, exc))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()  # a generator's files are closed by the thread that ran it

    def _put(self, entry: tuple[object, Any]) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            item, error = self._queue.get()
            if error is not None:
                raise error
            if item is self._END:
                return
            yield item  # type: ignore[misc]  # not the sentinel: an item of the source

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)


# ---- the columnar path ----------------------------------------------------------------------------------------------


def _report(summary: ReplaySummary, bad: BadLine, on_bad_line: Callable[[BadLine], None] | None) -> None:
    summary.skipped.append(bad)
    log.warning(
        "skipped malformed line",
        extra={"path": str(summary.path), "line_number": bad.line_number, "reason": bad.reason},
    )
    if on_bad_line is not None:
        on_bad_line(bad)


def _check_rate(rate: float | None) -> None:
    if rate is not None and rate < 0:
        raise ConfigError(f"rate must be >= 0, got {rate}")


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
    per_line: bool = False,
) -> ReplaySummary:
    """Produce a recorded file's rows to the exchange's topic at up to `rate` rows per second (None or 0:
    as fast as the broker takes them). Each malformed line is logged, passed to `on_bad_line` and skipped.
    SIGINT/SIGTERM stop the replay within `SEND_GROUP` rows, flushed, with `interrupted` set.

    Columnar unless `per_line` (`replay_file_per_line`). A block's bad lines are reported before its rows are sent.
    """
    if per_line:
        return replay_file_per_line(
            settings,
            path,
            exchange=exchange,
            symbol=symbol,
            fmt=fmt,
            rate=rate,
            registry=registry,
            on_bad_line=on_bad_line,
        )
    reader = file_format(fmt)
    check_symbol(symbol)
    _check_rate(rate)
    summary = ReplaySummary(path)
    start = time.monotonic()
    with GracefulStop() as stop:
        producer = open_bulk_producer(settings, exchange, registry)
        spec = producer.layout.spec(exchange, reader.kind)
        schema_id, schema = producer.registry.latest(spec.subject)
        # Paced: blocks of about a second of rows, encoded (and stamped) just before they are sent.
        block_rows = min(READ_ROWS, max(1, int(rate))) if rate else READ_ROWS
        blocks = encode_file(
            path, fmt, BulkEncoder(schema, schema_id), exchange=exchange, symbol=symbol, block_rows=block_rows
        )
        source = Prefetch(blocks, PREFETCH_BLOCKS) if not rate else None
        try:
            for block in source if source is not None else blocks:
                for bad in block.bad:
                    _report(summary, bad, on_bad_line)
                if not _send(producer, spec.name, block, summary, stop, rate, start):
                    summary.interrupted = True
                    break
        finally:
            if source is not None:
                source.close()
        producer.flush()
        summary.delivered, summary.cluster_id = producer.delivered(), producer.cluster_id
    summary.elapsed_seconds = time.monotonic() - start
    _finished(summary, exchange, symbol)
    return summary


def _send(
    producer: BulkProducer,
    topic: str,
    block: EncodedBlock,
    summary: ReplaySummary,
    stop: GracefulStop,
    rate: float | None,
    start: float,
) -> bool:
    """Send a block in groups, looking at the stop flag (and, paced, the clock) between groups; False if stopped."""
    partitions = [producer.partition(topic, key) for key in block.keys]
    per_row: list[int] = []
    keys: list[bytes] = []
    if block.key_of_row is not None:
        rows = block.key_of_row.tolist()
        per_row = [partitions[k] for k in rows]
        keys = [block.keys[k] for k in rows]
    group = max(1, min(SEND_GROUP, int(rate * MIN_PAUSE_SECONDS))) if rate else SEND_GROUP
    for begin in range(0, len(block), group):
        if stop.requested:
            return False
        end = min(begin + group, len(block))
        if block.key_of_row is None:
            producer.send(topic, partitions[0], block.keys[0], block.rows, begin, end)
        else:
            producer.send_keyed(topic, per_row, keys, block.rows, begin, end)
        summary.produced += end - begin
        if rate:
            pause = start + summary.produced / rate - time.monotonic()
            if pause > MIN_PAUSE_SECONDS:
                time.sleep(pause)
    return True


def _finished(summary: ReplaySummary, exchange: str, symbol: str) -> None:
    log.info(
        "replay finished",
        extra={
            "path": str(summary.path),
            "exchange": exchange,
            "symbol": symbol,
            "produced": summary.produced,
            "skipped": len(summary.skipped),
        },
    )


# ---- the per-line path ----------------------------------------------------------------------------------------------


def replay_file_per_line(
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
    """`replay_file` line by line: each line parsed into a record, encoded by fastavro and sent through the feeds'
    producer. SIGINT/SIGTERM stop it after the current row."""
    spec = replay_format(fmt)
    check_symbol(symbol)
    _check_rate(rate)
    summary = ReplaySummary(path)
    start = time.monotonic()
    with open_lines(path) as lines, GracefulStop() as stop:
        producer = open_producer(settings, exchange, registry, track_deliveries=True)
        for parsed in spec.parse(lines, exchange, symbol):
            if stop.requested:
                summary.interrupted = True
                break
            if isinstance(parsed, BadLine):
                _report(summary, parsed, on_bad_line)
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
    _finished(summary, exchange, symbol)
    return summary
