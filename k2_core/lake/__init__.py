"""Iceberg storage itself: opening the catalog, writing data files and committing exactly those, Kafka offsets in
snapshot summaries, optimistic-commit retries, what each snapshot changed, and K2's own tables in the catalog database.
"""
