"""Consumer lag, as both ingesters report it: per owned partition, the age of the newest message a batch consumed
(0 when a batch had nothing new from it) and how far the broker's high watermark is ahead of it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from k2_core.ingest.dedup import to_us
from k2_core.lake.offsets import TopicPartition as TP
from k2_stream import metrics


def newest_of(batch: Iterable[Message]) -> dict[TP, tuple[int, int]]:
    """Per partition, its newest message's Kafka timestamp (ms; 0 when the broker gave none) and offset."""
    out: dict[TP, tuple[int, int]] = {}
    for m in batch:
        tp, offset = (m.topic() or "", m.partition() or 0), m.offset() or 0
        if tp not in out or offset > out[tp][1]:
            kind, ts = m.timestamp()
            out[tp] = (ts if kind else 0, offset)
    return out


def export_lag(consumer: Consumer, owned: Iterable[TP], newest: Mapping[TP, tuple[int, int]], now: datetime) -> float:
    """Set the lag gauges of every owned partition from (newest Kafka timestamp ms, its offset) per partition that
    had messages; partitions with nothing new are caught up. Returns the worst lag in seconds. Message lag uses the
    cached high watermark, which the embedded broker may misreport."""
    now_ms = to_us(now) // 1000
    worst = 0.0
    for tp in owned:
        ts, offset = newest.get(tp, (0, -1))
        lag = max(0.0, (now_ms - ts) / 1000) if ts else 0.0
        worst = max(worst, lag)
        metrics.CONSUMER_LAG_SECONDS.labels(tp[0], str(tp[1])).set(lag)
        if offset >= 0:
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(tp[0], tp[1]), cached=True)
            except KafkaException:
                continue
            metrics.CONSUMER_LAG_MESSAGES.labels(tp[0], str(tp[1])).set(max(0, high - offset - 1))
    return worst
