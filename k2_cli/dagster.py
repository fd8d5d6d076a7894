"""`k2 dagster code-server|webserver|daemon|liveness-check`: one Dagster process on K2's instance configuration,
as the compose services run them. Each writes `$DAGSTER_HOME/dagster.yaml` from the settings (k2_dagster.launcher),
then becomes the Dagster process itself (exec), so signals reach Dagster directly. `k2 run` starts the code server,
the webserver and the daemon the same way."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from k2_dagster.launcher import Role

app = typer.Typer(
    help="The Dagster webserver and daemon on K2's instance configuration (what docker-compose runs).",
    no_args_is_help=True,
)


def _exec(role: Role, bind: str | None = None) -> None:
    from k2_core.settings import Settings
    from k2_dagster.launcher import dagster_process

    proc = dagster_process(Settings(), os.environ, role, bind)
    os.chdir(proc.cwd)
    os.execve(proc.argv[0], proc.argv, proc.env)  # noqa: S606 - argv is the launcher's, no user input


@app.command("code-server")
def code_server(
    host: str | None = typer.Option(
        None, help="Listen here instead of K2_MAINTENANCE_DAGSTER_CODE_HOST (a container's 0.0.0.0)."
    ),
) -> None:
    """Serve K2's Dagster definitions to the webserver and the daemon on K2_MAINTENANCE_DAGSTER_CODE_HOST:PORT."""
    _exec("code-server", host)


@app.command()
def webserver() -> None:
    """Serve the Dagster UI on K2_MAINTENANCE_DAGSTER_HOST:K2_MAINTENANCE_DAGSTER_PORT."""
    _exec("webserver")


@app.command()
def daemon() -> None:
    """Run the Dagster daemon: sensors, schedules and the run queue."""
    _exec("daemon")


@app.command("liveness-check")
def liveness_check() -> None:
    """Exit 0 when the daemon has heartbeated recently (compose's healthcheck of the daemon)."""
    _exec("liveness-check")
