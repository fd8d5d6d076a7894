"""Produce-to-Iceberg freshness (issue 7, goal 4): how long from producing a trade to an Iceberg snapshot holding it,
while a background feed keeps the ingester busy (default 50k trades/s). bench/freshness.py measures the other half
of the goal (produce-to-API-visible through the realtime tail).

    .venv/bin/python -m bench.freshness_iceberg                    # 30 s at 50k trades/s, a probe every 100 ms

The ingester runs with default batch settings in its own process. Probe trades (their own symbol) are produced one
at a time and flushed; a probe is in Iceberg once the table's committed offset for its partition (the offsets in
the snapshot summaries, as the ingester resumes from them) passes the probe's offset. The table is polled every
10 ms, which bounds the resolution.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Producer

from bench.backlog import Broker, Stream, TradeEncoder, bench_settings, streams, workdir
from k2_core.ingest.dedup import to_us
from k2_core.lake.catalog import open_catalog
from k2_core.lake.offsets import OffsetIndex
from k2_core.model.registry import FileSchemaRegistry
from k2_core.settings import Settings
from k2_stream.admin import cluster_id, ensure_topics


def _ingest(settings_json: str, stop: Any) -> None:
    from k2_stream.ingester import Ingester

    ingester = Ingester(Settings.model_validate_json(settings_json))
    thread = threading.Thread(target=ingester.run, daemon=True)
    thread.start()
    stop.wait()
    ingester.stop()
    thread.join(60)


def _load(bootstrap: str, schema_id: int, work: list[Stream], rate: float, seconds: float) -> None:
    """Produce `rate` trades/s across `work`, paced in 10 ms slices, for `seconds`."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    encoders = [(s, TradeEncoder(schema_id, s), s.symbol.encode()) for s in work]
    seq = 0
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            seq += 1
            now = to_us(datetime.now(UTC))
            for stream, enc, key in encoders:
                producer.produce(stream.topic, enc.encode(seq, now, now), key)
                sent += 1
            producer.poll(0)
        time.sleep(0.01)
    producer.flush(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50_000, help="background trades/s")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--probe-every", type=float, default=0.1)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    root = workdir()
    broker = Broker(root)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    try:
        settings = bench_settings(broker.bootstrap, root / "k2", args.partitions)
        layout = ensure_topics(settings)
        registry = FileSchemaRegistry(settings.kafka.schemas_dir)
        schema_id, _ = registry.latest(layout.spec("asx", "trades").subject)
        ingester = ctx.Process(target=_ingest, args=(settings.model_dump_json(), stop))
        ingester.start()
        table = None
        while table is None:  # the ingester creates the tables
            try:
                table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
            except Exception:
                time.sleep(0.2)
        time.sleep(5)  # group join and assignment
        load_streams = streams(layout, 10)
        load = ctx.Process(target=_load, args=(broker.bootstrap, schema_id, load_streams, args.rate, args.seconds + 5))
        load.start()
        time.sleep(3)  # the load reaches its rate
        probe = Stream(layout.spec("asx", "trades").name, "asx", "ZPROBE", load_streams[0].price)
        encoder = TradeEncoder(schema_id, probe)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
        index = OffsetIndex(cluster_id(broker.bootstrap))
        pending: list[tuple[tuple[str, int], int, float]] = []  # (tp, offset, produced at)
        latencies: list[float] = []
        delivered: dict[str, Any] = {}

        def on_delivery(err: Any, msg: Any) -> None:
            delivered["tp"] = (msg.topic(), msg.partition())
            delivered["offset"] = msg.offset()

        seq = 0
        next_probe = time.monotonic()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline or pending:
            now = time.monotonic()
            if now >= next_probe and now < deadline:
                seq += 1
                ts = to_us(datetime.now(UTC))
                produced = time.monotonic()
                producer.produce(probe.topic, encoder.encode(seq, ts, ts), b"ZPROBE", on_delivery=on_delivery)
                producer.flush(10)
                pending.append((delivered["tp"], delivered["offset"], produced))
                next_probe = now + args.probe_every
            table.refresh()
            committed = index.refresh(table)
            seen = time.monotonic()
            still = []
            for tp, offset, produced in pending:
                if committed.get(tp, -1) > offset:
                    latencies.append(seen - produced)
                else:
                    still.append((tp, offset, produced))
            pending = still
            if time.monotonic() > deadline + 30:
                break
            time.sleep(0.01)
        load.join(60)
        lat = sorted(latencies)
        print(
            f"# bench.freshness_iceberg {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {len(os.sched_getaffinity(0))} cores, "
            f"load avg {os.getloadavg()[0]:.1f}; background {args.rate:,.0f} trades/s, default batches "
            f"(<= {settings.ingest.batch_max_rows:,} rows / {settings.ingest.batch_max_seconds:g} s)"
        )
        if lat:
            p = {q: lat[min(len(lat) - 1, round(q * (len(lat) - 1)))] * 1000 for q in (0.5, 0.9, 0.99)}
            print(
                f"  produce -> in an Iceberg snapshot: {len(lat)} probes, p50 {p[0.5]:.0f} ms, p90 {p[0.9]:.0f} ms, "
                f"p99 {p[0.99]:.0f} ms, max {lat[-1] * 1000:.0f} ms; {len(pending)} never seen"
            )
    finally:
        stop.set()
        broker.stop()


if __name__ == "__main__":
    main()
