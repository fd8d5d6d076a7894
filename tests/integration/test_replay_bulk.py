"""The columnar replay's producer against a real Tansu broker: partitions as librdkafka's own partitioner chooses them,
delivered offsets exactly the ones the messages are read back at (and never below them when another producer writes
to the partition meanwhile), failures raised; and why the broker's high watermark could not do instead."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from k2_core.exceptions import K2Error
from k2_core.model.avro import Decoder
from k2_core.model.avro_bulk import BulkEncoder, EncodedRows
from k2_core.model.registry import FileSchemaRegistry
from k2_core.settings import Settings
from k2_stream.bulk import BulkProducer, partition_for
from k2_stream.replay import READ_ROWS, encode_file, replay_file
from k2_stream.simulator.session import open_bulk_producer
from tests.support.fixtures import SettingsFactory
from tests.support.processes import settings_env
from tests.support.waits import wait_for

TOPIC = "market.crypto.trades.binance"
HEADER = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"


def dump(path: Path, first: int, count: int) -> Path:
    rows = [f"{i},100.{i % 100:02d},0.5,50,{1732492800000 + i},true,true" for i in range(first, first + count)]
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def read_back(settings: Settings, tp: tuple[str, int], expected: int) -> list[tuple[int, bytes, Any]]:
    """(offset, key, decoded record) of the partition's messages, until `expected` of them arrived."""
    decoder = Decoder(FileSchemaRegistry(settings.kafka.schemas_dir))
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "read-back", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(tp[0], tp[1], 0)])
        out: list[tuple[int, bytes, Any]] = []
        deadline = time.monotonic() + 30
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=0.5):
                assert msg.error() is None, msg.error()
                out.append((msg.offset(), msg.key(), decoder.decode(msg.value())))
        return out
    finally:
        consumer.close()


