"""Dagster definitions, one module per kind: resources, assets, checks, jobs, sensors, schedules."""
