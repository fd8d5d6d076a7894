"""Shared by the ingest benchmarks: a local Tansu broker, a fast trade-backlog producer and a measured ingester run.

The backlog is real Confluent-framed Avro, byte for byte what `k2_core.model.avro.encode` writes (checked at start), but
built from per-symbol pre-encoded pieces with only the timestamps, sequence number, trade id (and in version 2 the
order ids) encoded per message, by two producer processes: filling 5M messages takes seconds, not minutes. The
backlog is written with the trade schema's newest version (2: receive time, order ids, conditions on one trade in
eight), as the feeds write it, or with version 1 (`--schema-version 1`), as an old producer does.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bench.phases import instrument
from k2_core.ingest.dedup import to_us
from k2_core.model.avro import encode
from k2_core.model.registry import FileSchemaRegistry
from k2_core.model.topics import TopicLayout
from k2_core.settings import CatalogSettings, DegradationSettings, IngestSettings, KafkaSettings, Settings
from k2_stream.broker import start_tansu
from k2_stream.decode import zigzag_varint
from k2_stream.simulator.instruments import instruments_for

EXCHANGES = ("asx", "nyse", "binance")
SIDES = (b"buy", b"sell")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def avro_str(s: bytes) -> bytes:
    return zigzag_varint(len(s)) + s


def avro_decimal(d: Decimal) -> bytes:
    unscaled = int(d.scaleb(8))
    size = (unscaled.bit_length() + 8) // 8
    return avro_str(unscaled.to_bytes(size, "big", signed=True))


@dataclass(frozen=True)
class Stream:
    topic: str
    exchange: str
    symbol: str
    price: Decimal


def streams(layout: TopicLayout, symbols_per_exchange: int) -> list[Stream]:
    out = []
    for exchange in EXCHANGES:
        topic = layout.spec(exchange, "trades").name
        for inst in instruments_for(exchange)[:symbols_per_exchange]:
            out.append(Stream(topic, exchange, inst.symbol, inst.start_price))
    return out


# Version 2's conditions field per template: null, or (one trade in eight) the CTA codes of an odd-lot sale.
_CONDITIONS = [b"\x00"] * 7 + [b"\x02" + zigzag_varint(2) + avro_str(b"@") + avro_str(b"I") + b"\x00"]
RECV_LATENCY_US = 250


class TradeEncoder:
    """Per-symbol pre-encoded pieces; only the varying fields are encoded per message. `version` is the trade
    schema's (1 or 2)."""

    TEMPLATES = 8

    def __init__(self, schema_id: int, stream: Stream, version: int = 2) -> None:
        self.version = version
        header = b"\x00" + schema_id.to_bytes(4, "big")
        self.head = header + avro_str(stream.symbol.encode()) + avro_str(stream.exchange.encode())
        tick = Decimal("0.01")
        self.middles = [
            avro_decimal(stream.price + tick * (k - 4)) + avro_decimal(Decimal(100 + 10 * k)) + avro_str(SIDES[k % 2])
            for k in range(self.TEMPLATES)
        ]
        self.tid_prefix = f"{stream.exchange}-{stream.symbol}-".encode()

    def encode(self, seq: int, ts_us: int, ingested_us: int) -> bytes:
        tid = self.tid_prefix + b"%d" % seq
        parts = [
            self.head,
            zigzag_varint(ts_us),
            zigzag_varint(seq),
            self.middles[seq % self.TEMPLATES],
            avro_str(tid),
            zigzag_varint(ingested_us),
        ]
        if self.version == 2:
            parts += [
                b"\x02" + zigzag_varint(ts_us + RECV_LATENCY_US),
                _CONDITIONS[seq % self.TEMPLATES],
                b"\x02" + avro_str(b"%d" % (2 * seq)),
                b"\x02" + avro_str(b"%d" % (2 * seq + 1)),
            ]
        return b"".join(parts)


def trade_schema_id(registry: FileSchemaRegistry, layout: TopicLayout, version: int) -> int:
    """The id of version `version` (1-based) of the trade subject."""
    return registry.versions(layout.spec("asx", "trades").subject)[version - 1][0]


def _check_encoder(registry: FileSchemaRegistry, layout: TopicLayout, version: int) -> None:
    schema_id = trade_schema_id(registry, layout, version)
    schema = registry.by_id(schema_id)
    stream = streams(layout, 1)[0]
    now = datetime.now(UTC).replace(microsecond=123456)
    enc = TradeEncoder(schema_id, stream, version)
    for seq in (12345, 12351):  # without conditions, and with
        _check_one(enc, schema_id, schema, stream, seq, now)