def test_partitions_are_the_ones_librdkafka_chooses(broker: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    counts = (1, 2, 3, 7, 16)
    for future in admin.create_topics([NewTopic(f"p{n}", n, 1) for n in counts]).values():
        future.result()
    keys = [b"BTCUSDT", b"ETHUSDT", b"BHP", b"CBA.AX", b"1000PEPEUSDT", b"A", b"Z" * 20]
    chosen: dict[tuple[str, bytes], int] = {}
    producer = Producer({"bootstrap.servers": broker, "enable.idempotence": True})

    def delivered(err: Any, msg: Any) -> None:
        chosen[msg.topic(), msg.key()] = msg.partition()

    for n in counts:
        for key in keys:
            producer.produce(f"p{n}", b"x", key, on_delivery=delivered)
    assert producer.flush(10) == 0
    assert chosen == {(f"p{n}", key): partition_for(key, n) for n in counts for key in keys}


def test_delivered_offsets_are_where_the_messages_are(
    broker: str, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(bootstrap=broker)
    path = dump(tmp_path / "BTCUSDT-trades-2024-11-25.csv", 1, 50_000)
    first = replay_file(settings, path, exchange="binance", symbol="BTCUSDT", fmt="binance-trades")
    again = replay_file(settings, path, exchange="binance", symbol="BTCUSDT", fmt="binance-trades")
    [(tp, offsets)] = first.delivered.items()
    assert tp == (TOPIC, partition_for(b"BTCUSDT", 2))
    assert list(offsets) == list(range(50_000))
    assert list(again.delivered[tp]) == list(range(50_000, 100_000))
    back = read_back(settings, tp, 100_000)
    assert [offset for offset, _, _ in back] == list(range(100_000))
    assert [r["exchange_sequence_number"] for _, _, r in back] == [*range(1, 50_001), *range(1, 50_001)]


def test_the_embedded_brokers_high_watermark_trails_its_last_batch(
    broker: str, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Why delivered offsets come from delivery reports: Tansu reports the high watermark as the last batch's first
    offset + 1, so after a replay it is below the offset of the last message (if this starts failing, Tansu was
    fixed and the watermark could be used after all)."""
    settings = make_settings(bootstrap=broker)
    summary = replay_file(
        settings, dump(tmp_path / "d.csv", 1, 20_000), exchange="binance", symbol="BTCUSDT", fmt="binance-trades"
    )
    [(tp, offsets)] = summary.delivered.items()
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "watermark"})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=10, cached=False)
    finally:
        consumer.close()
    assert high < offsets[-1] + 1


def test_others_writing_meanwhile_leave_offsets_never_below_the_true_ones(
    broker: str, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(bootstrap=broker)
    registry = FileSchemaRegistry(settings.kafka.schemas_dir)
    schema_id, schema = registry.latest("market.crypto.trades-value")
    [block] = encode_file(
        dump(tmp_path / "d.csv", 1, 3000),
        "binance-trades",
        BulkEncoder(schema, schema_id),
        exchange="binance",
        symbol="BTCUSDT",
    )
    producer = open_bulk_producer(settings, "binance", registry)
    partition = producer.partition(TOPIC, b"BTCUSDT")
    other = Producer({"bootstrap.servers": broker, "enable.idempotence": True})
    for begin in range(0, 3000, 500):
        producer.send(TOPIC, partition, b"BTCUSDT", block.rows, begin, begin + 250)
        producer.flush()
        for _ in range(3):  # another feed's messages, between two of the replay's samples
            other.produce(TOPIC, block.rows[0], b"OTHER", partition)
        assert other.flush(10) == 0
        producer.send(TOPIC, partition, b"BTCUSDT", block.rows, begin + 250, begin + 500)
    producer.flush()
    [(tp, recorded)] = producer.delivered().items()
    mine = [offset for offset, key, _ in read_back(settings, tp, 3000 + 18) if key == b"BTCUSDT"]
    assert len(mine) == len(recorded) == 3000
    assert all(r >= t for r, t in zip(recorded, mine, strict=True))
    assert recorded[-1] == mine[-1]
    assert recorded != mine, "the others' messages moved some of the replay's"


def test_a_message_the_broker_cannot_take_fails_the_send(broker: str, make_settings: SettingsFactory) -> None:
    settings = make_settings(bootstrap=broker)
    producer: BulkProducer = open_bulk_producer(settings, "binance")
    partition = producer.partition(TOPIC, b"BTCUSDT")
    huge = EncodedRows(b"x" * 2_000_000, np.array([0, 2_000_000], dtype=np.int64))
    with pytest.raises(K2Error, match="cannot produce"):
        producer.send(TOPIC, partition, b"BTCUSDT", huge, 0, 1)


def test_a_stop_request_ends_the_replay_at_a_group_boundary(
    broker: str, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """SIGINT while the reader thread is ahead: the replay stops before the next group, flushes what it sent, closes
    the reader, and says so. (The signal is sent from the bad-line callback, so it comes at a known point.)"""
    settings = make_settings(bootstrap=broker)
    path = dump(tmp_path / "BTCUSDT-trades-2024-11-25.csv", 1, 2 * READ_ROWS)
    lines = path.read_text().splitlines()
    lines[READ_ROWS + 100] = "broken,1,1,1,1732492800000,true,true"  # in the second block
    path.write_text("\n".join(lines) + "\n")
    summary = replay_file(
        settings,
        path,
        exchange="binance",
        symbol="BTCUSDT",
        fmt="binance-trades",
        on_bad_line=lambda bad: os.kill(os.getpid(), signal.SIGINT),
    )
    assert summary.interrupted
    assert summary.skipped_lines == [READ_ROWS + 101]
    # the bad line's block is reported before it is sent, and the stop is seen before its first group
    assert summary.produced == READ_ROWS
    [(tp, offsets)] = summary.delivered.items()
    assert list(offsets) == list(range(summary.produced))
    back = read_back(settings, tp, summary.produced)
    assert [r["exchange_sequence_number"] for _, _, r in back] == list(range(1, summary.produced + 1))


def test_sigterm_stops_a_paced_replay_flushed_and_summarised(
    broker: str, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """`k2 run` stops feeds with SIGTERM: the replay stops between groups of messages, and what it says it produced
    is what the topic holds."""
    settings = make_settings(bootstrap=broker)
    path = dump(tmp_path / "BTCUSDT-trades-2024-11-25.csv", 1, 10_000)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "k2_cli.main",
            "replay-file",
            str(path),
            "--symbol",
            "BTCUSDT",
            "--no-wait",
            "--rate",
            "2000",
        ],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: topic_has_messages(broker), timeout=60)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "(interrupted)" in stdout, stdout
    match = re.search(r"produced (\d+) rows", stdout)
    assert match, stdout
    produced = int(match.group(1))
    assert 0 < produced < 10_000
    back = read_back(settings, (TOPIC, partition_for(b"BTCUSDT", 2)), produced)
    assert [r["exchange_sequence_number"] for _, _, r in back] == list(range(1, produced + 1))


def topic_has_messages(broker: str) -> bool:
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "peek", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(TOPIC, partition_for(b"BTCUSDT", 2), 0)])
        return bool(consumer.consume(1, timeout=2))
    except KafkaException:
        return False  # the topic is not there yet
    finally:
        consumer.close()
