"""Dagster resources, all built from the one `k2_core.settings.Settings` tree.

Settings are read from the `K2_*` environment when a run, sensor or schedule starts (never at import), so the
webserver, the daemon and every run see what `k2 run` or the shell configured. Tests and embedding code pin a
`Settings` object instead (`K2Settings.pinned(settings)`).
"""

from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from k2_core.exceptions import K2Error
from k2_core.lake.catalog import ensure_table, open_catalog
from k2_core.model.tables import MARKET_TABLES, TableDef
from k2_core.model.topics import Kind
from k2_core.settings import REVEAL_SECRETS, Settings
from k2_core.upkeep.backfill import SourceResolver


class K2Settings(ConfigurableResource):
    """K2 settings: the `K2_*` environment of the process, unless pinned to a serialised `Settings`."""

    pinned_json: str = ""

    @classmethod
    def pinned(cls, settings: Settings) -> "K2Settings":
        """Settings carried whole, secrets in clear (for tests and embedding code; a deployment reads `K2_*`)."""
        return cls(pinned_json=settings.model_dump_json(context={REVEAL_SECRETS: True}))

    def get(self) -> Settings:
        if self.pinned_json:
            return Settings.model_validate_json(self.pinned_json)
        return Settings()


class IcebergResource(ConfigurableResource):
    """The K2 Iceberg catalog; tables are created on first use like everywhere else in K2."""

    k2: K2Settings
    _catalog: Catalog | None = PrivateAttr(default=None)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if isinstance(self._catalog, SqlCatalog):
            self._catalog.engine.dispose()
        self._catalog = None

    @property
    def settings(self) -> Settings:
        return self.k2.get()

    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.settings)
        return self._catalog

    def table(self, table_def: TableDef) -> Table:
        return ensure_table(self.catalog(), self.settings.catalog.namespace, table_def)

    def market(self, kind: Kind) -> Table:
        return self.table(MARKET_TABLES[kind])

    def all_tables(self) -> list[Table]:
        """Every table in the K2 namespace (the market tables, gaps, bar tables, anything added later)."""
        catalog = self.catalog()
        namespace = self.settings.catalog.namespace
        return [catalog.load_table(identifier) for identifier in catalog.list_tables(namespace)]


class KafkaResource(ConfigurableResource):
    """The Kafka cluster the ingester consumes from (used to tell a stalled feed from an unreachable broker)."""

    k2: K2Settings

    @property
    def bootstrap_servers(self) -> str:
        return self.k2.get().kafka.bootstrap_servers

    def cluster_id(self, timeout: float = 3.0) -> str | None:
        """The cluster id, or None when the broker cannot be reached within `timeout` seconds."""
        from k2_stream.admin import cluster_id

        try:
            return cluster_id(self.bootstrap_servers, timeout=timeout)
        except K2Error:
            return None


class RecoveryResource(ConfigurableResource):
    """Where gap backfill asks for missing records: recorded files and the simulators' recovery stores."""

    k2: K2Settings

    def resolver(self) -> SourceResolver:
        from k2_dagster.recovery import resolver

        return resolver(self.k2.get())


def resources(k2: K2Settings | None = None) -> dict[str, Any]:
    """The resource set of the K2 code location (settings from the environment unless `k2` is given)."""
    k2 = k2 or K2Settings()
    return {
        "k2": k2,
        "iceberg": IcebergResource(k2=k2),
        "kafka": KafkaResource(k2=k2),
        "recovery": RecoveryResource(k2=k2),
    }
