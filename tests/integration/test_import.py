"""`k2 import`: files straight into the real Iceberg tables (SQLite and PostgreSQL catalogs), by the ingester's rules:
bad rows reported, duplicates dropped against what is stored, gaps recorded and filled, files skipped once imported,
an interrupted import resumed without duplicates, and the same rows as the same day streamed through Kafka."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from k2_cli.main import app
from k2_core.ingest.formats import ReadOptions, file_format
from k2_core.ingest.importer import Importer
from k2_core.lake.catalog import open_catalog
from k2_core.model.tables import TRADES as TRADES_TABLE
from k2_core.settings import REPO_ROOT, RecordedFile, Settings
from k2_stream.ingester import Ingester
from k2_stream.replay import replay_file
from tests.support.definitions import DAGSTER_OWNERS_BETA, definitions
from tests.support.dumps import write_binance_aggtrades, write_binance_trades
from tests.support.lake import table_rows
from tests.support.processes import settings_env
from tests.support.waits import wait_for

SettingsFactory = Callable[..., Settings]
DAY = datetime(2024, 11, 25, tzinfo=UTC)
TRADES = file_format("binance-trades")


def options(**kw: object) -> ReadOptions:
    return ReadOptions(exchange="binance", symbol="BTCUSDT", **kw)  # type: ignore[arg-type]


def sequences(settings: Settings, symbol: str = "BTCUSDT") -> list[int]:
    return sorted(r["exchange_sequence_number"] for r in table_rows(settings, "trades") if r["symbol"] == symbol)


def gaps(settings: Settings) -> list[tuple[int, int, str]]:
    return sorted((g["first_missing"], g["last_missing"], g["status"]) for g in table_rows(settings, "sequence_gaps"))


def snapshot_id(settings: Settings) -> int | None:
    table = open_catalog(settings).load_table(f"{settings.catalog.namespace}.trades")
    return table.metadata.current_snapshot_id


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_a_file_lands_by_the_ingesters_rules(make_settings: SettingsFactory, tmp_path: Path, catalog: str) -> None:
    settings = make_settings(catalog=catalog)
    ids = [*range(1, 41), *range(46, 101)]  # 41..45 never traded: a gap of 5, a warning at the default grading
    extra = ["101,not-a-price,0.1,1,1732492800789,false,true", "102,5.0,0.1,1,86400000,false,true"]
    dump = write_binance_trades(tmp_path / "BTCUSDT-trades-2024-11-25.csv", ids, DAY, extra=extra)

    report = Importer(settings).import_file(dump, TRADES, options(chunk_rows=1000))

    assert sequences(settings) == ids
    assert (report.rows_read, report.written, report.duplicates, report.gaps) == (97, 95, 0, 1)
    assert [(b.line, b.reason.split(" ")[0]) for b in report.bad] == [(97, "price")]
    assert len(report.rejected) == 1
    assert "before" in report.rejected[0].reason
    assert gaps(settings) == [(41, 45, "open")]
    rows = {r["exchange_sequence_number"]: r for r in table_rows(settings, "trades")}
    assert rows[1]["price"] == Decimal("30000.01000000")
    assert rows[1]["side"] == "sell"
    assert rows[2]["side"] == "buy"
    assert rows[1]["exchange_timestamp"] == DAY


def test_a_file_is_imported_once_and_overlaps_are_dropped(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    first = write_binance_trades(tmp_path / "BTCUSDT-trades-2024-11-25.csv", range(1, 501), DAY)
    importer = Importer(settings)
    importer.import_file(first, TRADES, options(chunk_rows=1000))
    before = snapshot_id(settings)

    again = Importer(settings).import_file(first, TRADES, options(chunk_rows=1000))
    renamed = first.rename(tmp_path / "copy.csv")
    copied = Importer(settings).import_file(renamed, TRADES, options(chunk_rows=1000))
    assert again.skipped
    assert copied.skipped
    assert snapshot_id(settings) == before

    overlap = write_binance_trades(tmp_path / "BTCUSDT-trades-b.csv", range(401, 601), DAY + timedelta(seconds=4))
    report = Importer(settings).import_file(overlap, TRADES, options(chunk_rows=1000))
    assert (report.written, report.duplicates) == (100, 100)
    assert sequences(settings) == list(range(1, 601))


def test_late_numbers_in_another_file_fill_the_recorded_gap(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    holes = write_binance_trades(tmp_path / "a.csv", [*range(1, 11), *range(20, 31)], DAY)
    Importer(settings).import_file(holes, TRADES, options())
    assert gaps(settings) == [(11, 19, "open")]

    late = write_binance_trades(tmp_path / "b.csv", range(11, 20), DAY + timedelta(milliseconds=91), step_ms=1)
    report = Importer(settings).import_file(late, TRADES, options())
    assert (report.written, report.filled) == (9, 9)
    assert sequences(settings) == list(range(1, 31))
    assert gaps(settings) == [(11, 19, "filled")]


def test_an_interrupted_import_resumes_without_duplicates(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings(catalog="postgres")
    dump = write_binance_trades(tmp_path / "BTCUSDT-trades-2024-11-25.csv", range(1, 300_001), DAY, step_ms=1)
    env = {**settings_env(settings), "K2_LOG_LEVEL": "INFO"}
    command = [sys.executable, "-m", "k2_cli.main", "import", str(dump), "-f", "binance-trades", "-e", "binance"]
    proc = subprocess.Popen([*command, "--chunk-rows", "10000"], env=env, cwd=REPO_ROOT)
    try:
        wait_for(lambda: len(sequences(settings)) > 0, timeout=60, interval=0.05)
        proc.send_signal(signal.SIGKILL)  # mid-file: some chunks committed, the rest not
        proc.wait(10)
    finally:
        proc.kill()
    committed = len(sequences(settings))
    assert 0 < committed < 300_000

    report = Importer(settings).import_file(dump, TRADES, options(chunk_rows=10_000))
    assert report.resumed_at >= committed - 10_000
    assert report.resumed_at > 0
    assert report.duplicates < 10_000  # at most the chunk that was being committed
    assert sequences(settings) == list(range(1, 300_001))
    assert Importer(settings).import_file(dump, TRADES, options(chunk_rows=10_000)).skipped


def test_import_and_stream_give_the_same_table(
    broker: str, make_settings: SettingsFactory, tmp_path: Path, running_ingester: Callable[[Settings], Ingester]
) -> None:
    ids = [*range(1, 2001), *range(2003, 5001)]  # 2001..2002 lost
    dump = write_binance_trades(tmp_path / "BTCUSDT-trades-2024-11-25.csv", ids, DAY, extra=["x,1,2,3,4,true,true"])
    imported = make_settings()
    Importer(imported).import_file(dump, TRADES, options(chunk_rows=1000))

    streamed = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    replay_file(streamed, dump, exchange="binance", symbol="BTCUSDT", fmt="binance-trades")
    running_ingester(streamed)
    wait_for(lambda: len(table_rows(streamed, "trades")) >= len(ids), timeout=60)

    def content(settings: Settings) -> list[tuple[object, ...]]:
        """The rows without their ingestion time. The replay writes the feed schema's newest version, whose optional
        fields a Binance dump leaves null: the streamed table has those columns, all null; the import has not."""
        rows = table_rows(settings, "trades")
        extra = set(TRADES_TABLE.column_names) - set(TRADES_TABLE.arrow_schema.names)
        assert all(r[k] is None for r in rows for k in extra & r.keys())
        return sorted(tuple(v for k, v in r.items() if k != "ingestion_timestamp" and k not in extra) for r in rows)

    assert content(imported) == content(streamed)
    assert gaps(imported) == gaps(streamed) == [(2001, 2002, "open")]


def test_an_import_beside_a_running_ingester_stores_each_row_once(
    broker: str, make_settings: SettingsFactory, tmp_path: Path, running_ingester: Callable[[Settings], Ingester]
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.2, metrics_port=0)
    dump = write_binance_trades(tmp_path / "BTCUSDT-trades-2024-11-25.csv", range(1, 100_001), DAY, step_ms=1)
    running_ingester(settings)
    replay = {"exchange": "binance", "symbol": "BTCUSDT", "fmt": "binance-trades"}
    replayer = threading.Thread(target=replay_file, args=(settings, dump), kwargs=replay)
    replayer.start()
    # The ingester is committing the replay's rows when the import starts: both see every row, at the same time.
    wait_for(lambda: len(sequences(settings)) >= 5000, timeout=60, interval=0.05)
    report = Importer(settings).import_file(dump, TRADES, options(chunk_rows=5000))
    assert report.duplicates > 0  # what the ingester had stored before the import looked
    replayer.join(120)
    wait_for(lambda: len(sequences(settings)) >= 100_000, timeout=120)
    counts = Counter(sequences(settings))
    assert len(counts) == 100_000
    assert [s for s, n in counts.items() if n > 1] == []


def test_k2_import_takes_folders_and_globs_in_date_order(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    folder = tmp_path / "dumps"
    folder.mkdir()
    # Named so that name order is not date order: the second day's numbers continue the first's.
    write_binance_trades(folder / "BTCUSDT-trades-2024-11-26.csv", range(101, 201), DAY + timedelta(days=1))
    write_binance_trades(folder / "BTCUSDT-trades-2024-11-25.csv", range(1, 101), DAY)
    env = settings_env(settings)
    result = CliRunner().invoke(app, ["import", str(folder), "-f", "binance-trades", "-e", "binance"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 files: 200 rows read, 200 written" in result.output
    assert sequences(settings) == list(range(1, 201))
    assert gaps(settings) == []

    glob = str(folder / "BTCUSDT-trades-*.csv")
    again = CliRunner().invoke(app, ["import", glob, "-f", "binance-trades", "-e", "binance"], env=env)
    assert again.exit_code == 0, again.output
    assert again.output.count("already imported") == 2

    unknown = CliRunner().invoke(app, ["import", glob, "-f", "nope", "-e", "binance"], env=env)
    assert unknown.exit_code == 2
    assert "unknown file format 'nope'" in unknown.output


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
def test_the_gap_backfill_job_recovers_from_recorded_dumps_of_any_format(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    settings.maintenance.backfill_min_gap_age_seconds = 0
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    write_binance_aggtrades(recorded / "BTCUSDT-aggTrades-2024-11-25.csv", range(1, 101), DAY)
    write_binance_aggtrades(recorded / "ETHUSDT-aggTrades-2024-11-25.csv", range(1, 51), DAY)
    # What was imported lacks 40..44 of BTCUSDT: an open gap.
    holey = tmp_path / "BTCUSDT-aggTrades-2024-11-25.csv"
    write_binance_aggtrades(holey, [*range(1, 40), *range(45, 101)], DAY)
    Importer(settings).import_file(holey, file_format("binance-aggtrades"), options())
    assert gaps(settings) == [(40, 44, "open")]

    # One configured source for every symbol of the folder, each file's symbol from its name.
    settings.maintenance.recorded_files = [
        RecordedFile(exchange="binance", path=recorded / "*-aggTrades-*.csv", format="binance-aggtrades")
    ]
    job = definitions(settings).resolve_job_def("gap_backfill_job")
    with dg.instance_for_test() as instance:
        assert job.execute_in_process(instance=instance).success
    assert gaps(settings) == [(40, 44, "filled")]
    assert sequences(settings) == list(range(1, 101))
    assert sequences(settings, "ETHUSDT") == []  # recovery writes only what a gap misses
