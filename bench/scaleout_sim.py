"""Scale-out simulation (issue 19, item 2): N worker processes produce data files at a set rate into one Iceberg
table on a real catalog (PostgreSQL) and a real warehouse (local files), the two commit designs side by side:

* `independent` (today's design): each worker commits its own micro-batches (`TableWriter.append`: its files and its
  partition's offsets in one snapshot, optimistic, refreshed and retried on a conflict).
* `coordinated` (the Kafka Connect sink / Redpanda pattern): workers only write data files and hand them, with their
  partition's offset range, to one committer, which commits everything handed in since its last commit in one
  snapshot. The committer is K2's own (`k2_core.ingest.coordination.Committer`, issue 19 item 1: each range fenced
  against the table's offsets); the hand-off is a process queue here, the control topic in K2.

Each worker is a partition: every `1 / --rate` seconds it is due a batch of `--rows` trades, stamped with the moment
it was due (a worker that falls behind is due several at once, and their latency shows it). Per run it prints commits
per second, rows per second the table absorbed, conflicts (failed commit attempts) per commit and the retry rate,
and the produce-to-Iceberg latency (p50 / p99: due -> committed) of every batch. A worker still behind `--drain`
seconds after the run's end stops: its remaining batches count as unfinished, their latency as a lower bound (`>=`).
For the coordinated design it also prints the committer's profile: requests per round (`req/rnd`), its busy share of
the run, and per round the ms reading the files' footers (`read`) and committing (`commit`: manifests, metadata
file, catalog row); `--profile` adds a cProfile of the committer at the largest N.

    .venv/bin/python -m bench.scaleout_sim                                  # N = 1..32, 20 s per run
    .venv/bin/python -m bench.scaleout_sim --workers 1,4 --seconds 5 --catalog sqlite
    .venv/bin/python -m bench.scaleout_sim --capacity 1,8,32,128                  # the committer alone
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import multiprocessing as mp
import os
import pstats
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

from k2_core.exceptions import CommitConflictError
from k2_core.ingest.coordination import CommitRequest, Committer, Outcome, RoundStats
from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import ensure_table, open_catalog
from k2_core.lake.data_files import encode_data_file
from k2_core.lake.files import write_files
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
    unfinished: int = 0
    latencies: list[float] = field(default_factory=list)
    rounds: list[RoundStats] = field(default_factory=list)

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
            "unfinished": self.unfinished,  # batches never committed (their latency counts as a lower bound)
            **self.committer_profile(),
        }

    def committer_profile(self) -> dict[str, Any]:
        """Where the coordinated committer's time went: requests per round, its busy share of the run, and per
        round the milliseconds reading footers and committing (manifests, metadata file, catalog row)."""
        if not self.rounds:
            return {}
        busy = sum(r.seconds for r in self.rounds)
        return {
            "rounds": len(self.rounds),
            "requests_per_round": round(statistics.fmean(r.requests for r in self.rounds), 1),
            "committer_busy": round(busy / self.seconds, 2),
            "round_ms": round(1000 * busy / len(self.rounds)),
            "read_ms_per_round": round(1000 * statistics.fmean(r.read_seconds for r in self.rounds)),
            "commit_ms_per_round": round(1000 * statistics.fmean(r.commit_seconds for r in self.rounds)),
            "attempts_per_round": round(statistics.fmean(r.attempts for r in self.rounds), 2),
        }


def settings_for(catalog: str, home: Path, name: str, postgres: str = POSTGRES) -> Settings:
    settings = Settings(home=home, catalog=CatalogSettings(name=name))
    if catalog == "postgres":
        settings.catalog.uri = postgres  # type: ignore[assignment]
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


def close(catalog: Any) -> None:
    """Release a run's catalog connections: each run has a catalog of its own, and 32 workers keeping every run's
    pool open exhaust PostgreSQL's connections."""
    engine = getattr(catalog, "engine", None)
    if engine is not None:
        engine.dispose()


