"""`k2` entry point. Each command group lives in its own module; heavy imports happen inside commands."""

from __future__ import annotations

import typer

from k2_cli import audit, dagster, feeds, imports, instruments, keys, platform, query, schemas, sql, status

app = typer.Typer(help="K2 market-data lakehouse.", no_args_is_help=True, pretty_exceptions_enable=False)
platform.register(app)
feeds.register(app)
imports.register(app)
status.register(app)
sql.register(app)
app.add_typer(query.app, name="query")
app.add_typer(instruments.app, name="instruments")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(dagster.app, name="dagster")
app.add_typer(schemas.app, name="schemas")

if __name__ == "__main__":
    app()
