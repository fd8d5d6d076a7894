"""`k2 audit tail [-n N] [--follow]`: the API's audit log (who read what, when, how many rows)."""

from __future__ import annotations

import json
import time
from datetime import UTC
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.text import Text

from k2_core.exceptions import AuditError

if TYPE_CHECKING:
    from k2_core.access.audit import AuditEntry

app = typer.Typer(help="The API's audit log in the catalog database.", no_args_is_help=True)


def _line(entry: AuditEntry) -> Text:
    at = entry.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    params = json.dumps(entry.params, sort_keys=True, separators=(",", ":"))
    rows = "-" if entry.rows is None else str(entry.rows)
    style = "red" if entry.status >= 400 else ""
    return Text(
        f"{at} {entry.principal} {entry.method} {entry.route} {params} -> {entry.status} rows={rows} "
        f"{entry.duration_ms:.1f}ms client={entry.client or '-'} request_id={entry.request_id or '-'}",
        style=style,
    )


@app.command()
def tail(
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many of the latest entries.")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new entries until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls with --follow.")] = 1.0,
) -> None:
    """The latest audit entries, oldest first; with --follow, new ones as they are appended."""
    from k2_core.access.audit import AuditLog
    from k2_core.lake.sqldb import catalog_engine
    from k2_core.settings import Settings

    console = Console(soft_wrap=True)
    engine = catalog_engine(Settings())
    try:
        log = AuditLog(engine)
        entries = log.tail(lines)
        last = entries[-1].id if entries else 0
        for entry in entries:
            console.print(_line(entry))
        while follow:
            time.sleep(interval)
            for entry in log.tail(1000, after_id=last):
                console.print(_line(entry))
                last = entry.id
    except AuditError as exc:
        Console(stderr=True).print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()
