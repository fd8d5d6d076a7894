"""Scale-out simulation (issue 19, item 2): N worker processes produce data files at a set rate into one Iceberg
table on a real catalog (PostgreSQL) and a real warehouse (local files), the two commit designs side by side:

* `independent` (today's design): each worker commits its own micro-batches (`TableWriter.append`: its files and its
  partition's offsets in one snapshot, optimistic, refreshed and retried on a conflict).
* `coordinated` (the Kafka Connect sink / Redpanda pattern): workers only write data files and hand them, with their
  partition's offsets, to one committer, which commits everything handed in since its last commit in one snapshot.
  The simulation measures its throughput and latency; the fencing that makes it exactly-once (issue 19, item 1) is
  not part of it.

Each worker is a partition: every `1 / --rate` seconds it is due a batch of `--rows` trades, stamped with the moment
it was due (a worker that falls behind is due several at once, and their latency shows it). Per run it prints commits
per second, rows per second the table absorbed, conflicts (failed commit attempts) per commit and the retry rate,
and the produce-to-Iceberg latency (p50 / p99: due -> committed) of every batch.

    .venv/bin/python -m bench.scaleout_sim                                  # N = 1..32, 20 s per run
    .venv/bin/python -m bench.scaleout_sim --workers 1,4 --seconds 5 --catalog sqlite
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import queue
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from k2_core.exceptions import CommitConflictError
from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import ensure_table, open_catalog
from k2_core.lake.files import append_files, write_files
from k2_core.lake.offsets import CLUSTER_PROPERTY, OFFSETS_PROPERTY, WRITER_PROPERTY, encode_offsets
from k2_core.lake.retry import commit_with_retries
from k2_core.model.tables import TRADES, conform
from k2_core.settings import CatalogSettings, Settings

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOPIC = "market.equities.trades.sim"
CLUSTER = "scaleout-sim"
DESIGNS = ("independent", "coordinated")


@dataclass
class Run:
    table: str
    design: str
    workers: int
    seconds: float
    rows: int
    rate: float
    commits: int = 0
    rows_committed: int = 0
    conflicts: int = 0
    gave_up: int = 0
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        due = self.workers * self.rate * self.rows
        return {
            "table": self.table,
            "design": self.design,
            "workers": self.workers,
            "rows_due_per_s": round(due),
            "commits_per_s": round(self.commits / self.seconds, 1),
            "rows_per_s": round(self.rows_committed / self.seconds),
            "absorbed": round(self.rows_committed / self.seconds / due, 3) if due else 0.0,
            "conflicts_per_commit": round(self.conflicts / self.commits, 2) if self.commits else 0.0,
            "retry_rate": round(self.conflicts / (self.commits + self.conflicts), 3) if self.commits else 0.0,
            "gave_up": self.gave_up,
            "p50_ms": round(1000 * statistics.median(lat)) if lat else None,
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]) if lat else None,
        }


def settings_for(catalog: str, home: Path, name: str) -> Settings:
    settings = Settings(home=home, catalog=CatalogSettings(name=name))
    if catalog == "postgres":
        settings.catalog.uri = POSTGRES  # type: ignore[assignment]
    return settings


def trades(worker: int, batch: int, rows: int, rng: np.random.Generator) -> pa.Table:
    """A time-ordered batch of one worker's trades (its own symbols: a partition holds its streams)."""
    base = int(time.time() * 1e6)
    times = base - rows + np.arange(rows, dtype=np.int64)
    seq = batch * rows + np.arange(1, rows + 1, dtype=np.int64)
    symbols = np.array([f"W{worker}S{i}" for i in range(8)])[np.arange(rows) % 8]
    prices = (4_500_000_000 + rng.integers(-1000, 1000, rows)).astype(np.int64)
    table = pa.table(
        {
            "symbol": pa.array(symbols),
            "exchange": pa.array(np.full(rows, "asx")),
            "exchange_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
            "exchange_sequence_number": pa.array(seq),
            "price": pa.array([Decimal(int(p)).scaleb(-8) for p in prices], pa.decimal128(18, 8)),
            "volume": pa.array([Decimal(100)] * rows, pa.decimal128(18, 8)),
            "side": pa.array(np.where(rng.random(rows) < 0.5, "buy", "sell")),
            "trade_id": pa.array([f"{worker}-{batch}-{i}" for i in range(rows)]),
            "ingestion_timestamp": pa.array(np.full(rows, base), pa.timestamp("us", tz="UTC")),
        }
    )
    return conform(table, TRADES.arrow_schema)


