"""`k2 query trades|quotes|gaps`: read the Iceberg tables in-process, no API server needed.

The commands call k2_core's query engine directly, so they apply exactly the API's input rules. Bad input
exits with code 2, the conventional "usage error" status, so scripts can tell it from a failed read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from k2_core.exceptions import QueryError

if TYPE_CHECKING:
    import pyarrow as pa

    from k2_core.query import QueryEngine
    from k2_core.topics import Kind

app = typer.Typer(help="Query K2's tables (reads Iceberg directly, no API server needed).", no_args_is_help=True)

EXIT_BAD_INPUT = 2
# Shorter headers leave the width to the values.
_HEADERS = {
    "exchange_timestamp": "time",
    "exchange_sequence_number": "seq",
    "ingestion_timestamp": "ingested",
    "first_missing": "first",
    "last_missing": "last",
    "missing_count": "missing",
}

SymbolArg = Annotated[str, typer.Argument(help="Uppercase ticker, e.g. BHP, BRK.B, BTCUSDT.", show_default=False)]
ExchangeOpt = Annotated[str, typer.Option("--exchange", "-e", help="Exchange code, e.g. asx.", show_default=False)]
StartOpt = Annotated[
    str | None, typer.Option(help="Inclusive ISO-8601 start; no offset means UTC. Default: end minus one day.")
]
EndOpt = Annotated[str | None, typer.Option(help="Exclusive ISO-8601 end; no offset means UTC. Default: now.")]
LimitOpt = Annotated[int | None, typer.Option(help="Maximum rows. Default: settings.api.default_limit.")]


def _engine() -> QueryEngine:
    # Deferred: pyiceberg/DuckDB/pyarrow imports would slow every other `k2` command.
    from k2_core.query import QueryEngine
    from k2_core.settings import Settings

    return QueryEngine.from_settings(Settings())


def _fail(exc: QueryError) -> typer.Exit:
    # Text, not markup: the message quotes user input, which may contain Rich markup brackets.
    Console(stderr=True).print(Text(f"error: {exc}", style="bold red"))
    return typer.Exit(code=EXIT_BAD_INPUT)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _render(rows: pa.Table, title: str, *, hide: tuple[str, ...] = (), limit: int | None = None) -> None:
    import pyarrow as pa

    columns = [field for field in rows.schema if field.name not in hide]
    caption = f"{rows.num_rows} rows"
    if limit is not None and rows.num_rows >= limit:
        caption += " (limit reached: narrow the window or raise --limit)"
    table = Table(title=title, caption=caption)
    for field in columns:
        numeric = pa.types.is_integer(field.type) or pa.types.is_decimal(field.type)
        # fold: on a narrow terminal a value wraps onto a second line; an ellipsis would misstate a price.
        table.add_column(_HEADERS.get(field.name, field.name), justify="right" if numeric else "left", overflow="fold")
    for row in rows.select([field.name for field in columns]).to_pylist():
        table.add_row(*(_cell(v) for v in row.values()))
    Console().print(table)


def _market(kind: Kind, symbol: str, exchange: str, start: str | None, end: str | None, limit: int | None) -> None:
    try:
        with _engine() as engine:
            query = engine.market_query(symbol, exchange, start, end, limit)
            rows = engine.read(kind, query)
    except QueryError as exc:
        raise _fail(exc) from None
    title = f"{kind} {query.symbol}@{query.exchange} [{_cell(query.start)}, {_cell(query.end)})"
    # symbol and exchange are fixed by the query and already in the title.
    _render(rows, title, hide=("symbol", "exchange"), limit=query.limit)


@app.command()
def trades(
    symbol: SymbolArg,
    exchange: ExchangeOpt,
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = None,
) -> None:
    """Trades of SYMBOL on one exchange in [start, end), oldest first."""
    _market("trades", symbol, exchange, start, end, limit)


@app.command()
def quotes(
    symbol: SymbolArg,
    exchange: ExchangeOpt,
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = None,
) -> None:
    """Quotes of SYMBOL on one exchange in [start, end), oldest first."""
    _market("quotes", symbol, exchange, start, end, limit)


@app.command()
def gaps(
    exchange: Annotated[str | None, typer.Option("--exchange", "-e", help="Only this exchange.")] = None,
    symbol: Annotated[str | None, typer.Option(help="Only this uppercase ticker.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this state: open, filled or unrecoverable.")] = None,
) -> None:
    """Sequence gaps, newest first, optionally narrowed by exchange, symbol and status."""
    try:
        with _engine() as engine:
            rows = engine.gaps(exchange=exchange, symbol=symbol, status=status)
    except QueryError as exc:
        raise _fail(exc) from None
    _render(rows, "sequence gaps")
