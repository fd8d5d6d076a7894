"""ohlcv_1m / ohlcv_1d materialized in-process against real Iceberg tables, compared with an independent pandas
reference; the day rebuild is idempotent and touches only its partition; the sensor requests the changed days."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from k2_core.model.bars import SOURCE_SNAPSHOT_PROPERTY, day_source
from k2_core.model.days import day_filter
from k2_core.read.engine import QueryEngine
from k2_core.settings import Settings
from k2_dagster.defs.bars import ohlcv_bars, ohlcv_sensor
from tests.support import query_oracle as oracle
from tests.support.definitions import DAGSTER_OWNERS_BETA, definitions, k2_resources
from tests.support.factories import at, trade
from tests.support.lake import Lake, open_lake

D1 = date(2026, 11, 20)
D2 = date(2026, 11, 21)
BarKey = tuple[str, str, datetime]


def random_trades(rng: random.Random, day: date, n: int, start_seq: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        exchange, symbol = rng.choice([("asx", "BHP"), ("asx", "CBA"), ("nyse", "IBM")])
        seq = start_seq[(exchange, symbol)] = start_seq.get((exchange, symbol), 0) + 1
        # Mostly inside half an hour on a 3 s grid, so minute bars hold many trades and timestamps tie (sequence
        # numbers break the tie); the rest anywhere in the day, up to its last instant.
        second = rng.choice(range(0, 1800, 3)) if rng.random() < 0.8 else rng.choice(range(0, 86_400, 7))
        ts = at(day, second + rng.choice((0, 0.25)))
        price = Decimal(rng.randint(1_000_000, 9_999_999_999)) / Decimal(10**8)
        volume = Decimal(rng.randint(0, 50_000_000_000)) / Decimal(10**8)
        out.append(trade(symbol, seq, ts, price, volume, exchange=exchange))
    return out


def reference_bars(trades: list[dict[str, Any]], freq: str) -> dict[BarKey, dict[str, Any]]:
    """OHLCV by pandas and Python decimals, independent of the DuckDB implementation."""
    df = pd.DataFrame(trades).sort_values(["exchange_timestamp", "exchange_sequence_number"], kind="stable")
    df["bar_start"] = df["exchange_timestamp"].dt.floor(freq)
    out: dict[BarKey, dict[str, Any]] = {}
    for (symbol, exchange, bar_start), g in df.groupby(["symbol", "exchange", "bar_start"], sort=True):
        prices, volumes = list(g["price"]), list(g["volume"])
        with localcontext() as ctx:
            ctx.prec = 80
            total = sum(volumes, Decimal(0))
            notional = sum((p * v for p, v in zip(prices, volumes, strict=True)), Decimal(0))
            vwap = (notional / total).quantize(Decimal("1e-8"), rounding=ROUND_HALF_EVEN) if total else None
        out[(symbol, exchange, bar_start.to_pydatetime())] = {
            "open": prices[0],
            "high": max(prices),
            "low": min(prices),
            "close": prices[-1],
            "volume": total,
            "vwap": vwap,
            "trade_count": len(g),
        }
    return out


def stored_bars(lake: Lake, name: str, day: date) -> dict[BarKey, dict[str, Any]]:
    rows = lake.table(name).scan(row_filter=day_filter("bar_start", day)).to_arrow().to_pylist()
    keys = [(r["symbol"], r["exchange"], r["bar_start"]) for r in rows]
    assert len(keys) == len(set(keys)), "a bar is stored twice"
    return {
        (r["symbol"], r["exchange"], r["bar_start"]): {
            k: r[k] for k in ("open", "high", "low", "close", "volume", "vwap", "trade_count")
        }
        for r in rows
    }


def on_day(trades: list[dict[str, Any]], day: date) -> list[dict[str, Any]]:
    return [t for t in trades if t["exchange_timestamp"].date() == day]


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_ohlcv_assets_equal_pandas_reference_and_rebuild_idempotently(
    catalog: str, make_settings: Callable[..., Settings], instance: dg.DagsterInstance
) -> None:
    lake = open_lake(make_settings(catalog=catalog))
    rng = random.Random(20261120)
    seqs: dict[tuple[str, str], int] = {}
    trades = random_trades(rng, D1, 400, seqs) + random_trades(rng, D2, 150, seqs)
    rng.shuffle(trades)
    for start in range(0, len(trades), 110):  # several snapshots, arrival order unrelated to exchange order
        lake.append("trades", trades[start : start + 110])
    resources = k2_resources(lake.settings)

    for day in (D1, D2):
        result = dg.materialize([ohlcv_bars], partition_key=day.isoformat(), resources=resources, instance=instance)
        assert result.success
    for day in (D1, D2):
        assert stored_bars(lake, "ohlcv_1m", day) == reference_bars(on_day(trades, day), "1min")
        assert stored_bars(lake, "ohlcv_1d", day) == reference_bars(on_day(trades, day), "1D")
    d2_minute = stored_bars(lake, "ohlcv_1m", D2)

    # Late trades for D1 (one in a new minute, one inside an existing bar) and a rerun of the D1 partition.
    late = [trade("BHP", 10_001, at(D1, 3.5), "1.23"), trade("CBA", 10_002, at(D1, 86_399.9), "99.5", "3.25")]
    lake.append("trades", late)
    job = definitions(lake.settings).resolve_job_def("ohlcv_job")
    for _ in range(2):  # the rebuild replaces the day: running it twice changes nothing
        assert job.execute_in_process(partition_key=D1.isoformat(), instance=instance).success
    assert stored_bars(lake, "ohlcv_1m", D1) == reference_bars(on_day(trades + late, D1), "1min")
    assert stored_bars(lake, "ohlcv_1d", D1) == reference_bars(on_day(trades + late, D1), "1D")
    assert stored_bars(lake, "ohlcv_1m", D2) == d2_minute  # the other day's partition is untouched

    # Each bar snapshot records the trades snapshot it read, for the query layer's freshness proof.
    trades_snapshot = lake.table("trades").metadata.current_snapshot_id
    for name in ("ohlcv_1m", "ohlcv_1d"):
        summary = lake.table(name).current_snapshot().summary  # type: ignore[union-attr]
        assert summary.additional_properties[SOURCE_SNAPSHOT_PROPERTY] == str(trades_snapshot)
        assert summary.operation.value == "overwrite"


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
def test_the_bar_tables_are_thinned_as_they_are_rebuilt_and_every_days_build_still_serves(
    make_settings: Callable[..., Settings], instance: dg.DagsterInstance
) -> None:
    """The sensor rebuilds today every two minutes: each bar table took ~720 snapshots a day, thinned only by the
    daily 7-day expiry (~5,000 held, every commit copying them all). The asset thins them as the ingesters thin
    theirs; a day built once, long before, keeps its build and is still served from the bar tables."""
    settings = make_settings()
    settings.query.tail_enabled = False
    settings.ingest.keep_snapshots = 2
    settings.ingest.retention_every_commits = 3
    lake = open_lake(settings)
    rng = random.Random(20261127)
    seqs: dict[tuple[str, str], int] = {}
    trades = random_trades(rng, D1, 120, seqs) + random_trades(rng, D2, 120, seqs)
    lake.append("trades", trades)
    resources = k2_resources(settings)
    builds = 16
    for day in [D1] + [D2] * (builds - 1):  # D1 once, then D2 again and again, as today is in a live system
        result = dg.materialize([ohlcv_bars], partition_key=day.isoformat(), resources=resources, instance=instance)
        assert result.success

    for name in ("ohlcv_1m", "ohlcv_1d"):
        table = lake.table(name)
        # newest 2, fewer than 3 expirable since the last thinning, this hour's and day's checkpoint tags, D1's build
        assert len(table.metadata.snapshots) <= 2 + 2 + 2 + 1 < builds
        assert day_source(table, D1) is not None
        assert day_source(table, D2) is not None
    bhp = [t for t in trades if (t["symbol"], t["exchange"]) == ("BHP", "asx")]
    with QueryEngine.from_settings(settings, cache=False) as engine:
        for interval in ("1m", "1d"):
            served = engine.ohlcv("BHP", "asx", interval, D1.isoformat(), (D2 + timedelta(days=1)).isoformat())
            assert served.sources == ("precomputed",)
            assert served.table.to_pylist() == oracle.bars(bhp, interval)


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
def test_ohlcv_sensor_requests_each_changed_day_once(make_settings: Callable[..., Settings]) -> None:
    lake = open_lake(make_settings())
    resources = k2_resources(lake.settings)
    with dg.build_sensor_context(cursor=None, resources=resources) as ctx:
        assert isinstance(ohlcv_sensor(ctx), dg.SkipReason)  # no trades at all yet

    lake.append("trades", [trade("BHP", 1, at(D1, 10)), trade("BHP", 2, at(D2, 10))])
    snapshot = lake.append("trades", [trade("BHP", 3, at(D2, 20))])
    with dg.build_sensor_context(cursor=None, resources=resources) as ctx:
        result = ohlcv_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    assert sorted(r.partition_key for r in result.run_requests) == [D1.isoformat(), D2.isoformat()]  # type: ignore[union-attr,type-var]
    assert {r.run_key for r in result.run_requests} == {f"ohlcv:{d}:{snapshot}" for d in (D1, D2)}  # type: ignore[union-attr]
    cursor = result.cursor
    assert json.loads(cursor or "{}") == {"trades": snapshot}

    with dg.build_sensor_context(cursor=cursor, resources=resources) as ctx:
        assert isinstance(ohlcv_sensor(ctx), dg.SkipReason)

    newer = lake.append("trades", [trade("CBA", 1, at(D2, 30))])
    with dg.build_sensor_context(cursor=cursor, resources=resources) as ctx:
        result = ohlcv_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    assert [(r.partition_key, r.run_key) for r in result.run_requests or []] == [
        (D2.isoformat(), f"ohlcv:{D2.isoformat()}:{newer}")
    ]


def test_trades_in_the_future_beyond_partitions_are_not_requested(make_settings: Callable[..., Settings]) -> None:
    lake = open_lake(make_settings())
    far = datetime.now(UTC) + timedelta(days=30)
    lake.append("trades", [trade("BHP", 1, far)])
    with dg.build_sensor_context(cursor=None, resources=k2_resources(lake.settings)) as ctx:
        result = ohlcv_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    assert not result.run_requests
