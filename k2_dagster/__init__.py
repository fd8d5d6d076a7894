"""K2 on Dagster: lineage of the Iceberg tables, OHLCV pre-aggregation, compaction, gap backfill, snapshot expiry and
data-quality checks. The logic lives in `k2_core`; this package only wires it into assets, jobs, sensors and
schedules. `launcher` builds the webserver and daemon processes `k2 run` starts."""
