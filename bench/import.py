"""`k2 import` end to end: rows per second into the real tables, and how soon an imported day answers through the API.

    python -m bench.import [--rows N] [--catalog sqlite|postgres|both]

A Binance spot trades dump of `--rows` rows (2,000,000 by default: a busy day of BTCUSDT), plain and zipped, is
imported by `Importer.import_file` into a fresh catalog (SQLite, the embedded default, and/or PostgreSQL, a database
of its own, dropped afterwards) on the local warehouse: every rule of the ingester applies (record rules, dedup
against what is stored, gap detection). Printed per run: rows/s, from the first byte read to the last commit.

Then the time to query: a real API server (`python -m k2_api`) over a fresh catalog, `k2 import` started as a
process (the command a user types, its start-up included), and the API polled for the day's trade count until it is
the whole file: the seconds from starting `k2 import` to the API answering with every row.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.formats import write_binance_trades
from k2_core.ingest.formats import ReadOptions, file_format
from k2_core.ingest.importer import Importer
from k2_core.settings import REPO_ROOT, CatalogSettings, QuerySettings, Settings
from tests.support.api import api_server
from tests.support.databases import private_database
from tests.support.processes import settings_env

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
DAY = "2024-01-01"


@contextmanager
def catalog_uri(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder}/catalog-{uuid.uuid4().hex[:8]}.db"
        return
    with private_database(f"{POSTGRES}/test", prefix="k2_bench_") as uri:
        yield uri


def settings_for(folder: Path, uri: str) -> Settings:
    home = folder / f"home-{uuid.uuid4().hex[:8]}"
    return Settings(
        home=home,
        catalog=CatalogSettings(name=f"b{uuid.uuid4().hex[:8]}", uri=uri),
        query=QuerySettings(tail_enabled=False),
    )


def throughput(folder: Path, kind: str, path: Path, rows: int) -> None:
    with catalog_uri(kind, folder) as uri:
        settings = settings_for(folder, uri)
        importer = Importer(settings)
        began = time.perf_counter()
        report = importer.import_file(path, file_format("binance-trades"), ReadOptions(exchange="binance"))
        took = time.perf_counter() - began
        assert report.written == rows, report
        again = time.perf_counter()
        skipped = Importer(settings).import_file(path, file_format("binance-trades"), ReadOptions(exchange="binance"))
        assert skipped.skipped
        print(
            f"import  {kind:8s} {path.name:34s} {rows:>10,} rows  {took:6.2f} s  {rows / took:>12,.0f} rows/s"
            f"  ({report.commits} commits; imported again: skipped in {time.perf_counter() - again:.2f} s)"
        )


def time_to_query(folder: Path, kind: str, path: Path, rows: int) -> None:
    with catalog_uri(kind, folder) as uri:
        settings = settings_for(folder, uri)
        Importer(settings)  # the tables exist before the API starts, as in a running platform
        with api_server(settings, folder / "api.log") as url, httpx.Client(base_url=url, timeout=30) as client:
            params = {"symbol": "BTCUSDT", "exchange": "binance", "date": DAY}
            command = [
                sys.executable,
                "-m",
                "k2_cli.main",
                "import",
                str(path),
                "-f",
                "binance-trades",
                "-e",
                "binance",
            ]
            began = time.perf_counter()
            proc = subprocess.Popen(
                command, env=settings_env(settings), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            count = 0
            while count < rows:
                answer = client.get("/v1/summary", params=params)
                count = answer.json().get("trade_count", 0) if answer.status_code == 200 else 0
                if proc.poll() not in (None, 0):
                    raise SystemExit(f"k2 import failed: {proc.stderr.read().decode() if proc.stderr else ''}")
                time.sleep(0.02)
            took = time.perf_counter() - began
            proc.wait(60)
        print(f"query   {kind:8s} {path.name:34s} {rows:>10,} rows  all queryable through the API {took:.2f} s after")
        print("        `k2 import` started (its start-up included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--catalog", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.catalog == "both" else [args.catalog]
    with tempfile.TemporaryDirectory(prefix="k2-import-") as tmp:
        folder = Path(tmp)
        csv = folder / f"BTCUSDT-trades-{DAY}.csv"
        write_binance_trades(csv, args.rows)
        zipped = folder / f"BTCUSDT-trades-{DAY}.zip"
        with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(csv, csv.name)
        for kind in kinds:
            throughput(folder, kind, csv, args.rows)
            throughput(folder, kind, zipped, args.rows)
        for kind in kinds:
            time_to_query(folder, kind, csv, args.rows)


if __name__ == "__main__":
    main()
