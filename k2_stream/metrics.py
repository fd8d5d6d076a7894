"""Ingestion metrics (Prometheus). Defined once here; the ingester updates them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_CONSUMED = Counter("k2_messages_consumed_total", "Kafka messages consumed", ["topic"])
ROWS_WRITTEN = Counter("k2_rows_written_total", "Rows committed to Iceberg", ["table"])
DUPLICATES = Counter("k2_duplicates_dropped_total", "Messages dropped as duplicates", ["table"])
DLQ_MESSAGES = Counter(
    "k2_dlq_messages_total",
    "Messages sent to a dead-letter topic, by reason class"
    " (decode_error, validation_error, reference_data, too_large, shed)",
    ["topic", "reason"],
)
SEQUENCE_GAPS = Counter("sequence_gaps_total", "Sequence gaps detected", ["exchange", "severity"])
WRITE_DURATION = Histogram("iceberg_write_duration_seconds", "Iceberg append latency", ["table"])
ROWS_PER_COMMIT = Histogram(
    "iceberg_rows_per_commit", "Rows per Iceberg commit", ["table"], buckets=(10, 100, 1e3, 1e4, 5e4, 1e5, 5e5)
)
HALTED_PARTITIONS = Gauge("k2_halted_partitions", "Partitions stopped on a large sequence gap")
CONSUMER_LAG_SECONDS = Gauge(
    "kafka_consumer_lag_seconds",
    "Age of the newest message consumed per partition (0 when caught up)",
    ["topic", "partition"],
)
CONSUMER_LAG_MESSAGES = Gauge(
    "kafka_consumer_lag_messages", "High watermark minus position, per partition", ["topic", "partition"]
)
CIRCUIT_BREAKER_STATE = Gauge("circuit_breaker_state", "Write-path breaker: 0 closed, 1 half-open, 2 open")
DEGRADATION_LEVEL = Gauge("k2_degradation_level", "Degradation cascade level 0-4")
SHED_MESSAGES = Counter(
    "k2_shed_messages_total", "Messages shed at degradation level 3 (sent to the DLQ)", ["exchange"]
)
