"""When is a produced message safe? Once the ingester has committed it: its rows in Iceberg (or dropped as a
duplicate or dead-lettered) and its offset past the ingester's committed position.

The embedded broker keeps messages in memory only, so a feed that exits as soon as the broker acknowledged its
messages can lose them with the broker. Producing commands therefore wait, by default, until every message they
produced is committed, and say so ("N produced, N committed"). A partition's committed position is the newer of
the offset stored in the table's snapshots (k2_core.lake.offsets) and the ingester group's Kafka commit (made only
after the Iceberg commit; it also covers batches that wrote no rows). A broker that restarted meanwhile is a new
cluster: what it had not committed by then is reported as lost.
"""

from __future__ import annotations

import bisect
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from pyiceberg.exceptions import NoSuchTableError

from k2_core.exceptions import K2Error
from k2_core.lake.catalog import CATALOG_FAILURES, open_catalog
from k2_core.lake.offsets import OffsetIndex
from k2_core.logging import get_logger
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import TopicLayout
from k2_core.settings import Settings
from k2_stream.admin import cluster_id, load_layout

log = get_logger(__name__)

TP = tuple[str, int]
# How often progress is reported while waiting.
PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class Acknowledgement:
    """How many of the messages a command produced the ingester has committed."""

    produced: int
    committed: int
    broker_restarted: bool = False
    timed_out: bool = False

    @property
    def lost(self) -> int:
        """Produced to a broker that restarted before the ingester committed them."""
        return self.produced - self.committed if self.broker_restarted else 0

    @property
    def complete(self) -> bool:
        return self.committed == self.produced


class CommittedPositions:
    """The ingester's committed position of each partition, per the tables and the consumer group."""

    def __init__(self, settings: Settings, cluster: str, layout: TopicLayout | None = None) -> None:
        self.settings = settings
        self.layout = layout or load_layout(settings)
        self.catalog = open_catalog(settings)
        self.indexes = {kind: OffsetIndex(cluster) for kind in MARKET_TABLES}
        self.consumer = Consumer(
            {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": settings.kafka.group_id}
        )

    def close(self) -> None:
        self.consumer.close()

    def read(self, partitions: list[TP], group: bool = True) -> dict[TP, int]:
        """Positions from the tables' snapshots (stored per cluster id) and, with `group`, the consumer group's
        commits on whatever cluster answers now (the caller checks it is still the same one)."""
        positions: dict[TP, int] = {}
        kinds = {self.layout.by_name[topic].kind for topic, _ in partitions}
        for kind in kinds:
            try:
                table = self.catalog.load_table((self.settings.catalog.namespace, MARKET_TABLES[kind].name))
            except NoSuchTableError:
                continue
            except CATALOG_FAILURES as exc:
                raise K2Error(f"cannot read the catalog: {exc}") from exc
            positions.update(self.indexes[kind].refresh(table))
        if not group:
            return positions
        try:
            committed = self.consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=5)
        except KafkaException:
            committed = []  # the broker is away: the tables still tell
        for c in committed:
            if c.offset >= 0:
                tp = (c.topic, c.partition)
                positions[tp] = max(positions.get(tp, 0), c.offset)
        return positions


def count_committed(delivered: Mapping[TP, array[int]], positions: Mapping[TP, int]) -> int:
    """Delivered offsets (ascending per partition) below each partition's committed position."""
    return sum(bisect.bisect_left(offsets, positions.get(tp, 0)) for tp, offsets in delivered.items())


def wait_until_committed(
    settings: Settings,
    delivered: Mapping[TP, array[int]],
    cluster: str,
    timeout: float,
    progress: Callable[[int, int], None] | None = None,
) -> Acknowledgement:
    """Wait until the ingester has committed every delivered message, the broker turns out to have restarted
    (a new cluster id: the rest is lost), or `timeout` seconds pass."""
    produced = sum(len(v) for v in delivered.values())
    if not produced:
        return Acknowledgement(0, 0)
    partitions = sorted(delivered)
    positions = CommittedPositions(settings, cluster)
    committed = 0
    deadline = time.monotonic() + timeout
    reported = time.monotonic()
    try:
        while True:
            if _cluster_now(settings, cluster) != cluster:
                # A new cluster: its group commits say nothing about ours; the tables' offsets are per cluster.
                committed = count_committed(delivered, positions.read(partitions, group=False))
                log.error(
                    "broker restarted before the ingester committed everything produced",
                    extra={"produced": produced, "committed": committed, "lost": produced - committed},
                )
                return Acknowledgement(produced, committed, broker_restarted=True)
            found = positions.read(partitions)
            if _cluster_now(settings, cluster) == cluster:  # the group's answer came from our cluster
                committed = count_committed(delivered, found)
            if committed == produced:
                return Acknowledgement(produced, committed)
            now = time.monotonic()
            if now >= deadline:
                return Acknowledgement(produced, committed, timed_out=True)
            if progress is not None and now - reported >= PROGRESS_SECONDS:
                progress(committed, produced)
                reported = now
            time.sleep(0.25)
    finally:
        positions.close()


def _cluster_now(settings: Settings, expected: str) -> str:
    try:
        return cluster_id(settings.kafka.bootstrap_servers, timeout=2)
    except K2Error:
        return expected  # unreachable for now: it may come back as the same cluster, or a new one (seen then)
