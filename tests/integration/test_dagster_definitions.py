"""The K2 code location loads, has the asset graph the issue asks for, reads settings at launch (not import), and
the observation sensor turns every new trades/quotes snapshot into asset events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import yaml
from pydantic import SecretStr, ValidationError

from k2_core.model.tables import TRADES
from k2_core.settings import REPO_ROOT, MaintenanceSettings, Settings
from k2_core.upkeep.compaction import compact_day
from k2_dagster.defs.market import iceberg_snapshot_sensor
from k2_dagster.defs.resources import K2Settings
from k2_dagster.launcher import POSTGRES_URL_ENV, dagster_processes
from tests.support.definitions import DAGSTER_OWNERS_BETA, definitions, k2_resources
from tests.support.factories import at, quote, trade
from tests.support.lake import open_lake

D1 = date(2026, 11, 20)
D2 = date(2026, 11, 21)


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
def test_definitions_load(make_settings: Callable[..., Settings]) -> None:
    from k2_dagster.definitions import defs

    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {"trades", "quotes", "ohlcv_1m", "ohlcv_1d", "sequence_gaps", "instruments", "book_snapshots"}
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("ohlcv_1m")).parent_keys == {dg.AssetKey("trades")}
    assert graph.get(dg.AssetKey("ohlcv_1d")).parent_keys == {dg.AssetKey("ohlcv_1m")}
    assert graph.get(dg.AssetKey("sequence_gaps")).parent_keys == {dg.AssetKey("trades"), dg.AssetKey("quotes")}
    assert not graph.get(dg.AssetKey("trades")).is_materializable  # written by the ingester, observed here
    checks = {k.name for k in graph.asset_check_keys}
    assert {
        "trades_price_positive",
        "trades_volume_non_negative",
        "trades_unique_sequence",
        "trades_timestamp_in_partition",
        "trades_timestamp_not_future",
        "trades_freshness",
        "quotes_bid_not_above_ask",
        "quotes_prices_positive",
        "quotes_unique_sequence",
    } <= checks
    assert set(repo.job_names) >= {
        "ohlcv_job",
        "compaction_job",
        "gap_backfill_job",
        "maintenance_job",
        "quality_job",
        "book_snapshots_job",
    }
    assert {s.name for s in repo.sensor_defs} == {
        "iceberg_snapshot_sensor",
        "ohlcv_sensor",
        "compaction_sensor",
        "gap_backfill_sensor",
    }
    assert {s.name for s in repo.schedule_defs} == {
        "gap_sweep_schedule",
        "maintenance_schedule",
        "quality_schedule",
        "book_snapshots_schedule",
    }
    assert set(repo.get_top_level_resources()) == {"k2", "iceberg", "kafka", "recovery"}


def test_settings_are_read_when_used_not_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resource = K2Settings()  # as the code location builds it, before any K2_* variable is looked at
    monkeypatch.setenv("K2_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("K2_MAINTENANCE_COMPACTION_MIN_FILES", "3")
    settings = resource.get()
    assert settings.home == tmp_path / "elsewhere"
    assert settings.maintenance.compaction_min_files == 3
    pinned = Settings(home=tmp_path / "pinned")
    assert K2Settings.pinned(pinned).get() == pinned


def test_workspace_yaml_loads_the_code_location(tmp_path: Path) -> None:
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == "k2_dagster.definitions"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "K2_HOME": str(tmp_path / "k2")}
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO_ROOT / "workspace.yaml")],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_loading_the_code_location_warns_of_nothing_k2_does(tmp_path: Path) -> None:
    """What the code server and every run do on start: resolve the definitions. Dagster's warning about its own beta
    `owners` argument used to land in the code server's log at each run."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "K2_HOME": str(tmp_path / "k2")}
    load = "import k2_dagster.definitions as d; d.defs.get_repository_def()"
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", load], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr


