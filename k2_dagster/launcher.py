"""How K2 starts Dagster: a code server (K2's definitions, the code location of `workspace.yaml`, loaded once on
`settings.maintenance.dagster_code_host:port`, 127.0.0.1:4000 by default), the webserver (UI on
`dagster_host:port`, 127.0.0.1:3000) and the daemon (sensors, schedules, run queue), both reading the code from
that server, with `DAGSTER_HOME` under `settings.home / "dagster"`. `k2 run` starts all three
(`dagster_processes`); the compose services run one each with `k2 dagster code-server|webserver|daemon`
(`dagster_process`).

Without the shared code server (`K2_MAINTENANCE_DAGSTER_CODE_PORT=0`) the webserver and the daemon each load
`workspace.yaml` themselves, and the daemon replaces its code process every minute (Dagster's workspace refresh):
a new process importing all of K2 each time, and a warning in its log each time.

The instance configuration, `$DAGSTER_HOME/dagster.yaml`, is written here from the settings and nowhere else. Runs,
event logs and schedule state live in PostgreSQL when `K2_MAINTENANCE_DAGSTER_POSTGRES_URL` is set (compose), in
SQLite under DAGSTER_HOME otherwise (the embedded default). The URL reaches Dagster through the child's environment
(`DAGSTER_POSTGRES_URL`), never the file, so the file and the UI's view of it hold no password.

The caller owns the processes (logs, stop order). Both stop cleanly on SIGTERM. Runs launched by the daemon inherit
the environment, so they read the same `K2_*` settings and reach the same storage.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from sqlalchemy.engine import make_url

from k2_core.settings import REPO_ROOT, Settings

WORKSPACE = REPO_ROOT / "workspace.yaml"
# The environment variable the launcher hands the storage URL over in; set by the launcher, not a setting.
POSTGRES_URL_ENV = "DAGSTER_POSTGRES_URL"

Role = Literal["code-server", "webserver", "daemon", "liveness-check"]

# Instance configuration shared by both storages: no telemetry, bounded concurrency per kind of K2 job (the
# `k2/job` tag), and sensor/schedule tick history pruned (the sensors tick every 30 s to 10 min).
INSTANCE: dict[str, Any] = {
    "telemetry": {"enabled": False},
    "run_queue": {
        "max_concurrent_runs": 4,
        "tag_concurrency_limits": [
            {"key": "k2/job", "value": "compaction", "limit": 1},
            {"key": "k2/job", "value": "gap_backfill", "limit": 1},
            {"key": "k2/job", "value": "maintenance", "limit": 1},
            {"key": "k2/job", "value": "ohlcv", "limit": 2},
            {"key": "k2/job", "value": "book_snapshots", "limit": 1},
        ],
    },
    "retention": {
        "schedule": {"purge_after_days": 30},
        "sensor": {"purge_after_days": {"skipped": 1, "failure": 30, "success": 7}},
    },
}
HEADER = "# Written by k2_dagster.launcher from K2's settings; edits are overwritten on the next start.\n"


@dataclass(frozen=True)
class DagsterProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def dagster_home(settings: Settings) -> Path:
    return settings.home / "dagster"


def storage_url(settings: Settings) -> str | None:
    """The PostgreSQL URL of Dagster's storage, with the psycopg2 driver dagster-postgres is written for (SQLAlchemy
    2.1 picks psycopg 3 for a bare postgresql://, and psycopg 3 rejects Dagster's parameterised NOTIFY); None when
    Dagster keeps its storage in SQLite."""
    url = settings.maintenance.dagster_postgres_url
    if url is None:
        return None
    return make_url(url.get_secret_value()).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def instance_config(settings: Settings) -> dict[str, Any]:
    """The contents of `dagster.yaml` for these settings."""
    config = dict(INSTANCE)
    if settings.maintenance.dagster_postgres_url is not None:
        # One `storage` block: run, event-log and schedule storage all in that database.
        config = {"storage": {"postgres": {"postgres_url": {"env": POSTGRES_URL_ENV}}}, **config}
    return config


def prepare_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME with K2's instance configuration (and the workspace naming the code server); returns its
    path. Files are replaced atomically, so processes starting together (compose's Dagster services share the
    directory) never read half of one."""
    home = dagster_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    _write_if_changed(home / "dagster.yaml", HEADER + yaml.safe_dump(instance_config(settings), sort_keys=False))
    m = settings.maintenance
    if m.dagster_code_port:  # the webserver's and the daemon's workspace: the shared code server's address
        name = code_location()["location_name"]
        server = {"host": m.dagster_code_host, "port": m.dagster_code_port, "location_name": name}
        text = yaml.safe_dump({"load_from": [{"grpc_server": server}]}, sort_keys=False)
        _write_if_changed(workspace(settings), HEADER + text)
    return home


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
            tmp.write(text)
        os.replace(tmp.name, path)


