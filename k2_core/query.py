"""The read path: Iceberg plans which files to read, DuckDB reads them.

pyiceberg alone would decode every planned file into Arrow before filtering, sorting and limiting in Python;
DuckDB pushes the same WHERE/ORDER BY/LIMIT into the Parquet reader. Iceberg still does the planning because
only it knows which files belong to the current snapshot and can prune them by day partition and column stats.
When DuckDB cannot read the planned files faithfully (delete files to apply, or a non-local warehouse this
process has no DuckDB credentials for) the engine falls back to pyiceberg's own reader and uses DuckDB only
for the filter/sort/limit.

Every function returns a `pyarrow.Table` in the Iceberg table's Arrow schema, decimals kept as decimals, so a
researcher can call `get_trades(...)` directly and `.to_pandas()` it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThan,
)
from pyiceberg.table import Table
from sqlalchemy.exc import SQLAlchemyError

from k2_core.catalog import ensure_tables, open_catalog
from k2_core.settings import ApiSettings, CatalogSettings, Settings
from k2_core.tables import ALL_TABLES, GAPS, MARKET_TABLES, TableDef
from k2_core.topics import Kind, TopicLayout
from k2_core.validation import (
    MarketQuery,
    TimeInput,
    TimeRange,
    validate_exchange,
    validate_gap_status,
    validate_market_query,
    validate_symbol,
)

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = CatalogSettings().namespace
_API_DEFAULTS = ApiSettings()
_TIME_COLUMN = "exchange_timestamp"
# The failures that mean "the catalog (or the warehouse behind it) cannot be read", as opposed to a bug.
_CATALOG_FAILURES = (SQLAlchemyError, OSError, NoSuchTableError, NoSuchNamespaceError)


@dataclass(frozen=True)
class ScanPlan:
    """What Iceberg decided to read for one query; exposed so tests and operators can see the pruning."""

    table: str
    snapshot_id: int | None
    data_files: tuple[str, ...]
    delete_files: int

    @property
    def local_paths(self) -> list[str] | None:
        """The data files as paths DuckDB can open, or None when DuckDB must not read them directly."""
        if self.delete_files:
            return None
        paths = [_local_path(uri) for uri in self.data_files]
        return None if any(p is None for p in paths) else [p for p in paths if p is not None]


@dataclass(frozen=True)
class CatalogHealth:
    """Whether the catalog answers, and each table's current snapshot (None = created but never written)."""

    reachable: bool
    snapshots: dict[str, int | None]
    error: str | None = None


def market_filter(symbol: str, exchange: str, window: TimeRange) -> BooleanExpression:
    """The Iceberg filter for a trades/quotes query: the time range prunes day partitions, the equalities prune
    files by their symbol/exchange min-max stats."""
    return And(
        GreaterThanOrEqual(term=_TIME_COLUMN, value=window.start.isoformat()),
        LessThan(term=_TIME_COLUMN, value=window.end.isoformat()),
        EqualTo(term="symbol", value=symbol),
        EqualTo(term="exchange", value=exchange),
    )


