"""Fenced appends and offsets in snapshot summaries, against real Iceberg tables."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pyiceberg.table import Transaction

from k2_core.exceptions import FencedError
from k2_core.ingest.state import SequenceState
from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import ensure_table, ensure_tables, open_catalog
from k2_core.lake.files import append_files, write_files
from k2_core.lake.offsets import OffsetIndex
from k2_core.lake.transaction import CachedTransaction
from k2_core.model.tables import TABLE_PROPERTIES, TRADES
from k2_core.settings import Settings
from tests.support import factories
from tests.support.lake import parquet_on_disk, referenced

TP = ("market.equities.trades.asx", 0)
TP2 = ("market.equities.trades.asx", 1)


def rows(*seqs: int) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    return [
        factories.trade("BHP", s, now, "45.1", Decimal(1), side="buy", trade_id=str(s), ingestion_timestamp=now)
        for s in seqs
    ]


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_a_writer_that_lost_its_partition_is_fenced(catalog: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(catalog=catalog)
    ensure_tables(open_catalog(settings), "market")
    # two processes, each with its own catalog and table object
    a = TableWriter(open_catalog(settings).load_table("market.trades"), "a", "cluster-1")
    b = TableWriter(open_catalog(settings).load_table("market.trades"), "b", "cluster-1")
    a.committed_offsets()
    b.committed_offsets()

    a.append(TRADES.to_arrow(rows(1, 2)), {TP: 2}, {TP: 0})
    # b's table is stale: its commit conflicts, it refreshes, sees a moved the partition past its start: fenced
    with pytest.raises(FencedError, match="committed up to 2"):
        b.append(TRADES.to_arrow(rows(1, 2)), {TP: 2}, {TP: 0})
    # b, now starting where the table says, commits fine after the conflict refresh
    b.append(TRADES.to_arrow(rows(3)), {TP: 3}, {TP: 2})
    table = open_catalog(settings).load_table("market.trades")
    assert sorted(r["exchange_sequence_number"] for r in table.scan().to_arrow().to_pylist()) == [1, 2, 3]
    assert OffsetIndex("cluster-1").refresh(table) == {TP: 3}
    # the fenced batch's written file was removed, not left behind
    assert parquet_on_disk(table) == referenced(table)


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_a_conflict_commits_the_same_files_again(catalog: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(catalog=catalog)
    ensure_tables(open_catalog(settings), "market")
    a = TableWriter(open_catalog(settings).load_table("market.trades"), "a", "cluster-1", backoff_seconds=0.01)
    b = TableWriter(open_catalog(settings).load_table("market.trades"), "b", "cluster-1", backoff_seconds=0.01)
    a.committed_offsets()
    b.committed_offsets()

    a.append(TRADES.to_arrow(rows(1, 2)), {TP: 2}, {TP: 0})
    # b owns another partition; its stale commit conflicts, and the retry commits the file it already wrote
    b.append(TRADES.to_arrow(rows(7)), {TP2: 1}, {TP2: 0})
    table = open_catalog(settings).load_table("market.trades")
    assert sorted(r["exchange_sequence_number"] for r in table.scan().to_arrow().to_pylist()) == [1, 2, 7]
    assert OffsetIndex("cluster-1").refresh(table) == {TP: 2, TP2: 1}
    assert len(table.history()) == 2
    assert parquet_on_disk(table) == referenced(table)
    assert len(referenced(table)) == 2


def test_offsets_survive_snapshots_without_them_and_ignore_other_clusters(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    table = ensure_tables(open_catalog(settings), "market")["trades"]
    old = TableWriter(table, "w", "old-cluster")
    old.append(TRADES.to_arrow(rows(1)), {TP: 500}, {TP: 0})
    new = TableWriter(table, "w", "new-cluster")
    new.committed_offsets()
    assert new.index.offsets == {}  # a restarted embedded broker starts at 0 again: 500 must not be reused
    new.append(TRADES.to_arrow(rows(2)), {TP: 7}, {TP: 0})
    table.append(TRADES.to_arrow(rows(3)))  # e.g. a compaction or maintenance snapshot: no offsets
    index = OffsetIndex("new-cluster")
    assert index.refresh(table) == {TP: 7}
    assert OffsetIndex("old-cluster").refresh(table) == {TP: 500}
    # incremental refresh reads only what is new
    new.append(TRADES.to_arrow(rows(4)), {TP: 9}, {TP: 7})
    assert index.refresh(table) == {TP: 9}


def test_an_existing_table_gets_the_current_table_properties(make_settings: Callable[..., Settings]) -> None:
    catalog = open_catalog(make_settings())
    catalog.create_namespace("market")
    old = catalog.create_table(
        ("market", "trades"),
        schema=TRADES.schema,
        partition_spec=TRADES.partition_spec,
        properties={"write.parquet.row-group-limit": "1048576", "commit.retry.num-retries": "4"},
    )
    assert old.properties.get("commit.manifest-merge.enabled") is None
    upgraded = ensure_table(catalog, "market", TRADES)
    for key, value in TABLE_PROPERTIES.items():
        if key != "format-version":
            assert upgraded.properties[key] == value
    location = catalog.load_table(("market", "trades")).metadata_location
    ensure_table(catalog, "market", TRADES)  # already current: no new metadata
    assert catalog.load_table(("market", "trades")).metadata_location == location


def peer_rows(*seqs: int) -> list[dict[str, object]]:
    """A peer ingester's rows: another stream (CBA), from another partition."""
    return [{**row, "symbol": "CBA"} for row in rows(*seqs)]


