"""Which (exchange, symbol) pairs have ever had data: the basis of "unknown symbol" errors.

A well-formed ticker that never traded would otherwise yield a silent empty answer, which hides typos. The
index is built from the data files themselves (no reference-data table to keep in step) and grows
incrementally: a refresh reads only the `exchange` and `symbol` columns of files it has not seen. It is only
consulted for pairs it does not yet know, at most once per `min_refresh_seconds`, so neither a steady stream of
known queries nor a burst of typos re-plans the table on every request.

It also tells a whole-exchange read which symbols to expect (`symbols_in_files`): pairs are kept per table, and
asking about a snapshot's data files first indexes any of them it has not seen, so the answer covers every symbol
those files hold (a superset: pairs are never forgotten, so a symbol since removed by retention stays listed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence

from pyiceberg.expressions import AlwaysTrue
from pyiceberg.table import Table

from k2_core.exceptions import UnknownSymbolError
from k2_core.lake import scan
from k2_core.logging import get_logger
from k2_core.model.tables import QUOTES, TRADES, TableDef
from k2_core.read.routing import Sources

logger = get_logger(__name__)


class SymbolIndex:
    def __init__(self, min_refresh_seconds: float = 1.0) -> None:
        self.min_refresh_seconds = min_refresh_seconds
        self._pairs: set[tuple[str, str]] = set()
        self._table_pairs: dict[str, set[tuple[str, str]]] = {}
        self._seen_files: set[str] = set()
        self._snapshots: dict[str, int | None] = {}
        self._last_refresh = float("-inf")
        self._lock = threading.Lock()

    def known(self, exchange: str, symbol: str) -> bool:
        with self._lock:
            return (exchange, symbol) in self._pairs

    def symbols(self, exchange: str) -> list[str]:
        with self._lock:
            return sorted(s for ex, s in self._pairs if ex == exchange)

    def require(self, exchange: str | Sequence[str], symbol: str, sources: Sources) -> None:
        """Raise `UnknownSymbolError` unless the symbol has data on the exchange (on one of several): known already,
        in the realtime tail, or found by a refresh; the message names some symbols the exchanges do have."""
        exchanges = (exchange,) if isinstance(exchange, str) else tuple(exchange)
        realtime = sources.realtime

        def found() -> bool:
            return any(
                self.known(e, symbol) or (realtime is not None and symbol in realtime.symbols(e)) for e in exchanges
            )

        if found():
            return
        self.refresh(
            [(sources.load(TRADES), TRADES), (sources.load(QUOTES), QUOTES)], direct_reads=sources.direct_reads
        )
        if found():
            return
        known = sorted({s for e in exchanges for s in self.symbols(e)})
        hint = f"; symbols there include {', '.join(known[:10])}" if known else "; it has no data yet"
        where = f"exchange {exchanges[0]}" if len(exchanges) == 1 else f"any of exchanges {', '.join(exchanges)}"
        raise UnknownSymbolError(f"symbol {symbol!r} has no trades or quotes on {where}{hint}")

    def refresh(self, tables: list[tuple[Table, TableDef]], *, direct_reads: bool = True) -> None:
        """Index the files the tables' current snapshots added since the last refresh (rate-limited)."""
        with self._lock:
            if time.monotonic() - self._last_refresh < self.min_refresh_seconds:
                return
            self._last_refresh = time.monotonic()
            unchanged = all(self._snapshots.get(d.name) == t.metadata.current_snapshot_id for t, d in tables)
            if unchanged and self._snapshots:
                return
            for table, table_def in tables:
                self._index(table, table_def, direct_reads)
                self._snapshots[table_def.name] = table.metadata.current_snapshot_id

    def symbols_in_files(
        self,
        table: Table,
        table_def: TableDef,
        snapshot_id: int,
        files: Collection[str],
        exchange: str,
        *,
        direct_reads: bool = True,
    ) -> set[str]:
        """Every symbol of `exchange` that `files` (data files of `table` at `snapshot_id`) may hold, without reading
        them again once indexed: the files not seen yet are indexed first (their `exchange` and `symbol` columns
        only), then the table's known symbols of the exchange are a superset of what the files hold. What a
        newest-first search for each symbol's last row needs to know when it may stop (`routing.latest_of_many`);
        true for any snapshot, time travel included, because it is the files read that are indexed."""
        with self._lock:
            new_files = [f for f in files if f not in self._seen_files]
            if new_files:
                partial = scan.ScanPlan(table_def.name, snapshot_id, tuple(new_files), 0)
                self._index_files(table, table_def, partial, direct_reads)
            return {sym for ex, sym in self._table_pairs.get(table_def.name, ()) if ex == exchange}

    def _index(self, table: Table, table_def: TableDef, direct_reads: bool) -> None:
        plan = scan.plan_scan(table, table_def, AlwaysTrue(), table.metadata.current_snapshot_id)
        new_files = [f for f in plan.data_files if f not in self._seen_files]
        if not new_files:
            return
        partial = scan.ScanPlan(plan.table, plan.snapshot_id, tuple(new_files), plan.delete_files)
        self._index_files(table, table_def, partial, direct_reads)

    def _index_files(self, table: Table, table_def: TableDef, plan: scan.ScanPlan, direct_reads: bool) -> None:
        """Add the (exchange, symbol) pairs of the plan's files (lock held); a pair of a row since deleted is kept (a
        superset is safe). Files DuckDB cannot read directly are read through pyiceberg (the whole snapshot)."""
        with scan.connect() as con:
            read_path = scan.register_scan(
                con, "files", table, table_def, plan, AlwaysTrue(), direct_reads=direct_reads
            )
            pairs = {
                (str(ex), str(sym)) for ex, sym in con.sql("SELECT DISTINCT exchange, symbol FROM files").fetchall()
            }
        self._pairs.update(pairs)
        self._table_pairs.setdefault(table_def.name, set()).update(pairs)
        new_files = plan.data_files
        self._seen_files.update(new_files)
        logger.info(
            "symbol index refreshed",
            extra={"table": table_def.name, "new_files": len(new_files), "pairs": len(self._pairs), "path": read_path},
        )