class QueryEngine:
    """Reads K2's Iceberg tables. Safe to share between threads: every call loads the table afresh (so it sees
    the latest commit) and opens its own DuckDB connection (a connection is not safe for concurrent use)."""

    def __init__(
        self,
        catalog: Catalog,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        exchanges: Collection[str] | None = None,
        default_limit: int = _API_DEFAULTS.default_limit,
        max_limit: int = _API_DEFAULTS.max_limit,
        direct_reads: bool = True,
        owns_catalog: bool = False,
    ) -> None:
        """`exchanges=None` accepts any well-formed exchange name (a bare catalog has no topic layout to check
        against). `direct_reads=False` always reads through pyiceberg, the path taken anyway for delete files or
        remote storage; it exists to cross-check DuckDB's reading against pyiceberg's. `owns_catalog` makes
        `close()` release the catalog's connections."""
        self.catalog = catalog
        self.namespace = namespace
        self.exchanges = frozenset(exchanges) if exchanges is not None else None
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.direct_reads = direct_reads
        self._owns_catalog = owns_catalog

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryEngine:
        """Open the configured catalog, create missing tables (a fresh install then answers with empty results
        rather than errors) and take the exchange list and limits from settings."""
        catalog = open_catalog(settings)
        try:
            ensure_tables(catalog, settings.catalog.namespace)
            layout = TopicLayout.load(settings.kafka.topics_file)
        except BaseException:
            catalog.close()
            raise
        return cls(
            catalog,
            settings.catalog.namespace,
            exchanges=layout.exchanges,
            default_limit=settings.api.default_limit,
            max_limit=settings.api.max_limit,
            owns_catalog=True,
        )

    def close(self) -> None:
        if self._owns_catalog:
            self.catalog.close()

    def __enter__(self) -> QueryEngine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- queries -------------------------------------------------------------------------------------------

    def market_query(
        self,
        symbol: str,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
    ) -> MarketQuery:
        """Validate a trades/quotes request against this engine's exchanges and limits, filling defaults
        (end = now, start = end - 1 day, limit = default_limit). Raises `QueryError`."""
        return validate_market_query(
            symbol,
            exchange,
            start,
            end,
            limit,
            exchanges=self.exchanges,
            default_limit=self.default_limit,
            max_limit=self.max_limit,
        )

    def read(self, kind: Kind, query: MarketQuery) -> pa.Table:
        """Rows of one validated trades/quotes query, in table sort order, at most `query.limit` of them."""
        table_def = MARKET_TABLES[kind]
        where = [
            '"symbol" = $symbol',
            '"exchange" = $exchange',
            f'"{_TIME_COLUMN}" >= $start',
            f'"{_TIME_COLUMN}" < $end',
        ]
        params = {"symbol": query.symbol, "exchange": query.exchange, "start": query.start, "end": query.end}
        return self._read(
            table_def,
            market_filter(query.symbol, query.exchange, query.window),
            where,
            params,
            order_by=table_def.sort_keys,
            limit=query.limit,
        )

    def trades(
        self,
        symbol: str,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
    ) -> pa.Table:
        """Trades of one symbol on one exchange in `[start, end)`, oldest first."""
        return self.read("trades", self.market_query(symbol, exchange, start, end, limit))

    def quotes(
        self,
        symbol: str,
        exchange: str,
        start: TimeInput = None,
        end: TimeInput = None,
        limit: int | None = None,
    ) -> pa.Table:
        """Quotes of one symbol on one exchange in `[start, end)`, oldest first."""
        return self.read("quotes", self.market_query(symbol, exchange, start, end, limit))

    def gaps(self, exchange: str | None = None, symbol: str | None = None, status: str | None = None) -> pa.Table:
        """Sequence gaps, newest detection first, optionally narrowed. No limit: the table holds one row per gap,
        not per tick."""
        params: dict[str, str] = {}
        if exchange is not None:
            params["exchange"] = validate_exchange(exchange, self.exchanges)
        if symbol is not None:
            params["symbol"] = validate_symbol(symbol)
        if status is not None:
            params["status"] = validate_gap_status(status)
        row_filter: BooleanExpression = AlwaysTrue()
        for column, value in params.items():
            row_filter = And(row_filter, EqualTo(term=column, value=value))
        where = [f'"{column}" = ${column}' for column in params]
        return self._read(GAPS, row_filter, where, params, order_by=("detected_at DESC", "gap_id"), limit=None)

    # --- planning and health -------------------------------------------------------------------------------

    def load(self, table_def: TableDef) -> Table:
        """The table at its latest commit; loading per call is how a long-lived reader sees new snapshots."""
        return self.catalog.load_table((self.namespace, table_def.name))

    def plan(self, table_def: TableDef, row_filter: BooleanExpression | None = None) -> ScanPlan:
        """Ask Iceberg which data files of the current snapshot can hold rows matching `row_filter`."""
        return _plan(self.load(table_def), table_def, row_filter or AlwaysTrue())

    def health(self) -> CatalogHealth:
        """Load every table; a failure is reported, not raised, because the caller is a health probe."""
        try:
            snapshots = {t.name: self.load(t).metadata.current_snapshot_id for t in ALL_TABLES}
        except _CATALOG_FAILURES as exc:
            logger.warning("catalog unreachable", extra={"error": repr(exc)})
            # First line only: SQLAlchemy appends the SQL statement and a help link, no use to a probe.
            summary = (str(exc).splitlines() or [""])[0][:300]
            return CatalogHealth(reachable=False, snapshots={}, error=f"{type(exc).__name__}: {summary}")
        return CatalogHealth(reachable=True, snapshots=snapshots)

    # --- internals -----------------------------------------------------------------------------------------

    def _read(
        self,
        table_def: TableDef,
        row_filter: BooleanExpression,
        where: list[str],
        params: Mapping[str, Any],
        *,
        order_by: tuple[str, ...],
        limit: int | None,
    ) -> pa.Table:
        """Plan with Iceberg, read with DuckDB. `where` repeats `row_filter` in SQL because Iceberg's pruning is
        per file: a planned file still holds other symbols' and days' rows."""
        began = time.perf_counter()
        table = self.load(table_def)
        plan = _plan(table, table_def, row_filter)
        sql_params = dict(params)
        paths = plan.local_paths if self.direct_reads else None
        if not plan.data_files:
            read_path = "empty"
            result = table_def.arrow_schema.empty_table()
        elif paths is not None:
            read_path = "duckdb"
            sql_params["files"] = paths
            source = "read_parquet($files, hive_partitioning = false)"
            result = _select(table_def, source, where, order_by, limit, sql_params)
        else:
            # Delete files or remote storage: pyiceberg applies the deletes and has the storage credentials.
            read_path = "pyiceberg"
            scanned = table.scan(row_filter=row_filter).to_arrow()
            result = _select(table_def, "scanned", where, order_by, limit, sql_params, arrow_source=scanned)
        logger.info(
            "query",
            extra={
                "table": table_def.name,
                "snapshot_id": plan.snapshot_id,
                "filters": {k: str(v) for k, v in params.items()},
                "limit": limit,
                "planned_files": len(plan.data_files),
                "delete_files": plan.delete_files,
                "read_path": read_path,
                "rows": result.num_rows,
                "elapsed_ms": round((time.perf_counter() - began) * 1000, 2),
            },
        )
        return result


