"""Helpers for end-to-end tests: ground truth read back from the broker, tables read from Iceberg."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from pyiceberg.exceptions import NoSuchTableError

from k2_core.avro import Decoder
from k2_core.catalog import open_catalog
from k2_core.registry import FileSchemaRegistry
from k2_core.settings import Settings
from k2_stream.admin import load_layout

Key = tuple[str, str, int]  # (exchange, symbol, sequence)


def produced_keys(settings: Settings, kind: str = "trades") -> list[Key]:
    """Every valid record on the market topics of `kind`, duplicates included: what the feeds really sent."""
    layout = load_layout(settings)
    decoder = Decoder(FileSchemaRegistry(settings.kafka.schemas_dir))
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "truth-reader"})
    parts = [TopicPartition(t.name, p, 0) for t in layout.topics if t.kind == kind for p in range(t.partitions)]
    consumer.assign(parts)
    keys: list[Key] = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 3.0:
        msgs = consumer.consume(10_000, 0.5)
        if msgs:
            idle_since = time.monotonic()
        for m in msgs:
            if m.error() is None:
                rec = decoder.decode(m.value())
                keys.append((rec["exchange"], rec["symbol"], rec["exchange_sequence_number"]))
    consumer.close()
    return keys


def table_rows(settings: Settings, name: str) -> list[dict[str, Any]]:
    """All rows of a table; none while the ingester has not created it yet."""
    try:
        table = open_catalog(settings).load_table((settings.catalog.namespace, name))
    except NoSuchTableError:
        return []
    return table.scan().to_arrow().to_pylist()


def wait_for(predicate: Callable[[], bool], timeout: float = 90.0, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:.0f}s")


def settings_env(settings: Settings, metrics_port: int = 0) -> dict[str, str]:
    """The same settings, as the K2_ environment a child process reads; the ingester serves /metrics only on
    `metrics_port` when one is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env.update(
        K2_HOME=str(settings.home),
        K2_CATALOG_NAME=settings.catalog.name,
        K2_CATALOG_URI=settings.catalog_uri,
        K2_CATALOG_WAREHOUSE=settings.warehouse,
        K2_KAFKA_BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        K2_KAFKA_MAX_PARTITIONS=str(settings.kafka.max_partitions),
        K2_KAFKA_REPLICATION_FACTOR="1",
        K2_KAFKA_GROUP_ID=settings.kafka.group_id,
        K2_KAFKA_SESSION_TIMEOUT_MS=str(settings.kafka.session_timeout_ms),
        K2_KAFKA_HEARTBEAT_INTERVAL_MS=str(settings.kafka.heartbeat_interval_ms),
        K2_INGEST_RETRY_BACKOFF_SECONDS=str(settings.ingest.retry_backoff_seconds),
        K2_INGEST_MAX_BACKOFF_SECONDS=str(settings.ingest.max_backoff_seconds),
        K2_INGEST_BATCH_MAX_SECONDS=str(settings.ingest.batch_max_seconds),
        K2_INGEST_BATCH_MAX_ROWS=str(settings.ingest.batch_max_rows),
        K2_INGEST_METRICS_PORT=str(metrics_port),
    )
    return env


def spawn_ingester(settings: Settings, log: Path, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "k2_stream"],
            env=settings_env(settings, metrics_port),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
