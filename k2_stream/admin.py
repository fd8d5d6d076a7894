"""Topic administration: create every configured topic and its dead-letter topic, idempotently."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic

from k2_core.exceptions import K2Error
from k2_core.logging import get_logger
from k2_core.model.topics import DLQ_SUFFIX, TopicLayout
from k2_core.settings import Settings

log = get_logger(__name__)


def load_layout(settings: Settings) -> TopicLayout:
    return TopicLayout.load(
        settings.kafka.topics_file, settings.kafka.max_partitions, settings.kafka.replication_factor
    )


def ensure_topics(settings: Settings, layout: TopicLayout | None = None) -> TopicLayout:
    layout = layout or load_layout(settings)
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = []
    for topic, topic_partitions in layout.all_names():
        for name, partitions in ((topic, topic_partitions), (topic + DLQ_SUFFIX, 1)):
            if name not in existing:
                wanted.append(NewTopic(name, partitions, layout.replication_factor))
    if not wanted:
        return layout
    for name, future in admin.create_topics(wanted).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise K2Error(f"cannot create topic {name}: {exc}") from exc
    log.info("topics ensured", extra={"topics_created": len(wanted)})
    return layout


def cluster_id(bootstrap_servers: str, timeout: float = 30.0) -> str:
    """The broker cluster's id. Offsets are only meaningful within one cluster: the embedded broker keeps
    nothing across restarts, so each start gets a new id and stored offsets from an old one are ignored."""
    try:
        metadata = AdminClient({"bootstrap.servers": bootstrap_servers}).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise K2Error(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
    return str(metadata.cluster_id or "unknown")


def topic_ids(bootstrap_servers: str, topics: list[str], timeout: float = 30.0) -> dict[str, str]:
    """Kafka's id (UUID) of each topic that exists: it changes when a topic is deleted and created again, which its
    name and the cluster id do not tell (the new log restarts at offset 0)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    ids: dict[str, str] = {}
    for name, future in admin.describe_topics(TopicCollection(topics), request_timeout=timeout).items():
        try:
            ids[name] = str(future.result().topic_id)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise K2Error(f"cannot describe topic {name}: {exc}") from exc
    return ids
