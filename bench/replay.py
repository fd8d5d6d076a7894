"""`k2 replay-file` throughput: the per-line path against the columnar path, on the same file, in the same run.

    python -m bench.replay                    # 2,000,000 rows: the per-line path once, the columnar path 3 times
    python -m bench.replay --rows 500000 --paths columnar --profile columnar

A Binance spot trades dump of `--rows` rows is generated (ids rising by one, prices wandering a cent at a time,
millisecond times, or microsecond ones with `--micros`, the odd malformed line), and each path replays it into a fresh
Tansu broker of its own. A path's time runs from the call to the last message delivered (its flush), so rows/s is
what reached the broker. CPU is shown per row, the replay process's (all its threads: reading, encoding, sending,
librdkafka's) and the broker's: on a machine shared with other work, rows/s follows the cores left free, CPU per row
does not. `--profile` runs that path under cProfile (the main thread: sending) and prints where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from bench.backlog import Broker, bench_settings, workdir
from k2_stream import replay
from k2_stream.replay import replay_file

SYMBOL = "BTCUSDT"
T = TypeVar("T")
HEADER = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n"


def generate(path: Path, rows: int, micros: bool = False, bad_every: int = 100_000, seed: int = 7) -> int:
    """A realistic dump: ids from 3,000,000,001 rising by one, a price wandering by cents around 42,000, quantities
    of up to 5 BTC with 8 places, times rising by 0-2 ms. Every `bad_every`-th line is malformed (0: none). Returns
    how many lines are malformed."""
    rng = np.random.default_rng(seed)
    ids = np.arange(3_000_000_001, 3_000_000_001 + rows)
    cents = 4_200_000 + np.cumsum(rng.integers(-1, 2, rows))
    qty = rng.integers(1, 500_000_000, rows)  # 1e-8 .. 5 BTC, unscaled
    times = 1_704_067_200_000 + np.cumsum(rng.integers(0, 3, rows))
    if micros:
        times = times * 1000 + rng.integers(0, 1000, rows)
    maker = rng.integers(0, 2, rows).astype(bool)
    bad = 0
    with path.open("w") as out:
        out.write(HEADER)
        step = 100_000
        for start in range(0, rows, step):
            part = slice(start, start + step)
            lines = [
                f"{i},{c // 100}.{c % 100:02d}000000,{q // 10**8}.{q % 10**8:08d},"
                f"{c * q // 10**10}.{c * q % 10**10 // 100:08d},{t},{'True' if m else 'False'},True\n"
                for i, c, q, t, m in zip(
                    ids[part].tolist(),
                    cents[part].tolist(),
                    qty[part].tolist(),
                    times[part].tolist(),
                    maker[part].tolist(),
                    strict=True,
                )
            ]
            if bad_every:
                for k in range(bad_every - start % bad_every - 1, len(lines), bad_every):
                    lines[k] = lines[k].replace(".", "x", 1)  # price 42000x01000000: not a number
                    bad += 1
            out.write("".join(lines))
    return bad


@dataclass
class Run:
    path: str
    rows: int
    skipped: int
    seconds: float
    cpu_seconds: float
    broker_cpu_seconds: float
    sender_cpu_seconds: float  # the main thread: the send loop (the per-line path: everything but librdkafka)
    reader_cpu_seconds: float  # the columnar path's reader thread: reading and encoding

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        per_row = 1e6 / self.rows if self.rows else 0.0
        librdkafka = self.cpu_seconds - self.sender_cpu_seconds - self.reader_cpu_seconds
        return (
            f"{self.path:9s} {self.rows:>10,} rows in {self.seconds:6.2f}s = {self.rows_per_second:>9,.0f} rows/s;"
            f" CPU µs/row: replay {self.cpu_seconds * per_row:5.2f} (reader {self.reader_cpu_seconds * per_row:4.2f},"
            f" sender {self.sender_cpu_seconds * per_row:5.2f}, librdkafka & rest {librdkafka * per_row:4.2f};"
            f" {self.cpu_seconds / self.seconds:4.0%} of a core), broker {self.broker_cpu_seconds * per_row:4.2f};"
            f" {self.skipped} bad lines; load avg {os.getloadavg()[0]:.1f}"
        )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _TimedPrefetch(replay.Prefetch[T]):
    """The replay's reader thread, telling the CPU it used."""

    cpu_seconds = 0.0

    def _run(self) -> None:
        try:
            super()._run()
        finally:
            _TimedPrefetch.cpu_seconds += time.thread_time()