def test_the_sequence_state_moves_past_peers_and_stops_at_an_import(make_settings: Callable[..., Settings]) -> None:
    """Each commit re-checks from the snapshot the sequence state is right as of: that snapshot must follow the
    ingester's own commits even when peers (other partitions) commit between, or every commit walks further back
    (and reads the whole table once it expires). A snapshot of another kind of writer between makes it stale."""
    settings = make_settings()
    ensure_tables(open_catalog(settings), "market")
    tables = {kind: open_catalog(settings).load_table(f"market.{kind}") for kind in ("trades", "quotes")}
    state = SequenceState(tables, lambda: [], 24 * 3600 * 1_000_000)
    state.sync()
    a = TableWriter(tables["trades"], "a", "cluster-1")
    peer = TableWriter(open_catalog(settings).load_table("market.trades"), "b", "cluster-1")
    for n in range(3):
        peer.append(TRADES.to_arrow(peer_rows(100 + n)), {TP2: n + 1}, {TP2: n})
        ours = a.append(TRADES.to_arrow(rows(n + 1)), {TP: n + 1}, {TP: n})
        state.committed("trades", None, ours, a.foreign)
        assert state.at("trades") == ours
        assert not state.stale
    # A rebalance gives `a` the peer's partition: the catch-up reads the peer's rows it has not seen.
    state.sync()
    peer_stream = ("trades", "asx", "CBA")
    newest = state.tracker.streams[peer_stream].newest
    assert newest is not None
    assert newest.top == 102
    open_catalog(settings).load_table("market.trades").append(TRADES.to_arrow(rows(50)))  # `k2 import`
    ours = a.append(TRADES.to_arrow(rows(4)), {TP: 4}, {TP: 3})
    state.committed("trades", None, ours, a.foreign)
    assert state.stale


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_a_transaction_works_its_metadata_out_once_per_change(
    catalog: str, make_settings: Callable[..., Settings]
) -> None:
    """pyiceberg's Transaction deep-copies the table's whole metadata on every read (19 reads an append); ours
    keeps the result until the table's metadata or the staged updates change, and still commits what it stages."""
    settings = make_settings(catalog=catalog)
    ensure_tables(open_catalog(settings), "market")
    table = open_catalog(settings).load_table("market.trades")
    other = open_catalog(settings).load_table("market.trades")
    append_files(table, write_files(table, TRADES.to_arrow(rows(1))), {"k2.test": "first"})

    txn = CachedTransaction(table)
    first = txn.table_metadata
    assert txn.table_metadata is first  # a plain Transaction gives a new copy each time
    assert Transaction(table).table_metadata is not Transaction(table).table_metadata
    txn.set_properties({"k2.test.property": "1"})  # a staged change: worked out again, once
    staged = txn.table_metadata
    assert staged is not first
    assert staged.properties["k2.test.property"] == "1"
    assert txn.table_metadata is staged
    assert "k2.test.property" not in table.metadata.properties  # the table's own metadata is untouched

    other.refresh()
    append_files(other, write_files(other, TRADES.to_arrow(rows(2))), {"k2.test": "second"})
    table.refresh()  # another writer committed: the table's metadata is a new object, the cache follows
    assert CachedTransaction(table).table_metadata.current_snapshot_id == other.metadata.current_snapshot_id

    append_files(table, write_files(table, TRADES.to_arrow(rows(3))), {"k2.test": "third"})
    reread = open_catalog(settings).load_table("market.trades")
    summaries = [s.summary.additional_properties.get("k2.test") for s in reread.snapshots() if s.summary]
    assert summaries == ["first", "second", "third"]
    assert sorted(r["exchange_sequence_number"] for r in reread.scan().to_arrow().to_pylist()) == [1, 2, 3]
    assert parquet_on_disk(reread) == referenced(reread)
