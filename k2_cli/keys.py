"""`k2 keys create|list|revoke`: API keys for the query API, kept hashed in the catalog database.

`create` prints the token once, alone on stdout (`TOKEN=$(k2 keys create ...)`), and everything else on
stderr; K2 keeps only its SHA-256, so a lost token is replaced, not recovered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from k2_core.exceptions import ApiKeyError

if TYPE_CHECKING:
    from k2_core.access.auth import KeyStore

app = typer.Typer(help="API keys: create (the token is shown once), list, revoke.", no_args_is_help=True)
EXIT_BAD_INPUT = 2
err = Console(stderr=True)


@contextmanager
def _store() -> Iterator[KeyStore]:
    from k2_core.access.auth import KeyStore
    from k2_core.lake.sqldb import catalog_engine
    from k2_core.settings import Settings

    engine = catalog_engine(Settings())
    try:
        yield KeyStore(engine)
    except ApiKeyError as exc:
        err.print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    finally:
        engine.dispose()


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else ""


@app.command()
def create(
    name: Annotated[str, typer.Option(help="Who or what uses the key; shown in the audit log.", show_default=False)],
    scope: Annotated[
        list[str],
        typer.Option(
            help="Repeatable (or comma-separated): read:trades:<exchange>, read:trades:*, read:quotes:<exchange>, "
            "read:quotes:*, read:gaps, read:snapshots, admin.",
            show_default=False,
        ),
    ],
    expires: Annotated[
        str | None,
        typer.Option(help="90d, 12h, 30m or an ISO-8601 date. Default: settings.auth.key_default_ttl_days."),
    ] = None,
) -> None:
    """Create a key and print its token (once)."""
    from k2_core.access.auth import parse_expiry
    from k2_core.settings import Settings

    now = datetime.now(UTC)
    with _store() as store:
        expires_at = (
            parse_expiry(expires, now) if expires else now + timedelta(days=Settings().auth.key_default_ttl_days)
        )
        scopes = [s for value in scope for s in value.replace(",", " ").split()]
        key, token = store.create(name, scopes, expires_at)
    err.print(f"API key [bold]{key.key_id}[/] for {key.name}: {' '.join(key.scopes)}; expires {_when(key.expires_at)}")
    err.print("Store this token now: K2 keeps only its hash and cannot show it again.")
    typer.echo(token)


@app.command("list")
def list_keys() -> None:
    """Every key: id, name, scopes, expiry and state (tokens are never shown)."""
    with _store() as store:
        keys = store.list()
    now = datetime.now(UTC)
    table = Table(title="API keys", caption=f"{len(keys)} keys")
    for column in ("id", "name", "scopes", "created", "expires", "state"):
        table.add_column(column, overflow="fold")
    for key in keys:
        state = key.state(now)
        style = {"active": "green", "expired": "yellow", "revoked": "red"}[state]
        table.add_row(
            key.key_id,
            Text(key.name),
            " ".join(key.scopes),
            _when(key.created_at),
            _when(key.expires_at),
            Text(state, style=style),
        )
    Console().print(table)


@app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `k2 keys list`).", show_default=False)],
) -> None:
    """Revoke a key; it is refused from the next request on."""
    with _store() as store:
        key = store.revoke(key_id)
    err.print(f"revoked API key {key.key_id} ({key.name}) at {_when(key.revoked_at)}")
