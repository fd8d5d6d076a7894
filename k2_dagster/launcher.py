"""How the platform supervisor starts Dagster: the webserver (UI on `settings.maintenance.dagster_host:port`,
127.0.0.1:3000 by default) and the daemon (sensors, schedules, run queue), both loading `workspace.yaml`, with
`DAGSTER_HOME` under `settings.home / "dagster"`.

`dagster_processes(settings, env)` returns what to spawn; the caller owns the processes (logs, stop order). Both
stop cleanly on SIGTERM. Runs launched by the daemon inherit the environment, so they read the same `K2_*` settings.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from k2_core.settings import REPO_ROOT, Settings

WORKSPACE = REPO_ROOT / "workspace.yaml"

# Instance configuration written to DAGSTER_HOME: no telemetry, bounded concurrency per kind of K2 job (the
# `k2/job` tag), and sensor/schedule tick history pruned (the sensors tick every 30 s to 10 min).
DAGSTER_YAML = """\
# Written by k2_dagster.launcher; edits are overwritten on the next start.
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 4
  tag_concurrency_limits:
    - key: k2/job
      value: compaction
      limit: 1
    - key: k2/job
      value: gap_backfill
      limit: 1
    - key: k2/job
      value: maintenance
      limit: 1
    - key: k2/job
      value: ohlcv
      limit: 2
retention:
  schedule:
    purge_after_days: 30
  sensor:
    purge_after_days:
      skipped: 1
      failure: 30
      success: 7
"""


@dataclass(frozen=True)
class DagsterProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def dagster_home(settings: Settings) -> Path:
    return settings.home / "dagster"


def prepare_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME with K2's instance configuration; returns its path."""
    home = dagster_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or config.read_text() != DAGSTER_YAML:
        config.write_text(DAGSTER_YAML)
    return home


def webserver_url(settings: Settings) -> str:
    m = settings.maintenance
    return f"http://{m.dagster_host}:{m.dagster_port}"


def dagster_processes(settings: Settings, env: Mapping[str, str]) -> list[DagsterProcess]:
    """The webserver and the daemon, in start order. `env` is the environment the other K2 processes get (it must
    carry the same `K2_*` settings); `DAGSTER_HOME` and `K2_HOME` are added."""
    home = prepare_home(settings)
    child_env = {**env, "DAGSTER_HOME": str(home)}
    child_env.setdefault("K2_HOME", str(settings.home))
    m = settings.maintenance
    workspace = ["-w", str(WORKSPACE)]
    return [
        DagsterProcess(
            "dagster-webserver",
            [sys.executable, "-m", "dagster_webserver", "-h", m.dagster_host, "-p", str(m.dagster_port), *workspace],
            child_env,
            REPO_ROOT,
        ),
        DagsterProcess(
            "dagster-daemon", [sys.executable, "-m", "dagster._daemon", "run", *workspace], child_env, REPO_ROOT
        ),
    ]
