"""Kafka offsets stored in Iceberg snapshot summaries: the source of truth for exactly-once.

Each ingester commit writes, under `k2.kafka.offsets`, the next offset to read for every partition that batch
covered. A partition's resume point is the newest value found walking the snapshot parent chain from the
current snapshot; snapshots without the property (compaction, maintenance) are walked past, and so are
snapshots written against another Kafka cluster (an embedded broker restarted empty restarts its offsets). Each
snapshot also records the topic ids (Kafka's topic UUIDs) its offsets belong to: a topic deleted and created again
keeps its name and cluster but restarts its log at 0, so an offset of an earlier incarnation of a topic is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

OFFSETS_PROPERTY = "k2.kafka.offsets"
CLUSTER_PROPERTY = "k2.kafka.cluster"
TOPIC_IDS_PROPERTY = "k2.kafka.topic-ids"
WRITER_PROPERTY = "k2.writer"

TopicPartition = tuple[str, int]


def encode_offsets(offsets: Mapping[TopicPartition, int]) -> str:
    nested: dict[str, dict[str, int]] = {}
    for (topic, partition), offset in sorted(offsets.items()):
        nested.setdefault(topic, {})[str(partition)] = offset
    return json.dumps(nested, separators=(",", ":"))


def decode_offsets(text: str | None) -> dict[TopicPartition, int]:
    if not text:
        return {}
    return {(topic, int(p)): int(o) for topic, parts in json.loads(text).items() for p, o in parts.items()}


def encode_topic_ids(topic_ids: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(topic_ids.items())), separators=(",", ":"))


def summary_properties(
    offsets: Mapping[TopicPartition, int], cluster_id: str, writer_id: str, topic_ids: Mapping[str, str]
) -> dict[str, str]:
    """What a snapshot holding Kafka rows records of them (the one place exactly-once is written down): the next
    offset of each partition, the cluster and the writer, and the ids of the topics named (when known)."""
    props = {
        OFFSETS_PROPERTY: encode_offsets(offsets),
        CLUSTER_PROPERTY: cluster_id,
        WRITER_PROPERTY: writer_id,
    }
    if topic_ids:
        props[TOPIC_IDS_PROPERTY] = encode_topic_ids(topic_ids)
    return props


def by_ingester_of(snapshot: Snapshot, cluster_id: str) -> bool:
    """Whether `snapshot` was committed for the ingesters of Kafka cluster `cluster_id` (an ingester's own append or
    a coordinated committer's): its rows are those of partitions some ingester owned, so a peer's rows are never
    another stream's. Any other snapshot (`k2 import`, the gap backfill) may hold rows of any stream."""
    props = snapshot.summary.additional_properties if snapshot.summary else {}
    return props.get(CLUSTER_PROPERTY) == cluster_id and OFFSETS_PROPERTY in props


class OffsetIndex:
    """Newest committed offset per partition for one table, refreshed incrementally: only snapshots newer than
    the last one indexed are read, unless that one left the chain (expired or rolled back). `topic_ids` are the
    topics' current ids: an offset recorded for another id of the same topic is not this log's (snapshots written
    before topic ids were recorded count as the current incarnation)."""

    def __init__(self, cluster_id: str, topic_ids: Mapping[str, str] | None = None) -> None:
        self.cluster_id = cluster_id
        self.topic_ids = dict(topic_ids or {})
        self.offsets: dict[TopicPartition, int] = {}
        self.snapshot_id: int | None = None

    def set_topic_ids(self, topic_ids: Mapping[str, str]) -> None:
        """The topics' ids as the broker reports them now; a change makes the next refresh walk the whole chain."""
        if dict(topic_ids) != self.topic_ids:
            self.topic_ids = dict(topic_ids)
            self.offsets, self.snapshot_id = {}, None

    def refresh(self, table: Table) -> dict[TopicPartition, int]:
        current = table.metadata.current_snapshot_id
        found: dict[TopicPartition, int] = {}
        snapshot_id = current
        reached_known = False
        while snapshot_id is not None:
            if snapshot_id == self.snapshot_id:
                reached_known = True
                break
            snapshot = table.metadata.snapshot_by_id(snapshot_id)
            if snapshot is None:
                break
            props = snapshot.summary.additional_properties if snapshot.summary else {}
            if props.get(CLUSTER_PROPERTY) != self.cluster_id:
                snapshot_id = snapshot.parent_snapshot_id
                continue
            recorded_ids = json.loads(props.get(TOPIC_IDS_PROPERTY) or "{}")
            for tp, offset in decode_offsets(props.get(OFFSETS_PROPERTY)).items():
                recorded_id, current_id = recorded_ids.get(tp[0]), self.topic_ids.get(tp[0])
                if recorded_id is not None and current_id is not None and recorded_id != current_id:
                    continue  # an earlier incarnation of the topic
                found.setdefault(tp, offset)
            snapshot_id = snapshot.parent_snapshot_id
        self.offsets = {**self.offsets, **found} if reached_known else found
        self.snapshot_id = current
        return self.offsets

    def advance(self, snapshot_id: int, offsets: Mapping[TopicPartition, int]) -> None:
        """Record our own successful commit without re-reading metadata."""
        self.offsets.update(offsets)
        self.snapshot_id = snapshot_id
