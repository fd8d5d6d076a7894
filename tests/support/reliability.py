"""What the reliability tests share: a simulated feed, settings that recover fast, and the exactly-once check of a
table against what the broker really holds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from k2_core.settings import Settings
from k2_stream.simulator import FaultConfig, SimulatorConfig
from k2_stream.simulator.run import run_simulation
from tests.support.kafka import produced_keys
from tests.support.lake import table_rows
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


def reliable_settings(make_settings: Callable[..., Settings], bootstrap: str, **kw: object) -> Settings:
    settings = make_settings(bootstrap=bootstrap, batch_max_seconds=0.3, metrics_port=0, **kw)
    settings.kafka.session_timeout_ms = 3000
    settings.kafka.heartbeat_interval_ms = 300
    settings.ingest.retry_backoff_seconds = 0.2
    settings.ingest.max_backoff_seconds = 2.0
    return settings
