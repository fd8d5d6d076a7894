"""Scale-out (issue 7, goal 5): one ingester process, then two in one consumer group, on the same trade backlog in a
local Tansu broker; prints each run's throughput, the ratio, and how long a process waits for its group assignment
at several session timeouts (Tansu settles a group in about half of `session.timeout.ms`).

With `--pin`, each ingester process gets a core of its own (one process on CPU 0; two on CPUs 0 and 1; the broker and
this script float): the question "does a second process with a core of its own double throughput" asked on a machine
whose second core would otherwise be shared by both ingesters and the broker.

    .venv/bin/python -m bench.scaleout --messages 2000000 [--pin]
"""

from __future__ import annotations

import argparse
import os
import uuid
from datetime import UTC, datetime

from bench.backlog import Broker, RunResult, bench_settings, fill, run_ingesters, workdir
from k2_stream.admin import ensure_topics


def aggregate(results: list[RunResult]) -> float:
    rows = sum(r.rows + r.duplicates for r in results)
    span = max(r.last_at for r in results) - min(r.first_at for r in results)
    return rows / span if span else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=4, help="per topic (three trade topics)")
    parser.add_argument("--batch-rows", type=int, default=None)
    parser.add_argument("--pin", action="store_true", help="one core per ingester process (see above)")
    parser.add_argument("--session-timeouts", default="6000,3000,2000", help="ms, for the assignment-time runs")
    args = parser.parse_args()
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
        throughput = {}
        for processes in (1, 2):
            settings = bench_settings(broker.bootstrap, root / f"p{processes}", args.partitions, **ingest)
            cores = [{i} for i in range(processes)] if args.pin else None
            results = run_ingesters(settings, args.messages, "batch", processes, cores=cores)
            throughput[processes] = aggregate(results)
            per = ", ".join(
                f"{r.rows:,} rows {r.rows_per_second:,.0f}/s assign {r.seconds_to_first_batch:.1f} s" for r in results
            )
            print(f"  {processes} process(es): {throughput[processes]:>10,.0f} rows/s together  [{per}]")
        print(f"  ratio 2 / 1: {throughput[2] / throughput[1]:.2f}x")
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
