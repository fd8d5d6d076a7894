"""docker-compose.yml as `docker compose` reads it: its services, their environment and its `${VAR}` interpolation,
its opt-in files (`docker-compose.<name>.yml`, added with `-f`) merged over it, and the ports it publishes on the
host, for the checks of the files themselves and for running the stack's K2 services natively."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from k2_core.settings import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
OPT_IN_FILES = sorted(REPO_ROOT.glob("docker-compose.*.yml"))
DOCKERFILE = REPO_ROOT / "Dockerfile"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([?-])([^}]*))?\}")
VARIABLE = re.compile(r"\$\{[^}]*\}")
APPENDED = {"ports", "expose", "volumes"}  # compose appends these sequences of an opt-in file; others it replaces


def compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`docker compose -f base -f override`: mappings merged key by key, `ports`, `expose` and `volumes` appended,
    anything else (`command`, a variable's value) replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        elif key in APPENDED and isinstance(value, list):
            out[key] = [*out.get(key, []), *value]
        else:
            out[key] = value
    return out


def with_opt_in(path: Path) -> dict[str, Any]:
    """The stack as compose runs it with the opt-in file `path` added (the base file alone for the base file)."""
    return compose() if path == COMPOSE_FILE else merge(compose(), compose(path))


@dataclass(frozen=True)
class Publish:
    """A container port published on the host. `host_ip` is as written, `${VAR:-default}` included; None when the
    entry names no address, which Docker publishes on every interface."""

    service: str
    host_ip: str | None
    target: int


def published(stack: Mapping[str, Any]) -> list[Publish]:
    """Every `ports` entry of every service, in the short syntax (`[[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTO]`,
    an interpolated address included) or the long one (`target`, `host_ip`, ...)."""
    out = []
    for name, service in stack["services"].items():
        for entry in service.get("ports", []):
            if isinstance(entry, Mapping):
                host = entry.get("host_ip")
                out.append(Publish(name, None if host is None else str(host), int(entry["target"])))
                continue
            out.append(Publish(name, *short_syntax(str(entry))))
    return out


def short_syntax(entry: str) -> tuple[str | None, int]:
    """(host address or None, container port) of `[[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTO]`."""
    variables = iter(VARIABLE.findall(entry))
    masked = VARIABLE.sub("\x00", entry)  # `${VAR:-127.0.0.1}` holds colons of its own
    parts = [re.sub("\x00", lambda _: next(variables), part) for part in masked.rsplit(":", 2)]
    host_ip = parts[0].strip("[]") if len(parts) == 3 else None
    return host_ip, int(parts[-1].split("/")[0].split("-")[0])


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def k2_services() -> dict[str, dict[str, Any]]:
    """Services built from our Dockerfile."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, as `docker compose` resolves them."""

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if variables.get(name):
            return variables[name]
        if op == "?":
            raise AssertionError(f"required variable {name} is unset: {arg}")
        return arg if op == "-" else ""

    return INTERPOLATION.sub(sub, value)
