"""Commit latency vs table age (issue 7, goal 2): thousands of small fenced appends to one table, as the ingester makes
them (offsets in the summary), printing append latency per window against the snapshots and manifests the table
holds.

    .venv/bin/python -m bench.commits                          # 10,000 commits, retention applied as the ingester does
    .venv/bin/python -m bench.commits --plain --commits 1500   # no expiry, no manifest merging: the growth it prevents

`--plain` creates the table with pyiceberg's defaults for manifests (fast append, no merging) and never expires.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa

from bench.backlog import workdir
from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import ensure_table, open_catalog
from k2_core.model.tables import TABLE_PROPERTIES, TRADES
from k2_core.settings import CatalogSettings, Settings
from k2_core.upkeep.retention import RetentionPolicy, apply_retention

TOPIC = "market.equities.trades.asx"


def batch(i: int, rows: int) -> pa.Table:
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    return TRADES.sort(
        pa.Table.from_pylist(
            [
                {
                    "symbol": f"S{r % 20}",
                    "exchange": "asx",
                    "exchange_timestamp": t0 + timedelta(microseconds=i * rows + r),
                    "exchange_sequence_number": i * rows + r + 1,
                    "price": Decimal("45.12"),
                    "volume": Decimal(100),
                    "side": "buy",
                    "trade_id": f"T{i}-{r}",
                    "ingestion_timestamp": t0,
                }
                for r in range(rows)
            ],
            schema=TRADES.arrow_schema,
        )
    )


def pct(data: list[float], q: float) -> float:
    data = sorted(data)
    return data[min(len(data) - 1, round(q * (len(data) - 1)))] if data else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=100, help="rows per append")
    parser.add_argument("--window", type=int, default=500, help="commits per printed line")
    parser.add_argument(
        "--every", type=int, default=50, help="apply retention every N commits (K2_INGEST_RETENTION_EVERY_COMMITS)"
    )
    parser.add_argument("--keep-last", type=int, default=20, help="K2_INGEST_KEEP_SNAPSHOTS")
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()

    root = workdir()
    settings = Settings(home=root, catalog=CatalogSettings(name=f"bench{uuid.uuid4().hex[:8]}"))
    catalog = open_catalog(settings)
    if args.plain:
        import k2_core.model.tables as tables

        tables.TABLE_PROPERTIES = {
            k: v for k, v in TABLE_PROPERTIES.items() if not k.startswith("commit.manifest")
        }  # pyiceberg defaults
        import k2_core.lake.catalog as cat

        cat.TABLE_PROPERTIES = tables.TABLE_PROPERTIES
    table = ensure_table(catalog, settings.catalog.namespace, TRADES)
    props = {k: v for k, v in table.metadata.properties.items() if k.startswith(("commit.manifest", "write."))}
    policy = RetentionPolicy(keep_last=args.keep_last)
    print(
        f"# bench.commits {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {args.commits:,} appends of {args.rows} rows to one "
        f"table, SQLite catalog, local warehouse; "
        + ("plain (no expiry, no manifest merge)" if args.plain else f"retention every {args.every} commits, {policy}")
    )
    print(f"# table properties: {props}")
    print(
        f"{'commits':>8} {'snapshots':>9} {'manifests':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'retain ms':>9}"
    )
    writer = TableWriter(table, "bench", "bench-cluster")
    window: list[float] = []
    upkeep: list[float] = []
    all_ms: list[float] = []
    for i in range(args.commits):
        data = batch(i, args.rows)
        started = time.perf_counter()
        writer.append(data, {(TOPIC, 0): (i + 1) * args.rows}, {(TOPIC, 0): i * args.rows})
        elapsed = (time.perf_counter() - started) * 1000
        window.append(elapsed)
        all_ms.append(elapsed)
        if not args.plain and (i + 1) % args.every == 0:
            started = time.perf_counter()
            apply_retention(table, datetime.now(UTC), policy)
            upkeep.append((time.perf_counter() - started) * 1000)
        if (i + 1) % args.window == 0:
            snapshot = table.current_snapshot()
            manifests = len(snapshot.manifests(table.io)) if snapshot else 0
            print(
                f"{i + 1:>8} {len(table.metadata.snapshots):>9} {manifests:>9} {pct(window, 0.5):>8.1f} "
                f"{pct(window, 0.99):>8.1f} {max(window):>8.1f} {pct(upkeep, 0.5) if upkeep else 0:>9.1f}",
                flush=True,
            )
            window, upkeep = [], []
    tail = all_ms[-min(len(all_ms), 1000) :]
    print(f"last {len(tail)} appends: p50 {pct(tail, 0.5):.1f} ms, p99 {pct(tail, 0.99):.1f} ms")


if __name__ == "__main__":
    main()
