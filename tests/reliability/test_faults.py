"""Faults survived with nothing lost: a hung broker, a restarted catalog database, a hung REST catalog server, two
ingesters with one killed, a full warehouse disk. Each run ends by checking the table against what the broker really
holds."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pyiceberg.exceptions import NoSuchTableError

from k2_core.lake.catalog import open_catalog
from k2_core.lake.offsets import WRITER_PROPERTY
from k2_core.settings import Settings
from k2_stream.broker import start_tansu
from k2_stream.simulator import FaultConfig, SimulatorConfig
from k2_stream.simulator.run import run_simulation
from tests.support.kafka import produced_keys
from tests.support.lake import table_rows
from tests.support.ports import free_port
from tests.support.processes import spawn_ingester
from tests.support.seaweedfs import S3Server
from tests.support.waits import wait_for


def check_exactly_once(settings: Settings, fault: str) -> None:
    sent = produced_keys(settings)
    distinct = set(sent)
    wait_for(lambda: len(table_rows(settings, "trades")) >= len(distinct), timeout=120)
    time.sleep(1.5)  # a late duplicate would land now
    keys = [(r["exchange"], r["symbol"], r["exchange_sequence_number"]) for r in table_rows(settings, "trades")]
    duplicates = len(keys) - len(set(keys))
    lost = len(distinct - set(keys))
    print(
        f"RELIABILITY {fault}: produced={len(sent)} distinct={len(distinct)} stored={len(keys)} "
        f"duplicates={duplicates} lost={lost}"
    )
    assert duplicates == 0
    assert lost == 0
    assert set(keys) == distinct


@contextmanager
def feed(settings: Settings, count: int, rate: float, exchange: str = "nyse") -> Iterator[threading.Thread]:
    thread = threading.Thread(
        target=run_simulation,
        args=(settings, SimulatorConfig(exchange, seed=11, quotes=False, faults=FaultConfig(duplicate_every=29))),
        kwargs={"rate": rate, "count": count},
        daemon=True,
    )
    thread.start()
    yield thread
    thread.join(180)
    assert not thread.is_alive()


@contextmanager
def ingester_process(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn_ingester(settings, log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def reliable_settings(make_settings: Callable[..., Settings], bootstrap: str, **kw: object) -> Settings:
    settings = make_settings(bootstrap=bootstrap, batch_max_seconds=0.3, metrics_port=0, **kw)
    settings.kafka.session_timeout_ms = 3000
    settings.kafka.heartbeat_interval_ms = 300
    settings.ingest.retry_backoff_seconds = 0.2
    settings.ingest.max_backoff_seconds = 2.0
    return settings


def test_broker_unavailable_for_30s_then_back(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    port = free_port()
    broker = start_tansu("127.0.0.1", port, log_path=tmp_path / "tansu.log")
    try:
        settings = reliable_settings(make_settings, f"127.0.0.1:{port}")
        with ingester_process(settings, tmp_path / "ingester.log") as proc:
            with feed(settings, count=600, rate=200):
                pass
            wait_for(lambda: len(table_rows(settings, "trades")) > 0, timeout=60)
            broker.send_signal(signal.SIGSTOP)  # hung, not gone: every connection stalls
            time.sleep(30)
            assert proc.poll() is None  # the ingester waited instead of crashing
            broker.send_signal(signal.SIGCONT)
            with feed(settings, count=600, rate=200, exchange="asx"):  # new streams: no session reset to untangle
                pass
            check_exactly_once(settings, "broker unavailable 30 s")
            assert proc.poll() is None
    finally:
        broker.send_signal(signal.SIGCONT)
        broker.kill()
        broker.wait()


def _pg(action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True)


@pytest.mark.serial  # stops the machine's PostgreSQL: no other test may run meanwhile
def test_catalog_database_stopped_and_restarted_mid_run(
    broker: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = reliable_settings(make_settings, broker, catalog="postgres")
    with ingester_process(settings, tmp_path / "ingester.log") as proc:
        with feed(settings, count=1500, rate=150):
            wait_for(lambda: len(table_rows(settings, "trades")) > 0, timeout=60)
            _pg("stop")
            try:
                time.sleep(5)  # the feed goes on; commits fail and back off, no offsets are committed
                assert proc.poll() is None
            finally:
                _pg("start")
        check_exactly_once(settings, "PostgreSQL catalog stopped 5 s")
    assert proc.returncode == 0


@pytest.mark.parametrize("fault", ["hung", "stopped"])
def test_rest_catalog_server_hung_or_stopped_mid_run(
    fault: str, broker: str, make_settings: Callable[..., Settings], iceberg_rest: S3Server, tmp_path: Path
) -> None:
    """The REST catalog server (and the S3 gateway beside it) stops answering (`hung`) or stops, refusing connections
    (`stopped`, then started again on the same ports and data) for 5 s while the ingester, a process configured only
    by K2_CATALOG_TYPE=rest and the rest of its environment, commits: nothing lost, nothing twice.
    A 5 s commit is slow enough for the degradation cascade to shed non-critical symbols to the DLQ (its job, tested
    in test_degradation.py): its write thresholds are raised here so that every trade must reach the table."""
    settings = reliable_settings(make_settings, broker, catalog="rest")
    settings.degradation.write_seconds = [60.0, 120.0, 300.0]
    with ingester_process(settings, tmp_path / "ingester.log") as proc:
        with feed(settings, count=1500, rate=150):
            wait_for(lambda: len(table_rows(settings, "trades")) > 0, timeout=60)
            if fault == "hung":
                os.killpg(iceberg_rest.proc.pid, signal.SIGSTOP)
            else:
                iceberg_rest.stop()
            try:
                time.sleep(5)  # the feed goes on; commits wait or fail and back off
                assert proc.poll() is None
            finally:
                if fault == "hung":
                    os.killpg(iceberg_rest.proc.pid, signal.SIGCONT)
                else:
                    iceberg_rest.start()
        check_exactly_once(settings, f"REST catalog server {fault} 5 s")
    assert proc.returncode == 0


def test_two_ingesters_one_killed_across_a_rebalance(
    broker: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = reliable_settings(make_settings, broker, catalog="postgres")
    settings.kafka.max_partitions = 4
    with feed(settings, count=6000, rate=300):
        first = spawn_ingester(settings, tmp_path / "a.log")
        second = spawn_ingester(settings, tmp_path / "b.log")
        wait_for(lambda: len(_writers(settings)) == 2, timeout=60)  # both own partitions and have committed
        first.send_signal(signal.SIGKILL)  # its partitions move to the survivor in a rebalance
        first.wait()
    try:
        check_exactly_once(settings, "two ingesters, one killed")
    finally:
        second.terminate()
        second.wait(30)
    assert len(_writers(settings)) == 2  # both really wrote to the same table


def _writers(settings: Settings) -> set[str]:
    """The ingesters that have committed to the trades table (each commit names its writer)."""
    try:
        table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    except NoSuchTableError:
        return set()
    writers = {s.summary.additional_properties.get(WRITER_PROPERTY) for s in table.snapshots() if s.summary}
    return {w for w in writers if w is not None}


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


def test_full_warehouse_disk_opens_the_breaker_and_recovers(
    broker: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    warehouse = tmp_path / "warehouse"
    _mount_tmpfs(warehouse, "64m")
    try:
        settings = reliable_settings(make_settings, broker)
        settings.catalog.warehouse = warehouse.as_uri()
        with ingester_process(settings, tmp_path / "ingester.log") as proc:
            with feed(settings, count=300, rate=150):
                pass
            wait_for(lambda: len(table_rows(settings, "trades")) > 0, timeout=60)
            ballast = warehouse / "ballast"
            with ballast.open("wb", buffering=0) as f:  # fill the volume: new files fail with ENOSPC
                for chunk in (1 << 20, 4096, 1):
                    for _ in itertools.count():
                        try:
                            f.write(b"\0" * chunk)
                        except OSError:
                            break
            # produced while the disk is full, however long the ingester took to start: its writes must fail
            with feed(settings, count=900, rate=150, exchange="asx"):
                time.sleep(1)  # a commit already past its file writes may still land
                stuck = len(table_rows(settings, "trades"))
                time.sleep(4)
                assert len(table_rows(settings, "trades")) == stuck  # nothing committed while the disk is full
                ballast.unlink()
            check_exactly_once(settings, "warehouse disk full 4 s")
        assert "OPEN" in (tmp_path / "ingester.log").read_text()
        assert proc.returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(warehouse)], check=False)
