"""K2 stream: the long-running ingester, the feed producers (simulators, recorded-file replay) and Kafka plumbing.

Only modules in this package import confluent_kafka.
"""
