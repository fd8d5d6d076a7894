"""Which source answers a read, and reading a stream's rows from the sources chosen.

- `iceberg`: Iceberg plans the data files of one snapshot (current, or chosen by time travel), DuckDB reads
  them (`k2_core.lake.scan`).
- `realtime`: ranges reaching into the last `realtime_window` (5 minutes by default) are read from the API's
  in-memory tail of the Kafka topics (`k2_core.read.realtime`), because the ingester commits only about once a
  second. A range that spans the boundary reads Iceberg before it and the tail after it; tail rows older than
  the boundary (late arrivals not yet committed) are added unless Iceberg already has their
  (exchange, symbol, sequence) key, so nothing is counted twice. Time-travel reads never use the tail.

(`precomputed` bars are chosen per day, by `k2_core.read.bars`.) Every query module reads through one `Sources`, so
they all route the same way and share its table loader and scan-plan cache.

Columns: an Iceberg read answers in the columns of the snapshot it reads (`Stream.schema`); one that also reads the
tail answers in those plus the tail's (`Sources.columns`: the optional columns its decoder yields, null where a row
lacks one), because the tail holds records the table may not have gained the columns of yet. Either way the answer's
columns follow from what was read (the snapshot, the tail's reader schema), never from the rows a window holds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, GreaterThanOrEqual, In, LessThan
from pyiceberg.table import Table

from k2_core.duck import sql_text, sql_time
from k2_core.exceptions import QueryError
from k2_core.lake import scan
from k2_core.lake.scan import ScanPlan
from k2_core.model.tables import MARKET_TABLES, TableDef
from k2_core.model.topics import Kind
from k2_core.read.cursor import Cursor
from k2_core.read.params import AsOf, TimeRange
from k2_core.read.realtime import RealtimeBuffer
from k2_core.read.result import ICEBERG, REALTIME
from k2_core.read.snapshots import SnapshotChoice, choose_snapshot
from k2_core.settings import QuerySettings

TIME_COLUMN = "exchange_timestamp"
EXCHANGE_ORDER = f"{TIME_COLUMN}, exchange_sequence_number"
DEFAULT_REALTIME_WINDOW = timedelta(seconds=QuerySettings().realtime_window_seconds)


def utcnow() -> datetime:
    return datetime.now(UTC)


def market_filter(symbol: str | None, exchange: str, window: TimeRange) -> BooleanExpression:
    """The Iceberg filter for a trades/quotes query: the time range prunes day partitions, the equalities prune
    files by their symbol/exchange min-max stats. `symbol` None: every symbol of the exchange."""
    where: BooleanExpression = EqualTo(term="exchange", value=exchange)
    if symbol is not None:
        where = And(EqualTo(term="symbol", value=symbol), where)
    return And(
        And(
            GreaterThanOrEqual(term=TIME_COLUMN, value=window.start.isoformat()),
            LessThan(term=TIME_COLUMN, value=window.end.isoformat()),
        ),
        where,
    )


def stream_condition(symbol: str | None, exchange: str) -> str:
    """The SQL condition selecting a stream's rows (every symbol of the exchange when `symbol` is None)."""
    condition = f"exchange = {sql_text(exchange)}"
    return condition if symbol is None else f"symbol = {sql_text(symbol)} AND {condition}"


@dataclass(frozen=True)
class Route:
    """Which sources serve a window: Iceberg for `[start, iceberg_end)` (no Iceberg part when None), the
    realtime tail for the rest; tail rows before `split` may duplicate Iceberg rows and are deduplicated."""

    iceberg_end: datetime | None
    realtime: bool
    split: datetime | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        return ((ICEBERG,) if self.iceberg_end is not None else ()) + ((REALTIME,) if self.realtime else ())


