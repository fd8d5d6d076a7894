"""Rows per second of the historical-file readers on one core: a Binance spot trades dump of 2,000,000 rows (the
size of a busy day), read plain and zipped, and the same rows as a Tardis trades CSV.

    python -m bench.formats [--rows N] [--repeat R]

Arrow is held to one thread (`pa.set_cpu_count(1)`), as an importer process sharing a machine would be; the file is
read once first so that the page cache, not the disk, is what the figures measure. Each figure is the best of
`--repeat` reads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from k2_core.ingest.formats import ReadOptions, file_format

START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def write_binance_trades(path: Path, rows: int, seed: int = 7) -> None:
    """A spot trades dump as Binance writes one: no header, 8-place decimals, ms times, True/False."""
    rng = np.random.default_rng(seed)
    ids = np.arange(3_000_000_000, 3_000_000_000 + rows)
    cents = 4_200_000 + rng.integers(-100_000, 100_000, rows)
    qty = rng.integers(1, 10**7, rows)
    times = START_MS + np.cumsum(rng.integers(0, 4, rows))
    maker = rng.integers(0, 2, rows)
    with path.open("w") as out:
        for i in range(rows):
            price = f"{cents[i] // 100}.{cents[i] % 100:02d}000000"
            volume = f"0.{qty[i]:08d}"
            quote = f"{cents[i] * qty[i] // 10**6}.{cents[i] * qty[i] % 10**6:06d}00"
            out.write(f"{ids[i]},{price},{volume},{quote},{times[i]},{'True' if maker[i] else 'False'},True\n")


def write_tardis_trades(path: Path, rows: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    cents = 4_200_000 + rng.integers(-100_000, 100_000, rows)
    qty = rng.integers(1, 10**7, rows)
    times = START_MS * 1000 + np.cumsum(rng.integers(0, 4000, rows))
    side = rng.integers(0, 2, rows)
    with path.open("w") as out:
        out.write("exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n")
        for i in range(rows):
            out.write(
                f"binance,BTCUSDT,{times[i]},{times[i] + 1500},{3_000_000_000 + i},{'buy' if side[i] else 'sell'},"
                f"{cents[i] // 100}.{cents[i] % 100:02d},0.{qty[i]:08d}\n"
            )


def measure(name: str, path: Path, rows: int, repeat: int, symbol: str | None = None) -> None:
    fmt = file_format(name)
    options = ReadOptions(exchange="binance", symbol=symbol, received=datetime.now(UTC))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        read = sum(chunk.table.num_rows for chunk in fmt.read(path, options))
        best = min(best, time.perf_counter() - start)
        assert read == rows, (read, rows)
    size = path.stat().st_size / 1e6
    print(f"{name:16s} {path.name:34s} {size:8.1f} MB  {rows:>10,} rows  {best:6.2f} s  {rows / best:>12,.0f} rows/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        csv = folder / "BTCUSDT-trades-2024-01-01.csv"
        write_binance_trades(csv, args.rows)
        zipped = folder / "BTCUSDT-trades-2024-01-01.zip"
        with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(csv, csv.name)
        tardis = folder / "binance_trades_2024-01-01_BTCUSDT.csv"
        write_tardis_trades(tardis, args.rows)
        measure("binance-trades", csv, args.rows, args.repeat)
        measure("binance-trades", zipped, args.rows, args.repeat)
        measure("tardis-trades", tardis, args.rows, args.repeat)


if __name__ == "__main__":
    main()
