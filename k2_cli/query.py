"""`k2 query trades|quotes|ohlcv|summary|latest|book|replay|snapshots|gaps|asof|window|markouts`: read K2 in-process,
no API server needed.

The commands call k2_core's query engine directly, so they apply exactly the API's input rules. Without
`--output` they print a Rich table (one page); with `--output FILE` (or `--format` other than table) they
export every row of the window in that format, page by page, with a progress bar on stderr. Bad input exits
with code 2, the conventional "usage error" status, so scripts can tell it from a failed read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from k2_core.exceptions import QueryError

if TYPE_CHECKING:
    import pyarrow as pa

    from k2_core.model.topics import Kind
    from k2_core.read.engine import QueryEngine
    from k2_core.read.export import ExportFormat
    from k2_core.read.params import AsOf
    from k2_core.read.result import QueryResult

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
    "quote_timestamp": "quote time",
    "quote_sequence_number": "quote seq",
    "trade_timestamp": "trade time",
    "trade_sequence_number": "trade seq",
}


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    parquet = "parquet"
    arrow = "arrow"
    ndjson = "ndjson"


SymbolArg = Annotated[
    str,
    typer.Argument(
        help="Uppercase ticker, e.g. BHP, BRK.B, BTCUSDT; trades, quotes and ohlcv also take a comma list (BHP,CBA).",
        show_default=False,
    ),
]
ListingSymbolArg = Annotated[
    str | None,
    typer.Argument(
        help="Uppercase ticker, e.g. BHP, or a comma list (BHP,CBA). Omitted: every instrument of the exchange.",
        show_default=False,
    ),
]
ExchangeOpt = Annotated[str, typer.Option("--exchange", "-e", help="Exchange code, e.g. asx.", show_default=False)]
StartOpt = Annotated[
    str | None, typer.Option(help="Inclusive ISO-8601 start; no offset means UTC. Default: end minus one day.")
]
EndOpt = Annotated[str | None, typer.Option(help="Exclusive ISO-8601 end; no offset means UTC. Default: now.")]
LimitOpt = Annotated[
    int | None, typer.Option(help="Rows to show (table) or the most to export. Default: one page / everything.")
]
DateOpt = Annotated[str, typer.Option("--date", "-d", help="UTC date, YYYY-MM-DD.", show_default=False)]
SnapshotOpt = Annotated[str | None, typer.Option("--as-of-snapshot", help="Read as of this snapshot id.")]
AsOfOpt = Annotated[str | None, typer.Option("--as-of", help="Read as of this ISO-8601 time.")]
FormatOpt = Annotated[
    OutputFormat, typer.Option("--format", "-f", help="table prints; the others export (to --output or stdout).")
]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Export to this file.", dir_okay=False)]


def _engine() -> QueryEngine:
    # Deferred: pyiceberg/DuckDB/pyarrow imports would slow every other `k2` command.
    from k2_core.read.engine import QueryEngine
    from k2_core.settings import Settings

    return QueryEngine.from_settings(Settings())


def _fail(exc: QueryError) -> typer.Exit:
    # Text, not markup: the message quotes user input, which may contain Rich markup brackets.
    Console(stderr=True).print(Text(f"error: {exc}", style="bold red"))
    return typer.Exit(code=EXIT_BAD_INPUT)


def _as_of(as_of_snapshot: str | None, as_of: str | None) -> AsOf | None:
    from k2_core.read.params import validate_as_of

    return validate_as_of(as_of_snapshot, as_of)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, list):  # a trade's conditions: its items as they are, comma-separated (exports: JSON text)
        return ", ".join(_cell(item) for item in value)
    return str(value)


def _render(rows: pa.Table, title: str, *, hide: tuple[str, ...] = (), caption: str | None = None) -> None:
    import pyarrow as pa

    columns = [field for field in rows.schema if field.name not in hide]
    table = Table(title=title, caption=caption or f"{rows.num_rows} rows")
    for field in columns:
        numeric = pa.types.is_integer(field.type) or pa.types.is_decimal(field.type)
        # fold: on a narrow terminal a value wraps onto a second line; an ellipsis would misstate a price.
        table.add_column(_HEADERS.get(field.name, field.name), justify="right" if numeric else "left", overflow="fold")
    for row in rows.select([field.name for field in columns]).to_pylist():
        table.add_row(*(_cell(v) for v in row.values()))
    Console().print(table)


def _provenance(result: QueryResult) -> str:
    text = f"sources: {', '.join(result.sources)}"
    if result.snapshot_id is not None:
        text += f"; snapshot {result.snapshot_id}"
    return text


@contextmanager
def _sink(output: Path | None) -> Iterator[BinaryIO]:
    if output is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with output.open("wb") as handle:
        yield handle


def _export(
    pages: Callable[[str | None], QueryResult],
    fmt: ExportFormat,
    output: Path | None,
    *,
    total: int | None,
    limit: int | None,
    what: str,
) -> None:
    """Follow cursors from the first page to the last (or `limit` rows), writing each page as it arrives."""
    from k2_core.read.export import Exporter

    progress = Progress(
        TextColumn(f"exporting {what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=output is None,
    )
    with progress, _sink(output) as sink:
        task = progress.add_task(what, total=min(total, limit) if total is not None and limit else total)
        cursor: str | None = None
        exporter: Exporter | None = None
        while True:
            result = pages(cursor)
            table = result.table if limit is None else result.table.slice(0, limit - (exporter.rows if exporter else 0))
            if exporter is None:
                exporter = Exporter(sink, fmt, table.schema)
            exporter.write(table)
            progress.advance(task, table.num_rows)
            cursor = result.next_cursor
            if cursor is None or (limit is not None and exporter.rows >= limit):
                break
        exporter.close()
    if output is not None:
        Console(stderr=True).print(f"wrote {exporter.rows} rows to {output} ({fmt})")


def _market(
    kind: Kind,
    symbol: str | None,
    exchange: str,
    start: str | None,
    end: str | None,
    limit: int | None,
    fmt: OutputFormat,
    output: Path | None,
    as_of_snapshot: str | None,
    as_of: str | None,
    with_quote: bool = False,
) -> None:
    exporting = output is not None or fmt != OutputFormat.table
    if symbol is None or "," in symbol:
        _market_many(kind, symbol, exchange, start, end, limit, fmt, output, as_of_snapshot, as_of, with_quote)
        return
    try:
        with _engine() as engine:
            travel = _as_of(as_of_snapshot, as_of)
            if not exporting:
                query = engine.market_query(symbol, exchange, start, end, limit)
                result = engine.fetch(kind, query, with_quote=with_quote, as_of=travel)
            else:
                query = engine.market_query(symbol, exchange, start, end, engine.limits.max_limit)
                total = engine.count(kind, query, as_of=travel)
                _export(
                    lambda cursor: engine.fetch(kind, query, cursor=cursor, with_quote=with_quote, as_of=travel),
                    _export_format(fmt),
                    output,
                    total=total,
                    limit=limit,
                    what=kind,
                )
                return
    except QueryError as exc:
        raise _fail(exc) from None
    title = f"{kind} {query.symbol}@{query.exchange} [{_cell(query.start)}, {_cell(query.end)})"
    caption = f"{result.table.num_rows} rows; {_provenance(result)}"
    if result.next_cursor is not None:
        caption += " (more rows: narrow the window, raise --limit, or export with --output)"
    # symbol and exchange are fixed by the query and already in the title.
    _render(result.table, title, hide=("symbol", "exchange"), caption=caption)


def _market_many(
    kind: Kind,
    symbols: str | None,
    exchange: str,
    start: str | None,
    end: str | None,
    limit: int | None,
    fmt: OutputFormat,
    output: Path | None,
    as_of_snapshot: str | None,
    as_of: str | None,
    with_quote: bool = False,
) -> None:
    """SYMBOL as a comma list, or omitted (the whole exchange): one listing of all of them
    (`QueryEngine.fetch_many`), shown or exported as one."""
    exporting = output is not None or fmt != OutputFormat.table
    try:
        with _engine() as engine:
            travel = _as_of(as_of_snapshot, as_of)
            page_size = engine.limits.max_limit if exporting else limit

            def pages(cursor: str | None) -> QueryResult:
                return engine.fetch_many(
                    kind, symbols, exchange, start, end, page_size, cursor=cursor, with_quote=with_quote, as_of=travel
                )

            if exporting:
                _export(pages, _export_format(fmt), output, total=None, limit=limit, what=kind)
                return
            result = pages(None)
    except QueryError as exc:
        raise _fail(exc) from None
    assert result.window is not None
    title = f"{kind} {symbols or 'every symbol'}@{exchange} [{_cell(result.window.start)}, {_cell(result.window.end)})"
    caption = f"{result.table.num_rows} rows; {_provenance(result)}"
    if result.next_cursor is not None:
        caption += " (more rows: narrow the window, raise --limit, or export with --output)"
    _render(result.table, title, hide=("exchange",), caption=caption)


def _export_format(fmt: OutputFormat) -> ExportFormat:
    """`--format table` with `--output` exports CSV: a file cannot hold a Rich table."""
    formats: dict[OutputFormat, ExportFormat] = {
        OutputFormat.table: "csv",
        OutputFormat.csv: "csv",
        OutputFormat.parquet: "parquet",
        OutputFormat.arrow: "arrow",
        OutputFormat.ndjson: "ndjson",
    }
    return formats[fmt]


@app.command()
def trades(
    exchange: ExchangeOpt,
    symbol: ListingSymbolArg = None,
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = None,
    with_quote: Annotated[bool, typer.Option("--with-quote", help="Attach the quote in force at each trade.")] = False,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    as_of_snapshot: SnapshotOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """Trades of SYMBOL (a comma list, or every instrument when omitted) on one exchange in [start, end), oldest
    first."""
    _market("trades", symbol, exchange, start, end, limit, fmt, output, as_of_snapshot, as_of, with_quote)


@app.command()
def quotes(
    exchange: ExchangeOpt,
    symbol: ListingSymbolArg = None,
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    as_of_snapshot: SnapshotOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """Quotes of SYMBOL (a comma list, or every instrument when omitted) on one exchange in [start, end), oldest
    first."""
    _market("quotes", symbol, exchange, start, end, limit, fmt, output, as_of_snapshot, as_of)


@app.command()
def ohlcv(
    exchange: ExchangeOpt,
    symbol: ListingSymbolArg = None,
    interval: Annotated[
        str, typer.Option("--interval", "-i", help="1s .. 1mo: <N>s, <N>m, <N>h, <N>d, <N>w or 1mo (e.g. 30s, 4h, 1w).")
    ] = "1m",
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    as_of_snapshot: SnapshotOpt = None,
    as_of: AsOfOpt = None,
    align: Annotated[
        str, typer.Option("--align", help="utc, exchange (local time zone, DST-correct) or session (from the open).")
    ] = "utc",
    fill: Annotated[
        str, typer.Option("--fill", help="Intervals without trades: none, previous, null or linear.")
    ] = "none",
    bar_type: Annotated[str, typer.Option("--bar-type", help="time, tick, volume or dollar.")] = "time",
    size: Annotated[
        str | None, typer.Option("--size", help="Tick/volume/dollar bars: trades, volume or notional per bar.")
    ] = None,
) -> None:
    """OHLCV + VWAP bars of SYMBOL (or of a comma list, or of every symbol of the exchange when omitted, by bar
    start then symbol); UTC-aligned unless --align says otherwise; intervals without trades have no bar unless
    --fill."""
    many = symbol is None or "," in symbol
    options: dict[str, Any] = {"align": align, "fill": fill, "bar_type": bar_type, "size": size}
    wanted = symbol
    try:
        with _engine() as engine:
            travel = _as_of(as_of_snapshot, as_of)
            bars = engine.ohlcv_many if many else engine.ohlcv  # a comma list: one listing of them all

            def read(cursor: str | None = None, limit: int | None = None) -> QueryResult:
                return bars(wanted, exchange, interval, start, end, limit=limit, cursor=cursor, as_of=travel, **options)  # type: ignore[arg-type]

            if output is not None or fmt != OutputFormat.table:
                first = read()
                _export(
                    lambda cursor: first if cursor is None else read(cursor),
                    _export_format(fmt),
                    output,
                    total=None,
                    limit=limit,
                    what="bars",
                )
                return
            result = read(limit=limit)
    except QueryError as exc:
        raise _fail(exc) from None
    assert result.window is not None
    what = interval if bar_type == "time" else f"{bar_type} {size}"
    title = f"{what} bars {symbol or '*'}@{exchange} [{_cell(result.window.start)}, {_cell(result.window.end)})"
    _render(
        result.table,
        title,
        hide=("exchange",) if many else ("symbol", "exchange"),
        caption=f"{result.table.num_rows} bars; {_provenance(result)}",
    )


@app.command()
def summary(
    symbol: SymbolArg,
    exchange: ExchangeOpt,
    day: DateOpt,
    as_of_snapshot: SnapshotOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """One UTC day of SYMBOL: open, high, low, close, volume, VWAP and trade count."""
    try:
        with _engine() as engine:
            result = engine.summary(symbol, exchange, day, as_of=_as_of(as_of_snapshot, as_of))
    except QueryError as exc:
        raise _fail(exc) from None
    _render(
        result.table, f"summary {symbol}@{exchange} {day}", hide=("symbol", "exchange"), caption=_provenance(result)
    )


@app.command()
def latest(
    exchange: ExchangeOpt,
    symbol: Annotated[
        str | None,
        typer.Argument(help="Uppercase ticker; leave out for every instrument of the exchange.", show_default=False),
    ] = None,
    symbols: Annotated[
        str | None, typer.Option("--symbols", "-s", help="Comma-separated tickers: their last trade and quote.")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option("--kind", help="Without SYMBOL: only trades or only quotes (reads that table alone)."),
    ] = None,
    as_of_snapshot: SnapshotOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """The last trade of SYMBOL in exchange order; without SYMBOL, the last trade and the last quote of every
    instrument of the exchange (of several: -e asx,nyse; or of --symbols), one row each (--kind: one half only)."""
    if symbol is not None and symbols is not None:
        raise _fail(QueryError("symbols: give either SYMBOL or --symbols, not both"))
    if symbol is not None and kind is not None:
        raise _fail(QueryError("kind: --kind applies to the listing of every instrument (leave out SYMBOL)"))
    try:
        with _engine() as engine:
            travel = _as_of(as_of_snapshot, as_of)
            if symbol is None:
                result = engine.latest_on(exchange.split(","), symbols, kinds=kind, as_of=travel)
            else:
                result = engine.latest(symbol, exchange, as_of=travel)
    except QueryError as exc:
        raise _fail(exc) from None
    if symbol is None:
        hide = ("exchange",) if "," not in exchange else ()
        _render(result.table, f"latest trade and quote on {exchange}", hide=hide, caption=_provenance(result))
        return
    if result.table.num_rows == 0:
        raise _fail(QueryError(f"symbol {symbol} has no trades on {exchange} in this snapshot"))
    _render(result.table, f"latest trade {symbol}@{exchange}", hide=("symbol", "exchange"), caption=_provenance(result))


@app.command()
def book(
    symbol: Annotated[str, typer.Argument(help="Uppercase ticker, e.g. BHP.", show_default=False)],
    exchange: ExchangeOpt,
    at: Annotated[str | None, typer.Option(help="ISO-8601 time; no offset means UTC. Default: now.")] = None,
    depth: Annotated[int | None, typer.Option(help="Levels a side, 1-1000. Default: 10.")] = None,
) -> None:
    """SYMBOL's level-2 book at --at, rebuilt from the nearest stored snapshot and the updates after it; says so
    (exit 1) when a gap in the updates left the book unknown there."""
    try:
        with _engine() as engine:
            answer = engine.book(symbol, exchange, at, depth)
    except QueryError as exc:
        raise _fail(exc) from None
    console = Console()
    if not answer.valid:
        Console(stderr=True).print(Text(f"book unknown at {answer.at.isoformat()}: {answer.reason}", style="bold red"))
        raise typer.Exit(code=1)
    table = Table(
        title=f"book {symbol}@{exchange} at {answer.at.isoformat()}",
        caption=(
            f"from the {answer.snapshot_source} snapshot of {_cell(answer.snapshot_at)} + "
            f"{answer.updates_applied} updates (last #{answer.sequence}); spread {_cell(answer.spread)}, "
            f"mid {_cell(answer.mid)}, imbalance {_cell(answer.imbalance)}"
        ),
    )
    for header in ("bid size", "bid", "ask", "ask size"):
        table.add_column(header, justify="right")
    for i in range(max(len(answer.bids), len(answer.asks))):
        bid = answer.bids[i] if i < len(answer.bids) else None
        ask = answer.asks[i] if i < len(answer.asks) else None
        table.add_row(
            _cell(bid[1] if bid else None),
            _cell(bid[0] if bid else None),
            _cell(ask[0] if ask else None),
            _cell(ask[1] if ask else None),
        )
    console.print(table)


DepthOpt = Annotated[int | None, typer.Option(help="Levels a side, 1-1000. Default: 10.")]
BookStartOpt = Annotated[str, typer.Option(help="ISO-8601 start; no offset means UTC.", show_default=False)]
BookEndOpt = Annotated[str | None, typer.Option(help="ISO-8601 end; no offset means UTC. Default: now.")]


@app.command("book-series")
def book_series(
    symbol: Annotated[str, typer.Argument(help="Uppercase ticker, e.g. BHP.", show_default=False)],
    exchange: ExchangeOpt,
    start: BookStartOpt,
    end: BookEndOpt = None,
    every: Annotated[str, typer.Option(help="Spacing of the points: 100ms, 1s, 1m, ...")] = "1s",
    depth: DepthOpt = None,
) -> None:
    """SYMBOL's top of book, spread, mid, imbalance and depth every --every from --start to --end; blank where the
    book was unknown (a gap in its updates)."""
    import pyarrow as pa

    try:
        with _engine() as engine:
            points = engine.book_series(symbol, exchange, start, end, every, depth)
    except QueryError as exc:
        raise _fail(exc) from None
    unknown = sum(not p.valid for p in points)
    rows = pa.Table.from_pylist([vars(p) for p in points])
    _render(rows, f"book {symbol}@{exchange} every {every}", caption=f"{len(points)} points, {unknown} unknown")


@app.command("book-bars")
def book_bars(
    symbol: Annotated[str, typer.Argument(help="Uppercase ticker, e.g. BHP.", show_default=False)],
    exchange: ExchangeOpt,
    start: BookStartOpt,
    end: BookEndOpt = None,
    interval: Annotated[str, typer.Option("--interval", "-i", help="<N>s, <N>m, <N>h or <N>d (1s to 31d).")] = "1m",
    depth: DepthOpt = None,
) -> None:
    """SYMBOL's book as UTC-aligned bars: mid open/high/low/close, time-weighted spread, imbalance and depth of the
    best --depth levels, over the time the book was known."""
    import pyarrow as pa

    try:
        with _engine() as engine:
            bars = engine.book_bars(symbol, exchange, start, end, interval, depth)
    except QueryError as exc:
        raise _fail(exc) from None
    rows = pa.Table.from_pylist([vars(b) for b in bars])
    _render(rows, f"book bars {symbol}@{exchange} {interval}", caption=f"{len(bars)} bars")


@app.command()
def replay(
    symbol: SymbolArg,
    exchange: ExchangeOpt,
    day: DateOpt,
    kind: Annotated[str, typer.Option(help="trades or quotes.")] = "trades",
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="ndjson (default), csv, parquet or arrow.")] = (
        OutputFormat.ndjson
    ),
    output: OutputOpt = None,
    as_of_snapshot: SnapshotOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """Every trade (or quote) of one UTC day in exchange order, streamed: NDJSON to stdout or a file."""
    from k2_core.read.export import Exporter

    if kind not in ("trades", "quotes"):
        raise _fail(QueryError(f"kind must be trades or quotes; got {kind!r}"))
    stream_kind: Kind = "trades" if kind == "trades" else "quotes"
    export_fmt = _export_format(fmt)
    try:
        with _engine() as engine:
            stream = engine.replay(
                symbol, exchange, day, kind=stream_kind, as_of=_as_of(as_of_snapshot, as_of), count=output is not None
            )
            progress = Progress(
                TextColumn(f"replaying {kind}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=Console(stderr=True),
                disable=output is None,
            )
            with progress, _sink(output) as sink, Exporter(sink, export_fmt, stream.schema) as exporter:
                task = progress.add_task(kind, total=stream.total)
                for batch in stream:
                    exporter.write(batch)
                    progress.advance(task, batch.num_rows)
    except QueryError as exc:
        raise _fail(exc) from None
    if output is not None:
        Console(stderr=True).print(f"wrote {exporter.rows} rows to {output} ({export_fmt})")


@app.command()
def snapshots(
    table: Annotated[str, typer.Option("--table", "-t", help="trades, quotes, sequence_gaps, ohlcv_1m, ohlcv_1d.")] = (
        "trades"
    ),
    limit: Annotated[int | None, typer.Option(help="Most recent snapshots to show.")] = None,
) -> None:
    """A table's snapshots, newest first, with the Kafka offsets each commit covered."""
    try:
        with _engine() as engine:
            result = engine.snapshots(table, limit=limit)
    except QueryError as exc:
        raise _fail(exc) from None
    rows = result.table
    offsets = [
        ", ".join(f"{o['topic']}[{o['partition']}]={o['next_offset']}" for o in row)
        for row in rows.column("kafka_offsets").to_pylist()
    ]
    import pyarrow as pa

    shown = rows.drop_columns(["kafka_offsets", "parent_id", "sequence_number"]).append_column(
        "kafka offsets (next)", pa.array(offsets, pa.string())
    )
    _render(shown, f"snapshots of {table}")


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


