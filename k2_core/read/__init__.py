"""Answering queries: the engine and the functions generated from it, input rules, routing between Iceberg and the
realtime tail, paging, bars (precomputed or computed), the as-of join of quotes, snapshot pinning, cursors, caching and
result export.
"""
