"""In-process HTTP clients for the API. Starlette's TestClient calls itself `testclient`, which is no address at all:
the API decides who may go without credentials on the request's real peer, so a test that means "a local user"
says so with a loopback peer."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from k2_core.settings import Settings

LOOPBACK_PEER = ("127.0.0.1", 50000)


def local_client(app: FastAPI, **kwargs: Any) -> TestClient:
    """A TestClient whose requests come from 127.0.0.1, as `k2 run`'s own users' do."""
    return TestClient(app, client=LOOPBACK_PEER, **kwargs)


def cli_env(settings: Settings) -> dict[str, str | None]:
    """The CLI builds its own Settings from K2_* variables, as in production; point them at this test's catalog.
    COLUMNS keeps Rich from cropping the table to an 80-column pseudo-terminal."""
    return {
        "K2_HOME": str(settings.home),
        "K2_CATALOG_NAME": settings.catalog.name,
        "K2_CATALOG_URI": settings.catalog.uri.get_secret_value(),
        "COLUMNS": "250",
    }
