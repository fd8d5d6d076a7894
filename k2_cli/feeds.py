"""Feed commands: `k2 simulate` (synthetic exchange feeds with injected faults) and `k2 replay-file`
(recorded exchange dumps). Both produce through the same Kafka producer path as a real feed handler."""

from __future__ import annotations

import logging
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from k2_core.exceptions import ConfigError, K2Error
from k2_core.logging import configure_logging
from k2_core.settings import Settings

if TYPE_CHECKING:
    from k2_core.model.topics import TopicLayout
    from k2_stream.replay import BadLine, ReplaySummary
    from k2_stream.simulator.run import SimulationSummary

# Withheld sequence numbers / skipped line numbers shown per summary line before eliding the rest.
SHOWN_NUMBERS = 20


def _consoles() -> tuple[Console, Console]:
    """Created per command so they write to whatever stdout/stderr are at call time (CliRunner swaps them);
    soft wrap keeps messages on one line so line numbers and paths stay greppable."""
    return Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)


def _start(component: str) -> Settings:
    """Build the settings once for the command and set up JSON logs, unless the host process (a test run,
    an embedding application) already configured logging, which must not be clobbered."""
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise typer.BadParameter(f"invalid K2_* settings: {exc}") from exc
    if not logging.getLogger().handlers:
        configure_logging(component, settings.log_level)
    return settings


def _layout(settings: Settings) -> TopicLayout:
    from k2_stream.admin import load_layout

    try:
        return load_layout(settings)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _check_exchange(layout: TopicLayout, exchange: str) -> None:
    if exchange not in layout.exchanges:
        raise typer.BadParameter(
            f"unknown exchange {exchange!r}; known: {', '.join(sorted(layout.exchanges))}",
            param_hint="--exchange",
        )


WAIT_HELP = (
    "Wait until the ingester has committed every message produced (the embedded broker keeps messages in memory "
    "only, so they are safe only then). Default: on for a run that ends by itself."
)
WAIT_TIMEOUT_HELP = "Give up waiting after this many seconds (exit code 1: not yet committed)."


def _acknowledge(
    settings: Settings, delivered: dict[tuple[str, int], array[int]], cluster: str, timeout: float, err: Console
) -> None:
    """Wait for the ingester to commit what was produced; print "N produced, N committed" or what went wrong and
    exit non-zero (re-running the same command is safe: dedup drops what was already stored)."""
    from k2_stream.acks import wait_until_committed

    def progress(committed: int, produced: int) -> None:
        err.print(f"waiting for the ingester: {committed:,} of {produced:,} committed (is `k2 run` running?)")

    ack = wait_until_committed(settings, delivered, cluster, timeout, progress)
    err.print(f"{ack.produced:,} produced, {ack.committed:,} committed")
    if ack.broker_restarted:
        err.print(
            f"[red]the broker restarted before the ingester committed everything: {ack.lost:,} messages were lost "
            "with it. Run the same command again; what was already stored is dropped as duplicates.[/red]"
        )
        raise typer.Exit(1)
    if ack.timed_out:
        err.print(
            f"[red]{ack.produced - ack.committed:,} messages not committed after {timeout:.0f}s: they are in Kafka "
            "but not yet in Iceberg. Is the ingester running, or its partition halted on a gap? `k2 status` says. "
            "(--wait-timeout, --no-wait)[/red]"
        )
        raise typer.Exit(1)


def _numbers(values: list[int]) -> str:
    shown = ", ".join(str(v) for v in values[:SHOWN_NUMBERS])
    return shown + (f", … ({len(values) - SHOWN_NUMBERS} more)" if len(values) > SHOWN_NUMBERS else "")


def _print_simulation(console: Console, summary: SimulationSummary) -> None:
    table = Table(title=f"simulated {summary.exchange} feed")
    table.add_column("stream")
    table.add_column("sent", justify="right")
    table.add_column("withheld sequence numbers")
    for stream in sorted(set(summary.sent) | set(summary.withheld)):
        table.add_row(str(stream), str(summary.sent.get(stream, 0)), _numbers(summary.withheld.get(stream, [])))
    console.print(table)
    withheld = sum(len(v) for v in summary.withheld.values())
    console.print(
        f"trades generated: {summary.trades_generated}, quotes generated: {summary.quotes_generated}, "
        f"messages sent: {summary.messages_sent}, withheld: {withheld}, duplicates sent: {summary.duplicates}, "
        f"reorders: {summary.reorders}, elapsed: {summary.elapsed_seconds:.1f}s"
        + (" (interrupted)" if summary.interrupted else "")
    )
    if summary.recovery_file is not None:
        console.print(f"withheld records recoverable from {escape(str(summary.recovery_file))}")


