"""Snapshot retention as the ingester applies it: checkpoint tags, expiry down to keep_last, and the ingester's
resume offsets intact (real SQLite catalog, real files)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa

from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import ensure_table, open_catalog
from k2_core.lake.offsets import OffsetIndex
from k2_core.model.tables import TRADES
from k2_core.settings import Settings
from k2_core.upkeep.retention import DAY_TAG, HOUR_TAG, RetentionPolicy, apply_retention
from tests.support import factories

ASX = "market.equities.trades.asx"
NYSE = "market.equities.trades.nyse"


def rows(i: int) -> pa.Table:
    t0 = datetime(2026, 11, 24, 10, tzinfo=UTC)
    return pa.Table.from_pylist(
        [
            factories.trade(
                "BHP",
                i + 1,
                t0 + timedelta(seconds=i),
                "45.1",
                Decimal(1),
                side="buy",
                trade_id=f"T{i}",
                ingestion_timestamp=t0 + timedelta(seconds=i),
            )
        ],
        schema=TRADES.arrow_schema,
    )


def test_retention_keeps_checkpoints_newest_snapshots_and_resume_offsets(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    table = ensure_table(open_catalog(settings), settings.catalog.namespace, TRADES)
    writer = TableWriter(table, "w1", "cluster-a")
    # NYSE[0] is committed once, early; ASX[0] every time: the offsets chain must reach back to NYSE's commit.
    writer.append(rows(0), {(NYSE, 0): 7}, {(NYSE, 0): 0})
    for i in range(1, 30):
        writer.append(rows(i), {(ASX, 0): i}, {(ASX, 0): i - 1})
    now = datetime.now(UTC)
    result = apply_retention(table, now, RetentionPolicy(keep_last=5))

    refs = table.metadata.refs
    hour, day = f"{HOUR_TAG}{now:%Y%m%dT%H}", f"{DAY_TAG}{now:%Y%m%d}"
    assert {hour, day} <= set(refs)
    assert result.expired == 0  # the chain back to NYSE's only commit is everything
    # one more NYSE commit moves the chain's horizon: now all but the newest 5, the tags and the chain expire
    writer.append(rows(30), {(NYSE, 0): 8}, {(NYSE, 0): 7})
    result = apply_retention(table, now + timedelta(minutes=5), RetentionPolicy(keep_last=5))
    assert result.expired > 20
    assert len(table.metadata.snapshots) <= 5 + 2
    assert OffsetIndex("cluster-a").refresh(table) == {(ASX, 0): 29, (NYSE, 0): 8}
    assert writer.committed_offsets() == {(ASX, 0): 29, (NYSE, 0): 8}
    assert table.scan().to_arrow().num_rows == 31  # expiry never touches live data

    # a day later the hourly tag is gone, the daily one stays for the retention window
    later = now + timedelta(hours=25)
    writer.append(rows(31), {(ASX, 0): 30}, {(ASX, 0): 29})
    apply_retention(table, later, RetentionPolicy(keep_last=5))
    refs = table.metadata.refs
    assert hour not in refs
    assert day in refs
    assert f"{HOUR_TAG}{later:%Y%m%dT%H}" in refs
    # time travel to the morning reads the morning's checkpoint
    tagged = refs[day].snapshot_id
    assert table.scan(snapshot_id=tagged).to_arrow().num_rows == 30


def test_retention_is_idempotent_when_run_twice_in_an_hour(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    table = ensure_table(open_catalog(settings), settings.catalog.namespace, TRADES)
    writer = TableWriter(table, "w1", "cluster-a")
    for i in range(3):
        writer.append(rows(i), {(ASX, 0): i + 1}, {(ASX, 0): i})
    now = datetime.now(UTC)
    first = apply_retention(table, now, RetentionPolicy(keep_last=1))
    second = apply_retention(table, now + timedelta(minutes=1), RetentionPolicy(keep_last=1))
    assert len(first.tagged) == 2
    assert second.tagged == []
