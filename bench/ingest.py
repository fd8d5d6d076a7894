"""Ingest throughput (issue 7, goal 1): a trade backlog in a local Tansu broker, ingested into a fresh SQLite
catalog and local warehouse by the real Ingester, then by the straightforward per-message pipeline on the same backlog.

    .venv/bin/python -m bench.ingest                      # 5M messages
    .venv/bin/python -m bench.ingest --messages 500000    # smaller
    .venv/bin/python -m bench.ingest --skip-baseline --no-pipeline --phases   # one batch's phases, in a row

Prints rows/s sustained (first batch in hand -> last commit done), CPU seconds per million rows (ingester process),
peak RSS (ingester process; the broker's RSS is printed apart: Tansu keeps every message in memory), commit latency
p50/p99 (the fenced Iceberg append), files per commit, and the batch/per-message ratio. `--pipeline` / `--no-pipeline`
sets K2_INGEST_PIPELINE (default: the setting's default, on); `--phases` prints where the batch time went
(bench/phases.py). The load average is printed before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import UTC, datetime

from bench import phases
from bench.backlog import Broker, RunResult, bench_settings, files_per_commit, fill, run_ingester, workdir
from k2_stream.admin import ensure_topics


def report(result: RunResult, files: float, broker_cpu: float) -> None:
    mib = result.peak_rss_bytes / 2**20
    print(
        f"  {result.mode:<12} rows {result.rows:>10,}  rows/s {result.rows_per_second:>10,.0f}  "
        f"cpu s/M rows {result.cpu_seconds / max(result.rows, 1) * 1e6:6.2f}  peak RSS {mib:6.0f} MiB  "
        f"commit p50 {result.pct(0.5):6.1f} ms p99 {result.pct(0.99):6.1f} ms  "
        f"commits {len(result.commit_ms):>4}  rows/commit {statistics.fmean(result.batch_rows or [0]):>9,.0f}  "
        f"files/commit {files:4.2f}  broker cpu s {broker_cpu:6.1f}  "
        f"join+assign {result.seconds_to_first_batch:4.1f} s  ingest {result.seconds_ingesting:6.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5_000_000)
    parser.add_argument("--partitions", type=int, default=4, help="per topic (three trade topics)")
    parser.add_argument("--symbols", type=int, default=10, help="per exchange")
    parser.add_argument("--batch-rows", type=int, default=None, help="K2_INGEST_BATCH_MAX_ROWS (default: settings)")
    parser.add_argument("--batch-seconds", type=float, default=None)
    parser.add_argument("--skip-baseline", action="store_true", help="only the batch ingester")
    parser.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=None, help="K2_INGEST_PIPELINE")
    parser.add_argument("--phases", action="store_true", help="time each phase of each batch (bench/phases.py)")
    parser.add_argument("--baseline-only", action="store_true")
    parser.add_argument(
        "--schema-version", type=int, choices=(1, 2), default=2, help="trade schema the backlog is written in"
    )
    args = parser.parse_args()

    ingest: dict[str, float | bool] = {}
    if args.pipeline is not None:
        ingest["pipeline"] = args.pipeline
    if args.batch_rows:
        ingest["batch_max_rows"] = args.batch_rows
    if args.batch_seconds:
        ingest["batch_max_seconds"] = args.batch_seconds
    root = workdir()
    broker = Broker(root)
    try:
        base = bench_settings(broker.bootstrap, root / "setup", args.partitions, **ingest)
        layout = ensure_topics(base)
        print(
            f"# bench.ingest {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} {_cores()} cores, "
            f"python {platform.python_version()}; {args.messages:,} trades, 3 topics x {args.partitions} partitions, "
            f"{3 * args.symbols} symbols, trade schema v{args.schema_version}; "
            f"batch <= {base.ingest.batch_max_rows:,} rows / "
            f"{base.ingest.batch_max_seconds:g} s; pipeline {'on' if base.ingest.pipeline else 'off'}; "
            f"SQLite catalog, local warehouse; load average {_load()}"
        )
        seconds = fill(base, layout, args.messages, args.symbols, args.schema_version)
        print(
            f"  backlog produced in {seconds:.1f} s ({args.messages / seconds:,.0f} msg/s); "
            f"broker RSS {broker.rss_bytes() / 2**20:,.0f} MiB"
        )
        results: dict[str, RunResult] = {}
        modes = [m for m in ("batch", "per-message") if not (m == "per-message" and args.skip_baseline)]
        if args.baseline_only:
            modes = ["per-message"]
        for mode in modes:
            settings = bench_settings(broker.bootstrap, root / mode, args.partitions, **ingest)
            cpu0 = broker.cpu_seconds()
            started = time.perf_counter()
            result = run_ingester(settings, args.messages, mode, phases=args.phases)
            results[mode] = result
            report(result, files_per_commit(settings), broker.cpu_seconds() - cpu0)
            if result.phases:
                phases.report(result.phases, len(result.commit_ms))
            print(f"  load average after {mode}: {_load()}")
            del started
        if len(results) == 2:
            ratio = results["batch"].rows_per_second / results["per-message"].rows_per_second
            print(f"  ratio batch / per-message: {ratio:.2f}x")
    finally:
        broker.stop()


def _load() -> str:
    import os

    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
