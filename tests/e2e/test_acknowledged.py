"""A producing command says when its messages are safe: it waits until the ingester has committed them, and says
what was lost when the memory-only broker restarted first."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from k2_core.settings import Settings
from k2_stream.broker import start_tansu
from k2_stream.ingester import Ingester
from tests.support.lake import table_rows
from tests.support.ports import free_port
from tests.support.processes import settings_env
from tests.support.waits import wait_for

HEADER = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"


def _dump(path: Path, first: int, count: int) -> Path:
    rows = [f"{i},100.{i % 100:02d},0.5,50,{1732492800000 + i},true,true" for i in range(first, first + count)]
    path.write_text("\n".join([HEADER, *rows, "bad,line"]) + "\n")
    return path


def _replay(settings: Settings, path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "k2_cli.main", "replay-file", str(path), "-e", "binance", "--symbol", "BTCUSDT", *args],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_replay_waits_until_the_ingester_committed_every_row(
    broker: str,
    make_settings: Callable[..., Settings],
    running_ingester: Callable[[Settings], Ingester],
    tmp_path: Path,
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    path = _dump(tmp_path / "BTCUSDT-trades.csv", 1, 2000)
    running_ingester(settings)

    first = _replay(settings, path)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    assert "2,000 produced, 2,000 committed" in out
    # acknowledged means stored: no wait on the test's side
    assert len(table_rows(settings, "trades")) == 2000

    # The same file again: every row is a duplicate, so no snapshot is written; the ingester group's commit
    # (made only after its Iceberg step) still acknowledges each message.
    again = _replay(settings, path)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    assert "2,000 produced, 2,000 committed" in out
    assert len(table_rows(settings, "trades")) == 2000


def test_replay_without_an_ingester_says_nothing_is_committed(
    broker: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(bootstrap=broker)
    replay = _replay(settings, _dump(tmp_path / "t.csv", 1, 50), "--wait-timeout", "2")
    out, _ = replay.communicate(timeout=60)
    assert replay.returncode == 1, out
    assert "50 produced, 0 committed" in out
    assert "50 messages not committed after 2s" in out


def test_a_broker_restart_during_the_wait_is_reported_as_loss(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    broker = start_tansu("127.0.0.1", port, log_path=tmp_path / "tansu.log")
    settings = make_settings(bootstrap=f"127.0.0.1:{port}")
    replay = _replay(settings, _dump(tmp_path / "t.csv", 1, 300), "--wait-timeout", "120")
    try:
        # produced and waiting (no ingester): the broker now dies and an empty one takes its place
        wait_for(lambda: broker_has_messages(settings), timeout=60)
        broker.kill()
        broker.wait()
        broker = start_tansu("127.0.0.1", port, log_path=tmp_path / "tansu2.log")
        out, _ = replay.communicate(timeout=60)
    finally:
        replay.kill()
        broker.kill()
        broker.wait()
    assert replay.returncode == 1, out
    assert "300 produced, 0 committed" in out
    assert "300 messages were lost" in out


def broker_has_messages(settings: Settings) -> bool:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "probe"})
    try:
        topic = "market.crypto.trades.binance"
        meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if meta is None or meta.error is not None:
            return False
        return any(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] > 0 for p in meta.partitions)
    finally:
        consumer.close()
