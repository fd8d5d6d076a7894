"""Coordinated commits (ingest.commit_mode=coordinated) as they run: ingester processes as workers, committer
processes elected over the control topic, a real broker and PostgreSQL catalog. Each run ends by checking the table
against what the broker really holds: every message stored once, every partition's offset in the table."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pyiceberg.exceptions import NoSuchTableError

from k2_core.exceptions import CommitRejectedError
from k2_core.ingest.coordination import REQUESTS_PROPERTY, CommitRequest
from k2_core.ingest.formats import ReadOptions, file_format
from k2_core.ingest.importer import Importer
from k2_core.lake.catalog import open_catalog
from k2_core.lake.files import write_files
from k2_core.lake.offsets import WRITER_PROPERTY, OffsetIndex
from k2_core.model.tables import TRADES
from k2_core.settings import Settings
from k2_stream.admin import cluster_id, load_layout
from k2_stream.committer import CommitterService
from k2_stream.control import CommitClient
from k2_stream.ingester import Ingester
from k2_stream.replay import replay_file
from tests.support import factories
from tests.support.dumps import write_binance_trades
from tests.support.fixtures import on_threads
from tests.support.lake import table_rows
from tests.support.ports import free_port
from tests.support.processes import spawn_committer, spawn_ingester
from tests.support.reliability import check_exactly_once, feed, reliable_settings
from tests.support.waits import wait_for

DAY = datetime(2024, 11, 25, tzinfo=UTC)


def coordinated_settings(make_settings: Callable[..., Settings], broker: str) -> Settings:
    settings = reliable_settings(make_settings, broker, catalog="postgres")
    settings.kafka.max_partitions = 4
    settings.ingest.commit_mode = "coordinated"
    settings.ingest.commit_verdict_seconds = 4.0
    # A commit's wait includes the committer's round and its fail-over: not a load to shed symbols for here.
    settings.degradation.write_seconds = [60.0, 120.0, 300.0]
    return settings


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


def started(stack: ExitStack, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    stack.callback(_stop, proc)
    return proc


def trades_writers(settings: Settings) -> list[str]:
    """Who committed each snapshot of the trades table, oldest first."""
    try:
        table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    except NoSuchTableError:
        return []
    return [s.summary.additional_properties.get(WRITER_PROPERTY, "") for s in table.snapshots() if s.summary]


def trades_snapshots(settings: Settings) -> list[int]:
    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    return [s.snapshot_id for s in table.snapshots()]


def check_offsets(settings: Settings) -> None:
    """The table's offset of every trades partition is one past the last message the broker holds in it (read back:
    the embedded broker's reported high watermark is not to be trusted)."""
    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    stored = OffsetIndex(cluster_id(settings.kafka.bootstrap_servers)).refresh(table)
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "offset-oracle"})
    parts = [TopicPartition(t.name, p, 0) for t in load_layout(settings).topics if t.kind == "trades"
             for p in range(t.partitions)]  # fmt: skip
    consumer.assign(parts)
    ends: dict[tuple[str, int], int] = {}
    idle_since = time.monotonic()
    try:
        while time.monotonic() - idle_since < 2.0:
            msgs = [m for m in consumer.consume(10_000, 0.5) if m.error() is None]
            if msgs:
                idle_since = time.monotonic()
            for m in msgs:
                tp = (m.topic() or "", m.partition() or 0)
                ends[tp] = max(ends.get(tp, 0), (m.offset() or 0) + 1)
    finally:
        consumer.close()
    assert ends
    assert {tp: stored.get(tp) for tp in ends} == ends, f"table {stored} broker {ends}"


