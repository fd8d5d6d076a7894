-- Run once by the postgres image on an empty data volume (mounted into /docker-entrypoint-initdb.d/):
-- Dagster's run storage gets its own database beside K2's Iceberg catalog (database k2).
CREATE DATABASE dagster;