def test_launcher_builds_a_code_server_the_webserver_and_daemon_share(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    procs = dagster_processes(settings, {"K2_CATALOG_URI": "x", "PATH": "/usr/bin"})
    assert [p.name for p in procs] == ["dagster-code-server", "dagster-webserver", "dagster-daemon"]
    code, web, daemon = procs
    assert code.argv[:5] == [sys.executable, "-m", "dagster", "code-server", "start"]
    assert code.argv[code.argv.index("-h") + 1] == "127.0.0.1"
    assert code.argv[code.argv.index("-p") + 1] == "4000"
    # the code location workspace.yaml names, so `dagster dev -w workspace.yaml` shows the same one
    (entry,) = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())["load_from"]
    options = code.argv[5:]
    for flag, key in (("-m", "module_name"), ("-a", "attribute"), ("--location-name", "location_name")):
        assert options[options.index(flag) + 1] == entry["python_module"][key]
    assert web.argv[:3] == [sys.executable, "-m", "dagster_webserver"]
    assert web.argv[web.argv.index("-h") + 1] == "127.0.0.1"
    assert web.argv[web.argv.index("-p") + 1] == "3000"
    assert daemon.argv[:4] == [sys.executable, "-m", "dagster._daemon", "run"]
    for p in (web, daemon):
        workspace = yaml.safe_load(Path(p.argv[p.argv.index("-w") + 1]).read_text())
        assert workspace == {"load_from": [{"grpc_server": {"host": "127.0.0.1", "port": 4000, "location_name": "k2"}}]}
    for p in procs:
        assert p.env["DAGSTER_HOME"] == str(settings.home / "dagster")
        assert p.env["K2_CATALOG_URI"] == "x"  # the caller's K2_* settings pass through
    config = yaml.safe_load((settings.home / "dagster" / "dagster.yaml").read_text())
    assert config["telemetry"] == {"enabled": False}
    assert "storage" not in config  # the embedded default: SQLite under DAGSTER_HOME

    settings.maintenance.dagster_code_port = 0  # no code server: each loads workspace.yaml itself
    procs = dagster_processes(settings, {})
    assert [p.name for p in procs] == ["dagster-webserver", "dagster-daemon"]
    for p in procs:
        assert p.argv[p.argv.index("-w") + 1] == str(REPO_ROOT / "workspace.yaml")