# --- joins on time (`QueryEngine.asof_join`, `window_join`, `markouts`; rules in k2_core.read.timejoins) ---------

RightSymbolOpt = Annotated[
    str | None, typer.Option("--right-symbol", help="The instrument to join to (default: SYMBOL itself).")
]
RightExchangeOpt = Annotated[
    str | None, typer.Option("--right-exchange", help="Its exchange (default: the trades' exchange).")
]


def _joined(
    pages: Callable[[int | None, str | None], QueryResult],
    what: str,
    limit: int | None,
    fmt: OutputFormat,
    output: Path | None,
    page_size: int,
) -> None:
    """Show one page, or export every page (of `page_size` trades each) to --output or stdout."""
    try:
        if output is not None or fmt != OutputFormat.table:
            _export(
                lambda cursor: pages(page_size, cursor), _export_format(fmt), output, total=None, limit=limit, what=what
            )
            return
        result = pages(limit, None)
    except QueryError as exc:
        raise _fail(exc) from None
    assert result.window is not None
    caption = f"{result.table.num_rows} rows; {_provenance(result)}"
    if result.next_cursor is not None:
        caption += " (more rows: narrow the window, raise --limit, or export with --output)"
    title = f"{what} [{_cell(result.window.start)}, {_cell(result.window.end)})"
    _render(result.table, title, hide=("exchange", "ingestion_timestamp", "trade_id"), caption=caption)


