"""docker-compose.yml as `docker compose` reads it: its services, their environment and its `${VAR}` interpolation, for
the checks of the file itself and for running the stack's K2 services natively."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from k2_core.settings import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([?-])([^}]*))?\}")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


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
