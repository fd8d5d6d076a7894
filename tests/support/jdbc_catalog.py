"""The SQL Iceberg's Java `JdbcCatalog` (the catalog Trino's and Spark's `type=jdbc` use) runs against its two tables,
`iceberg_tables` and `iceberg_namespace_properties`: the statements of `org.apache.iceberg.jdbc.JdbcUtil`
(apache/iceberg, core/src/main/java/org/apache/iceberg/jdbc/JdbcUtil.java, read at commit 7f879b1, 2026-08-21),
written out here as the contract K2's catalog rows must meet, so `tests/integration/test_jdbc_catalog.py` runs the
lookups, listings, optimistic commit and DDL a Java engine runs. To follow a newer Iceberg, compare with that file."""

from __future__ import annotations

_V1_TABLE = "(iceberg_type = 'TABLE' OR iceberg_type IS NULL)"

STATEMENTS: dict[str, str] = {
    "V1_GET_TABLE_SQL": "SELECT * FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ? "
    f"AND table_name = ? AND {_V1_TABLE}",
    "V0_GET_TABLE_SQL": "SELECT * FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ? "
    "AND table_name = ?",
    "V1_LIST_TABLE_SQL": f"SELECT * FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ? AND {_V1_TABLE}",
    "LIST_ALL_NAMESPACES_SQL": "SELECT DISTINCT table_namespace FROM iceberg_tables WHERE catalog_name = ?",
    "LIST_ALL_PROPERTY_NAMESPACES_SQL": "SELECT DISTINCT namespace FROM iceberg_namespace_properties "
    "WHERE catalog_name = ?",
    "GET_NAMESPACE_SQL": "SELECT table_namespace FROM iceberg_tables WHERE catalog_name = ? "
    "AND (table_namespace = ? OR table_namespace LIKE ? ESCAPE '!') LIMIT 1",
    "GET_ALL_NAMESPACE_PROPERTIES_SQL": "SELECT * FROM iceberg_namespace_properties WHERE catalog_name = ? "
    "AND namespace = ?",
    "V1_DO_COMMIT_TABLE_SQL": "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? "
    f"WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ? AND {_V1_TABLE}",
    "V0_CREATE_CATALOG_SQL": "CREATE TABLE iceberg_tables(catalog_name VARCHAR(255) NOT NULL,"
    "table_namespace VARCHAR(255) NOT NULL,table_name VARCHAR(255) NOT NULL,metadata_location VARCHAR(1000),"
    "previous_metadata_location VARCHAR(1000),PRIMARY KEY (catalog_name, table_namespace, table_name))",
    "V1_UPDATE_CATALOG_SQL": "ALTER TABLE iceberg_tables ADD COLUMN iceberg_type VARCHAR(5)",
    "CREATE_NAMESPACE_PROPERTIES_TABLE_SQL": "CREATE TABLE iceberg_namespace_properties("
    "catalog_name VARCHAR(255) NOT NULL,namespace VARCHAR(255) NOT NULL,property_key VARCHAR(255),"
    "property_value VARCHAR(1000),PRIMARY KEY (catalog_name, namespace, property_key))",
}


def sql(name: str) -> str:
    """The statement `name` with JDBC's `?` parameters as psycopg's `%s` (none has a `?` or a `%` in a literal)."""
    text = STATEMENTS[name]
    assert "%" not in text
    return text.replace("?", "%s")


def namespace_like(namespace: str) -> str:
    """JdbcUtil.namespaceExists's LIKE argument: the namespace, escaped with `!`, then `.%`."""
    return namespace.replace("!", "!!").replace("_", "!_").replace("%", "!%") + ".%"
