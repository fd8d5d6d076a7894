"""K2 core: the one place where schemas, tables, catalog access and query logic live.

Layering (kept on purpose): k2_core imports no Kafka client, no Dagster and no FastAPI.
Only `k2_core.lake.catalog` opens catalogs; the apps (k2_stream, k2_api, k2_dagster, k2_cli) stay thin.
"""
