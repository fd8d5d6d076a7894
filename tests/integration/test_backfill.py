"""Gap backfill on real tables: a simulated feed with withheld sequences, ingested for real, ends with zero open gaps
after the backfill sensor's runs; plus the rules for stored rows, sessions, attempts and recorded files."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from k2_core.ingest.gaps import FILLED, OPEN, UNRECOVERABLE, GapGrading, GapStore
from k2_core.ingest.sequence import GapEvent
from k2_core.model.topics import Kind
from k2_core.settings import RecordedFile, Settings
from k2_core.upkeep.backfill import backfill
from k2_core.upkeep.recorded import RecordedFileSource
from k2_dagster.defs.gaps import gap_backfill_sensor
from k2_dagster.recovery import resolver
from k2_stream.ingester import Ingester
from k2_stream.simulator import FaultConfig, SimulatorConfig
from k2_stream.simulator.run import run_simulation
from tests.support.definitions import DAGSTER_OWNERS_BETA, definitions, k2_resources
from tests.support.factories import at, trade
from tests.support.kafka import produced_keys
from tests.support.lake import Lake, open_lake
from tests.support.waits import wait_for

DAY = date(2026, 11, 20)


def streams(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in rows:
        out[(r["exchange"], r["symbol"])].append(r["exchange_sequence_number"])
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_simulated_feed_with_withheld_sequences_ends_with_zero_open_gaps(
    catalog: str, broker: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(catalog=catalog, bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    settings.maintenance.backfill_batch_size = 4
    config = SimulatorConfig("asx", symbols=("BHP", "CBA"), seed=5, faults=FaultConfig(gap_every=9))
    summary = run_simulation(settings, config, rate=0, count=160)
    sent = {kind: set(produced_keys(settings, kind)) for kind in ("trades", "quotes")}

    ingester = Ingester(settings)
    thread = threading.Thread(target=ingester.run, daemon=True)
    thread.start()
    lake = open_lake(settings)
    try:
        wait_for(lambda: all(len(lake.rows(kind)) >= len(sent[kind]) for kind in sent), timeout=60)
    finally:
        ingester.stop()
        thread.join(30)

    # Every withheld number below its stream's last delivered one is an open gap.
    open_before = [g for g in lake.rows("sequence_gaps") if g["status"] == OPEN]
    expected_missing = {
        (s.kind, s.exchange, s.symbol, n)
        for s, numbers in summary.withheld.items()
        for n in numbers
        if any(k[1] == s.symbol and k[2] > n for k in sent[s.kind])
    }
    assert {
        (g["data_type"], g["exchange"], g["symbol"], n)
        for g in open_before
        for n in range(g["first_missing"], g["last_missing"] + 1)
    } == expected_missing
    assert len(open_before) > settings.maintenance.backfill_batch_size  # more than one batch

    resources = k2_resources(settings)
    with dg.build_sensor_context(cursor=None, resources=resources) as ctx:
        held = gap_backfill_sensor(ctx)  # the default minimum age lets late numbers arrive first
    assert isinstance(held, dg.SensorResult)
    assert not held.run_requests

    settings.maintenance.backfill_min_gap_age_seconds = 0
    resources = k2_resources(settings)
    with dg.build_sensor_context(cursor=held.cursor, resources=resources) as ctx:
        result = gap_backfill_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    requests = result.run_requests or []
    assert len(requests) == -(-len(open_before) // 4)  # one run per batch of 4
    job = definitions(settings).resolve_job_def("gap_backfill_job")
    with dg.instance_for_test() as instance:
        for request in requests:
            run = job.execute_in_process(run_config=request.run_config, tags=request.tags, instance=instance)
            assert run.success

        assert [g for g in lake.rows("sequence_gaps") if g["status"] != FILLED] == []
        for kind in ("trades", "quotes"):
            rows = lake.rows(kind)
            stored = streams(rows)
            assert len(rows) == len(sent[kind]) + len({m for m in expected_missing if m[0] == kind})
            for seqs in stored.values():
                assert seqs == list(range(1, seqs[-1] + 1))  # complete and each number exactly once

        # Reruns are safe: the same run config again, and the daily sweep, write nothing.
        counts = {kind: len(lake.rows(kind)) for kind in ("trades", "quotes")}
        assert job.execute_in_process(run_config=requests[0].run_config, instance=instance).success
        assert job.execute_in_process(instance=instance).success
    assert {kind: len(lake.rows(kind)) for kind in ("trades", "quotes")} == counts

    with dg.build_sensor_context(cursor=result.cursor, resources=resources) as ctx:
        idle = gap_backfill_sensor(ctx)
    assert isinstance(idle, dg.SensorResult)
    assert not idle.run_requests


# ---- the rules, on hand-made gaps ----------------------------------------------------------------------------


class ListSource:
    """A recovery source holding given records (like the simulator's store, but for hand-made streams)."""

    def __init__(self, records: list[dict[str, Any]], on_fetch: Callable[[], None] | None = None) -> None:
        self.records = records
        self.on_fetch = on_fetch
        self.calls = 0

    @property
    def name(self) -> str:
        return "list"

    def fetch(self, kind: Kind, symbol: str, first: int, last: int) -> list[dict[str, Any]]:
        self.calls += 1
        if self.on_fetch is not None:
            self.on_fetch()
        return [r for r in self.records if r["symbol"] == symbol and first <= r["exchange_sequence_number"] <= last]


def seeded(settings: Settings, seqs: list[int], gaps: list[tuple[int, int]], base: float = 0) -> Lake:
    lake = open_lake(settings)
    lake.append("trades", [trade("BHP", s, at(DAY, base + s)) for s in seqs])
    record_gaps(lake, gaps)
    return lake


def record_gaps(lake: Lake, gaps: list[tuple[int, int]], detected: datetime | None = None) -> None:
    store = GapStore(lake.table("sequence_gaps"), GapGrading(10, 100))
    events = [GapEvent(("trades", "asx", "BHP"), first, last) for first, last in gaps]
    store.record_detected(events, detected or datetime.now(UTC))


def run(lake: Lake, sources: list[Any], max_attempts: int = 3) -> Any:
    tables = {"trades": lake.table("trades"), "quotes": lake.table("quotes")}
    return backfill(
        tables,  # type: ignore[arg-type]
        lake.table("sequence_gaps"),
        lambda exchange, symbol: sources,
        datetime.now(UTC),
        max_attempts=max_attempts,
        min_age=timedelta(0),
        limit=100,
        retries=3,
        backoff_seconds=0.05,
    )


def gap_rows(lake: Lake) -> dict[tuple[int, int], dict[str, Any]]:
    return {(g["first_missing"], g["last_missing"]): g for g in lake.rows("sequence_gaps")}


def test_an_open_gap_whose_rows_are_stored_is_marked_filled(make_settings: Callable[..., Settings]) -> None:
    # The rows arrived, but the fill record was lost (a crash between the data commit and the gap update).
    lake = seeded(make_settings(), list(range(1, 21)), [(5, 7)])
    report = run(lake, [])
    assert report.rows_written == {}
    assert gap_rows(lake)[(5, 7)]["status"] == FILLED
    assert gap_rows(lake)[(5, 7)]["reason"] == "already stored"


def test_partial_recovery_splits_and_the_rest_turns_unrecoverable(make_settings: Callable[..., Settings]) -> None:
    lake = seeded(make_settings(), [s for s in range(1, 21) if not 5 <= s <= 9], [(5, 9)])
    source = ListSource([trade("BHP", s, at(DAY, s)) for s in (5, 6, 8)])
    run(lake, [source], max_attempts=2)
    gaps = gap_rows(lake)
    assert {k: (g["status"], g["attempts"]) for k, g in gaps.items()} == {
        (5, 6): (FILLED, 1),
        (7, 7): (OPEN, 1),
        (8, 8): (FILLED, 1),
        (9, 9): (OPEN, 1),
    }
    assert gaps[(5, 6)]["reason"] == "recovered from list"
    run(lake, [source], max_attempts=2)  # second attempt finds nothing more
    gaps = gap_rows(lake)
    assert gaps[(7, 7)]["status"] == gaps[(9, 9)]["status"] == UNRECOVERABLE
    assert gaps[(7, 7)]["attempts"] == 2
    assert "after 2 attempts" in gaps[(7, 7)]["reason"]
    assert gaps[(7, 7)]["resolved_at"] is not None
    assert streams(lake.rows("trades"))[("asx", "BHP")] == [s for s in range(1, 21) if s not in (7, 9)]
    assert run(lake, [source]).outcomes == []  # nothing open is left to try


def test_rows_of_another_session_neither_count_as_stored_nor_get_recovered(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    lake = open_lake(settings)
    # Yesterday's session had numbers 1..20; today's restarted at 1 and is missing 5..6.
    lake.append("trades", [trade("BHP", s, at(DAY - timedelta(days=1), s)) for s in range(1, 21)])
    lake.append("trades", [trade("BHP", s, at(DAY, s)) for s in range(1, 21) if s not in (5, 6)])
    record_gaps(lake, [(5, 6)])
    stale = ListSource([trade("BHP", 5, at(DAY - timedelta(days=1), 5))])  # a record of the old session
    run(lake, [stale], max_attempts=5)
    assert gap_rows(lake)[(5, 6)]["status"] == OPEN  # neither yesterday's 5, 6 nor the stale record close it
    fresh = ListSource([trade("BHP", s, at(DAY, s)) for s in (5, 6)])
    run(lake, [fresh])
    assert gap_rows(lake)[(5, 6)]["status"] == FILLED
    today = [r for r in lake.rows("trades") if r["exchange_timestamp"].date() == DAY]
    assert sorted(r["exchange_sequence_number"] for r in today) == list(range(1, 21))


def test_rows_that_land_while_backfill_runs_are_not_written_twice(make_settings: Callable[..., Settings]) -> None:
    lake = seeded(make_settings(), [s for s in range(1, 21) if s not in (10, 11)], [(10, 11)])
    late = [trade("BHP", s, at(DAY, s)) for s in (10, 11)]

    def ingester_delivers_them_late() -> None:
        lake.append("trades", late)

    source = ListSource(late, on_fetch=ingester_delivers_them_late)
    report = run(lake, [source])
    assert report.rows_written == {}
    assert report.outcomes[0].recovered == 2
    assert report.outcomes[0].written == 0
    assert streams(lake.rows("trades"))[("asx", "BHP")] == list(range(1, 21))
    assert gap_rows(lake)[(10, 11)]["status"] == FILLED


def test_recorded_file_is_re_read_to_recover_a_gap(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    # A Binance trade dump: id, price, qty, quote_qty, time (ms), is_buyer_maker, is_best_match.
    base_ms = int(at(DAY, 0).timestamp() * 1000)
    lines = ["id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"]
    lines += [
        f"{i},{30000 + i}.5,0.01,300.0,{base_ms + i * 1000},{'true' if i % 2 else 'false'},true" for i in range(1, 31)
    ]
    dump = tmp_path / "BTCUSDT-trades.csv"
    dump.write_text("\n".join(lines) + "\n")
    settings = make_settings()
    settings.maintenance.recorded_files = [RecordedFile(exchange="binance", symbol="BTCUSDT", path=dump)]

    lake = open_lake(settings)
    parsed = RecordedFileSource(settings.maintenance.recorded_files[0]).fetch("trades", "BTCUSDT", 1, 30)
    assert len(parsed) == 30
    lake.append("trades", [r for r in parsed if not 12 <= r["exchange_sequence_number"] <= 15])
    store = GapStore(lake.table("sequence_gaps"), GapGrading(10, 100))
    store.record_detected([GapEvent(("trades", "binance", "BTCUSDT"), 12, 15)], datetime.now(UTC))

    sources = resolver(settings)("binance", "BTCUSDT")
    assert [s.name for s in sources] == ["file:BTCUSDT-trades.csv"]
    report = run(lake, list(sources))
    assert report.rows_written == {"trades": 4}  # the file holds the whole range; only the missing rows land
    rows = [r for r in lake.rows("trades") if r["symbol"] == "BTCUSDT"]
    assert sorted(r["exchange_sequence_number"] for r in rows) == list(range(1, 31))
    by_seq = {r["exchange_sequence_number"]: r for r in rows}
    assert str(by_seq[13]["price"]) == "30013.50000000"
    assert lake.rows("sequence_gaps")[0]["status"] == FILLED
    assert resolver(settings)("binance", "ETHUSDT") == []  # no file, no simulator store for that stream


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
def test_gap_sensor_keeps_a_cursor_and_launches_each_attempt_once(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    settings.maintenance.backfill_min_gap_age_seconds = 0
    lake = seeded(settings, [s for s in range(1, 21) if s != 8], [(8, 8)])
    resources = k2_resources(settings)
    with dg.build_sensor_context(cursor=None, resources=resources) as ctx:
        first = gap_backfill_sensor(ctx)
    assert isinstance(first, dg.SensorResult)
    [request] = first.run_requests or []
    assert request.run_config == {"ops": {"sequence_gaps": {"config": {"gap_ids": ["trades/asx/BHP/8"]}}}}
    with dg.build_sensor_context(cursor=first.cursor, resources=resources) as ctx:
        assert isinstance(gap_backfill_sensor(ctx), dg.SkipReason)  # nothing changed since

    run(lake, [], max_attempts=3)  # an attempt that finds nothing: the gap stays open, one attempt counted
    with dg.build_sensor_context(cursor=first.cursor, resources=resources) as ctx:
        second = gap_backfill_sensor(ctx)
    assert isinstance(second, dg.SensorResult)
    [retry] = second.run_requests or []
    assert retry.run_config == request.run_config
    assert retry.run_key != request.run_key  # a new attempt is a new run; the same attempt is never launched twice
