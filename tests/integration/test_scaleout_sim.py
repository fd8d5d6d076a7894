"""`bench.scaleout_sim` at a tiny scale against the real PostgreSQL catalog: both commit designs land every batch the
workers were due, once, with each worker's partition offset recorded in the table's snapshots (nothing is timed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import scaleout_sim
from k2_core.lake.catalog import open_catalog
from k2_core.lake.offsets import OFFSETS_PROPERTY, decode_offsets


@pytest.mark.parametrize("catalog", ["postgres", "sqlite"])
def test_both_designs_commit_every_due_batch_once(tmp_path: Path, catalog: str) -> None:
    seconds, rate, rows = 2.0, 2.0, 40
    results = scaleout_sim.simulate(
        ["--workers", "1,3", "--seconds", str(seconds), "--rate", str(rate), "--rows", str(rows),
         "--catalog", catalog, "--home", str(tmp_path)]
    )  # fmt: skip
    assert [(r["design"], r["workers"]) for r in results] == [
        ("independent", 1), ("coordinated", 1), ("independent", 3), ("coordinated", 3)
    ]  # fmt: skip
    batches = math.ceil(seconds * rate)
    for result in results:
        workers = result["workers"]
        settings = scaleout_sim.settings_for(catalog, tmp_path, result["table"])
        table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
        stored = table.scan().to_arrow()
        assert stored.num_rows == workers * batches * rows, result
        keys = set(
            zip(stored.column("symbol").to_pylist(), stored.column("exchange_sequence_number").to_pylist(), strict=True)
        )
        assert len(keys) == stored.num_rows  # no batch twice
        # Every worker's partition reached its last offset, in the summary of a snapshot of this table.
        reached: dict[tuple[str, int], int] = {}
        for snapshot in table.snapshots():
            assert snapshot.summary is not None
            for tp, offset in decode_offsets(snapshot.summary[OFFSETS_PROPERTY]).items():
                reached[tp] = max(reached.get(tp, 0), offset)
        assert reached == {(scaleout_sim.TOPIC, w): batches * rows for w in range(workers)}
        assert result["p99_ms"] is not None
