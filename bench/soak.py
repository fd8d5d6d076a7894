"""Soak (issue 11): `k2 run` at a steady trade rate for half an hour or more, watched from outside as an operator would.

    .venv/bin/pip install -e '.[bench]'       # matplotlib, for the plot
    .venv/bin/python -m bench.soak                                  # 5,000 trades/s for 30 minutes
    .venv/bin/python -m bench.soak --minutes 60 --rate 5000 --png docs/soak.png

Starts the whole platform exactly as `make run` does (broker, ingester, API, Dagster, the three simulators at
rate/3 trades per second each, every quote before its trade), in a home of its own on free ports, and samples every
`--interval` seconds: the resident memory of every process (its whole process group: Dagster's code servers and run
workers count with their parent), data files and snapshots per table, Iceberg commit p50/p99 over the interval (from
the ingester's histogram), rows committed per second, the worst consumer lag, disk used by the home, and error
lines in the logs. Prints one line per sample and a summary comparing the first and last thirds of the run (memory
and commit latency must stay flat), and draws the series as a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from k2_core.lake.catalog import open_catalog
from k2_core.lake.lineage import day_files
from k2_core.model.tables import ALL_TABLES
from k2_core.settings import Settings

PAGE = os.sysconf("SC_PAGE_SIZE")
# K2's JSON error lines, tracebacks, and Dagster's own error lines.
ERROR_MARKS = ('"level": "error"', '"level": "critical"', "Traceback", " - ERROR - ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sample:
    elapsed_s: float
    rss_mib: dict[str, float]
    files: dict[str, int]
    snapshots: dict[str, int]
    commit_p50_ms: float
    commit_p99_ms: float
    rows_per_s: float
    lag_s: float
    disk_mib: float
    errors: int


@dataclass
class Histogram:
    """Cumulative bucket counts of a Prometheus histogram; the difference of two is the interval's distribution."""

    buckets: dict[float, float] = field(default_factory=dict)

    def minus(self, earlier: Histogram) -> Histogram:
        return Histogram({le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()})

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (Prometheus' histogram_quantile, without interpolation
        across the bucket: a conservative figure)."""
        total = self.buckets.get(math.inf, 0.0)
        if total <= 0:
            return math.nan
        for le in sorted(self.buckets):
            if self.buckets[le] >= q * total:
                return le
        return math.inf


def group_rss(pgid: int) -> int:
    """Resident bytes of every process in the process group."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pgid:  # fields after the name: state, ppid, pgrp, ..., rss is the 22nd
                continue
            total += int(stat[21]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def error_lines(logs: Path) -> int:
    count = 0
    for path in logs.glob("*.log"):
        with path.open(errors="replace") as fh:
            for line in fh:
                count += any(mark in line for mark in ERROR_MARKS)
    return count


def scrape(url: str) -> tuple[Histogram, float, float]:
    """The trades commit-latency histogram, trades rows committed so far, and the worst consumer lag (s)."""
    hist = Histogram()
    rows, lag = 0.0, 0.0
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name == "iceberg_write_duration_seconds_bucket" and sample.labels.get("table") == "trades":
                hist.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "k2_rows_written_total" and sample.labels.get("table") == "trades":
                rows = sample.value
            elif sample.name == "kafka_consumer_lag_seconds":
                lag = max(lag, sample.value)
    return hist, rows, lag


def run(minutes: float, rate: int, interval: float, png: Path | None, keep: bool) -> list[Sample]:
    work = Path(tempfile.mkdtemp(prefix="k2-soak-"))
    home = work / "home"
    ports = {name: free_port() for name in ("kafka", "api", "ingester", "books", "supervisor", "dagster")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env.update(
        K2_HOME=str(home),
        K2_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{ports['kafka']}",
        K2_API_PORT=str(ports["api"]),
        K2_INGEST_METRICS_PORT=str(ports["ingester"]),
        K2_INGEST_BOOK_METRICS_PORT=str(ports["books"]),
        K2_SUPERVISOR_PORT=str(ports["supervisor"]),
        K2_MAINTENANCE_DAGSTER_PORT=str(ports["dagster"]),
    )
    per_exchange = max(1, round(rate / 3))
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "k2_cli.main", "run", "--rate", str(per_exchange)],
        env=env,
        stdout=(work / "run.out").open("wb"),
        stderr=subprocess.STDOUT,
    )
    settings = Settings(home=home)
    supervisor = f"http://127.0.0.1:{ports['supervisor']}/health"
    metrics = f"http://127.0.0.1:{ports['ingester']}/metrics"
    samples: list[Sample] = []
    print(f"k2 run at {per_exchange * 3:,} trades/s ({per_exchange:,} per exchange) for {minutes:g} min; home {home}")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(metrics, timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the platform did not come up: see {work / 'run.out'}") from None
                time.sleep(1)
        previous, previous_rows, _ = scrape(metrics)
        previous_t = time.monotonic()
        header = f"{'t (s)':>6} {'rows/s':>8} {'lag s':>6} {'p50 ms':>7} {'p99 ms':>7} {'files':>6} {'snaps':>6} "
        print(header + f"{'disk MiB':>9} {'errors':>6}  RSS MiB per process")
        end = started + minutes * 60
        while time.monotonic() < end:
            time.sleep(interval)
            health = httpx.get(supervisor, timeout=10).json()
            hist, rows, lag = scrape(metrics)
            now = time.monotonic()
            delta = hist.minus(previous)
            rss = {name: group_rss(p["pid"]) / 2**20 for name, p in health["processes"].items() if p["pid"]}
            catalog = open_catalog(settings)
            files, snaps = {}, {}
            for table_def in ALL_TABLES:
                try:
                    table = catalog.load_table((settings.catalog.namespace, table_def.name))
                except Exception:  # not created yet
                    continue
                files[table_def.name] = sum(d.files for d in day_files(table))
                snaps[table_def.name] = len(table.metadata.snapshots)
            sample = Sample(
                elapsed_s=now - started,
                rss_mib=rss,
                files=files,
                snapshots=snaps,
                commit_p50_ms=delta.quantile(0.5) * 1000,
                commit_p99_ms=delta.quantile(0.99) * 1000,
                rows_per_s=(rows - previous_rows) / (now - previous_t),
                lag_s=lag,
                disk_mib=disk_bytes(home) / 2**20,
                errors=error_lines(home / "logs"),
            )
            samples.append(sample)
            previous, previous_rows, previous_t = hist, rows, now
            print(
                f"{sample.elapsed_s:6.0f} {sample.rows_per_s:8,.0f} {sample.lag_s:6.1f} {sample.commit_p50_ms:7.0f} "
                f"{sample.commit_p99_ms:7.0f} {files.get('trades', 0):6} {snaps.get('trades', 0):6} "
                f"{sample.disk_mib:9.0f} {sample.errors:6}  "
                + " ".join(f"{k}={v:.0f}" for k, v in sorted(rss.items())),
                flush=True,
            )
            if health["status"] != "ok":
                print(f"  supervisor: {health['status']}, down: {health['down']}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    summarize(samples)
    (work / "samples.json").write_text(json.dumps([s.__dict__ for s in samples]))
    if png is not None:
        plot(samples, png, per_exchange * 3, minutes)
        print(f"plot: {png}")
    if not keep:
        subprocess.run(["rm", "-rf", str(home)], check=False)
    print(f"samples: {work / 'samples.json'}; platform output: {work / 'run.out'}")
    return samples


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarize(samples: list[Sample]) -> None:
    if len(samples) < 3:
        print("too few samples to summarize")
        return
    third = len(samples) // 3
    first, last = samples[:third], samples[-third:]
    print("\nfirst third -> last third (flat is the goal)")
    names = sorted({n for s in samples for n in s.rss_mib})
    for name in names:
        a = _mean([s.rss_mib.get(name, math.nan) for s in first])
        b = _mean([s.rss_mib.get(name, math.nan) for s in last])
        print(f"  RSS {name:<20} {a:8.0f} -> {b:8.0f} MiB")
    for label, attr in (
        ("commit p50 ms", "commit_p50_ms"),
        ("commit p99 ms", "commit_p99_ms"),
        ("rows/s", "rows_per_s"),
    ):
        a = _mean([getattr(s, attr) for s in first])
        b = _mean([getattr(s, attr) for s in last])
        print(f"  {label:<24} {a:8.1f} -> {b:8.1f}")
    print(f"  trades files / snapshots  {samples[-1].files.get('trades')} / {samples[-1].snapshots.get('trades')}")
    print(f"  disk used                 {samples[-1].disk_mib:,.0f} MiB; error lines logged: {samples[-1].errors}")


def plot(samples: list[Sample], png: Path, rate: int, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.elapsed_s / 60 for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    ax = axes[0][0]
    series: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        for name in {n for x in samples for n in x.rss_mib}:
            series[name].append(s.rss_mib.get(name, math.nan))
    for name, values in sorted(series.items()):
        ax.plot(t, values, label=name)
    ax.set_title("resident memory per process (MiB)")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[0][1]
    ax.plot(t, [s.commit_p50_ms for s in samples], label="p50")
    ax.plot(t, [s.commit_p99_ms for s in samples], label="p99")
    ax.set_title("trades commit latency per interval (ms)")
    ax.legend()
    ax = axes[1][0]
    for name in ("trades", "quotes"):
        ax.plot(t, [s.files.get(name, 0) for s in samples], label=f"{name} files")
        ax.plot(t, [s.snapshots.get(name, 0) for s in samples], "--", label=f"{name} snapshots")
    ax.set_title("data files and snapshots held")
    ax.legend(fontsize=8)
    ax.set_xlabel("minutes")
    ax = axes[1][1]
    ax.plot(t, [s.disk_mib for s in samples], label="disk used (MiB)")
    ax.plot(t, [s.rows_per_s / 100 for s in samples], label="trades committed /s ÷ 100")
    ax.set_title("disk and ingest rate")
    ax.legend(fontsize=8)
    ax.set_xlabel("minutes")
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    fig.suptitle(f"k2 run soak: {rate:,} trades/s for {minutes:g} min, 2 cores, {when}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=5000, help="trades per second across the three exchanges")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--png", type=Path, default=Path("docs/soak.png"))
    parser.add_argument("--keep", action="store_true", help="keep the platform's home afterwards")
    args = parser.parse_args()
    run(args.minutes, args.rate, args.interval, args.png, args.keep)


if __name__ == "__main__":
    main()
