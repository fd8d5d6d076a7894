"""The read path against real Iceberg tables (SQLite and PostgreSQL catalogs, Parquet files on disk)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog

from k2_core.exceptions import QueryError, UnknownSymbolError
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.logging import fields_of
from k2_core.model.tables import GAPS, QUOTES, TRADES
from k2_core.read.engine import QueryEngine
from k2_core.read.functions import get_gaps, get_quotes, get_trades
from k2_core.read.params import TimeRange
from k2_core.read.routing import market_filter
from k2_core.settings import Settings
from tests.support import factories
from tests.support import query_oracle as oracle
from tests.support.clients import cli_env

SettingsFactory = Callable[..., Settings]  # the `make_settings` fixture (tests/conftest.py)

D1, D2, D3 = (datetime(2024, 1, day, tzinfo=UTC) for day in (1, 2, 3))
INGESTED = datetime(2024, 1, 5, tzinfo=UTC)
# Within each day: two trades share a timestamp (sequence number breaks the tie), and one sits a microsecond
# before midnight, so the half-open day boundary is exercised on both sides.
OFFSETS = (
    timedelta(hours=10),
    timedelta(hours=10),
    timedelta(hours=12, minutes=30),
    timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999),
)


def trade_rows(exchange: str, symbol: str, base_price: str) -> list[dict[str, Any]]:
    rows = []
    seq = 100
    for day in (D1, D2, D3):
        for offset in OFFSETS:
            seq += 1
            price = Decimal(base_price) + Decimal(seq) / Decimal("100000000")
            rows.append(
                factories.trade(symbol, seq, day + offset, price, "12.5", exchange, ingestion_timestamp=INGESTED)
            )
    # Exactly at D2 and D3 midnight: in [D2, D3) and not in it, respectively.
    for moment, seq_at in ((D2, 150), (D3, 160)):
        rows.append(
            rows[0] | {"exchange_timestamp": moment, "exchange_sequence_number": seq_at, "trade_id": f"mid{seq_at}"}
        )
    return rows


def quote_rows(exchange: str, symbol: str) -> list[dict[str, Any]]:
    return [
        factories.quote(
            symbol,
            i,
            day + timedelta(hours=hour),
            "45.10000000",
            "45.12000000",
            "100",
            "0.00000001",
            exchange,
            ingestion_timestamp=INGESTED,
        )
        for i, (day, hour) in enumerate(((D1, 9), (D2, 9), (D2, 15), (D3, 9)), start=1)
    ]


def gap_row(gap_id: str, exchange: str, symbol: str, status: str, detected_minute: int) -> dict[str, Any]:
    return factories.gap(
        gap_id,
        10,
        12,
        status,
        D1 + timedelta(minutes=detected_minute),
        symbol,
        exchange,
        resolved_at=None if status == "open" else D2,
        attempts=1,
    )


BHP_ASX = trade_rows("asx", "BHP", "45.12")
CBA_ASX = trade_rows("asx", "CBA", "110.5")
BHP_NYSE = trade_rows("nyse", "BHP", "58.3")
GAP_ROWS = [
    gap_row("g1", "asx", "BHP", "open", 1),
    gap_row("g2", "asx", "CBA", "filled", 2),
    gap_row("g3", "nyse", "BHP", "open", 3),
    gap_row("g4", "asx", "BHP", "unrecoverable", 4),
]


def seed(catalog: Catalog, namespace: str) -> None:
    """One append per stream, BHP@asx split in two interleaved appends so a day's rows span two files and the
    reader has to merge them into order."""
    tables = ensure_tables(catalog, namespace)
    trades = tables["trades"]
    trades.append(TRADES.to_arrow(BHP_ASX[0::2]))
    trades.append(TRADES.to_arrow(BHP_ASX[1::2]))
    trades.append(TRADES.to_arrow(CBA_ASX))
    trades.append(TRADES.to_arrow(BHP_NYSE))
    tables["quotes"].append(QUOTES.to_arrow(quote_rows("asx", "BHP") + quote_rows("asx", "CBA")))
    tables["sequence_gaps"].append(GAPS.to_arrow(GAP_ROWS))


def expected(rows: list[dict[str, Any]], start: datetime, end: datetime) -> list[dict[str, Any]]:
    picked = [r for r in rows if start <= r["exchange_timestamp"] < end]
    return sorted(picked, key=lambda r: (r["exchange_timestamp"], r["exchange_sequence_number"]))


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
def engine(settings: Settings) -> Iterator[QueryEngine]:
    with QueryEngine.from_settings(settings) as engine:
        seed(engine.catalog, engine.namespace)
        yield engine


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_trades_returns_exactly_the_window_in_order(
    catalog: str, make_settings: SettingsFactory, request: pytest.FixtureRequest
) -> None:
    if catalog == "postgres":
        request.getfixturevalue("postgres_uri")
    with QueryEngine.from_settings(make_settings(catalog=catalog)) as engine:
        seed(engine.catalog, engine.namespace)
        result = engine.trades("BHP", "asx", D2, D3)

    want = expected(BHP_ASX, D2, D3)
    assert want[0]["trade_id"] == "mid150"  # the midnight trade opens the window...
    assert D3 not in [r["exchange_timestamp"] for r in want]  # ...and the next midnight is outside it
    assert result.to_pylist() == want


def test_limit_keeps_the_earliest_rows(engine: QueryEngine) -> None:
    result = engine.trades("BHP", "asx", D1, D3 + timedelta(days=1), limit=3)
    assert result.to_pylist() == expected(BHP_ASX, D1, D3 + timedelta(days=1))[:3]


def test_symbol_and_exchange_both_filter(engine: QueryEngine) -> None:
    window = (D1, D3 + timedelta(days=1))
    assert engine.trades("BHP", "nyse", *window).to_pylist() == expected(BHP_NYSE, *window)
    assert engine.trades("CBA", "asx", *window).to_pylist() == expected(CBA_ASX, *window)
    with pytest.raises(UnknownSymbolError, match=r"^symbol 'CBA' has no trades or quotes on exchange nyse"):
        engine.trades("CBA", "nyse", *window)
    with pytest.raises(UnknownSymbolError, match=r"^symbol 'BHP' .* on exchange binance; it has no data yet"):
        engine.trades("BHP", "binance", *window)


def test_decimals_stay_exact_and_schema_is_the_tables(engine: QueryEngine) -> None:
    result = engine.trades("BHP", "asx", D1, D2)
    assert result.schema == TRADES.arrow_schema
    assert result.schema.field("price").type == pa.decimal128(18, 8)
    assert result.column("price")[0].as_py() == Decimal("45.12000101")
    assert result.column("exchange_timestamp").type.tz == "UTC"


def test_iso_strings_and_naive_times_are_utc(engine: QueryEngine) -> None:
    from_strings = engine.trades("BHP", "asx", "2024-01-02", "2024-01-03T00:00:00")
    shifted = engine.trades("BHP", "asx", "2024-01-02T10:00:00+10:00", "2024-01-03T10:00:00+10:00")
    assert from_strings.to_pylist() == expected(BHP_ASX, D2, D3)
    assert shifted.to_pylist() == from_strings.to_pylist()


def test_one_day_query_plans_fewer_files_than_the_whole_table(engine: QueryEngine) -> None:
    whole = engine.plan(TRADES)
    one_day = engine.plan(TRADES, market_filter("BHP", "asx", TimeRange(D2, D2 + timedelta(hours=12))))
    # 4 appends x 3 days; one day of BHP@asx is exactly its two files for that day: the day partition prunes
    # the other days, the symbol/exchange column stats prune CBA@asx and BHP@nyse.
    assert len(whole.data_files) == 12
    assert len(one_day.data_files) == 2
    assert all("day=2024-01-02" in path for path in one_day.data_files)
    assert one_day.snapshot_id == whole.snapshot_id is not None
    assert one_day.local_paths is not None


def test_table_without_snapshot_returns_an_empty_typed_table(settings: Settings) -> None:
    with QueryEngine.from_settings(settings) as engine:
        engine.check_symbols = False  # every symbol is unknown to an empty table
        trades = engine.trades("BHP", "asx", D1, D2)
        quotes = engine.quotes("BHP", "asx", D1, D2)
        gaps = engine.gaps()
        assert engine.plan(TRADES).snapshot_id is None
    assert (trades.num_rows, quotes.num_rows, gaps.num_rows) == (0, 0, 0)
    assert trades.schema == TRADES.arrow_schema
    assert quotes.schema == QUOTES.arrow_schema
    assert gaps.schema == GAPS.arrow_schema


def test_pyiceberg_read_path_gives_the_same_rows(
    engine: QueryEngine, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="k2_core.lake.scan")
    fallback = QueryEngine(engine.catalog, engine.namespace, direct_reads=False)
    direct = engine.trades("BHP", "asx", D2, D3, limit=3)
    via_pyiceberg = fallback.trades("BHP", "asx", D2, D3, limit=3)
    assert via_pyiceberg.schema == direct.schema
    assert via_pyiceberg.to_pylist() == direct.to_pylist() == expected(BHP_ASX, D2, D3)[:3]
    assert fallback.gaps(status="open").to_pylist() == engine.gaps(status="open").to_pylist()
    paths = [fields_of(r).get("read_path") for r in caplog.records if r.getMessage() == "query"]
    assert paths == ["duckdb", "pyiceberg", "pyiceberg", "duckdb"]


def test_a_long_lived_engine_sees_later_commits(engine: QueryEngine) -> None:
    assert engine.trades("BHP", "asx", D3, D3 + timedelta(days=1)).num_rows == 5
    late = BHP_ASX[-1] | {"exchange_timestamp": D3 + timedelta(hours=23), "exchange_sequence_number": 999}
    engine.load(TRADES).append(TRADES.to_arrow([late]))
    after = engine.trades("BHP", "asx", D3, D3 + timedelta(days=1)).to_pylist()
    assert len(after) == 6
    assert after[-2] == late  # in time order, before the 23:59:59.999999 trade


def test_plans_are_reused_per_snapshot_and_replanned_after_a_commit(engine: QueryEngine) -> None:
    window = market_filter("BHP", "asx", TimeRange(D3, D3 + timedelta(days=1)))
    first = engine.plan(TRADES, window)
    assert engine.plan(TRADES, window) is first  # same snapshot, same filter: planned once
    other = engine.plan(TRADES, market_filter("CBA", "asx", TimeRange(D3, D3 + timedelta(days=1))))
    assert other is not first
    assert set(other.data_files) != set(first.data_files)
    late = BHP_ASX[-1] | {"exchange_timestamp": D3 + timedelta(hours=23), "exchange_sequence_number": 999}
    engine.load(TRADES).append(TRADES.to_arrow([late]))
    after = engine.plan(TRADES, window)
    assert after.snapshot_id != first.snapshot_id
    assert len(after.data_files) == len(first.data_files) + 1  # the new file is planned, not hidden by the cache


def test_a_file_out_of_exchange_order_is_still_read_in_order(engine: QueryEngine) -> None:
    """K2's own files hold each instrument's rows in exchange order and a one-file read skips the sort; a file some
    other tool wrote in another order must still come back sorted, whole or page by page."""
    rows = trade_rows("asx", "XYZ", "7.5")
    shuffled = [rows[i] for i in (3, 0, 2, 1)]  # D1's four trades, two of them sharing a timestamp
    engine.load(TRADES).append(pa.Table.from_pylist(shuffled, schema=TRADES.arrow_schema))
    want = expected(rows, D1, D2)
    assert len(engine.plan(TRADES, market_filter("XYZ", "asx", TimeRange(D1, D2))).data_files) == 1
    assert engine.trades("XYZ", "asx", D1, D2).to_pylist() == want
    query = engine.market_query("XYZ", "asx", D1, D2, 3)
    first = engine.fetch("trades", query)
    second = engine.fetch("trades", query, cursor=first.next_cursor)
    assert second.next_cursor is None
    assert first.table.to_pylist() + second.table.to_pylist() == want


def test_one_engine_serves_concurrent_queries(engine: QueryEngine) -> None:
    """FastAPI runs sync routes on a threadpool against the one engine on app.state."""
    from concurrent.futures import ThreadPoolExecutor

    windows = [(D1, D2), (D2, D3), (D3, D3 + timedelta(days=1))] * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda w: engine.trades("BHP", "asx", *w).to_pylist(), windows))
    assert results == [expected(BHP_ASX, *w) for w in windows]


def test_quotes_window_and_exact_sizes(engine: QueryEngine) -> None:
    result = engine.quotes("BHP", "asx", D2, D3)
    assert result.to_pylist() == expected(quote_rows("asx", "BHP"), D2, D3)
    assert [r["ask_size"] for r in result.to_pylist()] == [Decimal("0.00000001")] * 2


def test_gaps_newest_first_and_filters(engine: QueryEngine) -> None:
    assert engine.gaps().column("gap_id").to_pylist() == ["g4", "g3", "g2", "g1"]
    assert engine.gaps(status="open").column("gap_id").to_pylist() == ["g3", "g1"]
    assert engine.gaps(exchange="asx", symbol="BHP").column("gap_id").to_pylist() == ["g4", "g1"]
    assert engine.gaps(exchange="asx", symbol="BHP", status="open").column("gap_id").to_pylist() == ["g1"]
    assert engine.gaps(symbol="RIO").num_rows == 0


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda e: e.trades("bhp", "asx"), "symbol"),
        (lambda e: e.trades("BHP", "lse"), "exchange"),
        (lambda e: e.quotes("BHP", "asx", D3, D2), "start"),
        (lambda e: e.quotes("BHP", "asx", "soon", None), "start"),
        (lambda e: e.trades("BHP", "asx", limit=0), "limit"),
        (lambda e: e.trades("BHP", "asx", limit=100_001), "limit"),
        (lambda e: e.gaps(status="closed"), "status"),
        (lambda e: e.gaps(exchange="ASX"), "exchange"),
    ],
)
def test_bad_input_raises_query_error_naming_the_parameter(engine: QueryEngine, call: Any, parameter: str) -> None:
    with pytest.raises(QueryError, match=f"^{parameter} "):
        call(engine)


def test_module_functions_accept_engine_catalog_or_settings(engine: QueryEngine, settings: Settings) -> None:
    want = expected(BHP_ASX, D2, D3)
    assert get_trades(engine, "BHP", "asx", D2, D3).to_pylist() == want
    assert get_trades(settings, "BHP", "asx", "2024-01-02", "2024-01-03").to_pylist() == want
    catalog = open_catalog(settings)
    try:
        assert get_quotes(catalog, "CBA", "asx", D1, D2).to_pylist() == expected(quote_rows("asx", "CBA"), D1, D2)
        assert get_gaps(catalog, status="filled").column("gap_id").to_pylist() == ["g2"]
    finally:
        catalog.close()
    frame = get_trades(engine, "BHP", "asx", D2, D3).to_pandas()
    assert list(frame["trade_id"]) == [r["trade_id"] for r in want]
    assert frame["price"].iloc[0] == want[0]["price"]


# --- `k2 query` -----------------------------------------------------------------------------------------------


def test_cli_trades_prints_a_table(engine: QueryEngine, settings: Settings) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app

    args = [
        "query",
        "trades",
        "BHP",
        "--exchange",
        "asx",
        "--start",
        "2024-01-02",
        "--end",
        "2024-01-03",
        "--limit",
        "3",
    ]
    result = CliRunner().invoke(app, args, env=cli_env(settings))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "trades BHP@asx [2024-01-02T00:00:00Z, 2024-01-03T00:00:00Z)" in out
    assert "3 rows; sources: iceberg; snapshot " in out
    assert "(more rows:" in out
    want = expected(BHP_ASX, D2, D3)[:3]
    for row in want:
        assert row["trade_id"] in out
        assert format(row["price"], "f") in out
    assert out.index("mid150") < out.index(want[1]["trade_id"]) < out.index(want[2]["trade_id"])
    assert "CBA" not in out


def test_cli_quotes_and_gaps(engine: QueryEngine, settings: Settings) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app

    runner = CliRunner()
    quotes = runner.invoke(
        app,
        ["query", "quotes", "CBA", "-e", "asx", "--start", "2024-01-01", "--end", "2024-01-02"],
        env=cli_env(settings),
    )
    assert quotes.exit_code == 0, quotes.output
    assert "0.00000001" in quotes.stdout
    assert "1 rows" in quotes.stdout
    gaps = runner.invoke(app, ["query", "gaps", "--exchange", "asx", "--status", "open"], env=cli_env(settings))
    assert gaps.exit_code == 0, gaps.output
    assert "g1" in gaps.stdout
    assert "g2" not in gaps.stdout
    assert "g3" not in gaps.stdout


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["trades", "bhp", "--exchange", "asx"], "symbol must be an uppercase ticker"),
        (["trades", "BHP", "--exchange", "lse"], "exchange must be one of asx, binance, nyse"),
        (["quotes", "BHP", "-e", "asx", "--start", "2024-01-03", "--end", "2024-01-02"], "start must be before end"),
        (["trades", "BHP", "-e", "asx", "--end", "tomorrow"], "end is not an ISO-8601 time"),
        (["trades", "BHP", "-e", "asx", "--limit", "0"], "limit must be an integer between 1 and 100000"),
        (["gaps", "--status", "closed"], "status must be one of open, filled, unrecoverable"),
        (["ohlcv", "BHP", "-e", "asx", "-i", "3x"], "interval must be <N>s, <N>m"),
        (["ohlcv", "BHP", "-e", "asx", "--bar-type", "tick"], "size is required for tick bars"),
        (["summary", "BHP", "-e", "asx", "--date", "2024-02-31"], "date must be a UTC date"),
        (["latest", "XYZ", "-e", "asx"], "symbol 'XYZ' has no trades or quotes on exchange asx"),
        (["replay", "BHP", "-e", "asx", "--date", "2024-01-02", "--kind", "orders"], "kind must be trades or quotes"),
        (["snapshots", "--table", "orders"], "table must be one of trades"),
        (["trades", "BHP", "-e", "asx", "--as-of", "soon"], "as_of is not an ISO-8601 time"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message(settings: Settings, args: list[str], text: str) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app

    result = CliRunner().invoke(app, ["query", *args], env=cli_env(settings))
    assert result.exit_code == 2
    assert f"error: {text}" in result.stderr
    assert result.stdout == ""


def test_cli_exports_every_page_with_a_progress_bar(engine: QueryEngine, settings: Settings, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app

    out = tmp_path / "bhp.parquet"
    window = ["--start", "2024-01-01", "--end", "2024-01-04"]
    env = cli_env(settings) | {"K2_API_MAX_LIMIT": "4"}  # pages of 4 rows: the export must follow the cursor
    result = CliRunner().invoke(
        app, ["query", "trades", "BHP", "-e", "asx", *window, "-f", "parquet", "-o", str(out)], env=env
    )
    assert result.exit_code == 0, result.output
    want = expected(BHP_ASX, D1, D3 + timedelta(days=1))
    assert pq.read_table(out).to_pylist() == want
    assert f"wrote {len(want)} rows to {out} (parquet)" in result.stderr
    assert f"{len(want)}/{len(want)}" in result.stderr  # the progress bar reached its total

    csv_out = tmp_path / "bhp.csv"
    limited = CliRunner().invoke(
        app, ["query", "trades", "BHP", "-e", "asx", *window, "--limit", "6", "-f", "csv", "-o", str(csv_out)], env=env
    )
    assert limited.exit_code == 0, limited.output
    assert [r["trade_id"] for r in pa_csv.read_csv(csv_out).to_pylist()] == [r["trade_id"] for r in want[:6]]

    arrow = CliRunner().invoke(app, ["query", "quotes", "CBA", "-e", "asx", *window, "-f", "arrow"], env=env)
    assert arrow.exit_code == 0
    assert pa.ipc.open_stream(arrow.stdout_bytes).read_all().to_pylist() == quote_rows("asx", "CBA")[:1] + expected(
        quote_rows("asx", "CBA"), D2, D3 + timedelta(days=1)
    )


def test_cli_bars_summary_latest_snapshots(engine: QueryEngine, settings: Settings, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app

    runner = CliRunner()
    env = cli_env(settings)
    bars = runner.invoke(
        app, ["query", "ohlcv", "BHP", "-e", "asx", "-i", "1d", "--start", "2024-01-01", "--end", "2024-01-04"], env=env
    )
    assert bars.exit_code == 0, bars.output
    assert "1d bars BHP@asx [2024-01-01T00:00:00Z, 2024-01-04T00:00:00Z)" in bars.stdout
    assert "3 bars; sources: iceberg" in bars.stdout
    exported = tmp_path / "bars.csv"
    assert (
        runner.invoke(
            app,
            [
                "query",
                "ohlcv",
                "BHP",
                "-e",
                "asx",
                "-i",
                "1h",
                "--start",
                "2024-01-01",
                "--end",
                "2024-01-04",
                "-o",
                str(exported),
            ],
            env=env,
        ).exit_code
        == 0
    )
    assert pa_csv.read_csv(exported).num_rows == len(oracle.bars(BHP_ASX, "1h"))

    summary = runner.invoke(app, ["query", "summary", "BHP", "-e", "asx", "--date", "2024-01-02"], env=env)
    assert summary.exit_code == 0, summary.output
    day = oracle.day_summary(BHP_ASX, D2.date())
    for key in ("open", "high", "low", "close", "vwap"):
        assert format(day[key], "f") in summary.stdout

    latest = runner.invoke(app, ["query", "latest", "BHP", "-e", "asx"], env=env)
    assert latest.exit_code == 0, latest.output
    assert expected(BHP_ASX, D1, D3 + timedelta(days=1))[-1]["trade_id"] in latest.stdout

    snaps = runner.invoke(app, ["query", "snapshots", "--table", "trades"], env=env)
    assert snaps.exit_code == 0, snaps.output
    assert str(engine.load(TRADES).metadata.current_snapshot_id) in snaps.stdout
    assert "append" in snaps.stdout


def test_cli_replay_streams_a_day(engine: QueryEngine, settings: Settings, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app

    runner = CliRunner()
    day = ["--date", "2024-01-02"]
    stdout = runner.invoke(app, ["query", "replay", "BHP", "-e", "asx", *day], env=cli_env(settings))
    assert stdout.exit_code == 0, stdout.output
    lines = [json.loads(line) for line in stdout.stdout.splitlines()]
    assert [r["trade_id"] for r in lines] == [r["trade_id"] for r in expected(BHP_ASX, D2, D3)]
    out = tmp_path / "day.parquet"
    to_file = runner.invoke(
        app, ["query", "replay", "BHP", "-e", "asx", *day, "-f", "parquet", "-o", str(out)], env=cli_env(settings)
    )
    assert to_file.exit_code == 0, to_file.output
    assert pq.read_table(out).to_pylist() == expected(BHP_ASX, D2, D3)
    assert "5/5" in to_file.stderr
