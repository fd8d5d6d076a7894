"""`k2 schemas list|show|check|history`: the feed schemas in the registry, a candidate version checked before it is
added, and how the tables' columns followed them.

The registry is the one K2 runs with: the file-backed one (`schemas/avro/registry.yaml`), or Confluent's when
`K2_KAFKA_SCHEMA_REGISTRY_URL` is set. `check` applies K2's rule (k2_core.model.compat): a new version must read
every registered version's data (BACKWARD); it exits 1 with the reasons when it does not.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from k2_core.exceptions import ConfigError, K2Error, SchemaRegistryError

if TYPE_CHECKING:
    from k2_core.model.registry import SchemaRegistry

app = typer.Typer(
    help="Feed schemas: list, show, check a new version (BACKWARD), and the tables' schema history.",
    no_args_is_help=True,
)
EXIT_INCOMPATIBLE, EXIT_BAD_INPUT = 1, 2


def out() -> Console:
    """A console per call: it reads the terminal's width (COLUMNS) as it is when the command runs."""
    return Console()


def err() -> Console:
    return Console(stderr=True)


def _registry() -> SchemaRegistry:
    from k2_core.settings import Settings
    from k2_stream.registry_confluent import make_registry

    settings = Settings()
    try:
        return make_registry(settings.kafka.schema_registry_url, settings.kafka.schemas_dir)
    except ConfigError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err().print(Text(f"error: {message}", style="bold red"))
    raise typer.Exit(code)


def _versions(registry: SchemaRegistry, subject: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        versions = registry.versions(subject)
    except SchemaRegistryError as exc:
        _fail(f"{exc} (`k2 schemas list` shows the subjects)")
    if not versions:
        _fail(f"subject {subject} has no registered version")
    return versions


@app.command("list")
def list_subjects() -> None:
    """Every subject, its versions and their schema ids (oldest first)."""
    registry = _registry()
    try:
        subjects = registry.subject_names()
        rows = [(subject, registry.versions(subject)) for subject in subjects]
    except K2Error as exc:
        _fail(str(exc))
    table = Table(title="schema registry", caption=f"{len(rows)} subjects")
    for column in ("subject", "versions", "schema ids", "newest", "fields (newest)"):
        table.add_column(column, overflow="fold")
    for subject, versions in rows:
        newest = versions[-1][1] if versions else {}
        table.add_row(
            subject,
            str(len(versions)),
            ", ".join(f"v{n}: {sid}" for n, (sid, _) in enumerate(versions, start=1)),
            f"{newest.get('name', '')} v{len(versions)}",
            str(len(newest.get("fields", []))),
        )
    out().print(table)


@app.command()
def show(
    subject: Annotated[str, typer.Argument(help="A subject, e.g. market.equities.trades-value.", show_default=False)],
    version: Annotated[int | None, typer.Option(min=1, help="1-based version (default: the newest).")] = None,
) -> None:
    """Print one version of a subject's schema (JSON on stdout; which version it is on stderr)."""
    versions = _versions(_registry(), subject)
    number = version or len(versions)
    if number > len(versions):
        _fail(f"{subject} has {len(versions)} versions, not {number}")
    schema_id, schema = versions[number - 1]
    err().print(f"{escape(subject)}: version {number} of {len(versions)}, schema id {schema_id}")
    typer.echo(json.dumps(schema, indent=2))


@app.command()
def check(
    candidate: Annotated[Path, typer.Argument(help="The new .avsc file.", show_default=False)],
    subject: Annotated[str, typer.Option(help="The subject it would become a version of.", show_default=False)],
) -> None:
    """Whether CANDIDATE reads every registered version of SUBJECT (BACKWARD); exit 1 with the reasons if not."""
    import fastavro

    from k2_core.model.compat import check_subject

    try:
        schema = json.loads(candidate.read_text())
        fastavro.parse_schema(schema, _write_hint=False)
    except OSError as exc:
        _fail(f"cannot read {candidate}: {exc}")
    except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
        _fail(f"{candidate} is not a valid Avro schema: {exc}")
    verdict = check_subject(subject, schema, _versions(_registry(), subject))
    checked = ", ".join(f"v{v.version} (id {v.schema_id})" for v in verdict.verdicts)
    if verdict.compatible:
        out().print(
            f"[green]compatible[/]: {escape(str(candidate))} reads every registered version of {subject}: {checked}"
        )
        return
    out().print(f"[bold red]NOT BACKWARD compatible[/]: {escape(str(candidate))} as a new version of {subject}")
    out().print(escape(verdict.explain()), highlight=False)
    raise typer.Exit(EXIT_INCOMPATIBLE)


@app.command()
def history(
    table_name: Annotated[str, typer.Argument(metavar="trades|quotes", help="The market table.", show_default=False)],
) -> None:
    """The table's schema history: each schema id, the columns it added, when, by which writer, at which snapshot."""
    from k2_core.lake.catalog import open_catalog
    from k2_core.lake.evolution import table_history
    from k2_core.model.tables import MARKET_TABLES
    from k2_core.settings import Settings

    table_def = MARKET_TABLES.get(table_name)  # type: ignore[call-overload]
    if table_def is None:
        _fail(f"no market table {table_name!r}: trades or quotes")
    settings = Settings()
    try:
        changes = table_history(open_catalog(settings), settings.catalog.namespace, table_def)
    except K2Error as exc:
        _fail(str(exc))
    if changes is None:
        _fail(f"{settings.catalog.namespace}.{table_name} does not exist yet (nothing was ingested)", 1)
    table = Table(title=f"{settings.catalog.namespace}.{table_name} schema history", caption=f"{len(changes)} schemas")
    for column in ("schema", "columns added", "at", "by", "after snapshot", "first snapshot", "snapshots"):
        table.add_column(column, overflow="fold")
    for change in changes:
        added = "(created) " + ", ".join(change.columns) if change is changes[0] else ", ".join(change.added)
        if change.removed:
            added += f"; removed {', '.join(change.removed)}"
        table.add_row(
            f"{change.schema_id}{' (current)' if change.current else ''}",
            added,
            _when(change.at),
            change.by or "",
            str(change.after_snapshot or ""),
            str(change.first_snapshot or ""),
            str(change.snapshots),
        )
    out().print(table)


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%fZ") if moment else ""