def test_two_workers_one_committer_store_every_message_once(
    broker: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = coordinated_settings(make_settings, broker)
    settings.ingest.retention_every_commits, settings.ingest.keep_snapshots = 3, 4
    with ExitStack() as stack:
        started(stack, spawn_committer(settings, tmp_path / "committer.log"))
        with feed(settings, count=4000, rate=400):
            started(stack, spawn_ingester(settings, tmp_path / "a.log"))
            started(stack, spawn_ingester(settings, tmp_path / "b.log"))
        check_exactly_once(settings, "coordinated: two workers, one committer")
        wait_for(lambda: _offsets_caught_up(settings), timeout=60)
    writers = set(trades_writers(settings))
    assert len(writers) == 1
    assert next(iter(writers)).startswith("committer-")  # no worker committed on its own
    workers = {line for name in ("a.log", "b.log") for line in (tmp_path / name).read_text().splitlines()}
    assert any('"partitions assigned"' in line for line in workers)
    # The committer thins the snapshots it commits; the workers, which commit none, do not try.
    assert "snapshot retention applied" in (tmp_path / "committer.log").read_text()
    assert not any("snapshot retention" in line for line in workers)
    assert len(trades_snapshots(settings)) < 4 + 3 + 2  # kept, tagged checkpoints, the newest


def test_committer_killed_mid_stream_is_replaced_with_nothing_lost_or_duplicated(
    broker: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = coordinated_settings(make_settings, broker)
    logs = [tmp_path / "c1.log", tmp_path / "c2.log"]
    with ExitStack() as stack:
        committers = [started(stack, spawn_committer(settings, log)) for log in logs]
        started(stack, spawn_ingester(settings, tmp_path / "a.log"))
        started(stack, spawn_ingester(settings, tmp_path / "b.log"))
        with feed(settings, count=3000, rate=300):
            pass
        wait_for(lambda: len(trades_writers(settings)) >= 1, timeout=90)  # the elected one is committing
        with feed(settings, count=3000, rate=300, exchange="asx"):  # the stream goes on, through the fail-over
            newest = trades_writers(settings)[-1]
            elected = [i for i, log in enumerate(logs) if newest in log.read_text()]
            assert len(elected) == 1
            committers[elected[0]].send_signal(signal.SIGKILL)  # mid-stream, whatever it was doing
            committers[elected[0]].wait()
        check_exactly_once(settings, "coordinated: committer killed and replaced")
        wait_for(lambda: _offsets_caught_up(settings), timeout=60)
    assert len(set(trades_writers(settings))) == 2  # the survivor took over and committed too


def _offsets_caught_up(settings: Settings) -> bool:
    try:
        check_offsets(settings)
    except AssertionError as exc:
        print(exc)
        return False
    return True


@pytest.fixture
def committer_thread(broker: str) -> Iterator[Callable[[Settings], CommitterService]]:
    """An in-process committer candidate (on a thread), stopped when the test ends."""
    yield from on_threads(CommitterService)


def test_a_zombie_worker_is_rejected_and_nothing_of_it_is_stored(
    make_settings: Callable[..., Settings],
    broker: str,
    tmp_path: Path,
    committer_thread: Callable[[Settings], CommitterService],
) -> None:
    settings = coordinated_settings(make_settings, broker)
    committer_thread(settings)
    with ExitStack() as stack:
        with feed(settings, count=600, rate=300):
            started(stack, spawn_ingester(settings, tmp_path / "worker.log"))
        check_exactly_once(settings, "coordinated: before a zombie")
        wait_for(lambda: _offsets_caught_up(settings), timeout=60)
    before = sorted(map(str, table_rows(settings, "trades")))
    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    tp, end = max(OffsetIndex(cluster_id(settings.kafka.bootstrap_servers)).refresh(table).items())
    # A worker that owned tp until offset 0 lost it (the live worker committed up to `end`) and now hands in a batch
    # from where it thought it was: rows of its own, written as real data files.
    rows = table.scan(limit=50).to_arrow()
    files = [f.file_path for f in write_files(table, TRADES.sort(rows))]
    zombie = CommitClient(settings, "zombie")
    try:
        with pytest.raises(CommitRejectedError, match="already committed past") as rejected:
            zombie.submit(CommitRequest("zombie-1", "zombie", 1, "trades", {tp: (0, end)}, files))
    finally:
        zombie.close()
    assert rejected.value.files_uncommitted  # the committer found them in no snapshot: the worker may delete them
    assert sorted(map(str, table_rows(settings, "trades"))) == before
    table.refresh()
    assert not set(files) & {task.file.file_path for task in table.scan().plan_files()}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The committer's /metrics, sample by sample (name and labels -> value)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_committer_reports_its_rounds_on_metrics_as_the_table_has_them(
    make_settings: Callable[..., Settings], broker: str, tmp_path: Path
) -> None:
    settings = coordinated_settings(make_settings, broker)
    port = free_port()
    with ExitStack() as stack:
        started(stack, spawn_committer(settings, tmp_path / "committer.log", metrics_port=port))
        wait_for(lambda: _answers(port) and httpx.get(f"http://127.0.0.1:{port}/health").json()["elected"], timeout=60)
        table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))  # the committer made it
        worker = CommitClient(settings, "worker-a")
        stack.callback(worker.close)
        tp = ("market.equities.trades.asx", 0)
        for start, end in ((0, 30), (30, 50)):
            rows = [factories.trade("BHP", s, datetime.now(UTC), "45.1", Decimal(1)) for s in range(start + 1, end + 1)]
            files = [f.file_path for f in write_files(table, TRADES.sort(TRADES.to_arrow(rows)))]
            worker.submit(CommitRequest(uuid.uuid4().hex, "worker-a", 1, "trades", {tp: (start, end)}, files))
        with pytest.raises(CommitRejectedError):  # a gap: the table holds 50
            worker.submit(CommitRequest(uuid.uuid4().hex, "worker-a", 1, "trades", {tp: (60, 70)}, []))
        samples = scrape(port)
    # The oracle: the table's own snapshots (the request ids and files each one holds).
    table.refresh()
    summaries = [s.summary.additional_properties for s in table.snapshots() if s.summary]
    committed = sum(len(json.loads(p.get(REQUESTS_PROPERTY, "[]"))) for p in summaries)
    files = sum(int(p.get("added-data-files", 0)) for p in summaries)
    trades_label = (("table", "trades"),)
    assert committed == 2
    assert samples[("k2_committer_requests_total", (("outcome", "committed"), ("table", "trades")))] == committed
    assert samples[("k2_committer_requests_total", (("outcome", "rejected"), ("table", "trades")))] == 1
    assert samples[("k2_committer_files_total", trades_label)] == files
    assert samples[("k2_committer_rounds_total", trades_label)] == 3  # one a hand-in: each waited for its verdict
    assert samples[("k2_committer_requests_per_round_count", trades_label)] == 3
    assert samples[("k2_committer_elected", ())] == 1


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_import_beside_coordinated_workers_stores_each_row_once(
    make_settings: Callable[..., Settings],
    broker: str,
    tmp_path: Path,
    committer_thread: Callable[[Settings], CommitterService],
    running_ingester: Callable[[Settings], Ingester],
) -> None:
    """The file streams through the broker to a coordinated worker while `k2 import` loads the same file: the
    worker's batches planned before an import chunk landed reach the committer after it, which refuses them; the
    worker plans them again, and every row is stored once."""
    settings = coordinated_settings(make_settings, broker)
    settings.ingest.batch_max_seconds = 0.2
    dump = write_binance_trades(tmp_path / "BTCUSDT-trades-2024-11-25.csv", range(1, 60_001), DAY, step_ms=1)
    committer_thread(settings)
    running_ingester(settings)
    replay = threading.Thread(
        target=replay_file, args=(settings, dump), kwargs={"exchange": "binance", "symbol": "BTCUSDT",
                                                           "fmt": "binance-trades"}
    )  # fmt: skip
    replay.start()
    wait_for(lambda: len(_sequences(settings)) >= 3000, timeout=90, interval=0.05)  # the worker is committing
    options = ReadOptions(exchange="binance", symbol="BTCUSDT", chunk_rows=3000)
    report = Importer(settings).import_file(dump, file_format("binance-trades"), options)
    assert report.duplicates > 0  # what the worker had stored before the import looked
    replay.join(120)
    wait_for(lambda: len(_sequences(settings)) >= 60_000, timeout=120)
    time.sleep(2)  # the worker's last batches, refused or not
    counts = Counter(_sequences(settings))
    assert len(counts) == 60_000
    assert [s for s, n in counts.items() if n > 1] == []


def _sequences(settings: Settings) -> list[int]:
    return [r["exchange_sequence_number"] for r in table_rows(settings, "trades") if r["symbol"] == "BTCUSDT"]
