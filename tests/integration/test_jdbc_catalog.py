"""Trino and Spark read K2's tables through Iceberg's JDBC catalog on the same PostgreSQL (docs/engines.md): here the
catalog rows a real ingest leaves are checked with the SQL Java's `JdbcCatalog` runs (`JdbcUtil`'s statements,
written out in tests/support/jdbc_catalog.py), and K2 runs on catalog tables JdbcCatalog created first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy
from pyiceberg.table import StaticTable

from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.lake.offsets import OFFSETS_PROPERTY, decode_offsets
from k2_core.model.tables import TRADES
from k2_core.settings import Settings
from k2_stream.ingester import Ingester
from tests.support.databases import private_database
from tests.support.factories import feed_trade
from tests.support.jdbc_catalog import namespace_like, sql
from tests.support.kafka import produce
from tests.support.lake import SEED_DAY, seed, table_rows
from tests.support.waits import wait_for

TRADES_SENT = 60


def run(engine: sqlalchemy.Engine, statement: str, *args: str) -> list[dict[str, Any]]:
    """One of JdbcCatalog's statements, with its parameters bound in order as JDBC's `setString(n, ...)` does."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.exec_driver_sql(sql(statement), args).mappings()]


def columns(engine: sqlalchemy.Engine, table: str) -> dict[str, tuple[str, int | None, str]]:
    """name -> (type, length, nullable) as PostgreSQL describes the column."""
    with engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text(
                "SELECT column_name, data_type, character_maximum_length, is_nullable "
                "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = :t"
            ),
            {"t": table},
        )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


def primary_key(engine: sqlalchemy.Engine, table: str) -> list[str]:
    return list(sqlalchemy.inspect(engine).get_pk_constraint(table)["constrained_columns"])


