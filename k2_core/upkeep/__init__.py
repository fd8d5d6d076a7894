"""Jobs that keep the tables healthy after they are written: compaction, OHLCV pre-aggregation, gap backfill, snapshot
expiry and retention, data-quality checks.
"""
