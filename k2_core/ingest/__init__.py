"""The rules a batch goes through on its way in: sequence tracking (sessions, duplicates, gaps, late fills), dedup state
built from the tables and kept right (`state`), batch planning (`plan`), gap records, the degradation cascade, where a
partition resumes (`resume`), what a dead letter carries (`dead_letters`) and fenced micro-batch appends. The Kafka
side of the same path (the consumer loop, the checkpoint that commits in order) is `k2_stream`.
"""