def simulate(
    exchange: Annotated[str, typer.Option("--exchange", "-e", help="Exchange from config/kafka/topics.yaml.")] = "asx",
    rate: Annotated[float, typer.Option(min=0, help="Trades per second across all symbols (0: unthrottled).")] = 1000,
    duration: Annotated[float | None, typer.Option(min=0, help="Stop after this many seconds.")] = None,
    count: Annotated[int | None, typer.Option(min=0, help="Stop after this many trades in total.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for a reproducible market.")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma-separated subset, e.g. BHP,CBA.")] = None,
    quotes: Annotated[bool, typer.Option("--quotes/--no-quotes", help="Emit a quote update before each trade.")] = True,
    books: Annotated[
        bool, typer.Option("--books/--no-books", help="Also publish level-2 book snapshots and updates.")
    ] = False,
    book_gap_every: Annotated[int, typer.Option(min=0, help="Withhold every Nth book update of each symbol.")] = 0,
    gap_every: Annotated[int, typer.Option(min=0, help="Withhold every Nth sequence number of each stream.")] = 0,
    duplicate_every: Annotated[int, typer.Option(min=0, help="Send every Nth message of a stream twice.")] = 0,
    reorder_every: Annotated[int, typer.Option(min=0, help="Swap every Nth message with its stream's next.")] = 0,
    wait: Annotated[bool | None, typer.Option("--wait/--no-wait", help=WAIT_HELP)] = None,
    wait_timeout: Annotated[float, typer.Option(min=0, help=WAIT_TIMEOUT_HELP)] = 300.0,
) -> None:
    """Produce a simulated exchange feed with optional injected faults.

    Runs until Ctrl-C (or SIGTERM) when neither --duration nor --count is given.
    """
    from k2_stream.simulator import FaultConfig, SimulatorConfig, instruments_for, simulated_exchanges
    from k2_stream.simulator.run import run_simulation

    out, err = _consoles()
    settings = _start("simulator")
    _check_exchange(_layout(settings), exchange)
    if exchange not in simulated_exchanges():
        raise typer.BadParameter(
            f"no simulator for {exchange!r}; simulated: {', '.join(simulated_exchanges())}", param_hint="--exchange"
        )
    wanted = None
    if symbols is not None:
        wanted = tuple(s.strip().upper() for s in symbols.split(",") if s.strip())
        try:
            instruments_for(exchange, wanted)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--symbols") from exc
    try:
        faults = FaultConfig(gap_every=gap_every, duplicate_every=duplicate_every, reorder_every=reorder_every)
        book_faults = FaultConfig(gap_every=book_gap_every)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    config = SimulatorConfig(
        exchange=exchange, symbols=wanted, quotes=quotes, seed=seed, faults=faults, books=books, book_faults=book_faults
    )
    if wait is None:
        wait = count is not None or duration is not None
    try:
        summary = run_simulation(settings, config, rate=rate, duration=duration, count=count, track_deliveries=wait)
    except K2Error as exc:
        err.print(f"[red]simulation failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    _print_simulation(out, summary)
    if wait:
        _acknowledge(settings, summary.delivered, summary.cluster_id, wait_timeout, err)


def _print_replay(console: Console, summary: ReplaySummary) -> None:
    console.print(
        f"produced {summary.produced} rows from {escape(str(summary.path))} "
        f"in {summary.elapsed_seconds:.1f}s; skipped {len(summary.skipped)} lines"
        + (f": {_numbers(summary.skipped_lines)}" if summary.skipped else "")
        + (" (interrupted)" if summary.interrupted else "")
    )


def replay_file(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Recorded file (.csv/.zip).")
    ],
    symbol: Annotated[str, typer.Option(help="Symbol the file holds, e.g. BTCUSDT.")],
    exchange: Annotated[str, typer.Option("--exchange", "-e", help="Exchange to publish as.")] = "binance",
    fmt: Annotated[str, typer.Option("--format", help="File format.")] = "binance-trades",
    rate: Annotated[float | None, typer.Option(min=0, help="Rows per second (default: as fast as possible).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help=WAIT_HELP)] = True,
    wait_timeout: Annotated[float, typer.Option(min=0, help=WAIT_TIMEOUT_HELP)] = 300.0,
    per_line: Annotated[
        bool,
        typer.Option(
            "--per-line",
            help="Parse and encode line by line (the reference path; about a tenth of the columnar path's speed).",
        ),
    ] = False,
) -> None:
    """Replay a recorded exchange file into Kafka, then wait until the ingester has committed it.

    Malformed lines are reported with their line numbers and skipped; they do not change the exit code, so one
    broken row in a public dump does not fail a pipeline. The exit code is 1 when the file cannot be read, or
    when what was produced is not committed (the broker restarted, or the wait timed out): run it again, dedup
    makes that safe.
    """
    from k2_stream.replay import SYMBOL_PATTERN, replay_formats
    from k2_stream.replay import replay_file as run_replay

    out, err = _consoles()
    known = replay_formats(per_line)
    if fmt not in known:
        raise typer.BadParameter(f"unknown format {fmt!r}; known: {', '.join(known)}", param_hint="--format")
    if not SYMBOL_PATTERN.match(symbol):
        raise typer.BadParameter(f"{symbol!r} must match {SYMBOL_PATTERN.pattern}", param_hint="--symbol")
    settings = _start("replay")
    _check_exchange(_layout(settings), exchange)

    def report(bad: BadLine) -> None:
        err.print(f"[yellow]skipped line {bad.line_number}:[/yellow] {escape(bad.reason)}")

    try:
        summary = run_replay(
            settings, path, exchange=exchange, symbol=symbol, fmt=fmt, rate=rate, on_bad_line=report, per_line=per_line
        )
    except K2Error as exc:
        err.print(f"[red]replay failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    _print_replay(out, summary)
    if wait:
        _acknowledge(settings, summary.delivered, summary.cluster_id, wait_timeout, err)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `k2` app."""
    app.command("simulate")(simulate)
    app.command("replay-file")(replay_file)
