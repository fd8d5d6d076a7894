"""Read-only SQL over K2's tables: `POST /v1/sql` and `k2 sql` are thin shells over `run_sql`.

A query may read the five tables by their short names (`trades`, `quotes`, `ohlcv_1m`, `ohlcv_1d`, `sequence_gaps`)
and nothing else. Two independent walls keep it there, so that a miss in one is caught by the other:

1. `validate_sql` parses the text with sqlglot (DuckDB dialect) and allows one query (SELECT, WITH, UNION ...) whose
   table references are only those five names (or the query's own CTEs) and which calls no table function and no
   function that reads outside the tables (`read_csv`, `glob`, `getenv`, `duckdb_*` ...). Anything else (COPY,
   ATTACH, SET, PRAGMA, INSTALL, DDL, DML, several statements, `'file.csv'` as a table, another schema or catalog)
   is a `QueryError` naming why, before any table is opened.
2. The query runs on a DuckDB database of its own (so its `memory_limit` is its own), where each table is a view
   pinned to one snapshot and narrowed to the exchanges the caller's scopes allow, and then the configuration is
   closed: `allowed_paths` lists exactly the snapshot's data files, `enable_external_access=false` refuses every
   other file, URL, ATTACH and extension, and `lock_configuration=true` refuses the SET that would undo it. That
   database lives in a worker process (`k2_core.read.sqlworker`) whose memory is capped by an rlimit and which is
   killed once the time budget (plus a grace) is spent, so the budgets hold even where DuckDB's own do not reach.
   The worker keeps the database of its last answer for a next query over exactly the same views (the same
   snapshots and exchanges, so the same rows and files): a burst of queries skips creating one each time.

Scopes (`read:trades:<exchange>`, ...) are the API's: it passes `readable`, what the caller may read of each scope
resource (`k2_core.access.auth.readable_exchanges`); `readable=None` (the CLI, a loopback client without credentials)
reads everything, as `k2 query` does. Bars are computed from trades, so `ohlcv_*` need the trades scope.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import lru_cache

import duckdb
import pyarrow as pa
import sqlglot
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, In
from pyiceberg.table import Table
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from k2_core import duck
from k2_core.exceptions import QueryError, ScopeError
from k2_core.lake.scan import projection_sql, read_arrow_schema, read_schema
from k2_core.model.tables import GAPS, OHLCV_1D, OHLCV_1M, QUOTES, TRADES, TableDef
from k2_core.read.engine import QueryEngine
from k2_core.read.sqlworker import Job, Source, SqlWorkerPool, shared_pool
from k2_core.settings import Settings, parse_bytes

SQL_TABLES: dict[str, TableDef] = {t.name: t for t in (TRADES, QUOTES, OHLCV_1M, OHLCV_1D, GAPS)}
# The scope resource each table is read under: bars are computed from trades, so they need the trades scope.
RESOURCES: dict[str, str] = {
    "trades": "trades",
    "quotes": "quotes",
    "ohlcv_1m": "trades",
    "ohlcv_1d": "trades",
    "sequence_gaps": "gaps",
}
# `as_of_snapshot` names a snapshot of one of these (snapshot ids are unique across tables); the others stay current.
TRAVEL_TABLES = ("trades", "quotes")
MAX_SQL_CHARS = 20_000
_NAMES = ", ".join(SQL_TABLES)
# Statement and clause kinds that change state or reach outside the tables, wherever they appear in the tree.
_FORBIDDEN_NODES: tuple[type[exp.Expression], ...] = tuple(
    kind
    for kind in (
        getattr(exp, name, None)
        for name in (
            "Into", "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "Command", "Copy", "Set",
            "Pragma", "Attach", "Detach", "Install", "Use", "Describe", "Summarize", "Export", "Transaction",
            "Commit", "Rollback", "LoadData", "Cache", "Uncache", "Refresh", "TruncateTable",
        )
    )
    if isinstance(kind, type)
)  # fmt: skip
# Functions that read or reveal what lies outside the five tables, beyond DuckDB's table functions.
_FORBIDDEN_FUNCTIONS = frozenset({"getenv", "current_setting", "read_text", "read_blob", "query", "query_table"})
_FORBIDDEN_PREFIXES = ("read_", "duckdb_", "pragma_", "parquet_", "iceberg_", "sniff_", "glob", "which_secret")


@dataclass(frozen=True)
class SqlLimits:
    """One query's budgets: time (then the connection is interrupted, and its worker killed a grace later), memory
    (DuckDB `memory_limit` of its own database, and the worker's RLIMIT_DATA: that plus `worker_overhead_mb`),
    threads, and the most rows an answer may hold (a bigger one is refused, not cut short quietly); and the pool
    it runs in: `workers` processes, a free one awaited at most `queue_seconds`."""

    timeout_seconds: float = 30.0
    memory_limit: str = "1GB"
    threads: int = 2
    max_rows: int = 100_000
    workers: int = 2
    queue_seconds: float = 5.0
    worker_overhead_mb: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> SqlLimits:
        query = settings.query
        return cls(
            query.sql_timeout_seconds,
            query.sql_memory_limit,
            query.sql_threads,
            query.sql_max_rows,
            query.sql_workers,
            query.sql_queue_seconds,
            query.sql_worker_overhead_mb,
        )

    def data_limit_bytes(self) -> int:
        """The worker's RLIMIT_DATA while the query runs, above what it holds at rest: the DuckDB budget plus room
        for the connection, its threads, the answer and its IPC copy."""
        try:
            budget = parse_bytes(self.memory_limit)
        except ValueError as exc:
            raise QueryError(f"sql: K2_QUERY_SQL_MEMORY_LIMIT: {exc}") from None
        return budget + self.worker_overhead_mb * 1024 * 1024


@dataclass(frozen=True)
class SqlResult:
    """The rows, the snapshot each table read was pinned to (None: the table has none) and, per table, the
    exchanges it was narrowed to (None: all)."""

    table: pa.Table
    snapshots: dict[str, int | None]
    exchanges: dict[str, list[str] | None]
    elapsed_ms: float


# --- validation ------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _table_functions() -> frozenset[str]:
    """DuckDB's table functions that are not also scalar or aggregate ones (`range` is both), from its own catalog,
    so a function added by a DuckDB upgrade is refused without a change here."""
    with duckdb.connect() as con:
        rows = con.execute("SELECT function_name, function_type FROM duckdb_functions()").fetchall()
    table = {name.lower() for name, kind in rows if kind in ("table", "table_macro")}
    other = {name.lower() for name, kind in rows if kind not in ("table", "table_macro")}
    return frozenset(table - other)


@lru_cache(maxsize=1)
def _catalog_views() -> tuple[str, ...]:
    """DuckDB's own views that an unqualified name reaches (`duckdb_views`, `pg_settings`, `sqlite_master` ...),
    from its catalog: they show the sandbox's view definitions (data file paths) and settings."""
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT DISTINCT view_name FROM duckdb_views() WHERE internal AND schema_name IN ('main', 'pg_catalog') "
            "ORDER BY 1"
        ).fetchall()
    return tuple(name for (name,) in rows if name.lower() not in SQL_TABLES)


