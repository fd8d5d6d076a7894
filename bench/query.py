"""Query latency (issues 3 and 7): K2's read path against a plain pyiceberg+pandas baseline, chdb and ArcticDB (LMDB),
all holding the same generated trades, measured in the same run.

    .venv/bin/python -m bench.query                          # 10M trades, 20 symbols, 5 days
    .venv/bin/python -m bench.query --rows 2000000 --reps 10  # smaller
    .venv/bin/pip install -e '.[bench]'                      # chdb; ArcticDB gets its own venv (it needs pandas<3)

The trades are written to a fresh SQLite catalog and local warehouse the way K2 lays them out (see load(): the
ingester's micro-batches, then each closed day compacted and its minute bars precomputed as the Dagster jobs do, then
a late append so time travel has a past snapshot to read). One symbol carries 20% of the rows, as the busiest
instrument of a venue does; the other 19 share the rest.

Queries (p50/p99 over --reps runs after one warm-up run; the baselines use --baseline-reps):
  fetch_100k     100,000 trades of one symbol from a 1.5-day window, in exchange order
  travel_1m      1,000,000 trades of the busiest symbol as of the snapshot before the last commit
  ohlcv_1m_all   1-minute OHLCV + VWAP of every symbol over all rows (K2: DuckDB over the planned files)
  symbol_day     one symbol's trades over one whole day (~84k rows)
  ohlcv_1m_day   1-minute bars of the busiest symbol over one closed day (K2: get_ohlcv, no result cache)
  symbol_agg     per-symbol count, volume, low, high, VWAP over all rows (K2: DuckDB over the planned files)
  ohlcv_1m_sym   1-minute bars of the busiest symbol over all five days (K2: get_ohlcv, no result cache)
  latest_cached  the last trade of one symbol, repeated (K2: in-process LRU keyed by snapshot)
  latest_redis   the same from a fresh LRU with the shared Redis tier (K2 only)

Baselines: pandas reads with `table.scan(row_filter=...).to_pandas()` and computes with pandas, prices converted to
float64 as a researcher would (so its VWAP is not exact); chdb holds the rows in a MergeTree table ordered by
(symbol, time) with Decimal(18,8) prices, time travel n/a; ArcticDB holds one versioned symbol per instrument in
LMDB with float64 prices (it has no decimal type) and reads the previous version for time travel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan

from k2_core.lake import scan
from k2_core.lake.catalog import ensure_table, ensure_tables, open_catalog
from k2_core.model.bars import compute_bars
from k2_core.model.tables import TRADES, TableDef
from k2_core.read.cache import RedisTier, ResultCache
from k2_core.read.engine import QueryEngine
from k2_core.settings import CatalogSettings, Settings
from k2_core.upkeep.compaction import compact_day
from k2_core.upkeep.ohlcv import OHLCV_TABLES, rebuild_minute_bars

START = datetime(2024, 3, 4, tzinfo=UTC)
ARCTIC_PIN = ["arcticdb==6.28.2", "pyarrow==26.0.1", "pandas==2.3.3"]
Timings = dict[str, list[float]]


# --- data ------------------------------------------------------------------------------------------------------


def decimals(units: np.ndarray) -> pa.Array:
    """int64 units of 1e-8 -> decimal128(18, 8) with the same unscaled values (no float anywhere)."""
    wide = np.empty((len(units), 2), dtype=np.int64)
    wide[:, 0] = units
    wide[:, 1] = np.where(units < 0, -1, 0)
    return pa.Array.from_buffers(pa.decimal128(18, 8), len(units), [None, pa.py_buffer(wide.tobytes())])


def generate(rows: int, symbols: int, days: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    weights = np.full(symbols, 0.8 / (symbols - 1))
    weights[0] = 0.2
    sym = rng.choice(symbols, rows, p=weights)
    micros = np.sort(rng.integers(0, days * 86_400_000_000, rows))
    seq = np.empty(rows, dtype=np.int64)
    price = np.empty(rows, dtype=np.int64)
    for s in range(symbols):
        mask = sym == s
        n = int(mask.sum())
        seq[mask] = np.arange(1, n + 1)
        price[mask] = (20 + 5 * s) * 100_000_000 + np.cumsum(rng.integers(-2, 3, n)) * 1_000_000
    price = np.maximum(price, 1_000_000)
    volume = rng.integers(1, 5_000, rows) * 100_000_000 + rng.integers(0, 100_000_000, rows)
    start_us = int(START.timestamp() * 1_000_000)
    ts = pa.array(micros + start_us, pa.timestamp("us", tz="UTC"))
    names = np.array([f"SYM{s:02d}" for s in range(symbols)])
    table = pa.table(
        {
            "symbol": pa.array(names[sym]),
            "exchange": pa.array(np.full(rows, "asx")),
            "exchange_timestamp": ts,
            "exchange_sequence_number": pa.array(seq),
            "price": decimals(price),
            "volume": decimals(volume),
            "side": pa.array(np.where(rng.integers(0, 2, rows) == 1, "buy", "sell")),
            "trade_id": pa.array(np.char.add("t", np.arange(rows).astype(str))),
            "ingestion_timestamp": ts,
        }
    )
    return table.cast(TRADES.arrow_schema)


def lay_out(
    settings: Settings, rows: Sequence[tuple[TableDef, pa.Table]], days: Iterable[date], *, compacted: bool = True
) -> None:
    """Write `rows` (pairs of a table and its rows, in time order) into the catalog of `settings` as K2 lays data
    out: the ingester's time-ordered micro-batches (its `batch_max_rows`, 50k by default) while a day is open; then,
    with `compacted`, each of `days` closed the way the Dagster jobs close it: every table's day compacted
    (`k2_core.upkeep.compaction`, clustered by instrument) and, when trades are among `rows`, its 1-minute bars
    precomputed (`k2_core.upkeep.ohlcv`). Shared by this bench and `bench.tsbench`."""
    catalog = open_catalog(settings)
    ns = settings.catalog.namespace
    tables = ensure_tables(catalog, ns)
    batch = settings.ingest.batch_max_rows
    for table_def, body in rows:
        target = tables[table_def.name]
        for offset in range(0, body.num_rows, batch):
            target.append(table_def.sort(body.slice(offset, batch)))
    if compacted:
        m = settings.maintenance
        bars_1m = ensure_table(catalog, ns, OHLCV_TABLES["1m"]) if any(t is TRADES for t, _ in rows) else None
        for when in days:
            for table_def, _ in rows:
                compact_day(
                    tables[table_def.name],
                    table_def,
                    when,
                    target_file_bytes=m.compaction_target_file_bytes,
                    retries=m.commit_retries,
                    backoff_seconds=m.retry_backoff_seconds,
                )
            if bars_1m is not None:
                trades = tables[TRADES.name]
                rebuild_minute_bars(trades, bars_1m, when, retries=m.commit_retries, backoff=m.retry_backoff_seconds)
    catalog.close()


def load(settings: Settings, table: pa.Table, days: int, layout: str) -> tuple[int, int]:
    """Lay the trades out as K2 does (`lay_out`); returns (snapshot before the last append, current snapshot).
    For `compacted` (the default), each day is closed as the Dagster jobs close it; a last append of 1,000 late
    trades to the final day leaves a past snapshot to time-travel to and that day's bars stale. `ingested` stops
    after the appends (every day still open)."""
    late_rows = 1_000
    body = table.slice(0, table.num_rows - late_rows)
    closed = [(START + timedelta(days=day)).date() for day in range(days)]
    lay_out(settings, [(TRADES, body)], closed, compacted=layout == "compacted")
    catalog = open_catalog(settings)
    trades = catalog.load_table((settings.catalog.namespace, "trades"))
    before = trades.metadata.current_snapshot_id
    trades.append(TRADES.sort(table.slice(table.num_rows - late_rows)))
    current = trades.metadata.current_snapshot_id
    catalog.close()
    assert before is not None
    assert current is not None
    return before, current


# --- timing ----------------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], reps: int, *, warmup: int = 1) -> tuple[list[float], Any]:
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - began) * 1000)
    return times, result


def pct(times: list[float], q: float) -> float:
    if len(times) == 1:
        return times[0]
    return float(np.percentile(times, q * 100))


# --- the contestants -------------------------------------------------------------------------------------------


class Plan:
    """The concrete query parameters, shared by every contestant."""

    def __init__(self, table: pa.Table, symbols: int, before: int) -> None:
        self.busy, self.other, self.latest_symbol = "SYM00", "SYM01", f"SYM{symbols - 1:02d}"
        self.fetch_window = (START + timedelta(hours=36), START + timedelta(days=3))
        self.day_window = (START + timedelta(days=1), START + timedelta(days=2))
        self.travel_window = (START, START + timedelta(days=4))
        self.before = before


# Per-symbol aggregation over every row: what a researcher asks first of a venue's history.
SYMBOL_AGG = """
    SELECT symbol, exchange, count(*) AS trade_count, sum(volume) AS volume, min(price) AS low, max(price) AS high,
           sum(price::DECIMAL(38, 8) * volume) / sum(volume) AS vwap,
           min(exchange_timestamp) AS first_trade, max(exchange_timestamp) AS last_trade
    FROM {trades} GROUP BY symbol, exchange ORDER BY symbol, exchange
