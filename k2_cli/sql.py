"""`k2 sql "SELECT ..."`: one read-only DuckDB query over K2's tables, in-process (no API server needed).

The same rules as `POST /v1/sql` (`k2_core.read.sql`): one SELECT over trades, quotes, ohlcv_1m, ohlcv_1d and
sequence_gaps, each pinned to one snapshot, with the same time and memory budgets (the query runs in a worker
process of its own, capped and killed as the API's are). Like `k2 query`, it reads the
catalog directly and sees every exchange (scopes are the API's). A refused or failed query exits with code 2.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from k2_cli.query import (
    FormatOpt,
    OutputFormat,
    OutputOpt,
    _engine,
    _export_format,
    _fail,
    _render,
    _sink,
)
from k2_core.exceptions import QueryError


def sql(
    query: Annotated[str, typer.Argument(help="One SELECT over trades, quotes, ohlcv_1m, ohlcv_1d, sequence_gaps.")],
    as_of_snapshot: Annotated[
        int | None,
        typer.Option("--as-of-snapshot", help="Read trades or quotes (whichever owns the id) as of this snapshot."),
    ] = None,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
) -> None:
    """Run one read-only SQL query over K2's tables and print (or export) the answer."""
    from k2_core.read.export import Exporter, writable
    from k2_core.read.sql import SqlLimits, run_sql
    from k2_core.read.sqlworker import SqlBusyError
    from k2_core.settings import Settings

    try:
        with _engine() as engine:
            result = run_sql(engine, query, limits=SqlLimits.from_settings(Settings()), as_of_snapshot=as_of_snapshot)
    except QueryError as exc:
        raise _fail(exc) from None
    except SqlBusyError as exc:  # only when other threads of this process run SQL too
        raise _fail(QueryError(str(exc))) from None
    try:
        with writable(fmt.value):
            if output is None and fmt == OutputFormat.table:
                pinned = ", ".join(f"{name} @ {sid}" for name, sid in result.snapshots.items()) or "no table"
                caption = f"{result.table.num_rows} rows; {pinned}; {result.elapsed_ms} ms"
                _render(result.table, "sql", caption=caption)
                return
            with _sink(output) as sink, Exporter(sink, _export_format(fmt), result.table.schema) as exporter:
                exporter.write(result.table)
    except QueryError as exc:
        raise _fail(exc) from None
    if output is not None:
        Console(stderr=True).print(f"wrote {result.table.num_rows} rows to {output}")


def register(app: typer.Typer) -> None:
    app.command(name="sql")(sql)