def _plan(table: Table, table_def: TableDef, row_filter: BooleanExpression) -> ScanPlan:
    snapshot_id = table.metadata.current_snapshot_id
    if snapshot_id is None:  # created but never written: nothing to plan
        return ScanPlan(table_def.name, None, (), 0)
    tasks = list(table.scan(row_filter=row_filter).plan_files())
    return ScanPlan(
        table=table_def.name,
        snapshot_id=snapshot_id,
        data_files=tuple(task.file.file_path for task in tasks),
        delete_files=sum(len(task.delete_files) for task in tasks),
    )


def _local_path(uri: str) -> str | None:
    """A file:// URI or bare path -> a path DuckDB opens; anything remote -> None. No unquoting: pyiceberg's
    local FileIO writes the URI's path verbatim, percent signs included."""
    parsed = urlparse(uri)
    if parsed.scheme == "":
        return uri
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return parsed.path
    return None


def _select(
    table_def: TableDef,
    source: str,
    where: list[str],
    order_by: tuple[str, ...],
    limit: int | None,
    params: dict[str, Any],
    *,
    arrow_source: pa.Table | None = None,
) -> pa.Table:
    columns = ", ".join(f'"{name}"' for name in table_def.arrow_schema.names)
    sql = f"SELECT {columns} FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if order_by:
        sql += " ORDER BY " + ", ".join(order_by)
    if limit is not None:
        sql += " LIMIT $limit"
        params = {**params, "limit": limit}
    with duckdb.connect() as con:
        con.sql("SET TimeZone = 'UTC'")  # timestamptz comes back labelled UTC, whatever the host's zone
        if arrow_source is not None:
            con.register("scanned", arrow_source)
        result = con.sql(sql, params=params).to_arrow_table()
    # DuckDB's Arrow types differ cosmetically (string vs large_string, nullability); one schema for every path.
    return result.cast(table_def.arrow_schema)


# --- functions for direct use ------------------------------------------------------------------------------

Source = QueryEngine | Catalog | Settings


def _run(source: Source, namespace: str, query: Callable[[QueryEngine], pa.Table]) -> pa.Table:
    """Run `query` on an engine for `source`, closing any catalog opened here. With `Settings`, the namespace
    comes from the settings."""
    if isinstance(source, QueryEngine):
        return query(source)
    engine = QueryEngine.from_settings(source) if isinstance(source, Settings) else QueryEngine(source, namespace)
    with engine:
        return query(engine)


def get_trades(
    source: Source,
    symbol: str,
    exchange: str,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    limit: int | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
) -> pa.Table:
    """Trades of `symbol` on `exchange` in `[start, end)` (default: the last day), oldest first.

    `source` is a `QueryEngine` (reuse it for many calls), a pyiceberg `Catalog`, or `Settings` (opens the
    catalog for this one call and checks `exchange` against the topic layout). Raises `QueryError` on bad input.
    """
    return _run(source, namespace, lambda engine: engine.trades(symbol, exchange, start, end, limit))


def get_quotes(
    source: Source,
    symbol: str,
    exchange: str,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    limit: int | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
) -> pa.Table:
    """Quotes of `symbol` on `exchange` in `[start, end)`; `source` as for `get_trades`."""
    return _run(source, namespace, lambda engine: engine.quotes(symbol, exchange, start, end, limit))


def get_gaps(
    source: Source,
    exchange: str | None = None,
    symbol: str | None = None,
    status: str | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
) -> pa.Table:
    """Sequence gaps, newest first, narrowed by any of exchange, symbol, status; `source` as for `get_trades`."""
    return _run(source, namespace, lambda engine: engine.gaps(exchange, symbol, status))
