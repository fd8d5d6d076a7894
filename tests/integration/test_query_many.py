"""Many instruments at once: `latest_on`, the last trade and the last quote of every instrument of an exchange, checked
against an independent pandas computation (`query_oracle.latest_on`) over the same seeded rows.

The seed is built to catch the shortcuts a "last row per symbol" read could take: rows delivered out of order (a
later append holds an older row, so the newest file is not the newest row), ties on time broken by sequence number,
instruments whose last trade is days before the others' (the newest-day-first search must go back for them only), an
instrument with quotes and no trades, and another exchange whose rows must not leak in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from k2_api.main import create_app
from k2_core.access.auth import KeyStore
from k2_core.exceptions import QueryError, UnknownSymbolError
from k2_core.lake import scan
from k2_core.lake.sqldb import catalog_engine
from k2_core.model.tables import LATEST_ON_SCHEMA
from k2_core.read import routing
from k2_core.read.engine import QueryEngine
from k2_core.read.functions import get_latest_on
from k2_core.read.realtime import RealtimeBuffer
from k2_core.settings import AuthSettings, CatalogSettings, Settings
from tests.support import query_oracle as oracle
from tests.support.clients import local_client
from tests.support.factories import quote, trade
from tests.support.fixtures import POSTGRES_URI
from tests.support.lake import open_lake, seed

DAY = datetime(2024, 3, 4, tzinfo=UTC)
DAYS = 5
BUSY = ("AAA", "BHP", "CBA", "CSL")  # trade and quote every day
OLD = "OLD"  # trades on the first day only
QUIET = "QUIET"  # quotes only, on the second day
NYSE_ONLY = "IBM"  # one trade on nyse, on the first day


@dataclass
class Seeded:
    settings: Settings
    trades: list[dict[str, Any]]
    quotes: list[dict[str, Any]]
    snapshots: list[int]  # trades snapshots, oldest first


def _rows(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    trades: list[dict[str, Any]] = []
    quotes: list[dict[str, Any]] = []
    seq: dict[tuple[str, str, str], int] = {}

    def next_seq(kind: str, exchange: str, symbol: str) -> int:
        seq[(kind, exchange, symbol)] = seq.get((kind, exchange, symbol), 0) + 1
        return seq[(kind, exchange, symbol)]

    for day in range(DAYS):
        for symbol in BUSY:
            t = DAY + timedelta(days=day, hours=1)
            for _ in range(rng.randrange(5, 30)):
                t += timedelta(seconds=rng.choice((0, 0, 1, 7, 60)))  # ties on time, often
                trades.append(
                    trade(
                        symbol,
                        next_seq("t", "asx", symbol),
                        t,
                        Decimal(rng.randrange(100, 999)) / 10,
                        rng.randrange(1, 50),
                    )
                )
                bid = Decimal(rng.randrange(100, 999)) / 10
                quotes.append(
                    quote(symbol, next_seq("q", "asx", symbol), t, bid, bid + Decimal("0.1"), rng.randrange(1, 9))
                )
    for i in range(3):
        trades.append(trade(OLD, next_seq("t", "asx", OLD), DAY + timedelta(hours=2, seconds=i), "5.5", i + 1))
    quotes.append(quote(QUIET, 1, DAY + timedelta(days=1, hours=3), "1.1", "1.2"))
    # Another exchange, later than everything on asx: must never show up in an asx answer.
    trades.append(trade("BHP", 1, DAY + timedelta(days=DAYS), "99", 1, exchange="nyse"))
    quotes.append(quote("BHP", 1, DAY + timedelta(days=DAYS), "98", "99", exchange="nyse"))
    # Only on nyse, and only on the first day: a read of several exchanges goes back for it.
    trades.append(trade(NYSE_ONLY, 1, DAY + timedelta(hours=5), "12.5", 4, exchange="nyse"))
    return trades, quotes


def _seed(settings: Settings) -> Seeded:
    rng = random.Random(17)
    trades, quotes = _rows(rng)
    lake = open_lake(settings)
    snapshots = []
    for rows, kind in ((trades, "trades"), (quotes, "quotes")):
        delivered = rows[:]
        rng.shuffle(delivered)  # delivery order: a later append may hold an older row
        for start in range(0, len(delivered), 60):
            snapshot = lake.append(kind, delivered[start : start + 60])
            if kind == "trades":
                snapshots.append(snapshot)
    lake.catalog.close()
    return Seeded(settings, trades, quotes, snapshots)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    catalog = CatalogSettings(name=f"many{request.param}{random.randrange(10**9)}")
    if request.param == "postgres":
        request.getfixturevalue("postgres_uri")
        catalog.uri = POSTGRES_URI
    settings = Settings(home=tmp_path_factory.mktemp("many") / "k2home", catalog=catalog)
    settings.query.tail_enabled = False
    return _seed(settings)


@pytest.fixture
def engine(seeded: Seeded) -> Iterator[QueryEngine]:
    with QueryEngine.from_settings(seeded.settings, cache=False) as engine:
        yield engine


def test_every_instrument_of_an_exchange(seeded: Seeded, engine: QueryEngine) -> None:
    result = engine.latest_on("asx")
    assert result.table.schema == LATEST_ON_SCHEMA
    assert result.table.to_pylist() == oracle.latest_on(seeded.trades, seeded.quotes, "asx", None)
    assert [r["symbol"] for r in result.table.to_pylist()] == sorted((*BUSY, OLD, QUIET))
    assert result.sources == ("iceberg",)
    assert engine.latest_on("nyse").table.to_pylist() == oracle.latest_on(seeded.trades, seeded.quotes, "nyse", None)


@pytest.mark.parametrize("symbols", [["OLD", "QUIET", "BHP"], "CSL,OLD", ("AAA",), ["BHP", "BHP"]])
def test_a_list_of_symbols(seeded: Seeded, engine: QueryEngine, symbols: Any) -> None:
    names = symbols.split(",") if isinstance(symbols, str) else symbols
    expected = oracle.latest_on(seeded.trades, seeded.quotes, "asx", names)
    assert engine.latest_on("asx", symbols).table.to_pylist() == expected
    assert get_latest_on(engine, "asx", symbols).to_pylist() == expected


def test_agrees_with_single_symbol_latest(engine: QueryEngine) -> None:
    for row in engine.latest_on("asx").table.to_pylist():
        trades = engine.latest(row["symbol"], "asx").table.to_pylist()
        quotes = engine.latest(row["symbol"], "asx", kind="quotes").table.to_pylist()
        assert row["trade_sequence_number"] == (trades[0]["exchange_sequence_number"] if trades else None)
        assert row["quote_sequence_number"] == (quotes[0]["exchange_sequence_number"] if quotes else None)


def test_reads_older_days_only_for_symbols_not_found(
    seeded: Seeded, engine: QueryEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Busy symbols are all found in the newest day: one day's files read per table. OLD sends the trades search back
    to the first day, and only then."""
    reads: list[tuple[str, str, int]] = []
    register = scan.register_scan

    def spy(con: Any, name: str, table: Any, table_def: Any, plan: scan.ScanPlan, *a: Any, **k: Any) -> Any:
        if name == "latest_src":  # not the symbol index's reads
            reads.append((table_def.name, name, len(plan.data_files)))
        return register(con, name, table, table_def, plan, *a, **k)

    monkeypatch.setattr(routing.scan, "register_scan", spy)
    engine.latest_on("asx", list(BUSY))
    assert [(t, n) for t, n, _ in reads] == [("trades", "latest_src"), ("quotes", "latest_src")]
    reads.clear()
    engine.latest_on("asx", ["BHP", OLD])
    trades_reads = [r for r in reads if r[0] == "trades"]
    assert len(trades_reads) == DAYS  # newest day, then back one day at a time until OLD's first day