def measure(csv: Path, per_line: bool, profile: bool, partitions: int) -> Run:
    """One replay of `csv` into a broker of its own."""
    home = workdir()
    broker = Broker(home)
    try:
        settings = bench_settings(broker.bootstrap, home, partitions)
        profiler = cProfile.Profile() if profile else None
        cpu, broker_cpu, sender_cpu = _cpu(), broker.cpu_seconds(), time.thread_time()
        _TimedPrefetch.cpu_seconds = 0.0
        replay.Prefetch = _TimedPrefetch  # type: ignore[misc]  # the same class, timed
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        summary = replay_file(settings, csv, exchange="binance", symbol=SYMBOL, fmt="binance-trades", per_line=per_line)
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - started
        delivered = sum(len(offsets) for offsets in summary.delivered.values())
        if delivered != summary.produced:
            raise SystemExit(f"{delivered} messages delivered of {summary.produced} produced")
        run = Run(
            "per-line" if per_line else "columnar",
            summary.produced,
            len(summary.skipped),
            seconds,
            _cpu() - cpu,
            broker.cpu_seconds() - broker_cpu,
            time.thread_time() - sender_cpu,
            _TimedPrefetch.cpu_seconds,
        )
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return run
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--micros", action="store_true", help="microsecond times (Binance spot since 2025)")
    parser.add_argument("--bad-every", type=int, default=100_000, help="one malformed line in this many (0: none)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of each market topic")
    parser.add_argument("--paths", default="per-line,columnar", help="which paths to run, in order")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the columnar path (the median is compared)")
    parser.add_argument("--profile", choices=("per-line", "columnar"), help="run this path under cProfile")
    args = parser.parse_args()
    logging.getLogger("k2_stream.replay").setLevel(logging.ERROR)  # the bad lines would flood the output
    home = workdir()
    csv = home / f"{SYMBOL}-trades-2024-01-01.csv"
    started = time.perf_counter()
    bad = generate(csv, args.rows, args.micros, args.bad_every)
    print(
        f"generated {args.rows:,} rows ({bad} malformed, {csv.stat().st_size / 1e6:.0f} MB) "
        f"in {time.perf_counter() - started:.1f}s"
    )
    runs: dict[str, list[Run]] = {}
    try:
        for path in args.paths.split(","):
            for _ in range(args.repeat if path == "columnar" else 1):
                run = measure(csv, path == "per-line", args.profile == path, args.partitions)
                runs.setdefault(path, []).append(run)
                print(run.line(), flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if {"per-line", "columnar"} <= set(runs):
        per_line = runs["per-line"][0]
        ranked = sorted(runs["columnar"], key=lambda r: r.rows_per_second)
        columnar = ranked[(len(ranked) - 1) // 2]  # the median run (the lower one of an even count)
        if any((per_line.rows, per_line.skipped) != (c.rows, c.skipped) for c in runs["columnar"]):
            raise SystemExit("the two paths did not produce the same rows")
        print(
            f"columnar (median of {len(runs['columnar'])}) {columnar.rows_per_second:,.0f} rows/s, per-line "
            f"{per_line.rows_per_second:,.0f} rows/s: {columnar.rows_per_second / per_line.rows_per_second:.1f}x"
        )


if __name__ == "__main__":
    main()
