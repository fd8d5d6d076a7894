"""Iceberg storage itself: opening the catalog, writing data files and committing exactly those, reading what a
snapshot holds (Iceberg plans, DuckDB reads; the gaps table's one reader), Kafka offsets in snapshot summaries,
optimistic-commit retries, what each snapshot changed, and K2's own tables in the catalog database.
"""
