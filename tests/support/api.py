"""The API as a real server process: `python -m k2_api` as K2 starts it, or any other command line (plain uvicorn, as
an operator might run it), on a port of its own, stopped when the test ends."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from k2_core.settings import REPO_ROOT, Settings
from tests.support.ports import free_port
from tests.support.processes import settings_env


def uvicorn_command(host: str, port: int) -> list[str]:
    """The API under uvicorn's own command line, with uvicorn's defaults (its proxy-header handling included)."""
    return [sys.executable, "-m", "uvicorn", "k2_api.main:create_app", "--factory", "--host", host, "--port", str(port)]


@contextmanager
def api_server(
    settings: Settings, log: Path, command: Sequence[str] | None = None, port: int | None = None, **env: str
) -> Iterator[str]:
    """A server for `settings` (realtime tail off, no Kafka), plus K2_ overrides in `env`; yields its loopback URL
    once /health answers. Without `command`, `python -m k2_api` on 127.0.0.1."""
    port = port or free_port()
    environment = settings_env(settings)
    environment.update(
        K2_API_PORT=str(port),
        K2_QUERY_TAIL_ENABLED="false",
        K2_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        K2_LOG_LEVEL="INFO",
    )
    environment.update(env)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(command or [sys.executable, "-m", "k2_api"]),
            env=environment,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "API did not start:\n" + log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, so the server's lifespan ends cleanly (the audit log's refusal summaries are written then)."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
