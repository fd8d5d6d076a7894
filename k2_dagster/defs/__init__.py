"""Dagster definitions by what they maintain, each module holding its assets, checks, jobs, sensors and schedules:
`market` (the ingester's trades and quotes, and what every domain shares), `bars` (OHLCV), `gaps` (backfill),
`upkeep` (compaction, snapshot expiry and orphan files), `quality` (checks). `resources` serves them all."""
