"""`k2 status`: one screen of what is running and whether it is healthy; its exit code is the same check for scripts.

What it reads (each process's own endpoints and the catalog, all at once, each within a short timeout) is in
`k2_cli.probes`; this module decides what is wrong (`problems`) and shows it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from k2_cli.probes import Report, gather
from k2_core.ingest.degradation import Level
from k2_core.settings import Settings

EXIT_OK, EXIT_PROBLEM = 0, 1
SHEDDING_LEVEL = int(Level.SHED_SYMBOLS)
LAG_WARN_SECONDS = 60.0  # KafkaConsumerLagHigh's threshold: shown in red, judged by the alert
BOOK_UNKNOWN_LIMIT_SECONDS = 600.0  # BookUnknownTooLong's threshold: a book unknown longer is a problem here too
GAP_SEVERITIES = ("warning", "alert", "halt")  # k2_core.ingest.gaps' grades (that module loads pyiceberg: slow)

HELP = "\n\n".join(
    [
        "One screen of what is running: each process with its uptime and restarts, consumer lag per topic, the last "
        "commit and snapshot count per table, open gaps by severity, halted partitions and the degradation level.",
        "It reads `k2 run`'s /health (K2_SUPERVISOR_PORT), the ingester's /health and /metrics "
        "(K2_INGEST_METRICS_PORT), the book ingester's (K2_INGEST_BOOK_METRICS_PORT), in coordinated mode the "
        "committer's (K2_INGEST_COMMITTER_METRICS_PORT), the API's /health, Dagster's "
        "/server_info and the catalog, so it works the same whether `k2 run` started the platform or the processes "
        "run on their own (docker compose). The processes expected are those `k2 run` reports; without `k2 run`, "
        "the broker, ingester, book ingester, API and Dagster webserver (--no-dagster leaves Dagster out).",
        "Exit code 0 when everything expected is up and healthy; 1 when anything is wrong, and the output says what: "
        "a process is down or its endpoint does not answer, `k2 run` is stopping, the ingester's circuit breaker is "
        "open or half-open, a partition is halted on a sequence gap, the degradation level is 3 or more (shedding "
        "symbols), the book ingester's batches keep failing, a level-2 book has been unknown (a gap no snapshot "
        "healed) for more than 10 minutes, or the catalog cannot be read (by this command or by the API). Lag, the "
        "last commit's age, open gaps and restarts are shown, not judged: the alerts in "
        "config/prometheus/alerts.yml judge those over time.",
    ]
)


def problems(report: Report) -> list[str]:
    """What is wrong, one sentence each; empty means healthy (exit code 0). The rule is in HELP above."""
    found: list[str] = []
    sup = report.supervisor
    supervised = sup is not None and sup.reachable
    if supervised and sup is not None and sup.status == "stopping":
        found.append("k2 run is stopping")
    down = [p for p in report.processes if p.up is False]
    if not supervised and down and len(down) == len(report.processes):
        where = ([sup.url] if sup is not None else []) + [p.endpoint or p.name for p in down]
        found.append(f"K2 is not running: nothing answers ({', '.join(where)}). Start it with `k2 run`.")
    else:
        found += [f"{p.name} is down: {p.detail}" for p in down]
    ing = report.ingester
    if ing is not None:
        if ing.circuit_breaker != "closed":
            found.append(
                f"ingester circuit breaker is {ing.circuit_breaker.replace('_', '-')}: Iceberg writes keep failing, "
                "nothing new lands (offsets are kept)"
            )
        elif ing.degradation_level >= SHEDDING_LEVEL:
            found.append(f"ingester at degradation level {ing.degradation_level} ({ing.degradation})")
        if ing.halted_partitions:
            found.append(
                f"{len(ing.halted_partitions)} partition(s) halted on a sequence gap: "
                + "; ".join(f"{tp}: {why}" for tp, why in sorted(ing.halted_partitions.items()))
            )
    books = report.book_ingester
    if books is not None:
        if books.error:
            found.append(f"book ingester cannot commit, retrying: {books.error}")
        stale = {b: age for b, age in books.unknown_books.items() if age > BOOK_UNKNOWN_LIMIT_SECONDS}
        if stale:
            found.append(
                f"{len(stale)} book(s) unknown for more than {_duration(BOOK_UNKNOWN_LIMIT_SECONDS)} (a gap no "
                "snapshot has healed): " + ", ".join(f"{b} {_duration(age)}" for b, age in sorted(stale.items()))
            )
    if report.catalog.reachable is False:
        found.append(f"catalog unreachable ({report.catalog.uri}): {report.catalog.error}")
    if report.api_catalog_error is not None:
        found.append(f"the API cannot read the catalog: {report.api_catalog_error}")
    return found


# ---- the screen --------------------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _state(up: bool | None) -> Text:
    if up is None:
        return Text("unknown", style="yellow")
    return Text("up", style="green") if up else Text("DOWN", style="bold red")


def _where(endpoint: str | None) -> str:
    return "-" if endpoint is None else endpoint.removeprefix("http://")


def _processes(report: Report) -> list[Table | Text]:
    """The table, then a note on each process that is neither plainly up nor down (why a down one is down is said
    among the problems at the end)."""
    table = Table(title="processes", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("process", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("pid", justify="right")
    table.add_column("uptime", justify="right", no_wrap=True)
    table.add_column("restarts", justify="right")
    table.add_column("endpoint", overflow="fold")
    for p in report.processes:
        table.add_row(
            p.name,
            _state(p.up),
            "-" if p.pid is None else str(p.pid),
            _duration(p.uptime_seconds),
            "-" if p.restarts is None else str(p.restarts),
            _where(p.endpoint),
        )
    notes = [Text(f"  {p.name}: {p.detail}", style="yellow") for p in report.processes if p.up is None and p.detail]
    return [table, *notes]


def _ingester(report: Report) -> list[Text]:
    ing = report.ingester
    if ing is None:
        return [Text("ingester: no /health answer: degradation, breaker and halted partitions unknown")]
    level_style = "red" if ing.degradation_level >= SHEDDING_LEVEL else ("yellow" if ing.degradation_level else "")
    line = Text("ingester: ")
    line.append(f"degradation level {ing.degradation_level} ({ing.degradation})", style=level_style)
    line.append(", breaker ")
    line.append(ing.circuit_breaker, style="" if ing.circuit_breaker == "closed" else "bold red")
    line.append(f", {ing.assigned_partitions} partitions assigned, ")
    line.append(f"{len(ing.halted_partitions) or 'none'} halted", style="bold red" if ing.halted_partitions else "")
    return [line] + [Text(f"  halted {tp}: {why}", style="red") for tp, why in sorted(ing.halted_partitions.items())]


def _book_ingester(report: Report) -> list[Text]:
    books = report.book_ingester
    if books is None:
        return [Text("book ingester: no /health answer: last commit, lag and unknown books unknown")]
    line = Text("book ingester: ")
    if books.last_commit_age_seconds is None:
        line.append("no batch committed yet")
    else:
        line.append(f"last commit {_duration(books.last_commit_age_seconds)} ago")
    line.append(f", lag {books.lag_seconds:.1f}s", style="red" if books.lag_seconds >= LAG_WARN_SECONDS else "")
    line.append(f", {books.assigned_partitions} partitions assigned, ")
    unknown = books.unknown_books
    line.append(f"{len(unknown) or 'no'} unknown book(s)", style="yellow" if unknown else "")
    out = [line]
    if books.error:
        out.append(Text(f"  failing: {books.error}", style="bold red"))
    out += [
        Text(f"  unknown {b} for {_duration(age)}", style="red" if age > BOOK_UNKNOWN_LIMIT_SECONDS else "yellow")
        for b, age in sorted(unknown.items())
    ]
    return out


def _committer(report: Report) -> list[Text]:
    """Coordinated commits only: whether the committer that answers is the elected one, and its rounds."""
    c = report.committer
    if c is None:
        return []
    state = "elected" if c.elected else "a standby candidate (another committer is elected)"
    return [Text(f"committer: {state}, {c.rounds} commit rounds")]


def _lag(report: Report) -> list[Table | Text]:
    if not report.lag:
        if report.ingester is None:
            return [Text("consumer lag: unknown (the ingester's /metrics does not answer)")]
        return [Text("consumer lag: none measured yet (no batch consumed)")]
    table = Table(title="consumer lag", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("topic", overflow="fold")
    table.add_column("partitions", justify="right")
    table.add_column("lag s", justify="right")
    table.add_column("lag msgs", justify="right")
    for topic in report.lag:
        table.add_row(
            topic.topic,
            str(topic.partitions),
            Text(f"{topic.lag_seconds:.1f}", style="red" if topic.lag_seconds >= LAG_WARN_SECONDS else ""),
            "-" if topic.lag_messages is None else str(topic.lag_messages),
        )
    note = Text(
        "lag s: age of the newest message consumed, worst partition (0 = caught up); lag msgs: behind the broker's "
        "high watermark, which the embedded broker can misreport",
        style="dim",
    )
    return [table, note]


def _catalog(report: Report) -> list[Table | Text]:
    cat = report.catalog
    if cat.reachable is None:
        return [Text(f"catalog {cat.uri}: {cat.error}")]
    if not cat.reachable:
        return [Text(f"catalog {cat.uri}: unreachable: {cat.error}", style="bold red")]
    table = Table(title=f"tables ({cat.uri})", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("table", no_wrap=True)
    table.add_column("snapshots", justify="right")
    table.add_column("last commit", overflow="fold")
    table.add_column("ago", justify="right", no_wrap=True)
    table.add_column("operation")
    table.add_column("rows", justify="right")
    for t in cat.tables:
        if not t.exists:
            table.add_row(t.name, "-", "not created yet", "-", "-", "-")
            continue
        ago = (report.checked_at - t.last_commit).total_seconds() if t.last_commit is not None else None
        table.add_row(
            t.name,
            f"{t.snapshots}{'+' if t.more_snapshots else ''}",
            _time(t.last_commit),
            _duration(ago),
            t.last_operation or "-",
            "-" if t.rows is None else f"{t.rows:,}",
        )
    if cat.open_gaps is None:
        return [table, Text("open gaps: none (no sequence_gaps table yet)")]
    line = Text("open gaps: ")
    for i, severity in enumerate(GAP_SEVERITIES):
        by_exchange = cat.open_gaps.get(severity, {})
        total = sum(by_exchange.values())
        line.append(("" if i == 0 else ", ") + f"{severity} {total}", style="red" if total and i else "")
        if by_exchange:
            line.append(" (" + ", ".join(f"{e} {n}" for e, n in sorted(by_exchange.items())) + ")")
    return [table, line]


def render(report: Report, found: list[str]) -> Group:
    """The screen: what runs, the ingester's state, lag, tables and gaps, then the verdict."""
    parts: list[Table | Text] = [Text(f"K2 status at {_time(report.checked_at)}", style="bold")]
    sup = report.supervisor
    if sup is None:
        parts.append(Text("k2 run: its status endpoint is off (K2_SUPERVISOR_PORT=0); asked each process"))
    elif sup.reachable:
        parts.append(Text(f"k2 run: pid {sup.pid}, {sup.status}, home {sup.home} ({_where(sup.url)})"))
    else:
        parts.append(Text(f"k2 run: not answering at {_where(sup.url)} ({sup.error}); asked each process"))
    gap = Text("")
    parts += [gap, *_processes(report), gap, *_ingester(report), *_committer(report), *_book_ingester(report),
              *_lag(report)]  # fmt: skip
    parts += [gap, *_catalog(report), gap]
    if found:
        parts += [Text(f"PROBLEM: {problem}", style="bold red") for problem in found]
    else:
        up = sum(1 for p in report.processes if p.up)
        parts.append(Text(f"OK: {up} processes up, catalog readable", style="bold green"))
    return Group(*parts)


def _jsonable(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)
    def status(
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the report as one JSON object (same exit code).")
        ] = (False),
        dagster: Annotated[
            bool, typer.Option(help="Expect the Dagster webserver when `k2 run` does not say what it runs.")
        ] = True,
        timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for each process's endpoint.")] = 1.0,
        catalog_timeout: Annotated[
            float, typer.Option(min=0.1, help="Seconds to wait for the catalog (its tables and open gaps).")
        ] = 5.0,
    ) -> None:
        report = gather(Settings(), timeout=timeout, catalog_timeout=catalog_timeout, dagster=dagster)
        found = problems(report)
        if as_json:
            body = {"ok": not found, "problems": found, **asdict(report)}
            typer.echo(json.dumps(body, default=_jsonable, indent=2))
        else:
            Console().print(render(report, found))
        raise typer.Exit(EXIT_PROBLEM if found else EXIT_OK)
