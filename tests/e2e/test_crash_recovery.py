"""kill -9 of the ingester at random moments under load: every trade is stored exactly once."""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from k2_core.settings import Settings
from k2_stream.simulator import FaultConfig, SimulatorConfig
from k2_stream.simulator.run import run_simulation
from tests.support.kafka import produced_keys
from tests.support.lake import table_rows
from tests.support.processes import spawn_ingester
from tests.support.waits import wait_for

KILLS = 20  # issue 6: twenty kill -9s under continuous load


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
    broker: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.2, batch_max_rows=500, metrics_port=0)
    # a killed member holds its partitions until its session expires: keep that short so 20 kills fit
    settings.kafka.session_timeout_ms = 2000
    settings.kafka.heartbeat_interval_ms = 300
    rng = random.Random(20261125)
    feed = threading.Thread(
        target=run_simulation,
        args=(settings, SimulatorConfig("binance", seed=3, faults=FaultConfig(gap_every=101, duplicate_every=17))),
        # a minute of feed, so that most kills meet an ingester with rows to commit even on a loaded machine
        kwargs={"rate": 200, "count": 12000},
        daemon=True,
    )
    feed.start()
    log = tmp_path / "ingester.log"
    killed_with_rows = []
    for n in range(KILLS):
        before = _assignments(log)
        proc = spawn_ingester(settings, log)
        if n % 4:  # most kills land once the ingester consumes (before, during and after its commits) ...
            wait_for(lambda b=before: _assignments(log) > b, timeout=60, interval=0.1)
            time.sleep(rng.uniform(0.1, 2.0))
        else:  # ... some while it is still starting or joining the group
            time.sleep(rng.uniform(0.5, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_with_rows.append(len(table_rows(settings, "trades")))
    feed.join(120)
    assert not feed.is_alive()

    final = spawn_ingester(settings, log)
    try:
        distinct = set(produced_keys(settings))
        wait_for(lambda: len(table_rows(settings, "trades")) >= len(distinct), timeout=120)
        time.sleep(2)  # anything duplicated late would land now
        rows = table_rows(settings, "trades")
    finally:
        final.terminate()
        final.wait(30)
    keys = [(r["exchange"], r["symbol"], r["exchange_sequence_number"]) for r in rows]
    print(
        f"RELIABILITY kill -9 x{KILLS}: produced={len(produced_keys(settings))} distinct={len(distinct)} "
        f"stored={len(keys)} duplicates={len(keys) - len(set(keys))} lost={len(distinct - set(keys))}"
    )
    assert len(keys) == len(set(keys)), "duplicates stored"
    assert set(keys) == distinct, "trades lost or invented"
    # the kills really interrupted running ingesters that were committing
    # (a kill before the group assignment settles interrupts nothing, so not every one counts)
    assert sum(b > a for a, b in itertools.pairwise(killed_with_rows)) >= 3, killed_with_rows
    assert final.returncode == 0  # SIGTERM: a clean stop


def _assignments(log: Path) -> int:
    """How many times ingesters writing to `log` were assigned partitions."""
    return log.read_text().count('"partitions assigned"') if log.exists() else 0