def _function_name(node: exp.Func) -> str:
    return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def _cte_names_in_scope(node: exp.Expression) -> set[str]:
    """The CTE names a table reference at `node` can mean, as DuckDB resolves them: every CTE of a WITH whose query
    holds `node`, but from inside a CTE's own body only the CTEs defined before it (and itself under WITH
    RECURSIVE, in the recursive branch of its UNION). A name the reference cannot mean falls through to DuckDB's
    catalog, where `duckdb_views`, `pg_settings` and the like live: `WITH pg_settings AS (SELECT * FROM
    pg_settings) ...` reads the settings, and so does `WITH RECURSIVE` when the body is not a UNION or the
    reference is in its first branch."""
    names: set[str] = set()
    child: exp.Expr = node
    parent = node.parent
    while parent is not None:
        if isinstance(parent, exp.With) and isinstance(child, exp.CTE):
            for cte in parent.expressions:
                if cte is child:
                    if parent.args.get("recursive") and _in_recursive_part(node, cte):
                        names.add(cte.alias_or_name.lower())
                    break
                names.add(cte.alias_or_name.lower())
        else:
            found = parent.args.get("with") or parent.args.get("with_")
            if isinstance(found, exp.With) and found is not child:
                names.update(cte.alias_or_name.lower() for cte in found.expressions)
        child, parent = parent, parent.parent
    return names


