"""`k2 import`: historical files straight into the Iceberg tables (k2_core.ingest.importer), no Kafka on the way."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from k2_core.exceptions import ConfigError, K2Error
from k2_core.logging import configure_logging
from k2_core.settings import Settings

if TYPE_CHECKING:
    from k2_core.ingest.importer import FileReport
    from k2_core.ingest.importer import Progress as ImportProgress

SHOWN_PROBLEMS = 20  # bad and rejected rows printed per file before eliding the rest


def parse_mapping(text: str | None) -> dict[str, str]:
    """`price=px,volume=qty` -> {"price": "px", "volume": "qty"}."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for pair in text.split(","):
        column, sep, source = pair.partition("=")
        if not sep or not column.strip() or not source.strip():
            raise typer.BadParameter(f"{pair!r} is not K2_COLUMN=SOURCE_COLUMN", param_hint="--map")
        mapping[column.strip()] = source.strip()
    return mapping


def import_files(
    sources: Annotated[
        list[str],
        typer.Argument(help="Files, folders or globs (quote them): plain, .gz or .zip; imported in date order."),
    ],
    fmt: Annotated[str, typer.Option("--format", "-f", help="File format (`k2 import --formats` lists them).")],
    exchange: Annotated[str, typer.Option("--exchange", "-e", help="Exchange the rows belong to.")],
    symbol: Annotated[
        str | None,
        typer.Option(help="Symbol, for formats whose rows carry none (default: from each file name, e.g. BTCUSDT)."),
    ] = None,
    mapping: Annotated[
        str | None, typer.Option("--map", help="Generic formats: K2 column=file column, comma separated.")
    ] = None,
    time_unit: Annotated[
        str | None, typer.Option(help="Generic formats: unit of integer times (s, ms, us, ns).")
    ] = None,
    time_zone: Annotated[str, typer.Option(help="Generic formats: zone of times written without one.")] = "UTC",
    chunk_rows: Annotated[
        int | None,
        typer.Option(min=1000, help="Rows per commit (default 1,048,576; 131,072 for book files)."),
    ] = None,
) -> None:
    """Import historical files into K2's tables by the ingester's rules: duplicates dropped (against what is
    stored too), sequence gaps recorded and graded, late numbers filling recorded gaps. Book formats
    (tardis-book-l2, tardis-book-snapshot, databento-mbp10) fill the book tables by the book ingester's rules.

    Resumable: a file already imported is skipped; an import interrupted mid-file resumes after its last
    committed chunk, without duplicates. Safe beside a running ingester. Unreadable rows and rows that break the
    record rules are reported and skipped; they do not change the exit code. The exit code is 1 when a file
    cannot be read or written.
    """
    from k2_core.ingest.book_importer import BOOK_CHUNK_ROWS, BookImporter
    from k2_core.ingest.formats import BookFileFormat, ReadOptions, any_format
    from k2_core.ingest.formats.sources import expand
    from k2_core.ingest.importer import Importer
    from k2_core.read.params import EXCHANGE_PATTERN
    from k2_core.upkeep.book_snapshots import import_book_file

    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    try:
        spec = any_format(fmt)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--format") from exc
    if not EXCHANGE_PATTERN.fullmatch(exchange):
        raise typer.BadParameter(f"{exchange!r} must match {EXCHANGE_PATTERN.pattern}", param_hint="--exchange")
    columns = parse_mapping(mapping)
    try:
        paths = [p for source in sources for p in expand(source)]
    except K2Error as exc:
        raise typer.BadParameter(str(exc), param_hint="SOURCES") from exc
    if not paths:
        raise typer.BadParameter(f"no files match {' '.join(sources)}", param_hint="SOURCES")
    settings = _start()
    import_one: Callable[..., FileReport]
    try:
        # Book formats go to the book tables, by the book ingester's rules; the others to trades or quotes.
        if isinstance(spec, BookFileFormat):
            import_one = partial(import_book_file, BookImporter(settings), fmt=spec)
        else:
            import_one = partial(Importer(settings).import_file, fmt=spec)
    except K2Error as exc:
        err.print(f"[red]cannot open the catalog:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    reports: list[FileReport] = []
    sizes = {path: path.stat().st_size for path in paths}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]:>14,} rows"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        # The bar moves by files done (their bytes); the row count by every committed chunk.
        task = bar.add_task(f"{len(paths)} files", total=sum(sizes.values()), rows=0)
        for path in paths:
            bar.update(task, description=escape(path.name))
            done = sum(r.rows_read for r in reports)

            def advanced(progress: ImportProgress, done: int = done) -> None:
                bar.update(task, rows=done + progress.report.rows_read)

            try:
                options = ReadOptions(
                    exchange=exchange,
                    symbol=symbol,
                    chunk_rows=chunk_rows or (BOOK_CHUNK_ROWS if isinstance(spec, BookFileFormat) else 1 << 20),
                    mapping=columns,
                    time_unit=time_unit,
                    time_zone=time_zone,
                )
                report = import_one(path, options=options, progress=advanced)
            except K2Error as exc:
                err.print(f"[red]import of {escape(str(path))} failed:[/red] {escape(str(exc))}")
                _print_summary(out, reports)
                raise typer.Exit(1) from exc
            bar.update(task, advance=sizes[path], rows=done + report.rows_read)
            reports.append(report)
            _print_problems(err, report)
    _print_summary(out, reports)


def _start() -> Settings:
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise typer.BadParameter(f"invalid K2_* settings: {exc}") from exc
    if not logging.getLogger().handlers:
        configure_logging("import", settings.log_level)
    return settings


def _print_problems(err: Console, report: FileReport) -> None:
    for bad in report.bad[:SHOWN_PROBLEMS]:
        err.print(f"[yellow]{escape(report.path.name)} line {bad.line}:[/yellow] {escape(bad.reason)}")
    for rejected in report.rejected[: max(0, SHOWN_PROBLEMS - len(report.bad))]:
        err.print(
            f"[yellow]{escape(report.path.name)} {escape(rejected.symbol)} #{rejected.sequence}:[/yellow] "
            f"{escape(rejected.reason)}"
        )
    hidden = len(report.bad) + len(report.rejected) - SHOWN_PROBLEMS
    if hidden > 0:
        err.print(f"[yellow]{escape(report.path.name)}: {hidden} more rows skipped (see the JSON log)[/yellow]")


def _print_summary(out: Console, reports: list[FileReport]) -> None:
    table = Table("file", "rows read", "written", "duplicates", "gaps", "bad", "rejected", "seconds", "")
    for r in reports:
        note = "already imported" if r.skipped else (f"resumed at row {r.resumed_at:,}" if r.resumed_at else "")
        table.add_row(
            escape(r.path.name),
            f"{r.rows_read:,}",
            f"{r.written:,}",
            f"{r.duplicates:,}",
            f"{r.gaps:,}",
            f"{len(r.bad):,}",
            f"{len(r.rejected):,}",
            f"{r.seconds:.1f}",
            note,
        )
    out.print(table)
    read, written = sum(r.rows_read for r in reports), sum(r.written for r in reports)
    seconds = sum(r.seconds for r in reports)
    rate = f" ({read / seconds:,.0f} rows/s)" if seconds > 0 else ""
    out.print(f"{len(reports)} files: {read:,} rows read, {written:,} written in {seconds:.1f}s{rate}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `k2` app."""
    app.command("import")(import_files)
