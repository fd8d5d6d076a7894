"""The ingester with snapshot retention after every commit: idle partitions ride along in each snapshot's offsets,
so expiry keeps almost nothing and a restart (with no Kafka-committed offsets) still resumes exactly."""

from __future__ import annotations

import time
from collections.abc import Callable

from k2_core.lake.catalog import open_catalog
from k2_core.lake.offsets import OFFSETS_PROPERTY, decode_offsets
from k2_core.settings import Settings
from k2_stream.ingester import Ingester
from tests.support.factories import feed_trade
from tests.support.kafka import produce
from tests.support.lake import table_rows
from tests.support.waits import wait_for

SYMBOLS = ("BHP", "CBA", "CSL", "NAB", "WBC", "ANZ", "RIO", "FMG")


def test_idle_partitions_ride_along_and_resume_survives_retention_after_every_commit(
    broker: str, make_settings: Callable[..., Settings], running_ingester: Callable[[Settings], Ingester]
) -> None:
    settings = make_settings(
        bootstrap=broker,
        batch_max_seconds=0.2,
        batch_max_rows=40,
        metrics_port=0,
        retention_every_commits=1,
        keep_snapshots=1,
    )
    produce(settings, [("trades", feed_trade(s, n)) for n in range(1, 21) for s in SYMBOLS])
    first = running_ingester(settings)
    wait_for(lambda: len(table_rows(settings, "trades")) == 160)
    # only BHP from now on: its partition moves, the other one idles through many commits
    produce(settings, [("trades", feed_trade("BHP", n)) for n in range(21, 221)])
    wait_for(lambda: len(table_rows(settings, "trades")) == 360)
    first.stop()
    time.sleep(1)

    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    assert len(table.metadata.snapshots) <= 4  # the newest, its checkpoint tags, at most one more in flight
    current = table.current_snapshot()
    assert current is not None
    covered = decode_offsets(current.summary.additional_properties[OFFSETS_PROPERTY])  # type: ignore[union-attr]
    assert {p for t, p in covered if t.endswith(".trades.asx")} == {0, 1}  # both partitions, one of them idle

    settings.kafka.group_id += "-fresh"  # no Kafka-committed offsets: only the table can resume it
    produce(settings, [("trades", feed_trade(s, 21)) for s in SYMBOLS if s != "BHP"])
    running_ingester(settings)
    wait_for(lambda: len(table_rows(settings, "trades")) >= 367)
    time.sleep(1.5)
    keys = [(r["symbol"], r["exchange_sequence_number"]) for r in table_rows(settings, "trades")]
    assert len(keys) == len(set(keys)) == 367