def _in_recursive_part(node: exp.Expression, cte: exp.CTE) -> bool:
    """Whether `node` lies in the recursive (right-hand) branch of `cte`'s UNION, the one place DuckDB resolves a
    CTE's own name to itself."""
    body = cte.this
    if not isinstance(body, exp.Union):
        return False
    branch = body.args.get("expression")
    current: exp.Expr | None = node
    while current is not None and current is not body:
        if current is branch:
            return True
        current = current.parent
    return False


def _short(node: exp.Expression) -> str:
    text = node.sql(dialect="duckdb")
    return text if len(text) <= 80 else text[:77] + "..."


def validate_sql(sql: str) -> frozenset[str]:
    """The K2 tables `sql` reads, or a `QueryError` saying why it may not run (see the module's docstring)."""
    try:
        return _validate(sql)
    except RecursionError:  # sqlglot parses and prints recursively: `((((...))))` thousands deep
        raise QueryError("sql: nested too deeply to check (parentheses, subqueries or operators)") from None


def _validate(sql: str) -> frozenset[str]:
    if not sql.strip():
        raise QueryError("sql: empty query")
    if len(sql) > MAX_SQL_CHARS:
        raise QueryError(f"sql: longer than {MAX_SQL_CHARS} characters")
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError) as exc:
        raise QueryError(f"sql: cannot parse: {str(exc).splitlines()[0][:300]}") from None
    if len(statements) != 1:
        raise QueryError(f"sql: exactly one statement is allowed; got {len(statements)}")
    root = statements[0]
    if not isinstance(root, exp.Query):
        kind = root.name.upper() if isinstance(root, exp.Command) else root.key.upper()
        raise QueryError(f"sql: only a read-only SELECT query is allowed; got {kind}")
    for node in root.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise QueryError(f"sql: {node.key.upper()} is not allowed: only a read-only SELECT query is")
    tables: set[str] = set()
    for ref in root.find_all(exp.Table):
        if not isinstance(ref.this, exp.Identifier):
            raise QueryError(f"sql: table functions are not allowed ({_short(ref.this)}); read {_NAMES}")
        if ref.args.get("db") or ref.args.get("catalog"):
            raise QueryError(f"sql: {_short(ref)} is not allowed: only the tables {_NAMES} may be read, unqualified")
        name = ref.name.lower()
        if name in SQL_TABLES:
            tables.add(name)
        elif name not in _cte_names_in_scope(ref):
            raise QueryError(f"sql: unknown table {ref.name!r}: only the tables {_NAMES} may be read")
    forbidden = _table_functions() | _FORBIDDEN_FUNCTIONS
    for call in root.find_all(exp.Func):
        name = _function_name(call)
        if name in forbidden or name.startswith(_FORBIDDEN_PREFIXES):
            raise QueryError(f"sql: function {name} is not allowed: it reads outside the tables")
    return frozenset(tables)


# --- scopes ----------------------------------------------------------------------------------------------------------


Readable = Callable[[str], frozenset[str] | None]


def allowed_exchanges(readable: Readable, table: str) -> frozenset[str] | None:
    """The exchanges a query may read of `table` (None: all), given what the caller may read of each scope resource
    (`k2_core.access.auth.readable_exchanges`); a `ScopeError` naming the scope when none. `read:trades:asx` narrows
    `trades`, `ohlcv_1m` and `ohlcv_1d` to asx."""
    resource = RESOURCES[table]
    exchanges = readable(resource)
    if exchanges is not None and not exchanges:
        if resource == "gaps":
            raise ScopeError(f"missing scope read:gaps for table {table} in /v1/sql", "read:gaps")
        raise ScopeError(
            f"missing scope read:{resource}:<exchange> for table {table} in /v1/sql (any exchange; rows are "
            "narrowed to the exchanges granted)",
            f"read:{resource}:*",
        )
    return exchanges


# --- execution -------------------------------------------------------------------------------------------------------