def code_location() -> dict[str, str]:
    """The code location `workspace.yaml` names (module, attribute, location name): the code server serves it."""
    (entry,) = yaml.safe_load(WORKSPACE.read_text())["load_from"]
    return dict(entry["python_module"])


def workspace(settings: Settings) -> Path:
    """The workspace the webserver and the daemon load: the shared code server's address (written under
    DAGSTER_HOME by `prepare_home`), or `workspace.yaml` itself when there is no code server."""
    return dagster_home(settings) / "workspace.yaml" if settings.maintenance.dagster_code_port else WORKSPACE


def webserver_url(settings: Settings) -> str:
    m = settings.maintenance
    return f"http://{m.dagster_host}:{m.dagster_port}"


def _argv(settings: Settings, role: Role, bind: str | None) -> list[str]:
    m = settings.maintenance
    if role == "code-server":
        code = code_location()
        return [
            *(sys.executable, "-m", "dagster", "code-server", "start"),
            *("-m", code["module_name"], "-a", code["attribute"], "--location-name", code["location_name"]),
            *("-d", str(REPO_ROOT), "-h", bind or m.dagster_code_host, "-p", str(m.dagster_code_port)),
            "--use-python-environment-entry-point",  # runs start with this venv's Python, not a `dagster` on PATH
        ]
    if role == "liveness-check":
        return [sys.executable, "-m", "dagster._daemon", "liveness-check"]
    loads = ["-w", str(workspace(settings))]
    if role == "webserver":
        return [sys.executable, "-m", "dagster_webserver", "-h", m.dagster_host, "-p", str(m.dagster_port), *loads]
    return [sys.executable, "-m", "dagster._daemon", "run", *loads]


def dagster_process(settings: Settings, env: Mapping[str, str], role: Role, bind: str | None = None) -> DagsterProcess:
    """One Dagster process on K2's instance. `env` is the environment the other K2 processes get (it must carry the
    same `K2_*` settings); `DAGSTER_HOME`, `K2_HOME` and the storage URL are added. `bind`: the address the code
    server listens on, when it is not the one the others reach it at (a container's 0.0.0.0)."""
    home = prepare_home(settings)
    child_env = {**env, "DAGSTER_HOME": str(home)}
    child_env.setdefault("K2_HOME", str(settings.home))
    child_env.pop(POSTGRES_URL_ENV, None)
    if (url := storage_url(settings)) is not None:
        child_env[POSTGRES_URL_ENV] = url
    return DagsterProcess(f"dagster-{role}", _argv(settings, role, bind), child_env, REPO_ROOT)


def dagster_processes(settings: Settings, env: Mapping[str, str]) -> list[DagsterProcess]:
    """The code server (unless turned off), the webserver and the daemon, in start order."""
    roles: list[Role] = ["code-server"] if settings.maintenance.dagster_code_port else []
    return [dagster_process(settings, env, role) for role in [*roles, "webserver", "daemon"]]
