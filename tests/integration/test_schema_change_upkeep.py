"""The upkeep jobs on a table that changed schema (issue 16): a day holding files of both schemas is compacted with
every column and value kept, its bars are built from both, and a gap in it is backfilled with the new columns. Real
SQLite and PostgreSQL catalogs, real Parquet files. (Quality checks: tests/integration/test_quality.py.)"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from k2_core.exceptions import CompactionError
from k2_core.ingest.gaps import FILLED, GapGrading, GapStore
from k2_core.ingest.sequence import GapEvent
from k2_core.lake.files import write_chunks
from k2_core.lake.scan import local_path
from k2_core.model.days import day_filter
from k2_core.model.tables import MARKET_TABLES, feed_schema
from k2_core.model.topics import Kind
from k2_core.read.engine import QueryEngine
from k2_core.settings import Settings
from k2_core.upkeep.backfill import backfill
from k2_core.upkeep.compaction import _verify_columns, compact_day
from k2_core.upkeep.ohlcv import rebuild_daily_bars, rebuild_minute_bars
from tests.support import query_oracle as oracle
from tests.support.evolution import (
    DAY,
    EXTRA_NAMES,
    V2_SEQS,
    Changed,
    append,
    changed_lake,
    evolve,
    expected_after,
    expected_before,
    v1_trade,
    v2_trade,
    with_nulls,
)
from tests.support.lake import Lake, open_lake

SettingsFactory = Callable[..., Settings]
KINDS: tuple[Kind, ...] = ("trades", "quotes")


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("postgres_uri")
    return str(request.param)


def day_rows(lake: Lake, kind: Kind, snapshot_id: int | None = None) -> list[dict[str, Any]]:
    table = lake.table(kind)
    rows = table.scan(row_filter=day_filter("exchange_timestamp", DAY), snapshot_id=snapshot_id).to_arrow()
    return oracle.in_order(rows.to_pylist())


def day_files(lake: Lake, kind: Kind) -> list[str]:
    scan = lake.table(kind).scan(row_filter=day_filter("exchange_timestamp", DAY))
    return [task.file.file_path for task in scan.plan_files()]


# --- compaction ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_compacting_a_day_of_both_schemas_keeps_every_column_and_value(
    kind: Kind, catalog: str, make_settings: SettingsFactory
) -> None:
    changed = changed_lake(make_settings(catalog=catalog))
    lake = changed.lake
    assert len(day_files(lake, kind)) == 3  # two files of version 1, one of version 2
    result = compact_day(
        lake.table(kind), MARKET_TABLES[kind], DAY, target_file_bytes=128 << 20, retries=2, backoff_seconds=0.01
    )
    assert (result.files_before, result.files_after, result.rows) == (3, 1, 24)
    assert day_rows(lake, kind) == expected_after(kind)
    (path,) = day_files(lake, kind)
    written = pq.read_schema(local_path(path))
    assert written.names == feed_schema(kind).names  # the file has every column: nothing is left to old files
    # Readers see the same as before the rewrite; time travel to before the change still reads the old files.
    engine = QueryEngine(lake.catalog, changed.settings.catalog.namespace)
    query = engine.market_query("BHP", "asx", DAY.isoformat(), (DAY + timedelta(days=1)).isoformat(), 1000)
    assert engine.fetch(kind, query).table.to_pylist() == expected_after(kind)
    assert day_rows(lake, kind, changed.before[kind]) == expected_before(kind)


def test_compacting_old_files_after_the_change_writes_the_new_columns_null(make_settings: SettingsFactory) -> None:
    """The table gained the columns but no row has them yet: the rewrite has them, all null."""
    lake = open_lake(make_settings())
    for seqs in (range(1, 5), range(5, 9)):
        lake.append("trades", [v1_trade(s) for s in seqs])
    evolve(lake.table("trades"), "trades")
    result = compact_day(
        lake.table("trades"), MARKET_TABLES["trades"], DAY, target_file_bytes=1 << 27, retries=1, backoff_seconds=0.01
    )
    assert result.files_after == 1
    assert day_rows(lake, "trades") == [with_nulls(v1_trade(s), "trades") for s in range(1, 9)]


def test_a_rewrite_that_lost_a_column_is_refused(make_settings: SettingsFactory) -> None:
    changed = changed_lake(make_settings())
    table = changed.lake.table("trades")
    source = [task.file for task in table.scan(row_filter=day_filter("exchange_timestamp", DAY)).plan_files()]
    rows = pa.Table.from_pylist(day_rows(changed.lake, "trades"), schema=feed_schema("trades"))
    _verify_columns(source, write_chunks(table, [rows]))  # the same rows, every column: accepted
    narrowed = write_chunks(table, [rows.drop_columns(["conditions"])])
    with pytest.raises(CompactionError, match="values per column changed"):
        _verify_columns(source, narrowed)
    nulled = rows.set_column(
        rows.schema.get_field_index("buyer_order_id"), "buyer_order_id", pa.nulls(rows.num_rows, pa.large_string())
    )
    with pytest.raises(CompactionError, match="values per column changed"):
        _verify_columns(source, write_chunks(table, [nulled]))


# --- OHLCV -----------------------------------------------------------------------------------------------------------


def test_bars_are_built_from_files_of_both_schemas(catalog: str, make_settings: SettingsFactory) -> None:
    changed = changed_lake(make_settings(catalog=catalog))
    lake = changed.lake
    minute = rebuild_minute_bars(lake.table("trades"), lake.table("ohlcv_1m"), DAY, retries=2, backoff=0.01)
    daily = rebuild_daily_bars(
        lake.table("trades"), lake.table("ohlcv_1m"), lake.table("ohlcv_1d"), DAY, retries=2, backoff=0.01
    )
    assert (minute.trades, daily.trades) == (24, 24)
    assert minute.source_snapshot_id == changed.after["trades"]
    for name, interval in (("ohlcv_1m", "1m"), ("ohlcv_1d", "1d")):
        stored = sorted(lake.rows(name), key=lambda bar: bar["bar_start"])
        assert stored == oracle.bars(expected_after("trades"), interval)


# --- gap backfill ----------------------------------------------------------------------------------------------------


class Records:
    """A recovery source holding given records."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    @property
    def name(self) -> str:
        return "records"

    def fetch(self, kind: Kind, symbol: str, first: int, last: int) -> list[dict[str, Any]]:
        return [r for r in self.records if r["symbol"] == symbol and first <= r["exchange_sequence_number"] <= last]


