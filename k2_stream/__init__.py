"""K2 stream: the long-running ingester, the feed producers (simulators, recorded-file replay) and Kafka plumbing.

The ingester is `ingester` (the consumer loop), `prepare` (decode and plan a batch: its hot path), `checkpoint` (commit
a batch in the exactly-once order) and `dead_letters` (produce what a batch refuses). Only modules in this package
import confluent_kafka.
"""
