"""`k2` starts in well under a second: its module imports only what every command needs (typer, settings), and each
command imports the engine, pyiceberg, DuckDB or Dagster itself. A module-level import of one of them (it happened:
`k2_cli.imports` took an input pattern from `k2_core.read.params`, which pulls in pyiceberg and pandas) made every
`k2 status` and `k2 --help` pay ~3 s."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("pyiceberg", "pandas", "duckdb", "pyarrow", "dagster", "fastapi", "confluent_kafka")


def test_the_cli_module_imports_no_heavy_library() -> None:
    probe = f"import json, sys, k2_cli.main; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(done.stdout) == []


def test_help_lists_every_command_group() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "k2_cli.main", "--help"], capture_output=True, text=True, check=True, timeout=60
    )
    for name in ("run", "status", "query", "import", "sql", "keys", "instruments"):
        assert name in done.stdout, name