def run_backfill(lake: Lake, missing: range, records: list[dict[str, Any]]) -> Any:
    store = GapStore(lake.table("sequence_gaps"), GapGrading(10, 100))
    store.record_detected([GapEvent(("trades", "asx", "BHP"), missing[0], missing[-1])], datetime.now(UTC))
    return backfill(
        {"trades": lake.table("trades"), "quotes": lake.table("quotes")},
        lake.table("sequence_gaps"),
        lambda exchange, symbol: [Records(records)],
        datetime.now(UTC),
        max_attempts=3,
        min_age=timedelta(0),
        limit=10,
        retries=3,
        backoff_seconds=0.05,
    )


def test_a_gap_in_a_changed_table_is_filled_with_the_new_columns(catalog: str, make_settings: SettingsFactory) -> None:
    """Numbers 16-18 of the version-2 part never arrived; the recovery source has them with every field."""
    lake = open_lake(make_settings(catalog=catalog))
    lake.append("trades", [v1_trade(s) for s in range(1, 13)])
    missing = range(16, 19)
    append(evolve(lake.table("trades"), "trades"), "trades", [v2_trade(s) for s in V2_SEQS if s not in missing])
    report = run_backfill(lake, missing, [v2_trade(s) for s in V2_SEQS])
    assert report.rows_written == {"trades": 3}
    assert [g["status"] for g in lake.rows("sequence_gaps")] == [FILLED]
    rows = {r["exchange_sequence_number"]: r for r in day_rows(lake, "trades")}
    for seq in missing:  # stored with the new columns (ingestion time: when the backfill stored it)
        assert {k: rows[seq][k] for k in EXTRA_NAMES["trades"]} == {k: v2_trade(seq)[k] for k in EXTRA_NAMES["trades"]}
    assert sorted(rows) == list(range(1, 25))


def test_changed_is_a_lake_of_both_schemas(make_settings: SettingsFactory) -> None:
    """The scene the reader tests share: what it promises."""
    changed: Changed = changed_lake(make_settings())
    for kind in KINDS:
        schemas = {len(pq.read_schema(local_path(p)).names) for p in day_files(changed.lake, kind)}
        assert schemas == {len(MARKET_TABLES[kind].arrow_schema), len(feed_schema(kind))}
