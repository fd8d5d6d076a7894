"""Local ports for the servers a test starts (brokers, APIs, whole platforms), so tests never collide."""

from __future__ import annotations

import ipaddress
import socket
import subprocess

from k2_cli.supervisor import port_in_use


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