def test_jdbc_catalog_sql_finds_what_k2_ingested(
    broker: str,
    make_settings: Callable[..., Settings],
    running_ingester: Callable[..., Ingester],
    private_postgres: str,
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    settings.catalog.uri = private_postgres
    produce(settings, [("trades", feed_trade("BHP", s)) for s in range(1, TRADES_SENT + 1)])
    running_ingester(settings)
    wait_for(lambda: len(table_rows(settings, "trades")) == TRADES_SENT)

    name, namespace = settings.catalog.name, settings.catalog.namespace
    catalog = open_catalog(settings)
    trades = catalog.load_table((namespace, "trades"))
    engine = sqlalchemy.create_engine(private_postgres)
    try:
        # JdbcCatalog picks its V1 statements when `iceberg_tables` has the `iceberg_type` column (pyiceberg adds it).
        assert "iceberg_type" in columns(engine, "iceberg_tables")

        # loadTable: one row, pointing at the metadata file of the current snapshot, in both schema versions.
        found = run(engine, "V1_GET_TABLE_SQL", name, namespace, "trades")
        assert [r["metadata_location"] for r in found] == [trades.metadata_location]
        assert run(engine, "V0_GET_TABLE_SQL", name, namespace, "trades") == found
        assert found[0]["iceberg_type"] in (None, "TABLE")
        assert found[0]["previous_metadata_location"] == trades.metadata.metadata_log[-1].metadata_file

        # What an engine then reads from that file alone: every trade once, and the ingester's exactly-once offsets.
        static = StaticTable.from_metadata(found[0]["metadata_location"])
        assert static.current_snapshot() == trades.current_snapshot()
        seqs = sorted(r["exchange_sequence_number"] for r in static.scan().to_arrow().to_pylist())
        assert seqs == list(range(1, TRADES_SENT + 1))
        summary = static.current_snapshot().summary  # type: ignore[union-attr]
        assert decode_offsets(summary.additional_properties[OFFSETS_PROPERTY])  # type: ignore[union-attr]

        # listTables and listNamespaces see K2's tables and namespace; another catalog name sees none of them.
        listed = run(engine, "V1_LIST_TABLE_SQL", name, namespace)
        assert {r["table_name"] for r in listed} == {t[-1] for t in catalog.list_tables(namespace)}
        assert {r["iceberg_type"] for r in listed} <= {None, "TABLE"}
        namespaces = {r["table_namespace"] for r in run(engine, "LIST_ALL_NAMESPACES_SQL", name)}
        namespaces |= {r["namespace"] for r in run(engine, "LIST_ALL_PROPERTY_NAMESPACES_SQL", name)}
        assert namespaces == {namespace}
        assert run(engine, "GET_NAMESPACE_SQL", name, namespace, namespace_like(namespace))  # namespaceExists
        properties = run(engine, "GET_ALL_NAMESPACE_PROPERTIES_SQL", name, namespace)
        assert {(p["property_key"], p["property_value"]) for p in properties} >= {("exists", "true")}
        assert run(engine, "V1_GET_TABLE_SQL", "not-" + name, namespace, "trades") == []

        # A Java writer's optimistic commit matches K2's row exactly when it read the current location (rolled back).
        with engine.connect() as conn, conn.begin() as txn:
            commit = sql("V1_DO_COMMIT_TABLE_SQL")
            current = trades.metadata_location
            stale = found[0]["previous_metadata_location"]
            assert conn.exec_driver_sql(commit, ("new.json", stale, name, namespace, "trades", stale)).rowcount == 0
            assert conn.exec_driver_sql(commit, ("new.json", current, name, namespace, "trades", current)).rowcount == 1
            txn.rollback()
        assert run(engine, "V1_GET_TABLE_SQL", name, namespace, "trades") == found
    finally:
        engine.dispose()
        catalog.close()


def test_k2_runs_on_catalog_tables_jdbc_catalog_created(
    make_settings: Callable[..., Settings], postgres_uri: str, private_postgres: str
) -> None:
    """Trino or Spark may reach the database first: JdbcCatalog's own DDL (V0 tables, then its V1 upgrade), and K2
    writes and reads on them. Its tables also have the columns, types and keys K2's (pyiceberg's) have."""
    with private_database(postgres_uri) as jdbc_first:
        jdbc_engine = sqlalchemy.create_engine(jdbc_first)
        try:
            with jdbc_engine.begin() as conn:
                for statement in (
                    "V0_CREATE_CATALOG_SQL",
                    "V1_UPDATE_CATALOG_SQL",
                    "CREATE_NAMESPACE_PROPERTIES_TABLE_SQL",
                ):
                    conn.exec_driver_sql(sql(statement))
            settings = make_settings()
            settings.catalog.uri = jdbc_first
            seed(settings)
            catalog = open_catalog(settings)
            try:
                trades = catalog.load_table((settings.catalog.namespace, "trades"))
                assert all(
                    r["exchange_timestamp"].date() == SEED_DAY.date() for r in trades.scan().to_arrow().to_pylist()
                )
                found = run(
                    jdbc_engine, "V1_GET_TABLE_SQL", settings.catalog.name, settings.catalog.namespace, "trades"
                )
                assert [r["metadata_location"] for r in found] == [trades.metadata_location]
            finally:
                catalog.close()

            # The same columns and keys on K2's own database (pyiceberg created the tables there).
            k2_settings = make_settings()
            k2_settings.catalog.uri = private_postgres
            k2_catalog = open_catalog(k2_settings)
            ensure_tables(k2_catalog, k2_settings.catalog.namespace)["trades"].append(TRADES.to_arrow([]))
            k2_catalog.close()
            k2_engine = sqlalchemy.create_engine(private_postgres)
            try:
                for table in ("iceberg_tables", "iceberg_namespace_properties"):
                    jdbc_columns, k2_columns = columns(jdbc_engine, table), columns(k2_engine, table)
                    assert len(jdbc_columns) >= 4, jdbc_columns
                    differ = {
                        c for c in jdbc_columns.keys() | k2_columns.keys() if k2_columns.get(c) != jdbc_columns.get(c)
                    }
                    # The one difference: pyiceberg makes a namespace property's value NOT NULL, which Java never
                    # breaks (Iceberg's namespace properties are a map without null values).
                    assert differ == ({"property_value"} if table == "iceberg_namespace_properties" else set())
                    for c in differ:
                        assert k2_columns[c][:2] == jdbc_columns[c][:2]
                        assert (k2_columns[c][2], jdbc_columns[c][2]) == ("NO", "YES")
                    assert primary_key(k2_engine, table) == primary_key(jdbc_engine, table)
            finally:
                k2_engine.dispose()
        finally:
            jdbc_engine.dispose()
