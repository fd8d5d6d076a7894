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

# The committer of coordinated commits (k2_stream.committer): whether it is the elected one, and per table its rounds,
# requests by verdict, files, and where a round's time goes. Requests per round tell whether it batches (one
# snapshot for many hand-ins) or is itself the ceiling (busy all the time, one request a round).
COMMITTER_ELECTED = Gauge("k2_committer_elected", "1 while this candidate owns the control topic (is the committer)")
COMMITTER_ROUNDS = Counter("k2_committer_rounds_total", "Commit rounds (one snapshot each)", ["table"])
COMMITTER_FAILED_ROUNDS = Counter("k2_committer_failed_rounds_total", "Rounds that failed and are retried")
COMMITTER_REQUESTS = Counter("k2_committer_requests_total", "Requests answered, by verdict", ["table", "outcome"])
COMMITTER_FILES = Counter("k2_committer_files_total", "Data files committed", ["table"])
COMMITTER_REQUESTS_PER_ROUND = Histogram(
    "k2_committer_requests_per_round", "Requests judged per round", ["table"], buckets=(1, 2, 5, 10, 20, 50, 100, 500)
)
COMMITTER_ROUND_SECONDS = Histogram("k2_committer_round_seconds", "A round, judging to snapshot", ["table"])
COMMITTER_COMMIT_SECONDS = Histogram(
    "k2_committer_commit_seconds", "A round's commit: manifests, metadata file, catalog row", ["table"]
)
COMMITTER_READ_SECONDS = Histogram("k2_committer_read_seconds", "A round's reading of data file footers", ["table"])
