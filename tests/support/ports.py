"""Local ports for the servers a test starts (brokers, APIs, whole platforms), so tests never collide."""

from __future__ import annotations

import ipaddress
import itertools
import os
import subprocess

from k2_cli.supervisor import port_in_use

# Ports are drawn below the kernel's ephemeral range (32768-60999 by default), where the local port of an outgoing
# connection (a Kafka client, a database driver) can never take a port between a test choosing it and its server
# binding it; each xdist worker draws from a block of its own, in turn, so two tests never get the same port.
_FIRST_PORT, _BLOCK = 10_000, 5_000
_drawn = itertools.count()


def _block_start() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return _FIRST_PORT + (int(worker) if worker.isdigit() else 0) * _BLOCK


def free_port() -> int:
    start = _block_start()
    for _ in range(_BLOCK):
        port = start + next(_drawn) % _BLOCK
        if not port_in_use("127.0.0.1", port):
            return port
    raise RuntimeError(f"no free port in {start}-{start + _BLOCK - 1}")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Free as `k2 run` judges it before it starts (a bind with SO_REUSEADDR succeeds)."""
    return not port_in_use(host, port)


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine's own that is not loopback (`ip -4 addr`), or None when it has none."""
    try:
        listing = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in listing.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            address = ipaddress.ip_interface(fields[fields.index("inet") + 1]).ip
            if not address.is_loopback and not address.is_link_local:
                return str(address)
    return None