"""


def k2(settings: Settings, plan: Plan, reps: int, latest_reps: int) -> tuple[Timings, dict[str, int]]:
    times: Timings = {}
    rows: dict[str, int] = {}
    with QueryEngine.from_settings(settings, cache=False) as engine:
        engine.limits.max_limit = 1_000_000
        t, out = timed(lambda: engine.trades(plan.other, "asx", *plan.fetch_window, limit=100_000), reps)
        times["fetch_100k"], rows["fetch_100k"] = t, out.num_rows
        t, out = timed(
            lambda: engine.trades(plan.busy, "asx", *plan.travel_window, limit=1_000_000, as_of_snapshot=plan.before),
            reps,
        )
        times["travel_1m"], rows["travel_1m"] = t, out.num_rows

        t, out = timed(lambda: engine.trades(plan.other, "asx", *plan.day_window, limit=1_000_000), reps)
        times["symbol_day"], rows["symbol_day"] = t, out.num_rows

        def over_all_rows(sql: str) -> pa.Table:
            files = engine.plan(TRADES).local_paths
            with scan.connect() as con:
                return con.sql(sql.format(trades=f"read_parquet({files!r})")).to_arrow_table()

        def all_bars() -> pa.Table:
            files = engine.plan(TRADES).local_paths
            with scan.connect() as con:
                return compute_bars(con.sql("SELECT * FROM read_parquet($files)", params={"files": files}), "1m")

        t, out = timed(all_bars, max(3, reps // 4))
        times["ohlcv_1m_all"], rows["ohlcv_1m_all"] = t, out.num_rows
        t, out = timed(lambda: over_all_rows(SYMBOL_AGG), max(3, reps // 4))
        times["symbol_agg"], rows["symbol_agg"] = t, out.num_rows
        t, out = timed(lambda: engine.ohlcv(plan.busy, "asx", "1m", *plan.day_window).table, reps)
        times["ohlcv_1m_day"], rows["ohlcv_1m_day"] = t, out.num_rows
        t, out = timed(
            lambda: engine.ohlcv(plan.busy, "asx", "1m", START, START + timedelta(days=5)).table, max(3, reps // 4)
        )
        times["ohlcv_1m_sym"], rows["ohlcv_1m_sym"] = t, out.num_rows
    with QueryEngine.from_settings(settings) as engine:
        engine.cache = ResultCache(settings.query.lru_max_bytes, None)
        t, out = timed(lambda: engine.latest(plan.latest_symbol, "asx").table, latest_reps, warmup=1)
        times["latest_cached"], rows["latest_cached"] = t, out.num_rows
        if settings.redis.enabled:
            redis_only = ResultCache(0, RedisTier(settings.redis))
            engine.cache = redis_only
            engine.latest(plan.latest_symbol, "asx")
            t, out = timed(lambda: engine.latest(plan.latest_symbol, "asx").table, latest_reps, warmup=1)
            times["latest_redis"], rows["latest_redis"] = t, out.num_rows
    return times, rows


def pandas_baseline(settings: Settings, plan: Plan, reps: int) -> Timings:
    catalog = open_catalog(settings)
    table = catalog.load_table((settings.catalog.namespace, "trades"))

    def window(symbol: str, lo: datetime, hi: datetime) -> Any:
        return And(
            And(EqualTo(term="symbol", value=symbol), EqualTo(term="exchange", value="asx")),
            And(
                GreaterThanOrEqual(term="exchange_timestamp", value=lo.isoformat()),
                LessThan(term="exchange_timestamp", value=hi.isoformat()),
            ),
        )

    def fetch() -> Any:
        frame = table.scan(row_filter=window(plan.other, *plan.fetch_window)).to_pandas()
        return frame.sort_values(["exchange_timestamp", "exchange_sequence_number"]).head(100_000)

    def travel() -> Any:
        frame = table.scan(row_filter=window(plan.busy, *plan.travel_window), snapshot_id=plan.before).to_pandas()
        return frame.sort_values(["exchange_timestamp", "exchange_sequence_number"]).head(1_000_000)

    def bars(frame: Any) -> Any:
        frame = frame.sort_values(["exchange_timestamp", "exchange_sequence_number"])
        frame["price"] = frame["price"].astype("float64")
        frame["volume"] = frame["volume"].astype("float64")
        frame["notional"] = frame["price"] * frame["volume"]
        frame["bar_start"] = frame["exchange_timestamp"].dt.floor("1min")
        out = frame.groupby(["symbol", "bar_start"]).agg(
            open=("price", "first"),
            high=("price", "max"),
            low=("price", "min"),
            close=("price", "last"),
            volume=("volume", "sum"),
            notional=("notional", "sum"),
            trade_count=("price", "size"),
        )
        out["vwap"] = out["notional"] / out["volume"]
        return out

    columns = ("symbol", "exchange_timestamp", "exchange_sequence_number", "price", "volume")

    def all_bars() -> Any:
        return bars(table.scan(selected_fields=columns).to_pandas())

    def sym_bars() -> Any:
        return bars(
            table.scan(
                row_filter=window(plan.busy, START, START + timedelta(days=5)), selected_fields=columns
            ).to_pandas()
        )

    def latest() -> Any:
        only = And(EqualTo(term="symbol", value=plan.latest_symbol), EqualTo(term="exchange", value="asx"))
        frame = table.scan(row_filter=only).to_pandas()
        return frame.sort_values(["exchange_timestamp", "exchange_sequence_number"]).tail(1)

    times = {
        "fetch_100k": timed(fetch, reps)[0],
        "travel_1m": timed(travel, reps)[0],
        "ohlcv_1m_all": timed(all_bars, max(1, reps // 2))[0],
        "ohlcv_1m_sym": timed(sym_bars, reps)[0],
        "latest_cached": timed(latest, reps)[0],
    }
    catalog.close()
    return times


CHDB_DDL = """
CREATE TABLE bench.trades (
    symbol LowCardinality(String), exchange LowCardinality(String), exchange_timestamp DateTime64(6, 'UTC'),
    exchange_sequence_number Int64, price Decimal(18, 8), volume Decimal(18, 8), side LowCardinality(String),
    trade_id String, ingestion_timestamp DateTime64(6, 'UTC')
) ENGINE = MergeTree ORDER BY (symbol, exchange, exchange_timestamp, exchange_sequence_number)
"""


def chdb_baseline(parquet: Path, workdir: Path, plan: Plan, reps: int) -> Timings:
    from chdb import session

    sess = session.Session(str(workdir / "chdb"))
    sess.query("CREATE DATABASE IF NOT EXISTS bench")
    sess.query("DROP TABLE IF EXISTS bench.trades")
    sess.query(CHDB_DDL)
    sess.query(f"INSERT INTO bench.trades SELECT * FROM file('{parquet}', Parquet)")

    def ts(moment: datetime) -> str:
        return f"toDateTime64('{moment.strftime('%Y-%m-%d %H:%M:%S')}', 6, 'UTC')"

    def fetch() -> pa.Table:
        lo, hi = plan.fetch_window
        return sess.query(
            f"SELECT * FROM bench.trades WHERE symbol = '{plan.other}' AND exchange = 'asx' AND exchange_timestamp >= "
            f"{ts(lo)} AND exchange_timestamp < {ts(hi)} ORDER BY exchange_timestamp, exchange_sequence_number "
            "LIMIT 100000",
            "ArrowTable",
        )

    bars_sql = """
        SELECT symbol, toStartOfMinute(exchange_timestamp) AS bar_start,
               argMin(price, (exchange_timestamp, exchange_sequence_number)) AS open, max(price) AS high,
               min(price) AS low, argMax(price, (exchange_timestamp, exchange_sequence_number)) AS close,
               sum(volume) AS total_volume, sum(toDecimal128(price, 8) * volume) / total_volume AS vwap,
               count() AS trade_count
        FROM bench.trades {where} GROUP BY symbol, bar_start ORDER BY symbol, bar_start
    """

    def all_bars() -> pa.Table:
        return sess.query(bars_sql.format(where=""), "ArrowTable")

    def sym_bars() -> pa.Table:
        return sess.query(bars_sql.format(where=f"WHERE symbol = '{plan.busy}'"), "ArrowTable")

    def latest() -> pa.Table:
        return sess.query(
            f"SELECT * FROM bench.trades WHERE symbol = '{plan.latest_symbol}' "
            "ORDER BY exchange_timestamp DESC, exchange_sequence_number DESC LIMIT 1",
            "ArrowTable",
        )

    times = {
        "fetch_100k": timed(fetch, reps)[0],
        "ohlcv_1m_all": timed(all_bars, max(3, reps // 4))[0],
        "ohlcv_1m_sym": timed(sym_bars, reps)[0],
        "latest_cached": timed(latest, reps)[0],
    }
    sess.close()
    return times


ARCTIC_SCRIPT = r"""
import json, sys, time
import numpy as np, pandas as pd, pyarrow.parquet as pq
from arcticdb import Arctic, QueryBuilder
cfg = json.loads(sys.argv[1])
lib = Arctic("lmdb://" + cfg["path"]).get_library("bench", create_if_missing=True)
columns = ["symbol", "exchange_timestamp", "exchange_sequence_number", "price", "volume"]
frame = pq.read_table(cfg["parquet"], columns=columns).to_pandas()
frame["price"] = frame["price"].astype("float64"); frame["volume"] = frame["volume"].astype("float64")
frame = frame.set_index("exchange_timestamp"); frame.index = frame.index.tz_convert(None)
late = frame.iloc[-cfg["late_rows"]:]; body = frame.iloc[:-cfg["late_rows"]]
versions = {}
for symbol, part in body.groupby("symbol"):
    lib.write(symbol, part.drop(columns="symbol"))
    versions[symbol] = 0