def test_launcher_puts_dagster_storage_in_postgresql_when_configured(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    settings.maintenance.dagster_postgres_url = SecretStr("postgresql+psycopg://k2:s3cret@db:5432/dagster")
    inherited = {"PATH": "/usr/bin", POSTGRES_URL_ENV: "postgresql://stale@elsewhere/x"}
    for proc in dagster_processes(settings, inherited):
        # psycopg2, the driver dagster-postgres is written for, whatever driver the setting names
        assert proc.env[POSTGRES_URL_ENV] == "postgresql+psycopg2://k2:s3cret@db:5432/dagster"
    text = (settings.home / "dagster" / "dagster.yaml").read_text()
    assert yaml.safe_load(text)["storage"] == {"postgres": {"postgres_url": {"env": POSTGRES_URL_ENV}}}
    assert "s3cret" not in text
    assert "s3cret" not in repr(settings)
    with pytest.raises(ValidationError, match="postgresql"):
        MaintenanceSettings(dagster_postgres_url=SecretStr("sqlite:///dagster.db"))


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_snapshot_sensor_records_each_new_snapshot(catalog: str, make_settings: Callable[..., Settings]) -> None:
    lake = open_lake(make_settings(catalog=catalog))
    resources = k2_resources(lake.settings)
    first = lake.append(
        "trades",
        [trade("BHP", 1, at(D1, 5)), trade("BHP", 2, at(D1, 6)), trade("BHP", 3, at(D2, 7))],
        {"k2.kafka.offsets": json.dumps({"market.equities.trades.asx": {"0": 3}}), "k2.kafka.cluster": "c"},
    )
    second = lake.append("trades", [trade("CBA", 1, at(D2, 9))])
    quotes = lake.append("quotes", [quote("BHP", 1, at(D1, 5))])

    with dg.build_sensor_context(cursor=None, resources=resources) as ctx:
        result = iceberg_snapshot_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    events = [
        (
            e.asset_key.to_user_string(),
            e.partition,
            e.metadata["snapshot_id"].value,
            e.metadata["rows_added"].value,
            type(e).__name__,
        )
        for e in result.asset_events
    ]
    assert sorted(events) == sorted(
        [
            ("trades", D1.isoformat(), str(first), 2, "AssetMaterialization"),
            ("trades", D2.isoformat(), str(first), 1, "AssetMaterialization"),
            ("trades", D2.isoformat(), str(second), 1, "AssetMaterialization"),
            ("quotes", D1.isoformat(), str(quotes), 1, "AssetMaterialization"),
        ]
    )
    offsets_flags = {
        e.metadata["snapshot_id"].value: e.metadata["carries_kafka_offsets"].value for e in result.asset_events
    }
    assert offsets_flags[str(first)] is True
    assert offsets_flags[str(second)] is False
    cursor = result.cursor
    assert json.loads(cursor or "{}") == {"trades": second, "quotes": quotes}

    # Recording the events through the instance makes them the assets' partition materializations.
    with dg.instance_for_test() as instance:
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
        materialized = instance.get_materialized_partitions(dg.AssetKey("trades"))
        assert materialized == {D1.isoformat(), D2.isoformat()}

    with dg.build_sensor_context(cursor=cursor, resources=resources) as ctx:
        assert isinstance(iceberg_snapshot_sensor(ctx), dg.SkipReason)

    # A compaction rewrites a day without adding data: an observation, not a materialization.
    for seq in range(4, 8):
        lake.append("trades", [trade("BHP", seq, at(D1, 10 + seq))])
    table = lake.table("trades")
    compacted = compact_day(table, TRADES, D1, target_file_bytes=10**9, retries=2, backoff_seconds=0.05)
    after = lake.append("trades", [trade("BHP", 8, at(D1, 30))])  # the next commit drops the delete manifest
    with dg.build_sensor_context(cursor=cursor, resources=resources) as ctx:
        result = iceberg_snapshot_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    kinds = [(type(e).__name__, e.metadata["snapshot_id"].value) for e in result.asset_events]
    assert kinds[-2:] == [("AssetObservation", str(compacted.snapshot_id)), ("AssetMaterialization", str(after))]
    assert [k for k, _ in kinds[:-2]] == ["AssetMaterialization"] * 4
    rewrite = result.asset_events[-2].metadata
    assert rewrite["rows_removed"].value == 6  # BHP 1, 2 and the four single-row appends
    assert rewrite["rows_added"].value == 6

    with dg.build_sensor_context(cursor=None, resources=k2_resources(open_lake(make_settings()).settings)) as ctx:
        empty = iceberg_snapshot_sensor(ctx)  # empty tables: nothing to report, but a cursor to start from
    assert isinstance(empty, dg.SensorResult)
    assert not empty.asset_events
    assert definitions(lake.settings).resolve_sensor_def("iceberg_snapshot_sensor").name == "iceberg_snapshot_sensor"


@pytest.mark.filterwarnings(DAGSTER_OWNERS_BETA)
def test_schedules_launch_their_jobs(make_settings: Callable[..., Settings]) -> None:
    defs = definitions(make_settings())
    expected = {
        "gap_sweep_schedule": ("gap_backfill_job", "15 1 * * *"),
        "maintenance_schedule": ("maintenance_job", "45 2 * * *"),
        "quality_schedule": ("quality_job", "*/15 * * * *"),
    }
    for name, (job_name, cron) in expected.items():
        schedule = defs.resolve_schedule_def(name)
        assert schedule.job_name == job_name
        assert schedule.cron_schedule == cron
        assert schedule.execution_timezone == "UTC"
        with dg.build_schedule_context() as ctx:
            data = schedule.evaluate_tick(ctx)
        assert data.run_requests is not None
        assert len(data.run_requests) == 1