@app.command()
def asof(
    exchange: ExchangeOpt,
    symbol: Annotated[
        str | None,
        typer.Argument(
            help="Uppercase ticker of the trades. Omitted: every trade of the exchange, each joined to its own "
            "instrument's quotes.",
            show_default=False,
        ),
    ] = None,
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = None,
    right_symbol: RightSymbolOpt = None,
    right_exchange: RightExchangeOpt = None,
    right_kind: Annotated[str, typer.Option("--right-kind", help="quotes or trades: what to join to.")] = "quotes",
    direction: Annotated[str, typer.Option(help="backward, forward or nearest (tie: backward).")] = "backward",
    tolerance: Annotated[str | None, typer.Option(help="Farthest match kept, e.g. 500ms, 2s (at most 1d).")] = None,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    as_of_snapshot: SnapshotOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """Each trade of SYMBOL (or of the whole exchange) joined as of its time to a quote (or trade) of an instrument
    (default: its own)."""
    with _engine() as engine:
        _joined(
            lambda size, cursor: engine.asof_join(
                symbol, exchange, start, end, size,
                right_symbol=right_symbol, right_exchange=right_exchange, right_kind=right_kind, direction=direction,
                tolerance=tolerance, cursor=cursor, as_of=_as_of(as_of_snapshot, as_of),
            ),
            f"as-of {direction} {symbol or 'every symbol'}@{exchange}", limit, fmt, output, engine.limits.max_limit,
        )  # fmt: skip


@app.command()
def window(
    symbol: Annotated[str, typer.Argument(help="Uppercase ticker of the trades.", show_default=False)],
    exchange: ExchangeOpt,
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = None,
    before: Annotated[str, typer.Option(help="Window start before each trade, e.g. 1s.")] = "1s",
    after: Annotated[str, typer.Option(help="Window end after each trade, e.g. 1s.")] = "1s",
    prevailing: Annotated[
        bool, typer.Option("--prevailing", help="kdb+ wj: also count the quote in force at t - before.")
    ] = False,
    right_symbol: RightSymbolOpt = None,
    right_exchange: RightExchangeOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    as_of_snapshot: SnapshotOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """Each trade of SYMBOL with statistics of the quotes timed in [t - before, t + after] (kdb+ wj1; wj with
    --prevailing)."""
    with _engine() as engine:
        _joined(
            lambda size, cursor: engine.window_join(
                symbol, exchange, start, end, size,
                before=before, after=after, prevailing=prevailing, right_symbol=right_symbol,
                right_exchange=right_exchange, cursor=cursor, as_of=_as_of(as_of_snapshot, as_of),
            ),
            f"window -{before}/+{after} {symbol}@{exchange}", limit, fmt, output, engine.limits.max_limit,
        )  # fmt: skip


@app.command()
def markouts(
    exchange: ExchangeOpt,
    symbols: Annotated[
        str | None,
        typer.Argument(help="Ticker or comma list; leave out for every symbol of the exchange.", show_default=False),
    ] = None,
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = None,
    horizons: Annotated[str, typer.Option(help="Comma list of horizons, e.g. 1s,5s,60s (each at most 1d).")] = (
        "1s,5s,60s"
    ),
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    as_of_snapshot: SnapshotOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """Markouts: the mid in force at t + h per horizon, and (mid - price) signed by side, in price and in bps."""
    with _engine() as engine:
        _joined(
            lambda size, cursor: engine.markouts(
                symbols, exchange, start, end, size,
                horizons=horizons, cursor=cursor, as_of=_as_of(as_of_snapshot, as_of),
            ),
            f"markouts {symbols or '*'}@{exchange}", limit, fmt, output, engine.limits.max_limit,
        )  # fmt: skip