def _check_one(enc: TradeEncoder, schema_id: int, schema: Any, stream: Stream, seq: int, now: datetime) -> None:
    record: dict[str, Any] = {
        "symbol": stream.symbol,
        "exchange": stream.exchange,
        "exchange_timestamp": now,
        "exchange_sequence_number": seq,
        "price": stream.price + Decimal("0.01") * (seq % 8 - 4),
        "volume": Decimal(100 + 10 * (seq % 8)),
        "side": SIDES[seq % 8 % 2].decode(),
        "trade_id": f"{stream.exchange}-{stream.symbol}-{seq}",
        "ingestion_timestamp": now + timedelta(milliseconds=1),
    }
    if enc.version == 2:
        record |= {
            "ts_recv": now + timedelta(microseconds=RECV_LATENCY_US),
            "conditions": ["@", "I"] if seq % 8 == 7 else None,
            "buyer_order_id": str(2 * seq),
            "seller_order_id": str(2 * seq + 1),
        }
    assert enc.encode(seq, to_us(now), to_us(now) + 1000) == encode(schema_id, schema, record), "encoder drifted"


def _produce(
    bootstrap: str, schema_id: int, version: int, work: list[tuple[Stream, int]], t0_us: int, worker: int
) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "lz4",
        }
    )
    encoders = [(s, TradeEncoder(schema_id, s, version), s.symbol.encode(), n) for s, n in work]
    longest = max((n for *_, n in encoders), default=0)
    for seq in range(1, longest + 1):
        ts = t0_us + seq * 1000
        for stream, enc, key, n in encoders:
            if seq > n:
                continue
            value = enc.encode(seq, ts, ts + 500)
            while True:
                try:
                    producer.produce(stream.topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
    remaining = producer.flush(300)
    if remaining:
        raise SystemExit(f"producer {worker}: {remaining} messages undelivered")


def fill(settings: Settings, layout: TopicLayout, messages: int, symbols_per_exchange: int, version: int = 2) -> float:
    """Produce `messages` trades spread evenly over the streams, in sequence order per stream, with two producer
    processes, in version `version` of the trade schema. Returns the seconds it took."""
    registry = FileSchemaRegistry(settings.kafka.schemas_dir)
    _check_encoder(registry, layout, version)
    schema_id = trade_schema_id(registry, layout, version)
    all_streams = streams(layout, symbols_per_exchange)
    per, extra = divmod(messages, len(all_streams))
    counts = [per + (i < extra) for i in range(len(all_streams))]
    # exchange timestamps: one per ms per stream, ending about now (so nothing is "in the future")
    t0_us = to_us(datetime.now(UTC)) - (per + 1) * 1000 - 60_000_000
    work = list(zip(all_streams, counts, strict=True))
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_produce, args=(settings.kafka.bootstrap_servers, schema_id, version, work[i::2], t0_us, i))
        for i in range(2)
    ]
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"producer failed with exit code {p.exitcode}")
    return time.perf_counter() - started


# ---- the broker ------------------------------------------------------------------------------------------------


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.proc = start_tansu("127.0.0.1", self.port, log_path=workdir / "tansu.log")
        self.bootstrap = f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench_settings(bootstrap: str, home: Path, partitions: int, **ingest: Any) -> Settings:
    """Settings for a benchmark run: fresh SQLite catalog and warehouse under `home`, metrics off. A backlog replay
    is not an overload, so the lag-driven degradation levels (bigger batches, shedding) are kept out of it: the
    measured batch size is the configured one."""
    return Settings(
        home=home,
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            max_partitions=partitions,
            replication_factor=1,
            group_id=f"k2-bench-{uuid.uuid4().hex[:8]}",
        ),
        catalog=CatalogSettings(name=f"bench{uuid.uuid4().hex[:8]}"),
        ingest=IngestSettings(metrics_port=0, committer_metrics_port=0, **ingest),
        degradation=DegradationSettings(lag_seconds=[1e9, 2e9, 3e9], write_seconds=[1e9, 2e9, 3e9]),
    )


# ---- a measured ingester run (in its own process, so CPU and RSS are its own) -------------------------------------