class _Conflicts(logging.Handler):
    """Counts the commit conflicts `commit_with_retries` logs (one record per failed attempt)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "commit conflict, retrying":
            self.count += 1


def worker_main(index: int, catalog: str, postgres: str, home: str, control: Connection, handoff: Any) -> None:
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
        name, design, rows, rate, seconds, start, drain, footers = job
        settings = settings_for(catalog, Path(home), name, postgres)
        opened = open_catalog(settings)
        table = opened.load_table((settings.catalog.namespace, "trades"))
        ing = settings.ingest  # the ingester's own conflict retries and backoff
        writer = TableWriter(table, f"worker-{index}", CLUSTER, ing.commit_retries, ing.conflict_backoff_seconds)
        tp = (TOPIC, index)
        conflicts.count = 0
        out: dict[str, Any] = {"commits": 0, "rows": 0, "gave_up": 0, "latencies": [], "unfinished": 0}
        batch, offset = 0, 0
        while True:
            due = start + batch / rate
            if due >= start + seconds:
                break
            if time.time() > start + seconds + drain:  # a worker this far behind never catches up: count the rest
                out["unfinished"] = int(np.ceil(seconds * rate)) - batch
                break
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            data = trades(index, batch, rows, rng)
            if design == "independent":
                committed = False
                while not committed and time.time() <= start + seconds + drain:
                    try:
                        writer.append(data, {tp: offset + rows}, {tp: offset})
                        committed = True
                    except CommitConflictError:
                        out["gave_up"] += 1  # as the ingester would: the same batch again
                if not committed:
                    out["unfinished"] = int(np.ceil(seconds * rate)) - batch
                    break
                done = time.time()
                if done <= start + seconds:
                    out["commits"] += 1
                    out["rows"] += rows
                out["latencies"].append(done - due)
            else:
                written = write_files(table, data)
                spec = table.metadata.default_spec_id
                entries = [] if footers else [e for f in written if (e := encode_data_file(f, spec)) is not None]
                handoff.put((index, offset, offset + rows, [f.file_path for f in written], rows, due, entries))
            batch += 1
            offset += rows
        stop = time.time()
        # latencies of the batches never committed: at least until the worker stopped (lower bounds)
        out["latencies"] += [stop - (start + b / rate) for b in range(batch, batch + out["unfinished"])]
        if design == "coordinated":
            handoff.put((index, None, batch, [], 0, 0.0, []))  # this worker hands in nothing more
        out["conflicts"] = conflicts.count
        close(opened)
        control.send(out)


def committer(settings: Settings, handoff: Any, run: Run, start: float) -> None:
    """The coordinated design's one committer (K2's `Committer`): commits everything handed in since its last commit,
    in one snapshot with every partition's offsets, until every worker said it hands in nothing more. A refused
    batch (none is expected: each worker's ranges follow on) counts as given up. Each round's figures (requests,
    files, seconds reading footers and committing) go to `run.rounds`."""
    catalog = open_catalog(settings)
    table = catalog.load_table((settings.catalog.namespace, "trades"))
    handler = _Conflicts()
    logging.getLogger("k2_core.lake.retry").addHandler(handler)
    logging.getLogger("k2_core.lake.retry").setLevel(logging.INFO)
    coordinator = Committer(table, "committer", CLUSTER, retries=20, backoff_seconds=0.01)
    finished = 0
    try:
        while finished < run.workers:
            got = [handoff.get()]
            while True:
                try:
                    got.append(handoff.get_nowait())
                except queue.Empty:
                    break
            finished += sum(item[1] is None for item in got)
            pending = [item for item in got if item[1] is not None]
            if not pending:
                continue
            requests = [
                CommitRequest(
                    uuid.uuid4().hex, f"worker-{w}", 1, "trades", {(TOPIC, w): (lo, hi)}, files, data_files=entries
                )
                for w, lo, hi, files, _, _, entries in pending
            ]
            verdicts = coordinator.commit(requests)
            done = time.time()
            run.rounds.append(coordinator.last_round)
            for verdict, item in zip(verdicts, pending, strict=True):
                if verdict.outcome is not Outcome.COMMITTED:
                    run.gave_up += 1
                    continue
                if done <= start + run.seconds:
                    run.rows_committed += item[4]
                run.latencies.append(done - item[5])
            if done <= start + run.seconds:
                run.commits += 1
    finally:
        run.conflicts = handler.count
        logging.getLogger("k2_core.lake.retry").removeHandler(handler)
        close(catalog)


def capacity(home: Path, catalog: str, postgres: str, rows: int, sizes: list[int], rounds: int) -> None:
    """The committer's own ceiling, apart from the workers' CPU: data files written beforehand (one a request, as a
    worker writes them), then committed `rounds` times in rounds of each size. CPU ms (the committer process's own,
    steady under other load) and wall ms per round; requests/s on a core of its own = size / CPU s per round."""
    print(f"# committer capacity: {rows} rows a file, {rounds} rounds per size, load {os.getloadavg()[0]:.1f}")
    print(f"{'req/round':>10}{'CPU ms/round':>14}{'wall ms/round':>15}{'CPU ms/req':>12}{'req/s a core':>14}")
    rng = np.random.default_rng(0)
    for size in sizes:
        settings = settings_for(catalog, home, f"cap{uuid.uuid4().hex[:10]}", postgres)
        opened = open_catalog(settings)
        table = ensure_table(opened, settings.catalog.namespace, TRADES)
        committer = Committer(table, "committer", CLUSTER)
        spec = table.metadata.default_spec_id
        cpu, wall = [], []
        for r in range(rounds):
            requests = []
            for w in range(size):
                written = write_files(table, trades(w, r, rows, rng))
                entries = [e for f in written if (e := encode_data_file(f, spec)) is not None]
                ranges = {(TOPIC, w): (r * rows, (r + 1) * rows)}
                requests.append(CommitRequest(uuid.uuid4().hex, f"w{w}", 1, "trades", ranges,
                                              [f.file_path for f in written], data_files=entries))  # fmt: skip
            c0, t0 = time.process_time(), time.perf_counter()
            verdicts = committer.commit(requests)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
            assert all(v.outcome is Outcome.COMMITTED for v in verdicts)
        c, t = statistics.median(cpu), statistics.median(wall)
        print(f"{size:>10}{1000 * c:>14.0f}{1000 * t:>15.0f}{1000 * c / size:>12.1f}{size / c:>14,.0f}", flush=True)
        close(opened)


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
    parser.add_argument(
        "--postgres", default=POSTGRES, help="the PostgreSQL catalog's URI (a database of its own keeps others' out)"
    )
    parser.add_argument("--home", type=Path, default=None, help="warehouse (and SQLite catalog) directory")
    parser.add_argument(
        "--drain", type=float, default=30.0, help="seconds after a run's end a worker still commits what it is due"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the coordinated committer (largest N)")
    parser.add_argument(
        "--footers", action="store_true", help="workers send no file entries: the committer reads every footer"
    )
    parser.add_argument(
        "--capacity", default="", help="round sizes (e.g. 1,8,32,128): measure the committer alone instead"
    )
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    designs = args.designs.split(",")
    home = args.home or Path(tempfile.mkdtemp(prefix="k2-scaleout-sim-"))
    if args.capacity:
        capacity(home, args.catalog, args.postgres, args.rows, [int(n) for n in args.capacity.split(",")], 12)
        return []
    ctx = mp.get_context("spawn")
    handoff = ctx.Queue()
    pipes, procs = [], []
    for i in range(max(counts)):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=worker_main, args=(i, args.catalog, args.postgres, str(home), theirs, handoff), daemon=True
        )
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    for pipe in pipes:
        assert pipe.recv() == "ready"
    print(
        f"# scaleout_sim {datetime.now(UTC).isoformat(timespec='seconds')}: {os.cpu_count()} cores, catalog "
        f"{args.catalog}, {args.rows} rows x {args.rate:g}/s per worker, {args.seconds:g} s per run "
        f"(+ {args.drain:g} s drain), load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'design':<12}{'N':>4}{'due rows/s':>12}{'commits/s':>11}{'rows/s':>10}{'absorbed':>10}"
          f"{'confl/commit':>14}{'retry':>8}{'p50 ms':>8}{'p99 ms':>9}{'unfin':>7}{'req/rnd':>8}{'busy':>6}"
          f"{'read':>6}{'commit':>7}")  # fmt: skip
    results = []
    try:
        for n in counts:
            for design in designs:
                name = f"sim{uuid.uuid4().hex[:10]}"
                settings = settings_for(args.catalog, home, name, args.postgres)
                catalog = open_catalog(settings)
                ensure_table(catalog, settings.catalog.namespace, TRADES)
                close(catalog)
                run = Run(name, design, n, args.seconds, args.rows, args.rate)
                start = time.time() + 1.0
                for pipe in pipes[:n]:
                    pipe.send((name, design, args.rows, args.rate, args.seconds, start, args.drain, args.footers))
                if design == "coordinated":
                    profiler = cProfile.Profile() if args.profile and n == max(counts) else None
                    if profiler is not None:
                        profiler.enable()
                    committer(settings, handoff, run, start)
                    if profiler is not None:
                        profiler.disable()
                        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
                for pipe in pipes[:n]:
                    got = pipe.recv()
                    run.commits += got["commits"]
                    run.rows_committed += got["rows"]
                    run.conflicts += got["conflicts"]
                    run.gave_up += got["gave_up"]
                    run.unfinished += got["unfinished"]
                    run.latencies += got["latencies"]
                s = run.summary()
                results.append(s)
                print(f"{design:<12}{n:>4}{s['rows_due_per_s']:>12,}{s['commits_per_s']:>11}{s['rows_per_s']:>10,}"
                      f"{s['absorbed']:>10}{s['conflicts_per_commit']:>14}{s['retry_rate']:>8}"
                      f"{s['p50_ms']!s:>8}{('>=' if run.unfinished else '') + str(s['p99_ms']):>9}"
                      f"{s['unfinished']:>7}{s.get('requests_per_round', '-')!s:>8}{s.get('committer_busy', '-')!s:>6}"
                      f"{s.get('read_ms_per_round', '-')!s:>6}{s.get('commit_ms_per_round', '-')!s:>7}"
                      f"  load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    finally:
        for pipe in pipes:
            pipe.send(None)
        for proc in procs:
            proc.join(10)
    print(json.dumps({"scaleout_sim": {**vars(args), "results": results}}, default=str))
    return results


if __name__ == "__main__":
    raise SystemExit(main())
