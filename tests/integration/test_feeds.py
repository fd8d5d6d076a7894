"""Feeds against a real Tansu broker: what the simulator and replay produce is what a consumer decodes."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from typer.testing import CliRunner

from k2_cli.main import app
from k2_core.logging import fields_of
from k2_core.model.avro import Decoder
from k2_core.model.registry import FileSchemaRegistry
from k2_core.model.topics import topic_name
from k2_core.settings import Settings
from k2_stream.replay import replay_file
from k2_stream.simulator import FaultConfig, SimulatorConfig, Stream, load_recovery
from k2_stream.simulator.run import run_simulation
from tests.support.waits import wait_for

SettingsFactory = Callable[..., Settings]  # the `make_settings` fixture (tests/conftest.py)
runner = CliRunner()


def consume(settings: Settings, topic: str, expected: int, timeout: float = 20.0) -> list[tuple[bytes, dict[str, Any]]]:
    """(key, decoded record) for `expected` messages of every partition of `topic`, read from offset 0.

    Partitions are assigned directly (no group rebalance wait) and the high watermark is not trusted
    (Tansu's can be wrong): read until the count arrives or the deadline passes.
    """
    decoder = Decoder(FileSchemaRegistry(settings.kafka.schemas_dir))
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": settings.kafka.group_id,
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[tuple[bytes, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                assert msg.error() is None, msg.error()
                out.append((msg.key(), decoder.decode(msg.value())))
        # Nothing beyond the expected count should be there either.
        out.extend((m.key(), decoder.decode(m.value())) for m in consumer.consume(500, timeout=0.5))
        return out
    finally:
        consumer.close()


def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """Point the CLI's own Settings() (built from K2_* variables) at the test's broker and home."""
    monkeypatch.setenv("K2_HOME", str(settings.home))
    monkeypatch.setenv("K2_KAFKA_BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("K2_KAFKA_MAX_PARTITIONS", "2")
    monkeypatch.setenv("K2_KAFKA_REPLICATION_FACTOR", "1")


def test_simulator_records_arrive_decodable_with_faults_accounted(broker: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(bootstrap=broker)
    config = SimulatorConfig(
        "asx", symbols=("BHP", "CBA"), seed=7, faults=FaultConfig(gap_every=4, duplicate_every=3, reorder_every=5)
    )
    started = datetime.now(UTC)
    summary = run_simulation(settings, config, rate=0, count=60)
    assert summary.trades_generated == summary.quotes_generated == 60
    assert summary.duplicates > 0
    assert summary.reorders > 0

    seen: dict[Stream, list[int]] = defaultdict(list)
    for kind in ("trades", "quotes"):
        expected = sum(n for s, n in summary.sent.items() if s.kind == kind)
        messages = consume(settings, topic_name("equities", kind, "asx"), expected)
        assert len(messages) == expected
        for key, record in messages:
            assert key == record["symbol"].encode()
            assert record["exchange"] == "asx"
            assert record["ingestion_timestamp"] >= record["exchange_timestamp"] >= started
            seen[Stream("asx", record["symbol"], kind)].append(record["exchange_sequence_number"])
            if kind == "trades":
                assert isinstance(record["price"], Decimal)
                assert record["volume"] == record["volume"].to_integral_value()
                assert record["trade_id"] == f"asx-{record['symbol']}-{record['exchange_sequence_number']}"
            else:
                assert record["bid_price"] <= record["ask_price"]

    recovery = load_recovery(settings, "asx")
    assert summary.recovery_file == settings.home / "recovery" / "asx.jsonl"
    for stream, seqs in seen.items():
        top = max(seqs)
        withheld = summary.withheld.get(stream, [])
        assert withheld == list(range(4, top + 1, 4)), "every 4th sequence number withheld"
        assert set(seqs) == set(range(1, top + 1)) - set(withheld)
        assert sum(Counter(seqs).values()) == summary.sent[stream]
        recovered = recovery.fetch(stream.kind, stream.symbol, 1, top)
        assert [r["exchange_sequence_number"] for r in recovered] == withheld
        assert all(isinstance(r["exchange_timestamp"], datetime) for r in recovered)


def test_simulator_paces_to_the_rate_for_the_duration(broker: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(bootstrap=broker)
    summary = run_simulation(settings, SimulatorConfig("nyse", seed=1), rate=200, duration=0.5)
    assert 0.45 <= summary.elapsed_seconds < 5
    assert 50 <= summary.trades_generated <= 102
    assert summary.withheld == {}
    assert summary.recovery_file is None


def test_simulate_cli(broker: str, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(bootstrap=broker)
    cli_env(monkeypatch, settings)
    result = runner.invoke(
        app,
        [
            *("simulate", "-e", "binance", "--count", "20", "--rate", "0", "--seed", "3"),
            *("--symbols", "btcusdt,ETHUSDT", "--no-quotes", "--no-wait"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trades generated: 20" in result.stdout
    messages = consume(settings, topic_name("crypto", "trades", "binance"), 20)
    by_symbol: dict[str, list[int]] = defaultdict(list)
    for _, record in messages:
        by_symbol[record["symbol"]].append(record["exchange_sequence_number"])
    assert set(by_symbol) <= {"BTCUSDT", "ETHUSDT"}
    for seqs in by_symbol.values():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
    assert sum(len(s) for s in by_symbol.values()) == 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--exchange", "lse", "--count", "1"], "known: asx, binance, nyse"),
        (["simulate", "--exchange", "asx", "--symbols", "BHP,AAPL", "--count", "1"], "not listed on asx"),
        (["simulate", "--gap-every", "1", "--count", "1"], "withhold every message"),
        (["simulate", "--rate", "-1"], "greater than or equal to 0"),
        (["replay-file", "{csv}", "--symbol", "BTCUSDT", "--format", "lobster"], "unknown format 'lobster'"),
        (
            ["replay-file", "{csv}", "--symbol", "BTCUSDT", "--format", "tardis-trades", "--per-line"],
            "known: binance-trades",
        ),
        (["replay-file", "{csv}", "--symbol", "btc-usdt"], "must match"),
        (["replay-file", "{csv}", "--symbol", "BTCUSDT", "--exchange", "ftx"], "unknown exchange 'ftx'"),
        (["replay-file", "{missing}", "--symbol", "BTCUSDT"], "does not exist"),
    ],
)
def test_cli_rejects_bad_arguments(
    args: list[str], message: str, tmp_path: Path, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No broker needed: every one of these is refused before anything connects."""
    cli_env(monkeypatch, make_settings())
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("1,1,1,1,1700000000000,true,true\n")
    argv = [a.format(csv=csv_path, missing=tmp_path / "missing.csv") for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    # Rich draws the error in a wrapped box: compare without the frame and line breaks.
    assert message in re.sub(r"[\s│]+", " ", result.output), result.output


def test_replay_file_cli_produces_rows_and_reports_the_bad_line(
    broker: str,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(bootstrap=broker)
    cli_env(monkeypatch, settings)
    path = tmp_path / "BTCUSDT-trades-2024-01-01.csv"
    path.write_text(
        "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n"
        "100,42000.10,0.5,21000.05,1704067200000,true,true\n"
        "101,42000.20,0.25,10500.05,1704067200001,false,true\n"
        "102,not-a-price,0.1,1,1704067200002,true,true\n"
        "103,42000.30,0.001,42.0003,1704067200003000,False,True\n"
    )
    with caplog.at_level(logging.WARNING, logger="k2_stream.replay"):
        result = runner.invoke(
            app, ["replay-file", str(path), "--exchange", "binance", "--symbol", "BTCUSDT", "--no-wait"]
        )
    assert result.exit_code == 0, result.output
    assert "skipped line 4: price 'not-a-price' is not a number" in result.stderr
    assert "produced 3 rows" in result.stdout
    assert "skipped 1 lines: 4" in result.stdout
    [warning] = [r for r in caplog.records if r.getMessage() == "skipped malformed line"]
    assert fields_of(warning)["line_number"] == 4

    messages = consume(settings, topic_name("crypto", "trades", "binance"), 3)
    records = sorted((r for _, r in messages), key=lambda r: r["exchange_sequence_number"])
    assert [r["exchange_sequence_number"] for r in records] == [100, 101, 103]
    assert [r["side"] for r in records] == ["sell", "buy", "buy"]
    assert [r["trade_id"] for r in records] == ["100", "101", "103"]
    assert records[0]["price"] == Decimal("42000.10")
    assert records[2]["volume"] == Decimal("0.001")
    assert records[0]["exchange_timestamp"] == datetime(2024, 1, 1, tzinfo=UTC)
    assert records[2]["exchange_timestamp"] == datetime(2024, 1, 1, 0, 0, 0, 3000, tzinfo=UTC), "µs timestamp"
    assert all(r["ingestion_timestamp"] > r["exchange_timestamp"] for r in records)


def test_replay_file_paces_and_summarises(broker: str, make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings(bootstrap=broker)
    path = tmp_path / "dump.csv"
    path.write_text("".join(f"{i},100.{i:02d},1,100,{1704067200000 + i},false,true\n" for i in range(1, 21)))
    bad: list[int] = []
    summary = replay_file(
        settings,
        path,
        exchange="binance",
        symbol="ETHUSDT",
        fmt="binance-trades",
        rate=100,
        on_bad_line=lambda b: bad.append(b.line_number),
    )
    assert summary.produced == 20
    assert summary.skipped == []
    assert bad == []
    assert summary.elapsed_seconds >= 0.15
    assert len(consume(settings, topic_name("crypto", "trades", "binance"), 20)) == 20


def test_sigterm_stops_an_endless_simulation_cleanly(
    broker: str, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`k2 run` stops feeds with SIGTERM: the simulator must flush what it generated and still summarise."""
    settings = make_settings(bootstrap=broker)
    cli_env(monkeypatch, settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "k2_cli.main", "simulate", "-e", "nyse", "--rate", "300", "--no-quotes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Once messages arrive, the simulator is in its loop, its signal handlers installed (a start under load can
        # take seconds; a SIGTERM before then is the default action, not what this tests).
        topic = topic_name("equities", "trades", "nyse")
        wait_for(lambda: len(consume(settings, topic, 1, timeout=1)) > 0, timeout=60, interval=0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "(interrupted)" in stdout
    match = re.search(r"messages sent: (\d+)", stdout)
    assert match, stdout
    sent = int(match.group(1))
    assert sent > 0
    assert len(consume(settings, topic_name("equities", "trades", "nyse"), sent)) == sent