def _pin(
    engine: QueryEngine, names: Collection[str], as_of_snapshot: int | None
) -> dict[str, tuple[Table | None, int | None]]:
    """Each table read with the snapshot it is pinned to: the current one, or `as_of_snapshot` for the one of
    trades/quotes it belongs to."""
    loaded: dict[str, Table | None] = {}
    for name in {*names, *(TRAVEL_TABLES if as_of_snapshot is not None else ())}:
        try:
            loaded[name] = engine.sources.loader.load(name)
        except NoSuchTableError:
            loaded[name] = None
    pinned = {name: (loaded[name], _current(loaded[name])) for name in names}
    if as_of_snapshot is not None:
        owner = next(
            (
                name
                for name in TRAVEL_TABLES
                if (table := loaded[name]) is not None and table.metadata.snapshot_by_id(as_of_snapshot) is not None
            ),
            None,
        )
        if owner is None:
            raise QueryError(f"as_of_snapshot: {as_of_snapshot} is not a snapshot of trades or quotes")
        if owner in pinned:
            pinned[owner] = (loaded[owner], as_of_snapshot)
    return pinned


def _current(table: Table | None) -> int | None:
    return table.metadata.current_snapshot_id if table is not None else None


def _source(
    engine: QueryEngine, name: str, table: Table | None, snapshot_id: int | None, exchanges: frozenset[str] | None
) -> Source:
    """How the worker makes `name` the table's rows at `snapshot_id`, narrowed to `exchanges`: a view over the data
    files DuckDB must be allowed to open, or the rows themselves (none, or read by pyiceberg) as Arrow IPC."""
    table_def = SQL_TABLES[name]
    if table is None or snapshot_id is None:
        return Source(name, rows=_ipc(table_def.arrow_schema.empty_table()))
    row_filter: BooleanExpression = AlwaysTrue() if exchanges is None else In(term="exchange", literals=set(exchanges))
    plan = engine.sources.plans.plan(table, table_def, row_filter, snapshot_id)
    if not plan.data_files:
        return Source(name, rows=_ipc(read_arrow_schema(table, snapshot_id).empty_table()))
    paths = plan.local_paths if engine.sources.direct_reads else None
    select = projection_sql(read_schema(table, snapshot_id), paths) if paths is not None else None
    if select is not None and paths is not None:
        # Iceberg prunes per file: a planned file may still hold other exchanges' rows, so the view filters too.
        where = "" if exchanges is None else f" WHERE exchange IN ({', '.join(map(duck.sql_text, sorted(exchanges)))})"
        return Source(name, select=f"SELECT * FROM ({select}){where}", paths=tuple(paths))
    # Delete files or remote storage: pyiceberg reads (and filters rows by `row_filter`).
    return Source(name, rows=_ipc(table.scan(row_filter=row_filter, snapshot_id=snapshot_id).to_arrow()))


def _ipc(rows: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return sink.getvalue().to_pybytes()


def run_sql(
    engine: QueryEngine,
    sql: str,
    *,
    limits: SqlLimits | None = None,
    as_of_snapshot: int | None = None,
    readable: Readable | None = None,
    pool: SqlWorkerPool | None = None,
) -> SqlResult:
    """Run one validated read-only query (`validate_sql`) over the tables it names, each pinned to one snapshot and
    narrowed to the exchanges `readable` allows (None: everything, as the CLI reads). Raises `QueryError` (refused
    or failed, with why; past the memory budget too), `QueryTimeoutError` (past the time budget), `ScopeError` (a
    table the caller may not read at all) and `SqlBusyError` (every worker of `pool`, by default the process's
    pool of `limits.workers`, stayed busy for `limits.queue_seconds`)."""
    limits = limits or SqlLimits()
    began = time.perf_counter()
    names = sorted(validate_sql(sql))
    access = {name: None if readable is None else allowed_exchanges(readable, name) for name in names}
    pinned = _pin(engine, names, as_of_snapshot)
    job = Job(
        sql=sql,
        sources=tuple(_source(engine, name, *pinned[name], access[name]) for name in names),
        memory_limit=limits.memory_limit,
        threads=limits.threads,
        max_rows=limits.max_rows,
        timeout_seconds=limits.timeout_seconds,
        data_limit_bytes=limits.data_limit_bytes(),
        hidden_views=_catalog_views(),
    )
    rows = (pool or shared_pool(limits.workers)).run(job, limits.queue_seconds)
    return SqlResult(
        rows,
        {name: pinned[name][1] for name in names},
        {name: None if access[name] is None else sorted(access[name] or ()) for name in names},
        round((time.perf_counter() - began) * 1000, 2),
    )
