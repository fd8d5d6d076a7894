"""Every process `k2 run` starts listens on a port of its own by default: two defaults alike would make the second
process fail to bind (the committer's once took the supervisor's 9109)."""

from __future__ import annotations

from pydantic import BaseModel

from k2_core.settings import Settings


def _ports(model: BaseModel, path: str = "") -> dict[str, int]:
    found: dict[str, int] = {}
    for name, value in model:
        where = f"{path}{name}"
        if isinstance(value, BaseModel):
            found |= _ports(value, f"{where}.")
        elif name.endswith("port") and isinstance(value, int) and value:
            found[where] = value
    return found


def test_default_ports_are_distinct() -> None:
    ports = _ports(Settings())
    assert len(ports) >= 5, ports  # api, ingester, book ingester, committer, supervisor, dagster...
    taken: dict[int, str] = {}
    for where, port in ports.items():
        assert port not in taken, f"{where} and {taken[port]} both default to {port}"
        taken[port] = where
