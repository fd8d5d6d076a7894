"""Data-quality checks executed in-process against real tables: every check passes on clean data and fails, with
the offending row count and a sample, on a table seeded with the bad rows it targets; freshness follows market
hours."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import dagster as dg
import pytest
from pyiceberg.table import Table

from k2_core.lake.files import write_chunks
from k2_core.model.days import EPOCH_DAY
from k2_core.model.tables import MARKET_TABLES
from k2_core.settings import MarketHours, Settings
from k2_core.upkeep.quality import RULES, market_open
from tests.support.definitions import DAGSTER_OWNERS_BETA, definitions
from tests.support.evolution import append, evolve, v2_quote_fields, v2_trade_fields
from tests.support.factories import at, quote, trade
from tests.support.lake import Lake, open_lake

DAY = date(2026, 11, 20)
ALWAYS = MarketHours()
NEVER = MarketHours(weekdays=())


def clean(lake: Lake) -> None:
    lake.append("trades", [trade(s, n, at(DAY, 60 * n), f"{10 + n}.5") for s in ("BHP", "CBA") for n in range(1, 30)])
    lake.append("quotes", [quote(s, n, at(DAY, 60 * n)) for s in ("BHP", "CBA") for n in range(1, 30)])


def append_in_partition(table: Table, kind: str, rows: list[dict[str, Any]], day: date) -> None:
    """Commit rows in a file whose partition says `day`, whatever their timestamps say (a writer bug)."""
    files = write_chunks(table, [MARKET_TABLES[kind].to_arrow(rows)])  # type: ignore[index]
    for data_file in files:
        data_file.partition[0] = (day - EPOCH_DAY).days
    with table.transaction() as txn, txn.update_snapshot().fast_append() as append:
        for data_file in files:
            append.append_data_file(data_file)


def changed(lake: Lake) -> None:
    """The clean day, then both tables gain the version-2 columns and more clean rows carry them: a day of files of
    both schemas."""
    for kind in ("trades", "quotes"):
        evolve(lake.table(kind), kind)  # type: ignore[arg-type]
    append(
        lake.table("trades"),
        "trades",
        [trade(s, n, at(DAY, 60 * n), f"{10 + n}.5") | v2_trade_fields(n, at(DAY, 60 * n)) for s in ("BHP", "CBA")
         for n in range(30, 40)],
    )  # fmt: skip
    append(
        lake.table("quotes"),
        "quotes",
        [quote(s, n, at(DAY, 60 * n)) | v2_quote_fields(n, at(DAY, 60 * n)) for s in ("BHP", "CBA")
         for n in range(30, 40)],
    )  # fmt: skip


def future() -> datetime:
    return datetime.now(UTC) + timedelta(hours=3)


# rule -> (kind, how to seed the bad rows, offending row count, sequence numbers the sample must show)
BAD: dict[str, tuple[str, Callable[[Lake], None], int, set[int]]] = {
    "trades_price_positive": (
        "trades",
        lambda lake: lake.append("trades", [trade("BHP", 101, at(DAY, 5), "0"), trade("CBA", 102, at(DAY, 6), "-1.5")]),
        2,
        {101, 102},
    ),
    "trades_volume_non_negative": (
        "trades",
        lambda lake: lake.append("trades", [trade("BHP", 103, at(DAY, 7), volume="-3")]),
        1,
        {103},
    ),
    "trades_unique_sequence": (
        "trades",
        lambda lake: lake.append("trades", [trade("BHP", 7, at(DAY, 420), "17.5")]),  # BHP 7 is already stored
        2,
        {7},
    ),
    "trades_timestamp_in_partition": (
        "trades",
        lambda lake: append_in_partition(
            lake.table("trades"), "trades", [trade("BHP", 104, at(DAY + timedelta(days=1), 9))], DAY
        ),
        1,
        {104},
    ),
    "trades_timestamp_not_future": (
        "trades",
        lambda lake: lake.append("trades", [trade("BHP", 105, future())]),
        1,
        {105},
    ),
    "quotes_prices_positive": (
        "quotes",
        lambda lake: lake.append(
            "quotes", [quote("BHP", 201, at(DAY, 5), bid="0"), quote("BHP", 202, at(DAY, 6), "0", "0")]
        ),
        2,
        {201, 202},
    ),
    "quotes_sizes_non_negative": (
        "quotes",
        lambda lake: lake.append("quotes", [quote("CBA", 203, at(DAY, 7), ask_size="-1")]),
        1,
        {203},
    ),
    "quotes_bid_not_above_ask": (
        "quotes",
        lambda lake: lake.append("quotes", [quote("CBA", 204, at(DAY, 8), bid="10.05", ask="10.01")]),
        1,
        {204},
    ),
    "quotes_counts_non_negative": (  # on a table with the version-2 columns, beside files without them
        "quotes",
        lambda lake: append(
            evolve(lake.table("quotes"), "quotes"),
            "quotes",
            [quote("CBA", 207, at(DAY, 10), bid_count=-1, ask_count=2), quote("BHP", 208, at(DAY, 11), ask_count=-3)],
        ),
        2,
        {207, 208},
    ),
    "quotes_unique_sequence": (
        "quotes",
        lambda lake: lake.append("quotes", [quote("CBA", 3, at(DAY, 180))]),
        2,
        {3},
    ),
    "quotes_timestamp_in_partition": (
        "quotes",
        lambda lake: append_in_partition(
            lake.table("quotes"), "quotes", [quote("CBA", 205, at(DAY - timedelta(days=1), 9))], DAY
        ),
        1,
        {205},
    ),
    "quotes_timestamp_not_future": (
        "quotes",
        lambda lake: lake.append("quotes", [quote("CBA", 206, future())]),
        1,
        {206},
    ),
}


def run_checks(settings: Settings, days: list[date]) -> dict[str, dg.AssetCheckEvaluation]:
    config = {"config": {"days": [d.isoformat() for d in days]}}
    job = definitions(settings).resolve_job_def("quality_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance, run_config={"ops": {"trades_quality": config, "quotes_quality": config}}
        )
    assert result.success  # a failed check is a finding, not a failed run
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    s = make_settings()
    s.maintenance.market_hours = {"asx": NEVER}  # freshness is tested on its own below
    return s


def test_every_rule_has_a_bad_case() -> None:
    rules = {f"{kind}_{r.name}" for kind, rules in RULES.items() for r in rules}
    assert rules == set(BAD)


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_checks_pass_on_clean_data(catalog: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(catalog=catalog)
    settings.maintenance.market_hours = {"asx": NEVER}
    lake = open_lake(settings)
    clean(lake)
    evaluations = run_checks(settings, [DAY, DAY + timedelta(days=1)])
    assert set(evaluations) == set(BAD) | {"trades_freshness"}
    failed = {name: e.metadata for name, e in evaluations.items() if not e.passed}
    assert failed == {}
    assert evaluations["trades_price_positive"].metadata["rows_checked"].value == 58


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_checks_pass_on_a_day_of_files_of_both_schemas(catalog: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(catalog=catalog)
    settings.maintenance.market_hours = {"asx": NEVER}
    lake = open_lake(settings)
    clean(lake)
    changed(lake)
    evaluations = run_checks(settings, [DAY])
    failed = {name: e.metadata for name, e in evaluations.items() if not e.passed}
    assert failed == {}
    assert evaluations["trades_price_positive"].metadata["rows_checked"].value == 58 + 20
    assert evaluations["quotes_counts_non_negative"].metadata["rows_checked"].value == 58 + 20


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
def test_a_check_finds_bad_rows_in_the_old_files_of_a_changed_table(settings: Settings) -> None:
    lake = open_lake(settings)
    clean(lake)
    lake.append("trades", [trade("BHP", 301, at(DAY, 5), "0")])  # a version-1 file with a bad price
    changed(lake)
    evaluations = run_checks(settings, [DAY])
    assert sorted(name for name, e in evaluations.items() if not e.passed) == ["trades_price_positive"]
    assert evaluations["trades_price_positive"].metadata["offending_rows"].value == 1


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
@pytest.mark.parametrize("check", sorted(BAD))
def test_check_fails_on_the_bad_rows_it_targets(check: str, settings: Settings) -> None:
    kind, seed, offending, sample_seqs = BAD[check]
    lake = open_lake(settings)
    clean(lake)
    seed(lake)
    days = sorted({DAY, future().date()})
    evaluations = run_checks(settings, days)
    failed = sorted(name for name, e in evaluations.items() if not e.passed)
    assert failed == [check]
    metadata = evaluations[check].metadata
    assert metadata["offending_rows"].value == offending
    sample = metadata["sample"].value
    assert isinstance(sample, list)
    assert {int(row["exchange_sequence_number"]) for row in sample} == sample_seqs
    assert evaluations[check].asset_key == dg.AssetKey(kind)


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
def test_trade_freshness_during_market_hours(settings: Settings) -> None:
    settings.maintenance.market_hours = {"asx": ALWAYS, "nyse": NEVER}
    settings.maintenance.freshness_max_lag_seconds = 120
    lake = open_lake(settings)
    lake.append("trades", [trade("BHP", 1, datetime.now(UTC) - timedelta(minutes=10))])
    stale = run_checks(settings, [DAY])["trades_freshness"]
    assert not stale.passed
    assert stale.metadata["stale_exchanges"].value == 1
    assert stale.metadata["broker_reachable"].value is False  # no broker in this test: the likelier cause
    by_exchange = {e["exchange"]: e for e in stale.metadata["exchanges"].value}  # type: ignore[union-attr]
    assert by_exchange["asx"]["passed"] is False
    assert by_exchange["nyse"] == {
        "exchange": "nyse",
        "market_open": False,
        "newest_trade": None,
        "lag_seconds": None,
        "passed": True,
    }

    lake.append("trades", [trade("BHP", 2, datetime.now(UTC) - timedelta(seconds=5))])
    fresh = run_checks(settings, [DAY])["trades_freshness"]
    assert fresh.passed


def test_market_hours_in_the_exchange_time_zone() -> None:
    asx = MarketHours(timezone="Australia/Sydney", open=time(10), close=time(16), weekdays=(0, 1, 2, 3, 4))
    # 2026-11-23 is a Monday; Sydney is UTC+11 in November (daylight saving).
    assert market_open(asx, datetime(2026, 11, 22, 23, 30, tzinfo=UTC))  # Mon 10:30 in Sydney
    assert not market_open(asx, datetime(2026, 11, 23, 5, 30, tzinfo=UTC))  # Mon 16:30
    assert not market_open(asx, datetime(2026, 11, 21, 23, 30, tzinfo=UTC))  # Sun 10:30
    overnight = MarketHours(open=time(22), close=time(4))
    assert market_open(overnight, datetime(2026, 11, 23, 23, 0, tzinfo=UTC))
    assert market_open(overnight, datetime(2026, 11, 24, 3, 0, tzinfo=UTC))
    assert not market_open(overnight, datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