class _Conflicts(logging.Handler):
    """Counts the commit conflicts `commit_with_retries` logs (one record per failed attempt)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "commit conflict, retrying":
            self.count += 1


def worker_main(index: int, catalog: str, home: str, control: Connection, handoff: Any) -> None:
    """One worker: waits for a run (table name, design, rows, rate, seconds, start time), produces its batches, and
    reports what it saw; until told to stop."""
    conflicts = _Conflicts()
    logging.getLogger("k2_core.lake.retry").addHandler(conflicts)
    logging.getLogger("k2_core.lake.retry").setLevel(logging.INFO)
    rng = np.random.default_rng(index)
    control.send("ready")
    while True:
        job = control.recv()
        if job is None:
            return
        name, design, rows, rate, seconds, start = job
        settings = settings_for(catalog, Path(home), name)
        table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
        writer = TableWriter(table, f"worker-{index}", CLUSTER, retries=20, backoff_seconds=0.01)
        tp = (TOPIC, index)
        conflicts.count = 0
        out: dict[str, Any] = {"commits": 0, "rows": 0, "gave_up": 0, "latencies": []}
        batch, offset = 0, 0
        while True:
            due = start + batch / rate
            if due >= start + seconds:
                break
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            data = trades(index, batch, rows, rng)
            if design == "independent":
                while True:
                    try:
                        writer.append(data, {tp: offset + rows}, {tp: offset})
                        break
                    except CommitConflictError:
                        out["gave_up"] += 1  # as the ingester would: the same batch again
                done = time.time()
                if done <= start + seconds:
                    out["commits"] += 1
                    out["rows"] += rows
                out["latencies"].append(done - due)
            else:
                handoff.put((index, offset + rows, write_files(table, data), rows, due))
            batch += 1
            offset += rows
        out["conflicts"] = conflicts.count
        control.send(out)


def committer(settings: Settings, handoff: Any, run: Run, start: float, expected: int) -> None:
    """The coordinated design's one committer: commits everything handed in since its last commit, in one snapshot
    with every partition's offsets, until `expected` batches are committed."""
    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    handler = _Conflicts()
    logging.getLogger("k2_core.lake.retry").addHandler(handler)
    logging.getLogger("k2_core.lake.retry").setLevel(logging.INFO)
    offsets: dict[tuple[str, int], int] = {}
    seen = 0
    try:
        while seen < expected:
            pending = [handoff.get()]
            while True:
                try:
                    pending.append(handoff.get_nowait())
                except queue.Empty:
                    break
            files = [f for item in pending for f in item[2]]
            for worker, upto, _, _, _ in pending:
                offsets[(TOPIC, worker)] = upto
            props = {OFFSETS_PROPERTY: encode_offsets(offsets), CLUSTER_PROPERTY: CLUSTER, WRITER_PROPERTY: "committer"}

            def attempt(t: Table, files: list[DataFile] = files, props: dict[str, str] = props) -> int | None:
                return append_files(t, files, props)

            commit_with_retries(
                table,
                attempt,
                retries=20,
                backoff_seconds=0.01,
                what="coordinated commit",
            )
            done = time.time()
            seen += len(pending)
            if done <= start + run.seconds:
                run.commits += 1
                run.rows_committed += sum(item[3] for item in pending)
            run.latencies += [done - item[4] for item in pending]
    finally:
        run.conflicts = handler.count
        logging.getLogger("k2_core.lake.retry").removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    simulate(argv)
    return 0


def simulate(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the simulation as the command line says; returns each run's summary (its table's name included)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8,16,32")
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rows", type=int, default=2000, help="rows per batch")
    parser.add_argument("--rate", type=float, default=1.0, help="batches per second per worker")
    parser.add_argument("--catalog", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--home", type=Path, default=None, help="warehouse (and SQLite catalog) directory")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    designs = args.designs.split(",")
    home = args.home or Path(tempfile.mkdtemp(prefix="k2-scaleout-sim-"))
    ctx = mp.get_context("spawn")
    handoff = ctx.Queue()
    pipes, procs = [], []
    for i in range(max(counts)):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(i, args.catalog, str(home), theirs, handoff), daemon=True)
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    for pipe in pipes:
        assert pipe.recv() == "ready"
    print(
        f"# scaleout_sim {datetime.now(UTC).isoformat(timespec='seconds')}: {os.cpu_count()} cores, catalog "
        f"{args.catalog}, {args.rows} rows x {args.rate:g}/s per worker, {args.seconds:g} s per run"
    )
    print(f"{'design':<12}{'N':>4}{'due rows/s':>12}{'commits/s':>11}{'rows/s':>10}{'absorbed':>10}"
          f"{'confl/commit':>14}{'retry':>8}{'p50 ms':>8}{'p99 ms':>8}")  # fmt: skip
    results = []
    try:
        for n in counts:
            for design in designs:
                name = f"sim{uuid.uuid4().hex[:10]}"
                settings = settings_for(args.catalog, home, name)
                catalog = open_catalog(settings)
                ensure_table(catalog, settings.catalog.namespace, TRADES)
                run = Run(name, design, n, args.seconds, args.rows, args.rate)
                start = time.time() + 1.0
                for pipe in pipes[:n]:
                    pipe.send((name, design, args.rows, args.rate, args.seconds, start))
                if design == "coordinated":
                    per_worker = max(1, int(np.ceil(args.seconds * args.rate)))
                    committer(settings, handoff, run, start, per_worker * n)
                for pipe in pipes[:n]:
                    got = pipe.recv()
                    run.commits += got["commits"]
                    run.rows_committed += got["rows"]
                    run.conflicts += got["conflicts"]
                    run.gave_up += got["gave_up"]
                    run.latencies += got["latencies"]
                s = run.summary()
                results.append(s)
                print(f"{design:<12}{n:>4}{s['rows_due_per_s']:>12,}{s['commits_per_s']:>11}{s['rows_per_s']:>10,}"
                      f"{s['absorbed']:>10}{s['conflicts_per_commit']:>14}{s['retry_rate']:>8}"
                      f"{s['p50_ms']!s:>8}{s['p99_ms']!s:>8}", flush=True)  # fmt: skip
    finally:
        for pipe in pipes:
            pipe.send(None)
        for proc in procs:
            proc.join(10)
    print(json.dumps({"scaleout_sim": {**vars(args), "results": results}}, default=str))
    return results


if __name__ == "__main__":
    raise SystemExit(main())
