"""`k2 import` of a level-2 book file: rows per second into the real book tables.

    python -m bench.book_import [--rows N] [--chunk-rows N]

A Tardis `incremental_book_L2` file of `--rows` rows (200,000 by default) for one symbol - an opening snapshot of
20 levels a side, then random level changes, a new snapshot every 50,000 rows - is imported by
`BookImporter.import_file` into a fresh SQLite catalog on the local warehouse, every rule of the book ingester
applying (record rules, per-symbol dedup against what is stored, gaps, validity). Printed: rows/s from the first
byte read to the last commit, the reading alone, the CPU seconds of each (this process, every thread: on a shared
machine the wall time follows the load, the CPU time much less), and the load average.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

from k2_core.ingest.book_importer import BookImporter
from k2_core.ingest.formats import BOOK_FORMATS, ReadOptions
from k2_core.settings import CatalogSettings, QuerySettings, Settings

START_US = 1_732_496_400_000_000  # 2024-11-25T01:00:00Z


def write_l2(path: Path, rows: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    lines = ["exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"]
    t = START_US
    while len(lines) <= rows:
        if (len(lines) - 1) % 50_000 == 0:
            t += 1000
            for k in range(20):
                lines.append(
                    f"binance-futures,BTCUSDT,{t},{t + 90},true,bid,{60000 - k * 0.5:.1f},{rng.randint(1, 99)}"
                )
                lines.append(
                    f"binance-futures,BTCUSDT,{t},{t + 90},true,ask,{60000.5 + k * 0.5:.1f},{rng.randint(1, 99)}"
                )
            continue
        t += rng.randint(1, 400)
        side = rng.choice(("bid", "ask"))
        price = 60000 - rng.randint(0, 40) * 0.5 if side == "bid" else 60000.5 + rng.randint(0, 40) * 0.5
        amount = 0 if rng.random() < 0.3 else rng.randint(1, 99) / 100
        lines.append(f"binance-futures,BTCUSDT,{t},{t + 90},false,{side},{price:.1f},{amount}")
    path.write_text("\n".join(lines[: rows + 1]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=1 << 20)
    args = parser.parse_args()
    fmt = BOOK_FORMATS["tardis-book-l2"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dump = folder / "binance-futures_incremental_book_L2_2024-11-25_BTCUSDT.csv"
        write_l2(dump, args.rows)
        options = ReadOptions(exchange="binance", chunk_rows=args.chunk_rows)
        began, cpu = time.perf_counter(), time.process_time()
        records = sum(len(chunk.rows) for chunk in fmt.read(dump, options))
        reading, reading_cpu = time.perf_counter() - began, time.process_time() - cpu
        settings = Settings(
            home=folder / "home",
            catalog=CatalogSettings(name=f"b{uuid.uuid4().hex[:8]}", uri=f"sqlite:///{folder}/catalog.db"),
            query=QuerySettings(tail_enabled=False),
        )
        began, cpu = time.perf_counter(), time.process_time()
        report = BookImporter(settings).import_file(dump, fmt, options)
        seconds, seconds_cpu = time.perf_counter() - began, time.process_time() - cpu
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"tardis-book-l2, {args.rows:,} rows ({records:,} records), SQLite catalog")
        print(f"  reading alone: {args.rows / reading:,.0f} rows/s ({reading:.2f} s; CPU {reading_cpu:.2f} s)")
        print(
            f"  import: {args.rows / seconds:,.0f} rows/s ({seconds:.2f} s; CPU {seconds_cpu:.2f} s, "
            f"{report.written:,} written)"
        )
        print(f"  load average: {load} (on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
