"""Freshness (issue 3): how long from producing a trade to the API serving it, before any Iceberg commit.

    .venv/bin/python -m bench.freshness                       # 300 trades, one every 20 ms
    .venv/bin/python -m bench.freshness --with-ingester       # the ingester commits alongside, as in production

Starts a Tansu broker and the API (`python -m k2_api`, realtime tail on) as real processes, then produces trades one
at a time (each flushed, so the producer's linger does not count) while a client polls `GET /v1/latest` over a kept
HTTP connection. A trade is visible when the latest trade served has its sequence number or a later one; its latency
is first-visible minus just-before-produce, on one monotonic clock. The poll round trip bounds the resolution and is
printed too. Goal: p99 under 500 ms.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import numpy as np
from pydantic import SecretStr

from k2_core.settings import CatalogSettings, KafkaSettings, Settings
from k2_stream.admin import ensure_topics
from k2_stream.broker import start_tansu
from k2_stream.producer import FeedProducer
from k2_stream.registry_confluent import make_registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(settings: Settings, api_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env.update(
        K2_HOME=str(settings.home),
        K2_CATALOG_NAME=settings.catalog.name,
        K2_KAFKA_BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        K2_KAFKA_MAX_PARTITIONS=str(settings.kafka.max_partitions),
        K2_KAFKA_REPLICATION_FACTOR="1",
        K2_API_PORT=str(api_port),
        K2_INGEST_METRICS_PORT="0",
        K2_INGEST_BOOK_METRICS_PORT="0",
        K2_LOG_LEVEL="WARNING",
    )
    return env


class Poller(threading.Thread):
    """Polls /v1/latest and records when each newest sequence number was first seen."""

    def __init__(self, base: str, symbol: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base, timeout=5)
        self.params = {"symbol": symbol, "exchange": "asx"}
        self.seen: list[tuple[int, float]] = []  # (sequence, monotonic time first seen)
        self.round_trips: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        newest = 0
        while not self.stop.is_set():
            began = time.perf_counter()
            response = self.client.get("/v1/latest", params=self.params)
            now = time.perf_counter()
            self.round_trips.append((now - began) * 1000)
            if response.status_code == 200:
                seq = response.json()["data"]["exchange_sequence_number"]
                if seq > newest:
                    newest = seq
                    self.seen.append((seq, now))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--with-ingester", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="k2-bench-fresh-"))
    port, api_port = free_port(), free_port()
    broker = start_tansu("127.0.0.1", port, log_path=work / "tansu.log")
    settings = Settings(
        home=work / "k2home",
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", max_partitions=4, replication_factor=1),
        catalog=CatalogSettings(name="fresh"),
    )
    layout = ensure_topics(settings)
    env = child_env(settings, api_port)
    log = (work / "children.log").open("wb")
    children = [subprocess.Popen([sys.executable, "-m", "k2_api"], env=env, stdout=log, stderr=log)]
    if args.with_ingester:
        children.append(subprocess.Popen([sys.executable, "-m", "k2_stream"], env=env, stdout=log, stderr=log))
    base = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                topics = httpx.get(f"{base}/health", timeout=2).json().get("realtime_topics") or []
                if "trades.asx" in topics:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"API not ready; see {work / 'children.log'}")
            time.sleep(0.1)
        producer = FeedProducer(settings, layout, make_registry(SecretStr(""), settings.kafka.schemas_dir))
        poller = Poller(base, "BHP")
        poller.start()
        sent: dict[int, float] = {}
        for seq in range(1, args.trades + 1):
            at = datetime.now(UTC)
            record = {
                "symbol": "BHP",
                "exchange": "asx",
                "exchange_timestamp": at,
                "exchange_sequence_number": seq,
                "price": Decimal("45.10") + Decimal(seq % 50) / 100,
                "volume": Decimal(100),
                "side": "buy",
                "trade_id": f"fresh-{seq}",
                "ingestion_timestamp": at,
            }
            sent[seq] = time.perf_counter()
            producer.send("trades", record)
            producer.flush()
            time.sleep(args.interval_ms / 1000)
        time.sleep(1.0)
        poller.stop.set()
        poller.join(5)
        latencies = []
        for seq, t_sent in sent.items():
            first = next((t for s, t in poller.seen if s >= seq), None)
            if first is not None:
                latencies.append((first - t_sent) * 1000)
        lat = np.array(latencies)
        rt = np.array(poller.round_trips)
        print(
            f"# produce -> visible via GET /v1/latest: {len(lat)}/{len(sent)} trades seen, "
            f"ingester {'on' if args.with_ingester else 'off'}, {os.cpu_count()} CPUs"
        )
        print(
            f"latency ms  p50 {np.percentile(lat, 50):7.1f}  p95 {np.percentile(lat, 95):7.1f}  "
            f"p99 {np.percentile(lat, 99):7.1f}  max {lat.max():7.1f}   (goal: p99 < 500)"
        )
        print(
            f"poll round trip ms  p50 {np.percentile(rt, 50):6.2f}  p99 {np.percentile(rt, 99):6.2f}  ({len(rt)} polls)"
        )
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        broker.terminate()
        log.close()


if __name__ == "__main__":
    main()