@dataclass(frozen=True)
class Stream:
    """One instrument's rows in one market table, as of one snapshot: what every stream read is about. `symbol`
    None is every instrument of the exchange (one listing of a whole exchange)."""

    kind: Kind
    table: Table
    symbol: str | None
    exchange: str
    choice: SnapshotChoice

    @property
    def table_def(self) -> TableDef:
        return MARKET_TABLES[self.kind]

    @property
    def schema(self) -> pa.Schema:
        """The columns of the snapshot read (the table's current ones when it has none): see `scan.read_schema`."""
        return scan.read_arrow_schema(self.table, self.choice.snapshot_id)


class Sources:
    """The catalog's tables and the realtime tail, and the rule choosing between them. Thread-safe: tables are
    re-checked per call (a long-lived reader sees every commit) and every read opens its own DuckDB cursor."""

    def __init__(
        self,
        catalog: Catalog,
        namespace: str,
        *,
        direct_reads: bool = True,
        realtime: RealtimeBuffer | None = None,
        realtime_window: timedelta = DEFAULT_REALTIME_WINDOW,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """`direct_reads=False` always reads through pyiceberg, the path taken anyway for delete files or remote
        storage; it exists to cross-check DuckDB's reading against pyiceberg's. `realtime` is the tail to route
        recent ranges to (None: Iceberg only)."""
        self.catalog = catalog
        self.namespace = namespace
        self.direct_reads = direct_reads
        self.realtime = realtime
        self.realtime_window = realtime_window
        self.clock = clock
        self.loader = scan.TableLoader(catalog, namespace)
        self.plans = scan.PlanCache()

    def load(self, table_def: TableDef) -> Table:
        """The table at its latest commit; loading per call is how a long-lived reader sees new snapshots."""
        return self.loader.load(table_def.name)

    def plan(self, table_def: TableDef, row_filter: BooleanExpression | None = None) -> ScanPlan:
        """Ask Iceberg which data files of the current snapshot can hold rows matching `row_filter`."""
        table = self.load(table_def)
        return self.plans.plan(table, table_def, row_filter or AlwaysTrue(), table.metadata.current_snapshot_id)

    # --- which snapshot, which sources ---------------------------------------------------------------------

    def stream(
        self, kind: Kind, symbol: str | None, exchange: str, as_of: AsOf | None, position: Cursor | None = None
    ) -> tuple[Stream, bool]:
        """The stream at the snapshot to read: the one a cursor pinned, else the current one or the one `as_of`
        names; and whether the read is pinned to it (then the realtime tail, which has no snapshots, must not serve
        it)."""
        table_def = MARKET_TABLES[kind]
        table = self.load(table_def)
        if position is not None and position.snapshot_id is not None:
            return Stream(kind, table, symbol, exchange, self.pinned(table, table_def, position.snapshot_id)), True
        return Stream(kind, table, symbol, exchange, choose_snapshot(table, as_of, table_def.name)), as_of is not None

    def pinned(self, table: Table, table_def: TableDef, snapshot_id: int) -> SnapshotChoice:
        """The snapshot a cursor pinned; gone (expired) means the listing cannot continue consistently."""
        try:
            return choose_snapshot(table, AsOf(snapshot_id=snapshot_id), table_def.name)
        except QueryError:
            raise QueryError(
                f"cursor refers to snapshot {snapshot_id} of {table_def.name}, which has expired: start again"
            ) from None

    def route(self, kind: Kind, exchange: str, window: TimeRange, *, pinned: bool) -> Route:
        if pinned or self.realtime is None:
            return Route(window.end, realtime=False)
        covers = self.realtime.covers_from(kind, exchange)
        if covers is None:  # the tail has not caught up with the topic yet
            return Route(window.end, realtime=False)
        split = max(self.clock() - self.realtime_window, covers)
        if window.end <= split:
            return Route(window.end, realtime=False)
        # Iceberg is read to the window's end too: the tail only holds what its broker still has (a restarted
        # broker, or retention, can leave committed rows the tail never saw), so it adds what Iceberg does not
        # have yet, key-checked, instead of standing in for Iceberg after `split`.
        return Route(window.end, realtime=True, split=window.end)

    def columns(self, stream: Stream, route: Route) -> pa.Schema:
        """The columns a read of `stream` as routed answers in: the snapshot's, and with the tail the tail's too (its
        rows may have columns the table has not gained yet)."""
        if not route.realtime or self.realtime is None:
            return stream.schema
        return union_schema(stream.schema, self.realtime.schema(stream.kind))

    # --- reading ---------------------------------------------------------------------------------------------

    def market_view(
        self, con: duckdb.DuckDBPyConnection, stream: Stream, window: TimeRange, route: Route, *, name: str = "market"
    ) -> ScanPlan | None:
        """Define view `name` on `con`: the stream's rows in `window`, from Iceberg and/or the tail as routed,
        without duplicates. Only a handful of tail rows (late arrivals) need the key check against Iceberg.
        Returns the Iceberg scan plan (None when the tail alone serves)."""
        symbol, exchange = stream.symbol, stream.exchange
        keep = stream_condition(symbol, exchange)
        parts: list[str] = []
        plan = None
        if route.iceberg_end is not None:
            ice_window = TimeRange(window.start, route.iceberg_end)
            plan = scan.register(
                con,
                f"{name}_ice",
                stream.table,
                stream.table_def,
                market_filter(symbol, exchange, ice_window),
                stream.choice.snapshot_id,
                {"symbol": symbol or "*", "exchange": exchange, "start": window.start, "end": route.iceberg_end},
                plans=self.plans,
                direct_reads=self.direct_reads,
            )
            parts.append(
                f"SELECT * FROM {name}_ice WHERE {keep} AND {TIME_COLUMN} >= {sql_time(window.start)} "
                f"AND {TIME_COLUMN} < {sql_time(route.iceberg_end)}"
            )
        if route.realtime:
            assert self.realtime is not None
            assert route.split is not None
            tail = self.realtime.rows(stream.kind, symbol, exchange, window.start, window.end)
            con.register(f"{name}_tail", tail)
            parts.append(f"SELECT * FROM {name}_tail WHERE {TIME_COLUMN} >= {sql_time(route.split)}")
            late = tail.filter(pc.less(tail.column(TIME_COLUMN), pa.scalar(route.split)))
            if late.num_rows and route.iceberg_end is not None:
                parts.append(
                    f"SELECT * FROM {name}_tail WHERE {TIME_COLUMN} < {sql_time(route.split)} AND "
                    f"(symbol, exchange_sequence_number) NOT IN "
                    f"(SELECT symbol, exchange_sequence_number FROM ({parts[0]}))"
                )
            elif late.num_rows:
                parts.append(f"SELECT * FROM {name}_tail WHERE {TIME_COLUMN} < {sql_time(route.split)}")
        # By name: the tail's rows may have columns the snapshot's files do not (`columns`).
        con.sql(f"CREATE OR REPLACE TEMP VIEW {name} AS " + " UNION ALL BY NAME ".join(parts))
        return plan

    def count(self, stream: Stream, window: TimeRange, route: Route) -> int:
        """How many rows the stream holds in `window` as routed: what a long export's progress bar counts to."""
        with scan.connect() as con:
            self.market_view(con, stream, window, route)
            row = con.execute("SELECT count(*) FROM market").fetchone()
        return int(row[0]) if row else 0

    def latest_committed(self, stream: Stream, before: datetime | None) -> pa.Table:
        """The last committed row of a stream (before `before`, if given), searching day partitions newest
        first so that usually only the newest day's files are read."""
        table, table_def, symbol, exchange = stream.table, stream.table_def, stream.symbol, stream.exchange
        assert symbol is not None, "the latest row of a whole exchange is latest_of_many's"
        snapshot_id = stream.choice.snapshot_id
        schema = stream.schema
        if snapshot_id is None:
            return schema.empty_table()
        row_filter: BooleanExpression = And(
            EqualTo(term="symbol", value=symbol), EqualTo(term="exchange", value=exchange)
        )
        if before is not None:
            row_filter = And(row_filter, LessThan(term=TIME_COLUMN, value=before.isoformat()))
        tasks = list(table.scan(row_filter=row_filter, snapshot_id=snapshot_id).plan_files())
        if not tasks:
            return schema.empty_table()
        condition = f"symbol = {sql_text(symbol)} AND exchange = {sql_text(exchange)}"
        if before is not None:
            condition += f" AND {TIME_COLUMN} < {sql_time(before)}"
        newest = (
            f"SELECT * FROM latest_src WHERE {condition} "
            f"ORDER BY {TIME_COLUMN} DESC, exchange_sequence_number DESC LIMIT 1"
        )
        whole = ScanPlan(
            table_def.name,
            snapshot_id,
            tuple(t.file.file_path for t in tasks),
            sum(len(t.delete_files) for t in tasks),
        )
        if whole.local_paths is None or not self.direct_reads:
            plans = [whole]  # one pyiceberg read of everything planned
        else:
            by_day: dict[int, list[str]] = {}
            for task in tasks:
                by_day.setdefault(int(task.file.partition[0]), []).append(task.file.file_path)
            plans = [ScanPlan(table_def.name, snapshot_id, tuple(files), 0) for _, files in sorted(by_day.items())]
            plans.reverse()
        with scan.connect() as con:
            for plan in plans:
                scan.register_scan(
                    con, "latest_src", table, table_def, plan, row_filter, direct_reads=self.direct_reads
                )
                found = con.sql(newest).to_arrow_table()
                if found.num_rows:
                    return scan.cast_to(found, schema)
        return schema.empty_table()


def union_schema(first: pa.Schema, second: pa.Schema) -> pa.Schema:
    """`first`'s columns, then those of `second` it lacks, in `second`'s order."""
    return pa.schema([*first, *(f for f in second if f.name not in first.names)])


# (time, sequence) packed in one HUGEINT, ordered as the pair is (sequence numbers are validated non-negative 64-bit
# integers): DuckDB's arg_max on it is much faster than on a struct or a window. `k2_core.model.bars` packs the same.
_ORDER_KEY = f"epoch_us({TIME_COLUMN})::HUGEINT * 9223372036854775808 + exchange_sequence_number"


def latest_of_many(
    sources: Sources,
    stream: Stream,
    exchanges: Sequence[str],
    symbols: Collection[str] | None,
    *,
    columns: Sequence[str] | None = None,
    expected: Callable[[Sequence[str], str], set[str]] | None = None,
) -> pa.Table:
    """The last committed row of each symbol of `exchanges` (of `symbols` there, or of every symbol the snapshot
    holds there), one row per (exchange, symbol), by exchange and symbol, in the snapshot's columns (only `columns`,
    when given: the other columns' files are not read). `stream.symbol` and `stream.exchange` are ignored.

    Fast because most instruments traded recently: day partitions are read newest first and each older day is read
    only for the instruments still missing, stopping once every one is found; several exchanges are one read of each
    day (the tables are partitioned by day alone, so one exchange at a time would read each day's files again). The
    search must know which instruments to expect: `expected(files, exchange)` says, a superset of the symbols the
    planned data files hold on that exchange (`SymbolIndex.symbols_in_files`: known from earlier reads, so usually no
    file is opened for it); with no such function, or when the files are read through pyiceberg, `symbols` on every
    exchange, or one scan of the `exchange` and `symbol` columns. A superset is enough for a correct answer: an
    instrument expected but absent only makes the search read every day."""
    table, table_def = stream.table, stream.table_def
    snapshot_id, schema = stream.choice.snapshot_id, stream.schema
    if columns is not None:
        assert {"symbol", TIME_COLUMN, "exchange_sequence_number"} <= set(columns), "the order and group keys"
        schema = pa.schema([schema.field(name) for name in columns])
    if snapshot_id is None or not exchanges or (symbols is not None and not symbols):
        return schema.empty_table()
    one = exchanges[0] if len(exchanges) == 1 else None
    row_filter: BooleanExpression = (
        EqualTo(term="exchange", value=one) if one is not None else In(term="exchange", literals=tuple(exchanges))
    )
    if symbols is not None:
        row_filter = And(row_filter, In(term="symbol", literals=tuple(symbols)))
    whole, by_day = sources.plans.by_day(table, table_def, row_filter, snapshot_id)
    if not whole.data_files:
        return schema.empty_table()
    direct = whole.local_paths is not None and sources.direct_reads
    if not direct:
        plans = [whole]
    else:
        plans = [ScanPlan(table_def.name, snapshot_id, f, 0) for _, f in sorted(by_day.items(), reverse=True)]
    condition = f"exchange IN ({', '.join(sql_text(e) for e in exchanges)})"
    # One exchange is a constant, not a column to decode and carry.
    exchange_column, group = (sql_text(one), "symbol") if one is not None else ("exchange", "exchange, symbol")
    carried = ", ".join(f'"{name}"' for name in schema.names if name not in ("symbol", "exchange"))
    found: list[pa.Table] = []
    seen: set[tuple[str, str]] = set()
    with scan.connect() as con:
        if expected is not None and direct:
            wanted = {(e, s) for e in exchanges for s in expected(whole.data_files, e)}
            if symbols is not None:
                wanted = {(e, s) for e, s in wanted if s in symbols}
        elif symbols is not None:
            wanted = {(e, s) for e in exchanges for s in symbols}
        else:
            scan.register_scan(con, "universe", table, table_def, whole, row_filter, direct_reads=sources.direct_reads)
            pairs = con.sql(f"SELECT DISTINCT exchange, symbol FROM universe WHERE {condition}").fetchall()
            wanted = {(str(e), str(s)) for e, s in pairs}
        for plan in plans:
            missing = wanted - seen
            if not missing:
                break
            scan.register_scan(con, "latest_src", table, table_def, plan, row_filter, direct_reads=sources.direct_reads)
            # The first day read wants every instrument the files may hold (`wanted` is a superset of them), so a
            # filter on symbols would keep every row: left out, it costs nothing. Later days name the missing ones.
            which = "" if plan is plans[0] and symbols is None else " AND " + _instruments_sql(missing)
            # Each instrument's row with the highest (time, sequence), every column taken from that row: one arg_max
            # of the row's other columns packed in a struct (never null, so a null inside it is the winning row's
            # own). About 4x faster than a row_number() window over the same rows, and ~30% faster than one
            # arg_max_null per column (bench/tsbench.py, last_bid).
            rows = con.sql(
                f"SELECT symbol, {exchange_column} AS exchange, "
                f"unnest(arg_max(struct_pack({carried}), {_ORDER_KEY})) FROM latest_src "
                f"WHERE {condition}{which} GROUP BY {group}"
            ).to_arrow_table()
            if rows.num_rows:
                found.append(scan.cast_to(rows, schema))
                seen.update(zip(rows.column("exchange").to_pylist(), rows.column("symbol").to_pylist(), strict=True))
    if not found:
        return schema.empty_table()
    return pa.concat_tables(found).sort_by([("exchange", "ascending"), ("symbol", "ascending")])


def _instruments_sql(pairs: Collection[tuple[str, str]]) -> str:
    """A SQL condition true for the rows of these (exchange, symbol) pairs."""
    by_exchange: dict[str, list[str]] = {}
    for exchange, symbol in sorted(pairs):
        by_exchange.setdefault(exchange, []).append(symbol)
    terms = [
        f"(exchange = {sql_text(e)} AND symbol IN ({', '.join(sql_text(s) for s in names)}))"
        for e, names in by_exchange.items()
    ]
    return f"({' OR '.join(terms)})"