def test_several_exchanges_in_one_read(seeded: Seeded, engine: QueryEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole lake's last trade and quote of every instrument, by exchange and symbol, as each exchange alone
    answers it; each day's files are read once for every exchange, not once per exchange."""
    reads: list[str] = []
    register = scan.register_scan

    def spy(con: Any, name: str, table: Any, table_def: Any, plan: scan.ScanPlan, *a: Any, **k: Any) -> Any:
        if name == "latest_src":
            reads.append(table_def.name)
        return register(con, name, table, table_def, plan, *a, **k)

    monkeypatch.setattr(routing.scan, "register_scan", spy)
    expected = [*oracle.latest_on(seeded.trades, seeded.quotes, "asx", None)]
    expected += oracle.latest_on(seeded.trades, seeded.quotes, "nyse", None)
    result = engine.latest_on(["nyse", "asx", "nyse"])
    assert result.table.schema == LATEST_ON_SCHEMA
    assert result.table.to_pylist() == expected
    assert {(r["exchange"], r["symbol"]) for r in expected} >= {("nyse", NYSE_ONLY), ("nyse", "BHP"), ("asx", OLD)}
    # Each day read once for both exchanges: trades from the nyse rows' own day (after asx's last) back to the first
    # (OLD and IBM), quotes back to QUIET's, the second.
    assert reads.count("trades") == DAYS + 1
    assert reads.count("quotes") == DAYS
    for kinds in ("trades", "quotes"):
        alone = [*engine.latest_on("asx", kinds=kinds).table.to_pylist()]
        alone += engine.latest_on("nyse", kinds=kinds).table.to_pylist()
        assert engine.latest_on(["asx", "nyse"], kinds=kinds).table.to_pylist() == alone
    # A symbol list applies on every exchange named; a symbol listed on only one of them is no error.
    some = engine.latest_on(["asx", "nyse"], [NYSE_ONLY, OLD, "BHP"]).table.to_pylist()
    assert some == [r for r in expected if r["symbol"] in (NYSE_ONLY, OLD, "BHP")]
    with pytest.raises(UnknownSymbolError, match="on any of exchanges asx, nyse"):
        engine.latest_on(["asx", "nyse"], ["NOPE"])
    with pytest.raises(QueryError, match=r"^exchange must be one of"):
        engine.latest_on(["asx", "mars"])
    with pytest.raises(QueryError, match=r"^exchange must name at least one"):
        engine.latest_on([])


def test_time_travel_reads_both_tables_as_of_the_same_moment(seeded: Seeded, engine: QueryEngine) -> None:
    first = seeded.snapshots[0]
    trades_then = seeded_rows(seeded.settings, "trades", first)
    lake = open_lake(seeded.settings)
    committed_at = datetime.fromtimestamp(lake.table("trades").snapshot_by_id(first).timestamp_ms / 1000, UTC)  # type: ignore[union-attr]
    quotes_table = lake.table("quotes")
    quote_ids = [s.snapshot_id for s in quotes_table.snapshots() if s.timestamp_ms <= committed_at.timestamp() * 1000]
    quotes_then = quotes_table.scan(snapshot_id=quote_ids[-1]).to_arrow().to_pylist() if quote_ids else []
    lake.catalog.close()
    result = engine.latest_on("asx", as_of_snapshot=first)
    assert result.snapshot_id == first
    assert result.table.to_pylist() == oracle.latest_on(trades_then, quotes_then, "asx", None)


def seeded_rows(settings: Settings, name: str, snapshot_id: int) -> list[dict[str, Any]]:
    lake = open_lake(settings)
    try:
        return lake.rows(name, snapshot_id)
    finally:
        lake.catalog.close()


def test_bad_input(engine: QueryEngine) -> None:
    with pytest.raises(UnknownSymbolError, match="symbol 'NOPE'"):
        engine.latest_on("asx", ["BHP", "NOPE"])
    with pytest.raises(QueryError, match=r"^symbol must be an uppercase ticker"):
        engine.latest_on("asx", "BHP,bhp")
    with pytest.raises(QueryError, match=r"^symbol must name at least one"):
        engine.latest_on("asx", "")
    with pytest.raises(QueryError, match=r"^exchange must be one of"):
        engine.latest_on("mars")


def test_the_realtime_tail_wins_when_later(seeded: Seeded) -> None:
    buffer = RealtimeBuffer(1000, retention=timedelta(days=3650))
    newest = max(r["exchange_timestamp"] for r in seeded.trades if r["exchange"] == "asx")
    later = [
        trade("BHP", 10_000, newest + timedelta(seconds=1), "77", 3),
        trade("NEW", 1, newest + timedelta(seconds=2), "1", 1),
        trade("CBA", 0, DAY - timedelta(days=1), "1", 1),  # older than what Iceberg holds: must not win
    ]
    new_quote = quote("CBA", 10_000, newest + timedelta(seconds=3), "5", "6")
    for row in later:
        buffer.add("trades", row, datetime.now(UTC))
    buffer.add("quotes", new_quote, datetime.now(UTC))
    with QueryEngine.from_settings(seeded.settings, realtime=buffer, cache=False) as engine:
        result = engine.latest_on("asx")
    assert result.sources == ("iceberg", "realtime")
    expected = oracle.latest_on([*seeded.trades, *later], [*seeded.quotes, new_quote], "asx", None)
    got = result.table.to_pylist()
    assert [(r["symbol"], r["trade_sequence_number"], r["quote_sequence_number"]) for r in got] == [
        (r["symbol"], r["trade_sequence_number"], r["quote_sequence_number"]) for r in expected
    ]
    assert got == expected
    # Several exchanges: the tail's rows win on their own exchange only.
    nyse_quote = quote("BHP", 2, newest + timedelta(days=3), "97", "98", exchange="nyse")
    buffer.add("quotes", nyse_quote, datetime.now(UTC))
    with QueryEngine.from_settings(seeded.settings, realtime=buffer, cache=False) as engine:
        both = engine.latest_on(["asx", "nyse"]).table.to_pylist()
    quotes = [*seeded.quotes, new_quote, nyse_quote]
    assert both == expected + oracle.latest_on([*seeded.trades, *later], quotes, "nyse", None)
    assert next(r for r in both if r["exchange"] == "nyse" and r["symbol"] == "BHP")["quote_sequence_number"] == 2


def test_api_latest_all(seeded: Seeded, tmp_path: Path) -> None:
    with local_client(create_app(seeded.settings)) as client:
        response = client.get(
            "/v1/latest/all", params=[("exchange", "asx"), ("symbol", "OLD"), ("symbol", "QUIET,BHP")]
        )
        assert response.status_code == 200, response.text
        body = response.json()
        expected = oracle.latest_on(seeded.trades, seeded.quotes, "asx", ["OLD", "QUIET", "BHP"])
        assert body["count"] == 3
        assert [r["symbol"] for r in body["data"]] == ["BHP", "OLD", "QUIET"]
        for got, want in zip(body["data"], expected, strict=True):
            assert got["trade_sequence_number"] == want["trade_sequence_number"]
            for column in ("price", "volume", "bid_price", "ask_size"):  # exact decimal strings, 8 places
                assert got[column] == (f"{want[column]:.8f}" if want[column] is not None else None), column
        whole = client.get("/v1/latest/all", params={"exchange": "asx"}).json()
        assert whole["count"] == len(BUSY) + 2
        csv = client.get("/v1/latest/all", params={"exchange": "asx", "format": "csv"})
        assert csv.status_code == 200
        assert csv.text.startswith('"symbol","exchange","trade_timestamp"')
        assert client.get("/v1/latest/all", params={"exchange": "asx", "symbol": "bhp"}).status_code == 400
        assert client.get("/v1/latest/all", params={"exchange": "asx", "symbol": "NOPE"}).status_code == 404
        several = client.get("/v1/latest/all", params=[("exchange", "nyse"), ("exchange", "asx")])
        assert several.status_code == 200, several.text
        assert several.json()["exchange"] == "asx,nyse"
        every = [oracle.latest_on(seeded.trades, seeded.quotes, e, None) for e in ("asx", "nyse")]
        assert [(r["exchange"], r["symbol"]) for r in several.json()["data"]] == [
            (r["exchange"], r["symbol"]) for rows in every for r in rows
        ]
        assert client.get("/v1/latest/all", params={"exchange": "asx,nyse"}).status_code == 400
        # The single-symbol answer keeps its shape.
        single = client.get("/v1/latest", params={"exchange": "asx", "symbol": "BHP"}).json()
        assert single["data"]["exchange_sequence_number"] == expected[0]["trade_sequence_number"]


def test_latest_all_needs_the_trades_and_the_quotes_scope(make_settings: Callable[..., Settings]) -> None:
    """It carries both streams' columns, so both scopes, like /v1/trades?with_quote=true; `kind` naming one half needs
    that half's scope alone."""
    settings = make_settings()
    settings.query.tail_enabled = False
    settings.auth = AuthSettings(mode="on")
    seed(settings)
    engine = catalog_engine(settings)
    store = KeyStore(engine)
    expires = datetime.now(UTC) + timedelta(days=1)
    try:
        with local_client(create_app(settings)) as client:

            def get(*scopes: str, exchange: str = "asx", kind: list[str] | None = None) -> Any:
                _, token = store.create(f"t{random.randrange(10**9)}", scopes, expires)
                headers = {"Authorization": f"Bearer {token}"}
                exchanges = [("exchange", e) for e in exchange.split("+")]  # several: asx+nyse
                params = [*exchanges, *(("kind", k) for k in kind or ())]
                return client.get("/v1/latest/all", params=params, headers=headers)

            assert get("read:trades:asx").status_code == 403
            assert "missing scope read:quotes:asx" in get("read:trades:asx").json()["detail"]
            assert get("read:quotes:asx").status_code == 403
            assert get("read:trades:asx", "read:quotes:nyse").status_code == 403
            assert get("read:trades:asx", "read:quotes:asx").status_code == 200
            assert get("read:trades:*", "read:quotes:*", exchange="nyse").status_code == 200
            # Several exchanges: every scope of each.
            assert get("read:trades:asx", "read:quotes:asx", exchange="asx+nyse").status_code == 403
            assert get("read:trades:*", "read:quotes:asx", exchange="asx+nyse").status_code == 403
            assert get("read:quotes:asx", "read:quotes:nyse", exchange="asx+nyse", kind=["quotes"]).status_code == 200
            assert get("read:trades:*", "read:quotes:*", exchange="asx+nyse").status_code == 200
            # One half asked for: its scope alone, and it alone is answered.
            quotes_only = get("read:quotes:asx", kind=["quotes"])
            assert quotes_only.status_code == 200, quotes_only.text
            assert all(row["price"] is None for row in quotes_only.json()["data"])
            assert get("read:trades:asx", kind=["trades"]).status_code == 200
            assert get("read:trades:asx", kind=["quotes"]).status_code == 403
            assert get("read:quotes:asx", kind=["trades,quotes"]).status_code == 403
            assert get("read:quotes:asx", kind=["quotes", "trades"]).status_code == 403
            # A value the route refuses is not a way around a scope: it needs both, then gets its 400.
            assert get("read:quotes:asx", kind=["bids"]).status_code == 403
            assert get("read:trades:asx", "read:quotes:asx", kind=["bids"]).status_code == 400
    finally:
        engine.dispose()


def test_cli_latest_on_an_exchange(seeded: Seeded) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app
    from tests.support.clients import cli_env

    env = cli_env(seeded.settings)
    runner = CliRunner()
    every = runner.invoke(app, ["query", "latest", "-e", "asx"], env=env)
    assert every.exit_code == 0, every.output
    for row in oracle.latest_on(seeded.trades, seeded.quotes, "asx", None):
        assert row["symbol"] in every.stdout
    some = runner.invoke(app, ["query", "latest", "-e", "asx", "--symbols", "OLD,QUIET"], env=env)
    assert some.exit_code == 0, some.output
    assert "OLD" in some.stdout
    assert "BHP" not in some.stdout
    assert "QUIET" in some.stdout
    bad = runner.invoke(app, ["query", "latest", "BHP", "-e", "asx", "--symbols", "CBA"], env=env)
    assert bad.exit_code == 2
    several = runner.invoke(app, ["query", "latest", "-e", "asx,nyse"], env=env)
    assert several.exit_code == 0, several.output
    assert "nyse" in several.stdout
    assert NYSE_ONLY in several.stdout
    single = runner.invoke(app, ["query", "latest", "BHP", "-e", "asx"], env=env)  # unchanged
    assert single.exit_code == 0, single.output


def many_order(rows: list[dict[str, Any]], symbols: list[str], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The oracle's several-symbol listing: the window's rows of those symbols by (time, symbol, sequence)."""
    picked = [r for r in oracle.window(rows, start, end) if r["exchange"] == "asx" and r["symbol"] in symbols]
    return sorted(picked, key=lambda r: (r["exchange_timestamp"], r["symbol"], r["exchange_sequence_number"]))


@pytest.mark.parametrize("kind", ["trades", "quotes"])
@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_several_symbols_page_through_one_listing(seeded: Seeded, engine: QueryEngine, kind: str, limit: int) -> None:
    symbols = ["OLD", "BHP", "CBA", "QUIET"]
    # A page per row is a query per row: one day of them (the one QUIET quoted on) crosses every kind of boundary.
    start, end = (DAY + timedelta(days=1), DAY + timedelta(days=2)) if limit == 1 else (DAY, DAY + timedelta(days=3))
    rows, cursor, pages = [], None, 0
    while True:
        page = engine.fetch_many(kind, symbols, "asx", start, end, limit, cursor=cursor)  # type: ignore[arg-type]
        assert page.table.num_rows <= limit
        rows += page.table.to_pylist()
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = many_order(seeded.trades if kind == "trades" else seeded.quotes, symbols, start, end)
    assert len(expected) > (10 if limit == 1 else 50)
    assert rows == expected
    assert pages == max(1, -(-len(expected) // limit))


def test_several_symbols_with_quote_match_merge_asof(seeded: Seeded, engine: QueryEngine) -> None:
    symbols = ["BHP", "CSL"]
    start, end = DAY + timedelta(days=1), DAY + timedelta(days=2)
    got = engine.fetch_many("trades", symbols, "asx", start, end, 1000, with_quote=True).table.to_pylist()
    expected = []
    for symbol in symbols:
        mine = [r for r in seeded.trades if r["symbol"] == symbol and r["exchange"] == "asx"]
        quotes = [r for r in seeded.quotes if r["symbol"] == symbol and r["exchange"] == "asx"]
        expected += oracle.asof_quotes(oracle.window(mine, start, end), quotes)
    expected.sort(key=lambda r: (r["exchange_timestamp"], r["symbol"], r["exchange_sequence_number"]))
    assert got == expected


def test_a_several_symbol_cursor_belongs_to_its_query(engine: QueryEngine) -> None:
    start, end = DAY, DAY + timedelta(days=3)
    page = engine.fetch_many("trades", "BHP,CBA", "asx", start, end, 5)
    assert page.next_cursor is not None
    with pytest.raises(QueryError, match=r"^cursor"):
        engine.fetch_many("trades", "BHP,CSL", "asx", start, end, 5, cursor=page.next_cursor)
    with pytest.raises(QueryError, match=r"^cursor"):
        engine.fetch("trades", engine.market_query("BHP", "asx", start, end, 5), cursor=page.next_cursor)
    with pytest.raises(UnknownSymbolError):
        engine.fetch_many("trades", "BHP,NOPE", "asx", start, end, 5)


def test_api_several_symbols(seeded: Seeded) -> None:
    start, end = DAY, DAY + timedelta(days=2)
    params: list[tuple[str, str]] = [("exchange", "asx"), ("start", start.isoformat()), ("end", end.isoformat())]
    with local_client(create_app(seeded.settings)) as client:
        for kind, rows in (("trades", seeded.trades), ("quotes", seeded.quotes)):
            got: list[dict[str, Any]] = []
            cursor = None
            while True:
                extra = [("cursor", cursor)] if cursor else []
                response = client.get(
                    f"/v1/{kind}", params=[*params, ("symbol", "CBA,AAA"), ("symbol", "OLD"), ("limit", "9"), *extra]
                )
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["symbol"] == "AAA,CBA,OLD"
                got += body["data"]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            expected = many_order(rows, ["AAA", "CBA", "OLD"], start, end)
            assert [(r["symbol"], r["exchange_sequence_number"]) for r in got] == [
                (r["symbol"], r["exchange_sequence_number"]) for r in expected
            ]
        single = client.get("/v1/trades", params=[*params, ("symbol", "BHP")]).json()
        assert single["symbol"] == "BHP"
        assert [r["exchange_sequence_number"] for r in single["data"]] == [
            r["exchange_sequence_number"] for r in many_order(seeded.trades, ["BHP"], start, end)
        ]
        assert client.get("/v1/trades", params=[*params, ("symbol", "BHP,bhp")]).status_code == 400


def test_cli_several_symbols(seeded: Seeded, tmp_path: Path) -> None:
    import pyarrow.csv as pa_csv
    from typer.testing import CliRunner

    from k2_cli.main import app
    from tests.support.clients import cli_env

    env = cli_env(seeded.settings)
    window = ["--start", DAY.isoformat(), "--end", (DAY + timedelta(days=3)).isoformat()]
    shown = CliRunner().invoke(app, ["query", "trades", "BHP,OLD", "-e", "asx", *window, "--limit", "5"], env=env)
    assert shown.exit_code == 0, shown.output
    exported = tmp_path / "many.csv"
    args = ["query", "quotes", "QUIET,CBA", "-e", "asx", *window, "-o", str(exported)]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    table = pa_csv.read_csv(exported)
    expected = many_order(seeded.quotes, ["QUIET", "CBA"], DAY, DAY + timedelta(days=3))
    got = table.select(["symbol", "exchange_sequence_number"]).to_pylist()
    assert got == [{"symbol": r["symbol"], "exchange_sequence_number": r["exchange_sequence_number"]} for r in expected]


def many_bars(
    seeded: Seeded, symbols: list[str], interval: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """The oracle's bars of several symbols, by (bar_start, symbol)."""
    picked = [r for r in seeded.trades if r["exchange"] == "asx" and r["symbol"] in symbols]
    found = oracle.bars(oracle.window(picked, start, end), interval)
    return sorted(found, key=lambda b: (b["bar_start"], b["symbol"]))


@pytest.mark.parametrize(("interval", "limit"), [("1m", 3), ("1h", 2), ("1d", 1000), ("5s", 11)])
def test_bars_of_several_symbols_page_through_one_listing(
    seeded: Seeded, engine: QueryEngine, interval: str, limit: int
) -> None:
    symbols = ["OLD", "BHP", "CSL"]
    start, end = DAY, DAY + timedelta(days=2)
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = engine.ohlcv_many(symbols, "asx", interval, start, end, limit=limit, cursor=cursor)
        assert page.table.num_rows <= limit
        rows += page.table.to_pylist()
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = many_bars(seeded, symbols, interval, start, end)
    assert len(expected) > 3
    keys = ("symbol", "bar_start", "open", "high", "low", "close", "volume", "vwap", "trade_count")
    assert [{k: r[k] for k in keys} for r in rows] == [{k: b[k] for k in keys} for b in expected]


def test_api_and_cli_bars_of_several_symbols(seeded: Seeded) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app
    from tests.support.clients import cli_env

    start, end = DAY, DAY + timedelta(days=2)
    expected = many_bars(seeded, ["BHP", "CBA"], "1h", start, end)
    params = {"exchange": "asx", "interval": "1h", "start": start.isoformat(), "end": end.isoformat()}
    with local_client(create_app(seeded.settings)) as client:
        got: list[dict[str, Any]] = []
        cursor = None
        while True:
            extra = {"cursor": cursor} if cursor else {}
            body = client.get("/v1/ohlcv", params={**params, "symbol": "CBA,BHP", "limit": "3", **extra}).json()
            got += body["data"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert body["symbol"] == "BHP,CBA"
        assert [(b["symbol"], b["close"], b["trade_count"]) for b in got] == [
            (b["symbol"], f"{b['close']:.8f}", b["trade_count"]) for b in expected
        ]
        single = client.get("/v1/ohlcv", params={**params, "symbol": "BHP"}).json()
        assert single["symbol"] == "BHP"
        assert len(single["data"]) == len([b for b in expected if b["symbol"] == "BHP"])
    args = ["query", "ohlcv", "BHP,CBA", "-e", "asx", "-i", "1h", "--start", params["start"], "--end", params["end"]]
    shown = CliRunner().invoke(app, [*args, "-f", "ndjson"], env=cli_env(seeded.settings))
    assert shown.exit_code == 0, shown.output
    assert len(shown.stdout.strip().splitlines()) == len(expected)


def test_latest_on_is_cached_per_snapshot(seeded: Seeded) -> None:
    with QueryEngine.from_settings(seeded.settings) as engine:
        first = engine.latest_on("asx", ["BHP", "OLD"])
        again = engine.latest_on("asx", "OLD,BHP")  # the same set: the same entry
    assert first.cached is None
    assert again.cached == "lru"
    assert again.table == first.table


def test_several_symbols_merge_the_realtime_tail(seeded: Seeded) -> None:
    """The newest rows of each symbol come from the tail, each symbol deduplicated against Iceberg on its own."""
    lake = open_lake(seeded.settings)
    catalog = lake.catalog
    newest = max(r["exchange_timestamp"] for r in seeded.trades if r["exchange"] == "asx")
    now = newest + timedelta(seconds=30)
    buffer = RealtimeBuffer(1000, retention=timedelta(days=3650))
    asx_bhp = [r for r in seeded.trades if r["symbol"] == "BHP" and r["exchange"] == "asx"]
    committed_bhp = max(asx_bhp, key=lambda r: (r["exchange_timestamp"], r["exchange_sequence_number"]))
    tail = [
        committed_bhp,  # already in Iceberg: must not be counted twice
        trade("BHP", 50_000, newest + timedelta(seconds=5), "70", 1),
        trade("CBA", 50_000, newest + timedelta(seconds=5), "71", 1),  # same time as BHP's: by symbol
        trade("CBA", 50_001, newest + timedelta(seconds=6), "72", 1),
    ]
    for row in tail:
        buffer.add("trades", row, datetime.now(UTC))
    buffer.mark_ready("trades", "asx", None)
    start, end = newest - timedelta(hours=1), now
    try:
        engine = QueryEngine(catalog, seeded.settings.catalog.namespace, realtime=buffer, clock=lambda: now)
        rows: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = engine.fetch_many("trades", ["BHP", "CBA"], "asx", start, end, 4, cursor=cursor)
            assert "realtime" in page.sources
            rows += page.table.to_pylist()
            cursor = page.next_cursor
            if cursor is None:
                break
    finally:
        catalog.close()
    expected = many_order([*seeded.trades, *tail[1:]], ["BHP", "CBA"], start, end)
    assert [(r["symbol"], r["exchange_sequence_number"]) for r in rows] == [
        (r["symbol"], r["exchange_sequence_number"]) for r in expected
    ]
    assert [r["symbol"] for r in rows[-3:]] == ["BHP", "CBA", "CBA"]


def exchange_order(rows: list[dict[str, Any]], start: datetime, end: datetime) -> list[tuple[str, int]]:
    """The oracle's whole-exchange listing: every asx row of the window by (time, symbol, sequence), as keys."""
    picked = [r for r in oracle.window(rows, start, end) if r["exchange"] == "asx"]
    ordered = sorted(picked, key=lambda r: (r["exchange_timestamp"], r["symbol"], r["exchange_sequence_number"]))
    return [(r["symbol"], r["exchange_sequence_number"]) for r in ordered]


@pytest.mark.parametrize("kind", ["trades", "quotes"])
@pytest.mark.parametrize("limit", [4, 13, 5000])
def test_a_whole_exchange_pages_through_one_listing(seeded: Seeded, engine: QueryEngine, kind: str, limit: int) -> None:
    """No symbol: every instrument of the exchange (OLD and QUIET included, nyse's rows left out), in one listing
    whose pages join up exactly, ties on time ordered by symbol."""
    start, end = DAY, DAY + timedelta(days=DAYS + 1)
    rows, cursor, pages = [], None, 0
    while True:
        page = engine.fetch_many(kind, None, "asx", start, end, limit, cursor=cursor)  # type: ignore[arg-type]
        assert page.table.num_rows <= limit
        rows += page.table.to_pylist()
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = exchange_order(seeded.trades if kind == "trades" else seeded.quotes, start, end)
    assert len(expected) > 100
    assert [(r["symbol"], r["exchange_sequence_number"]) for r in rows] == expected
    assert pages == max(1, -(-len(expected) // limit))
    # Every row whole, not just its key: the first page of a list holding every symbol reads the same rows.
    everyone = sorted({s for s, _ in expected})
    listed = engine.fetch_many(kind, everyone, "asx", start, end, 40).table  # type: ignore[arg-type]
    assert engine.fetch_exchange(kind, "asx", start, end, 40).table == listed  # type: ignore[arg-type]


def test_a_whole_exchange_cursor_belongs_to_its_query(engine: QueryEngine) -> None:
    start, end = DAY, DAY + timedelta(days=3)
    page = engine.fetch_exchange("trades", "asx", start, end, 5)
    assert page.next_cursor is not None
    with pytest.raises(QueryError, match=r"^cursor"):
        engine.fetch_exchange("quotes", "asx", start, end, 5, cursor=page.next_cursor)
    with pytest.raises(QueryError, match=r"^cursor"):
        engine.fetch_many("trades", "BHP,CBA", "asx", start, end, 5, cursor=page.next_cursor)
    with pytest.raises(QueryError, match=r"^with_quote"):
        engine.fetch_many("trades", None, "asx", start, end, 5, with_quote=True)
    with pytest.raises(QueryError, match=r"^exchange"):
        engine.fetch_exchange("trades", "mars", start, end, 5)


def test_a_whole_exchange_merges_the_realtime_tail(seeded: Seeded) -> None:
    """The tail adds what Iceberg lacks, an instrument seen only there included; a tail row Iceberg already holds
    (same symbol and sequence) is not counted twice, while another symbol's row of the same sequence is kept."""
    lake = open_lake(seeded.settings)
    catalog = lake.catalog
    newest = max(r["exchange_timestamp"] for r in seeded.trades if r["exchange"] == "asx")
    now = newest + timedelta(seconds=30)
    buffer = RealtimeBuffer(1000, retention=timedelta(days=3650))
    committed = max(
        (r for r in seeded.trades if r["exchange"] == "asx"),
        key=lambda r: (r["exchange_timestamp"], r["exchange_sequence_number"]),
    )
    tail = [
        committed,  # already in Iceberg
        trade("NEWCO", committed["exchange_sequence_number"], newest + timedelta(seconds=1), "3", 1),  # same seq
        trade("AAA", 60_000, newest + timedelta(seconds=5), "70", 1),
        trade("BHP", 60_000, newest + timedelta(seconds=5), "71", 1),  # same time: by symbol
    ]
    for row in tail:
        buffer.add("trades", row, datetime.now(UTC))
    buffer.mark_ready("trades", "asx", None)
    start, end = newest - timedelta(hours=2), now
    try:
        engine = QueryEngine(catalog, seeded.settings.catalog.namespace, realtime=buffer, clock=lambda: now)
        rows: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = engine.fetch_exchange("trades", "asx", start, end, 3, cursor=cursor)
            assert "realtime" in page.sources
            rows += page.table.to_pylist()
            cursor = page.next_cursor
            if cursor is None:
                break
    finally:
        catalog.close()
    assert [(r["symbol"], r["exchange_sequence_number"]) for r in rows] == exchange_order(
        [*seeded.trades, *tail[1:]], start, end
    )
    assert [r["symbol"] for r in rows[-3:]] == ["NEWCO", "AAA", "BHP"]


def test_api_and_cli_list_a_whole_exchange(seeded: Seeded, tmp_path: Path) -> None:
    import pyarrow.csv as pa_csv
    from typer.testing import CliRunner

    from k2_cli.main import app
    from tests.support.clients import cli_env

    start, end = DAY, DAY + timedelta(days=2)
    params: list[tuple[str, str]] = [("exchange", "asx"), ("start", start.isoformat()), ("end", end.isoformat())]
    with local_client(create_app(seeded.settings)) as client:
        got: list[dict[str, Any]] = []
        cursor = None
        while True:
            extra = [("cursor", cursor)] if cursor else []
            response = client.get("/v1/quotes", params=[*params, ("limit", "17"), *extra])
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["symbol"] is None
            got += body["data"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert [(r["symbol"], r["exchange_sequence_number"]) for r in got] == exchange_order(seeded.quotes, start, end)
        refused = client.get("/v1/trades", params=[*params, ("with_quote", "true")])
        assert refused.status_code == 400
        assert refused.json()["detail"].startswith("with_quote")
    exported = tmp_path / "asx.csv"
    args = ["query", "trades", "-e", "asx", "--start", start.isoformat(), "--end", end.isoformat(), "-o", str(exported)]
    result = CliRunner().invoke(app, args, env=cli_env(seeded.settings))
    assert result.exit_code == 0, result.output
    table = pa_csv.read_csv(exported)
    keys = [(r["symbol"], r["exchange_sequence_number"]) for r in table.to_pylist()]
    assert keys == exchange_order(seeded.trades, start, end)


# --- one half only (`kinds`), and the symbol index telling the search which symbols to expect ---------------------


@pytest.mark.parametrize("kinds", ["quotes", ("trades",), "trades,quotes", None])
def test_one_half_only(seeded: Seeded, engine: QueryEngine, kinds: Any) -> None:
    """A half not asked for is null throughout, and a symbol without the kinds asked for has no row (QUIET has no
    trades, OLD no quotes): the oracle over the other kind's rows left out."""
    asked = kinds.split(",") if isinstance(kinds, str) else kinds or ("trades", "quotes")
    trades = seeded.trades if "trades" in asked else []
    quotes = seeded.quotes if "quotes" in asked else []
    result = engine.latest_on("asx", kinds=kinds)
    assert result.table.schema == LATEST_ON_SCHEMA
    assert result.table.to_pylist() == oracle.latest_on(trades, quotes, "asx", None)
    assert engine.latest_on("asx", "OLD,QUIET,BHP", kinds=kinds).table.to_pylist() == oracle.latest_on(
        trades, quotes, "asx", ["OLD", "QUIET", "BHP"]
    )


def test_one_half_reads_only_its_table(engine: QueryEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    register = scan.register_scan

    def spy(con: Any, name: str, table: Any, table_def: Any, plan: scan.ScanPlan, *a: Any, **k: Any) -> Any:
        reads.append(table_def.name)
        return register(con, name, table, table_def, plan, *a, **k)

    monkeypatch.setattr(scan, "register_scan", spy)
    engine.latest_on("asx", kinds="quotes")
    assert set(reads) == {"quotes"}


def test_one_half_as_of_a_past_snapshot(seeded: Seeded, engine: QueryEngine) -> None:
    """Time travel: the quotes half is the one `kinds=None` reads (quotes as of the trades snapshot's commit)."""
    first = seeded.snapshots[2]
    both = engine.latest_on("asx", as_of_snapshot=first).table
    quotes_only = engine.latest_on("asx", kinds="quotes", as_of_snapshot=first).table.to_pylist()
    quote_columns = ("quote_timestamp", "quote_sequence_number", "bid_price", "bid_size", "ask_price", "ask_size")
    expected = [
        {**r, "trade_timestamp": None, "trade_sequence_number": None, "price": None, "volume": None}
        for r in both.to_pylist()
        if r["quote_sequence_number"] is not None
    ]
    assert quotes_only == expected
    assert all(any(r[c] is not None for c in quote_columns) for r in quotes_only)
    trades_then = seeded_rows(seeded.settings, "trades", first)
    trades_only = engine.latest_on("asx", kinds="trades", as_of_snapshot=first).table.to_pylist()
    assert trades_only == oracle.latest_on(trades_then, [], "asx", None)


def test_one_half_with_the_realtime_tail(seeded: Seeded) -> None:
    buffer = RealtimeBuffer(1000, retention=timedelta(days=3650))
    newest = max(r["exchange_timestamp"] for r in seeded.quotes if r["exchange"] == "asx")
    new_quotes = [quote("CBA", 10_000, newest + timedelta(seconds=3), "5", "6"), quote("NEWQ", 1, newest, "1", "2")]
    stale = quote("BHP", 0, DAY - timedelta(days=1), "1", "2")  # older than Iceberg's: must not win
    for row in [*new_quotes, stale]:
        buffer.add("quotes", row, datetime.now(UTC))
    buffer.add("trades", trade("BHP", 10_000, newest + timedelta(seconds=1), "77", 3), datetime.now(UTC))
    with QueryEngine.from_settings(seeded.settings, realtime=buffer, cache=False) as engine:
        result = engine.latest_on("asx", kinds="quotes")
    assert result.sources == ("iceberg", "realtime")
    assert result.table.to_pylist() == oracle.latest_on([], [*seeded.quotes, *new_quotes, stale], "asx", None)


def test_bad_kinds(engine: QueryEngine) -> None:
    for bad in ("bars", "", ["quotes", "trade"]):
        with pytest.raises(QueryError, match=r"^kind must be trades, quotes or both"):
            engine.latest_on("asx", kinds=bad)


def test_api_and_cli_one_half(seeded: Seeded) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app
    from tests.support.clients import cli_env

    expected = oracle.latest_on([], seeded.quotes, "asx", None)
    with local_client(create_app(seeded.settings)) as client:
        body = client.get("/v1/latest/all", params={"exchange": "asx", "kind": "quotes"}).json()
        assert [r["symbol"] for r in body["data"]] == [r["symbol"] for r in expected]
        assert all(r["price"] is None and r["bid_price"] is not None for r in body["data"])
        assert client.get("/v1/latest/all", params={"exchange": "asx", "kind": "bars"}).status_code == 400
    env = cli_env(seeded.settings)
    runner = CliRunner()
    out = runner.invoke(app, ["query", "latest", "-e", "asx", "--kind", "trades"], env=env)
    assert out.exit_code == 0, out.output
    assert "OLD" in out.stdout
    assert "QUIET" not in out.stdout  # quotes only
    assert runner.invoke(app, ["query", "latest", "BHP", "-e", "asx", "--kind", "quotes"], env=env).exit_code == 2


def test_the_symbol_index_says_when_to_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a list, which symbols to expect comes from the engine's symbol index: once it has seen the files, the
    search reads the newest day and stops (no scan of every day's symbols). Files committed later, holding a symbol on
    an old day only, are indexed before they are searched, so the answer stays the oracle's, as of any snapshot."""
    settings = Settings(home=tmp_path / "k2home", catalog=CatalogSettings(name=f"idx{random.randrange(10**9)}"))
    settings.query.tail_enabled = False
    rows = [trade(s, d + 1, DAY + timedelta(days=d, hours=1), "10", 1) for d in range(3) for s in BUSY]
    lake = open_lake(settings)
    lake.append("trades", rows)
    reads: list[tuple[str, int]] = []
    register = scan.register_scan

    def spy(con: Any, name: str, table: Any, table_def: Any, plan: scan.ScanPlan, *a: Any, **k: Any) -> Any:
        reads.append((name, len(plan.data_files)))
        return register(con, name, table, table_def, plan, *a, **k)

    monkeypatch.setattr(scan, "register_scan", spy)
    with QueryEngine.from_settings(settings, cache=False) as engine:
        assert engine.latest_on("asx", kinds="trades").table.to_pylist() == oracle.latest_on(rows, [], "asx", None)
        reads.clear()
        engine.latest_on("asx", kinds="trades")
        assert [name for name, _ in reads] == ["latest_src"]  # the newest day alone
        before = lake.table("trades").metadata.current_snapshot_id
        late = trade("LATE", 1, DAY + timedelta(hours=5), "3", 2)  # the first day only, in a new file
        lake.append("trades", [late])
        reads.clear()
        got = engine.latest_on("asx", kinds="trades").table.to_pylist()
        assert got == oracle.latest_on([*rows, late], [], "asx", None)
        assert [name for name, _ in reads].count("latest_src") == 3  # back to the first day, for LATE alone
        past = engine.latest_on("asx", kinds="trades", as_of_snapshot=before).table.to_pylist()
        assert past == oracle.latest_on(rows, [], "asx", None)
    lake.catalog.close()
