"""Answering queries: the engine, input rules, snapshot pinning, DuckDB scans, paging cursors, caching, the realtime
tail, precomputed bars and result export.
"""
