"""Scale-out (issue 7, goal 5; issue 19, item 3): one ingester process, then two in one consumer group, on the same
trade backlog in a local Tansu broker, for both commit designs; prints each run's throughput, the ratio, and how
long a process waits for its group assignment at several session timeouts (Tansu settles a group in about half of
`session.timeout.ms`).

`independent` (the default design): each ingester commits its own batches. `coordinated`
(`K2_INGEST_COMMIT_MODE=coordinated`): the ingesters are workers that write data files and hand them in on a control
topic of their own; one committer process (`k2_stream.committer`, started before the workers, stopped after) commits
them. For it the bench also prints the committer's CPU and its rounds (from its log: requests and files per round,
ms reading footers and committing). A worker waits for each verdict before its next batch, so its "commit" time is
the hand-in, the committer's round and the verdict.

With `--pin`, each ingester process gets a core of its own (one process on CPU 0; two on CPUs 0 and 1; the broker and
this script float): the question "does a second process with a core of its own double throughput" asked on a machine
whose second core would otherwise be shared by both ingesters and the broker.

    .venv/bin/python -m bench.scaleout --messages 2000000 [--pin] [--designs independent,coordinated]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.backlog import Broker, RunResult, bench_settings, fill, run_ingesters, workdir
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.settings import Settings
from k2_stream.admin import ensure_topics

DESIGNS = ("independent", "coordinated")


def aggregate(results: list[RunResult]) -> float:
    rows = sum(r.rows + r.duplicates for r in results)
    span = max(r.last_at for r in results) - min(r.first_at for r in results)
    return rows / span if span else 0.0


def _committer_main(settings_json: str, log_path: str) -> None:
    """The committer, in its own process, its JSON log in a file (read back for its rounds)."""
    from k2_stream.committer import run_committer

    with open(log_path, "ab") as out:
        os.dup2(out.fileno(), sys.stdout.fileno())
        os.dup2(out.fileno(), sys.stderr.fileno())
    run_committer(Settings.model_validate_json(settings_json))


class CommitterProcess:
    """`k2_stream.committer` in a process of its own, for one run: stopped with SIGTERM (its clean stop)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.log_path = log_path
        self.proc = mp.get_context("spawn").Process(
            target=_committer_main, args=(settings.model_dump_json(), str(log_path))
        )
        self.proc.start()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()

    def rounds(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "coordinated commit":
                found.append(event)
        return found


def describe_rounds(rounds: list[dict[str, Any]], cpu: float) -> str:
    if not rounds:
        return f"committer: no rounds, {cpu:.1f} CPU s"
    with_files = [r for r in rounds if r.get("files")]

    def mean(key: str, of: list[dict[str, Any]]) -> float:
        return statistics.fmean(float(r.get(key, 0)) for r in of) if of else 0.0

    return (
        f"committer: {cpu:.1f} CPU s, {len(rounds)} rounds (one per table with requests), "
        f"{mean('requests', rounds):.1f} requests and {mean('files', with_files):.1f} files per round with files; "
        f"per round {1000 * mean('read_s', rounds):.0f} ms reading footers, "
        f"{1000 * mean('commit_s', rounds):.0f} ms committing, {1000 * mean('seconds', rounds):.0f} ms in all"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=4, help="per topic (three trade topics)")
    parser.add_argument("--batch-rows", type=int, default=None)
    parser.add_argument("--pin", action="store_true", help="one core per ingester process (see above)")
    parser.add_argument("--session-timeouts", default="6000,3000,2000", help="ms, for the assignment-time runs")
    parser.add_argument("--designs", default=",".join(DESIGNS), help="commit designs to run, in order")
    args = parser.parse_args()
    designs = args.designs.split(",")
    if unknown := set(designs) - set(DESIGNS):
        parser.error(f"unknown design(s) {sorted(unknown)}; choose from {DESIGNS}")
    ingest = {"batch_max_rows": args.batch_rows} if args.batch_rows else {}
    root = workdir()
    broker = Broker(root)
    try:
        base = bench_settings(broker.bootstrap, root / "setup", args.partitions, **ingest)
        layout = ensure_topics(base)
        print(
            f"# bench.scaleout {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {len(os.sched_getaffinity(0))} cores, "
            f"load {os.getloadavg()[0]:.1f}; {args.messages:,} trades, 3 topics x {args.partitions} partitions; "
            f"batch <= {base.ingest.batch_max_rows:,} rows{'; one core per ingester' if args.pin else ''}"
        )
        fill(base, layout, args.messages, 10)
        for design in designs:
            print(f"  {design}:")
            throughput = {}
            for processes in (1, 2):
                home = root / f"{design}-p{processes}"
                settings = bench_settings(broker.bootstrap, home, args.partitions, **ingest)
                committer = None
                if design == "coordinated":
                    settings.ingest.commit_mode = "coordinated"
                    settings.ingest.control_topic = f"k2.control.bench-{uuid.uuid4().hex[:8]}"
                    home.mkdir(parents=True, exist_ok=True)
                    # the tables first: the committer and the workers' setup must not create them at once
                    ensure_tables(open_catalog(settings), settings.catalog.namespace)
                    committer = CommitterProcess(settings, home / "committer.log")
                cores = [{i} for i in range(processes)] if args.pin else None
                try:
                    results = run_ingesters(settings, args.messages, "batch", processes, cores=cores)
                finally:
                    cpu = committer.cpu_seconds() if committer is not None else 0.0
                    if committer is not None:
                        committer.stop()
                throughput[processes] = aggregate(results)
                per = ", ".join(
                    f"{r.rows:,} rows {r.rows_per_second:,.0f}/s assign {r.seconds_to_first_batch:.1f} s "
                    f"commit p50 {r.pct(0.5):.0f} ms"
                    for r in results
                )
                print(f"    {processes} process(es): {throughput[processes]:>10,.0f} rows/s together  [{per}]")
                if committer is not None:
                    print(f"      {describe_rounds(committer.rounds(), cpu)}")
            print(f"    ratio 2 / 1: {throughput[2] / throughput[1]:.2f}x  (load {os.getloadavg()[0]:.1f})")
        small = min(args.messages, 50_000)
        for timeout_ms in (int(t) for t in args.session_timeouts.split(",")):
            settings = bench_settings(broker.bootstrap, root / f"s{timeout_ms}-{uuid.uuid4().hex[:4]}", args.partitions)
            settings.kafka.session_timeout_ms = timeout_ms
            settings.kafka.heartbeat_interval_ms = min(settings.kafka.heartbeat_interval_ms, timeout_ms // 4)
            result = run_ingesters(settings, small, "batch", 1)[0]
            print(
                f"  session.timeout.ms {timeout_ms:>5}: start -> first batch in hand "
                f"{result.seconds_to_first_batch:.2f} s (process already imported; includes subscribe, join, assign)"
            )
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
