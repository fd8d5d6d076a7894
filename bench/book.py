"""Level-2 book rebuild latency: how long `QueryEngine.book` takes to answer the book at a random time, with the
feed's snapshots alone and after K2's own minute snapshots (the Dagster `book_snapshots` asset) are stored; then
one instrument's series (every second) and bars (1 m, 5 s) over the whole span.

    .venv/bin/python -m bench.book                        # 2 symbols, 20,000 trades, 200 random times
    .venv/bin/python -m bench.book --trades 50000 --feed-snapshot-every 5000

The simulator's books are decided by the same tracker the book ingester uses (k2_core.ingest.book_sequence) and
appended straight to a fresh SQLite catalog (no broker: this measures the read). Prints per phase the median, p95 and
worst latency and the updates each rebuild replayed. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from bench.backlog import bench_settings, workdir
from k2_core.ingest.book_sequence import BookStreams
from k2_core.ingest.gaps import event_gap_id
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.model.tables import BOOK_SNAPSHOTS, BOOK_UPDATES, BOOK_VALIDITY, SOURCE_FEED
from k2_core.read.engine import QueryEngine
from k2_core.upkeep.book_snapshots import write_k2_snapshots
from k2_stream.simulator import MarketSimulator, SimulatorConfig


class Clock:
    def __init__(self, step: timedelta) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def measure(engine: QueryEngine, symbols: tuple[str, ...], times: list[datetime], depth: int) -> None:
    seconds, replayed = [], []
    for i, at in enumerate(times):
        started = time.perf_counter()
        answer = engine.book(symbols[i % len(symbols)], "asx", at, depth)
        seconds.append(time.perf_counter() - started)
        replayed.append(answer.updates_applied)
    seconds.sort()
    print(
        f"  {len(times)} rebuilds: median {statistics.median(seconds) * 1000:.1f} ms, "
        f"p95 {seconds[int(len(seconds) * 0.95) - 1] * 1000:.1f} ms, worst {seconds[-1] * 1000:.1f} ms; "
        f"updates replayed median {statistics.median(replayed):.0f}, worst {max(replayed)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=20_000)
    parser.add_argument("--feed-snapshot-every", type=int, default=2_000, help="updates per symbol between snapshots")
    parser.add_argument("--step-ms", type=float, default=20.0, help="exchange time between simulator events")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--depth", type=int, default=10)
    args = parser.parse_args()

    symbols = ("BHP", "CBA")
    settings = bench_settings("127.0.0.1:1", workdir(), 1)
    tables = ensure_tables(open_catalog(settings), settings.catalog.namespace)
    clock = Clock(timedelta(milliseconds=args.step_ms))
    config = SimulatorConfig("asx", symbols=symbols, seed=1, books=True, snapshot_every=args.feed_snapshot_every)
    sim = MarketSimulator(config, clock)
    events = [(e.kind, e.record) for e in sim.events(args.trades) if e.kind.startswith("book_")]
    decided = BookStreams(event_gap_id).decide(events, datetime.now(UTC))
    tables[BOOK_UPDATES.name].append(BOOK_UPDATES.to_arrow(decided.updates))
    tables[BOOK_SNAPSHOTS.name].append(
        BOOK_SNAPSHOTS.to_arrow([{**r, "source": SOURCE_FEED} for r in decided.snapshots])
    )
    first = decided.updates[0]["exchange_timestamp"]
    last = decided.updates[-1]["exchange_timestamp"]
    print(
        f"{len(decided.updates):,} updates and {len(decided.snapshots):,} feed snapshots of {len(symbols)} symbols "
        f"over {(last - first).total_seconds() / 60:.1f} minutes of exchange time"
    )
    rng = random.Random(7)
    times = sorted(first + (last - first) * rng.random() for _ in range(args.queries))
    with QueryEngine.from_settings(settings, cache=False) as engine:
        print("feed snapshots only:")
        measure(engine, symbols, times, args.depth)
        started = time.perf_counter()
        report = write_k2_snapshots(
            tables[BOOK_SNAPSHOTS.name],
            tables[BOOK_UPDATES.name],
            tables[BOOK_VALIDITY.name],
            first,
            last,
            datetime.now(UTC),
        )
        print(
            f"K2 minute snapshots: {report.written} written for {report.instruments} instruments in "
            f"{time.perf_counter() - started:.1f} s"
        )
        print("with K2's minute snapshots:")
        measure(engine, symbols, times, args.depth)
        for what, call in (
            ("series, every 1 s", lambda: engine.book_series("BHP", "asx", first, last, "1s", args.depth)),
            ("bars, 1 m", lambda: engine.book_bars("BHP", "asx", first, last, "1m", args.depth)),
            ("bars, 5 s", lambda: engine.book_bars("BHP", "asx", first, last, "5s", args.depth)),
        ):
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                points = call()
                runs.append(time.perf_counter() - started)
            ms = statistics.median(runs) * 1000
            print(f"BHP {what}, whole span: {len(points):,} points in {ms:.0f} ms (median of 3)")


if __name__ == "__main__":
    main()
