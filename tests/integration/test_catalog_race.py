"""Processes that start at the same instant on an empty catalog (the ingester and the API under `k2 run`, many
ingesters in a deployment) all open it and find every table: none dies of having lost the race to create them."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

import pytest

from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.model.tables import ALL_TABLES
from k2_core.settings import REVEAL_SECRETS, CatalogSettings, Settings
from tests.support.fixtures import POSTGRES_URI

PROCESSES = 6


def _open(settings_json: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    settings = Settings.model_validate_json(settings_json)
    barrier.wait()  # everyone creates at once
    try:
        tables = ensure_tables(open_catalog(settings), settings.catalog.namespace)
        results.put(sorted(tables))
    except Exception as exc:  # reported to the test, which fails naming it
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_processes_starting_together_on_an_empty_catalog_all_get_every_table(
    catalog: str, tmp_path: Path, postgres_uri: str
) -> None:
    cat = CatalogSettings(name=f"race{uuid.uuid4().hex[:10]}", uri=POSTGRES_URI if catalog == "postgres" else "")
    settings = Settings(home=tmp_path / "home", catalog=cat)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_open, args=(settings.model_dump_json(context={REVEAL_SECRETS: True}), barrier, results))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert outcomes == [sorted(t.name for t in ALL_TABLES)] * PROCESSES