@dataclass
class RunResult:
    mode: str
    rows: int
    duplicates: int
    dead: int
    seconds_to_first_batch: float  # start -> first batch in hand (group join, assignment, resume offsets)
    seconds_ingesting: float  # first batch in hand -> last commit done
    cpu_seconds: float  # user + sys of the ingester process while ingesting
    peak_rss_bytes: int
    commit_ms: list[float] = field(default_factory=list)
    batch_rows: list[int] = field(default_factory=list)
    first_at: float = 0.0  # wall clock (time.time) of the first batch in hand, comparable across processes
    last_at: float = 0.0  # wall clock of the last commit done
    phases: dict[str, Any] = field(default_factory=dict)  # bench/phases.py, when asked for

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds_ingesting if self.seconds_ingesting else 0.0

    def pct(self, q: float) -> float:
        if not self.commit_ms:
            return 0.0
        data = sorted(self.commit_ms)
        return data[min(len(data) - 1, round(q * (len(data) - 1)))]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run_ingester(
    settings_json: str, expected: int, mode: str, queue: Any, shared: Any = None, phases: bool = False
) -> None:
    """`phases`: time each phase of each batch (bench/phases.py)."""
    from bench.per_message import PerMessagePreparer
    from k2_stream.ingester import Ingester

    settings = Settings.model_validate_json(settings_json)
    ingester = Ingester(settings) if mode == "batch" else Ingester(settings, preparer=PerMessagePreparer)
    commit_ms: list[float] = []
    batch_rows: list[int] = []
    marks: dict[str, float] = {}
    for writer in ingester.writers.values():
        original = writer.append

        def timed(data: Any, offsets: Any, positions: Any, _orig: Any = original, **kwargs: Any) -> Any:
            started = time.perf_counter()
            out = _orig(data, offsets, positions, **kwargs)
            commit_ms.append((time.perf_counter() - started) * 1000)
            batch_rows.append(data.num_rows)
            return out

        writer.append = timed  # type: ignore[method-assign,assignment]
    if ingester.coordinator is not None:  # coordinated mode: a commit is a hand-in answered by the committer
        submit = ingester.coordinator.submit

        def handed(request: Any, _orig: Any = submit) -> Any:
            started = time.perf_counter()
            out = _orig(request)
            commit_ms.append((time.perf_counter() - started) * 1000)
            return out

        ingester.coordinator.submit = handed  # type: ignore[method-assign]
    timing = instrument(ingester) if phases else None
    decode = ingester.preparer.decode
    finish = ingester.checkpoint.finish

    def done() -> int:
        return stats["trades_written"] + stats["trades_duplicates"] + stats["dead_lettered"]

    def first(batch: Any, now: Any) -> Any:
        """A batch in hand: the first one starts the clock."""
        if "first" not in marks:
            marks["first"] = time.perf_counter()
            marks["first_at"] = time.time()
            marks["cpu0"] = _cpu()
        return decode(batch, now)

    counted = [0]

    def last(*args: Any) -> Any:
        """A batch committed (its Kafka offsets too): the last one stops the clock."""
        out = finish(*args)
        marks["last"] = time.perf_counter()
        marks["last_at"] = time.time()
        marks["cpu1"] = _cpu()
        if shared is not None:
            now_done = done()
            with shared.get_lock():
                shared.value += now_done - counted[0]
            counted[0] = now_done
        return out

    ingester.preparer.decode = first  # type: ignore[method-assign]
    ingester.checkpoint.finish = last  # type: ignore[method-assign]
    thread = threading.Thread(target=ingester.run, daemon=True)
    started = time.perf_counter()
    thread.start()
    stats = ingester.stats
    while (shared.value if shared is not None else done()) < expected:
        if not thread.is_alive():
            raise SystemExit(f"{mode} ingester died: {dict(stats)}")
        time.sleep(0.02)
    ingester.stop()
    thread.join(60)
    result = RunResult(
        mode,
        stats["trades_written"],
        stats["trades_duplicates"],
        stats["dead_lettered"],
        marks["first"] - started,
        marks["last"] - marks["first"],
        marks["cpu1"] - marks["cpu0"],
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        commit_ms,
        batch_rows,
        marks["first_at"],
        marks["last_at"],
        timing.as_dict() if timing is not None else {},
    )
    queue.put(asdict(result))


def run_ingester(
    settings: Settings, expected: int, mode: str, timeout: float = 1800, phases: bool = False
) -> RunResult:
    return run_ingesters(settings, expected, mode, 1, timeout, phases=phases)[0]


def run_ingesters(
    settings: Settings,
    expected: int,
    mode: str,
    processes: int,
    timeout: float = 1800,
    cores: list[set[int]] | None = None,
    phases: bool = False,
) -> list[RunResult]:
    """`processes` ingester processes in one consumer group, until together they have handled `expected` rows.
    `cores[i]`, when given, pins process i to those CPUs."""
    from k2_core.lake.catalog import ensure_tables, open_catalog

    ensure_tables(open_catalog(settings), settings.catalog.namespace)  # not concurrently from two processes
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    shared = ctx.Value("q", 0)
    procs = [
        ctx.Process(target=_run_ingester, args=(settings.model_dump_json(), expected, mode, queue, shared, phases))
        for _ in range(processes)
    ]
    for i, proc in enumerate(procs):
        proc.start()
        if cores is not None and proc.pid is not None:
            os.sched_setaffinity(proc.pid, cores[i])
    try:
        data = [queue.get(timeout=timeout) for _ in procs]
    finally:
        for proc in procs:
            proc.join(60)
    return [RunResult(**d) for d in data]


def files_per_commit(settings: Settings, table: str = "trades") -> float:
    from k2_core.lake.catalog import open_catalog

    t = open_catalog(settings).load_table((settings.catalog.namespace, table))
    added = [
        int(s.summary.additional_properties.get("added-data-files", 0))
        for s in t.metadata.snapshots
        if s.summary is not None
    ]
    return statistics.fmean(added) if added else 0.0


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="k2-bench-"))