for symbol, part in late.groupby("symbol"):
    lib.append(symbol, part.drop(columns="symbol"))
def timed(fn, reps):
    fn(); out = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); out.append((time.perf_counter() - t) * 1000)
    return out
ts = lambda s: pd.Timestamp(s).tz_convert(None)
def fetch():
    return lib.read(cfg["other"], date_range=(ts(cfg["fetch"][0]), ts(cfg["fetch"][1]))).data.iloc[:100_000]
def travel():
    return lib.read(cfg["busy"], date_range=(ts(cfg["travel"][0]), ts(cfg["travel"][1])), as_of=0).data.iloc[:1_000_000]
def bars(symbol):
    q = QueryBuilder()
    q = q.apply("notional", q["price"] * q["volume"])
    q = q.resample("1min").agg({"open": ("price", "first"), "high": ("price", "max"), "low": ("price", "min"),
        "close": ("price", "last"), "volume": ("volume", "sum"), "notional": ("notional", "sum"),
        "trade_count": ("price", "count")})
    out = lib.read(symbol, query_builder=q).data
    out["vwap"] = out["notional"] / out["volume"]
    return out
def all_bars():
    return [bars(s) for s in cfg["symbols"]]
def latest():
    return lib.tail(cfg["latest"], 1).data
reps = cfg["reps"]
print(json.dumps({"fetch_100k": timed(fetch, reps), "travel_1m": timed(travel, reps),
    "ohlcv_1m_all": timed(all_bars, max(3, reps // 4)), "ohlcv_1m_sym": timed(lambda: bars(cfg["busy"]), reps),
    "latest_cached": timed(latest, reps)}))
"""


def arctic_python(workdir: Path) -> Path:
    """A venv with ArcticDB (pinned), built once under the bench's work directory."""
    venv = workdir / "arcticdb-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ARCTIC_PIN], check=True, stderr=subprocess.DEVNULL)
    return python


def arctic_baseline(parquet: Path, workdir: Path, plan: Plan, symbols: list[str], reps: int) -> Timings:
    lmdb = workdir / "arctic.lmdb"
    shutil.rmtree(lmdb, ignore_errors=True)
    cfg = {
        "path": str(lmdb),
        "parquet": str(parquet),
        "late_rows": 1_000,
        "other": plan.other,
        "busy": plan.busy,
        "latest": plan.latest_symbol,
        "symbols": symbols,
        "fetch": [t.isoformat() for t in plan.fetch_window],
        "travel": [t.isoformat() for t in plan.travel_window],
        "reps": reps,
    }
    out = subprocess.run(
        [str(arctic_python(workdir)), "-c", ARCTIC_SCRIPT, json.dumps(cfg)], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# --- main ------------------------------------------------------------------------------------------------------

QUERIES = (
    "fetch_100k",
    "travel_1m",
    "ohlcv_1m_all",
    "symbol_day",
    "ohlcv_1m_day",
    "symbol_agg",
    "ohlcv_1m_sym",
    "latest_cached",
    "latest_redis",
)
# Issue 3's goals, then issue 7's (the tighter latest-price goal is issue 7's).
GOALS = {
    "fetch_100k": 100,
    "travel_1m": 500,
    "ohlcv_1m_all": 1000,
    "symbol_day": 20,
    "ohlcv_1m_day": 20,
    "symbol_agg": 300,
    "latest_cached": 2,
}


def report(results: dict[str, Timings], rows: dict[str, int]) -> None:
    names = list(results)
    header = f"{'query':<14} {'rows':>10} {'goal ms':>8} " + " ".join(f"{n + ' p50/p99 ms':>26}" for n in names)
    print(header)
    print("-" * len(header))
    for query in QUERIES:
        cells = []
        for name in names:
            t = results[name].get(query)
            cells.append(f"{pct(t, 0.5):>12.2f} / {pct(t, 0.99):>10.2f}" if t else f"{'n/a':>26}")
        goal = GOALS.get(query)
        print(f"{query:<14} {rows.get(query, 0):>10,} {goal or '':>8} " + " ".join(cells))
    print()
    for name in names[1:]:
        ratios = [
            f"{q} {pct(results[name][q], 0.5) / pct(results['k2'][q], 0.5):.1f}x"
            for q in QUERIES
            if q in results[name] and q in results["k2"]
        ]
        print(f"p50 of {name} / p50 of k2: " + ", ".join(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--baseline-reps", type=int, default=5)
    parser.add_argument("--latest-reps", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary directory")
    parser.add_argument("--skip", default="", help="comma-separated: pandas,chdb,arcticdb")
    parser.add_argument("--layout", choices=("compacted", "ingested"), default="compacted", help="see load()")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw timings here")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="k2-bench-query-"))
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=workdir / "k2home", catalog=CatalogSettings(name=f"bench{os.getpid()}"))
    settings.query.tail_enabled = False
    print(
        f"# K2 query bench: {args.rows:,} trades, {args.symbols} symbols, {args.days} days; {platform.platform()}, "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}, duckdb {duckdb.__version__}; workdir {workdir}"
    )
    began = time.perf_counter()
    table = generate(args.rows, args.symbols, args.days)
    parquet = workdir / "trades.parquet"
    pq.write_table(table, parquet)
    before, _ = load(settings, table, args.days, args.layout)
    plan = Plan(table, args.symbols, before)
    symbols = [f"SYM{s:02d}" for s in range(args.symbols)]
    del table
    print(f"# generated and loaded in {time.perf_counter() - began:.0f} s\n")

    results: dict[str, Timings] = {}
    results["k2"], rows = k2(settings, plan, args.reps, args.latest_reps)
    if "pandas" not in skip:
        results["pyiceberg+pandas"] = pandas_baseline(settings, plan, args.baseline_reps)
    if "chdb" not in skip:
        results["chdb"] = chdb_baseline(parquet, workdir, plan, args.reps)
    if "arcticdb" not in skip:
        results["arcticdb-lmdb"] = arctic_baseline(parquet, workdir, plan, symbols, args.reps)
    report(results, rows)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"workdir": str(workdir), "json": str(args.json)},
                    "rows": rows,
                    "timings_ms": results,
                },
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
