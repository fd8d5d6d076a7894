"""Bars as researchers use them: any interval from 1s to 1mo, aligned on UTC, on the exchange's local clock (DST
included) or on its session; intervals without trades filled on request; tick, volume and dollar bars; the whole
exchange at once. Every answer is checked against an independent computation (`tests.support.bar_oracle`: pandas
time zones, plain `Decimal`) over the same seeded trades.

The trades straddle both Sydney DST changes of 2024 (April 7: 03:00 AEDT -> 02:00 AEST; October 6: 02:00 AEST ->
03:00 AEDT) and both New York ones (March 10, November 3), arrive in shuffled order and often tie on time.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bench.query import lay_out
from k2_api.main import create_app
from k2_core.exceptions import QueryError
from k2_core.lake import scan
from k2_core.model.tables import TRADES
from k2_core.read import exchange_bars, routing
from k2_core.read.engine import QueryEngine
from k2_core.read.functions import get_ohlcv, get_ohlcv_many
from k2_core.settings import CatalogSettings, Settings
from tests.support import bar_oracle, query_oracle
from tests.support.clients import local_client
from tests.support.factories import trade
from tests.support.lake import open_lake

SYDNEY, NEW_YORK = "Australia/Sydney", "America/New_York"
ASX_OPEN, ASX_CLOSE = time(10, 0), time(16, 0)
# (exchange, symbols, first day of each seeded week)
SPANS = {
    "asx": (("BHP", "CBA"), (datetime(2024, 4, 3, tzinfo=UTC), datetime(2024, 10, 2, tzinfo=UTC))),
    "nyse": (("AAPL",), (datetime(2024, 3, 7, tzinfo=UTC), datetime(2024, 10, 31, tzinfo=UTC))),
}
KEYS = ("bar_start", "open", "high", "low", "close", "volume", "vwap", "trade_count")


@dataclass
class Seeded:
    settings: Settings
    trades: list[dict[str, Any]]


def _rows(rng: random.Random) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for exchange, (symbols, starts) in SPANS.items():
        for symbol in symbols:
            seq = 0
            for first in starts:
                t = first
                while t < first + timedelta(days=7):
                    t += timedelta(seconds=rng.choice((0, 0, 30, 300, 900, 1700, 3600, 7300)))
                    seq += 1
                    price = Decimal(rng.randrange(1000, 9999)) / 100
                    rows.append(trade(symbol, seq, t, price, Decimal(rng.randrange(1, 5000)) / 10, exchange))
    return rows


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    catalog = CatalogSettings(name=f"baropts{random.randrange(10**9)}")
    settings = Settings(home=tmp_path_factory.mktemp("baropts") / "k2home", catalog=catalog)
    settings.query.tail_enabled = False
    rng = random.Random(2024)
    rows = _rows(rng)
    delivered = rows[:]
    rng.shuffle(delivered)
    lake = open_lake(settings)
    for start in range(0, len(delivered), 2000):
        lake.append("trades", delivered[start : start + 2000])
    lake.catalog.close()
    return Seeded(settings, rows)


@pytest.fixture
def engine(seeded: Seeded) -> Iterator[QueryEngine]:
    with QueryEngine.from_settings(seeded.settings, cache=False) as engine:
        yield engine


def picked(seeded: Seeded, exchange: str, symbol: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    return [
        r
        for r in seeded.trades
        if r["exchange"] == exchange and r["symbol"] == symbol and start <= r["exchange_timestamp"] < end
    ]


def plain(rows: list[dict[str, Any]], keys: tuple[str, ...] = KEYS) -> list[dict[str, Any]]:
    return [{k: r[k] for k in keys} for r in rows]


def all_pages(call: Any, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = call(limit=limit, cursor=cursor)
        assert page.table.num_rows <= limit
        rows += page.table.to_pylist()
        cursor = page.next_cursor
        if cursor is None:
            return rows


APRIL = (datetime(2024, 4, 2, tzinfo=UTC), datetime(2024, 4, 12, tzinfo=UTC))
OCTOBER = (datetime(2024, 10, 1, tzinfo=UTC), datetime(2024, 10, 11, tzinfo=UTC))


@pytest.mark.parametrize("interval", ["30s", "2m", "7m", "4h", "2d", "1w", "1mo"])
def test_any_interval_utc(seeded: Seeded, engine: QueryEngine, interval: str) -> None:
    start, end = (APRIL[0], OCTOBER[1]) if interval in ("1w", "1mo") else APRIL
    result = engine.ohlcv("BHP", "asx", interval, start, end)
    assert result.window is not None
    expected = bar_oracle.time_bars(
        picked(seeded, "asx", "BHP", result.window.start, result.window.end), interval, "utc"
    )
    assert plain(result.table.to_pylist()) == plain(expected)
    assert len(expected) > 1


def test_the_original_intervals_are_unchanged(seeded: Seeded, engine: QueryEngine) -> None:
    """1m at align=utc is the original query (its own cursor, precomputed path); spelled with the options at their
    defaults it is the same answer and the same cursor."""
    start, end = APRIL
    plain_call = engine.ohlcv("BHP", "asx", "1m", start, end, limit=5)
    explicit = engine.ohlcv("BHP", "asx", "1m", start, end, limit=5, align="utc", fill="none", bar_type="time")
    assert plain_call.table == explicit.table
    assert plain_call.next_cursor is not None
    assert explicit.table.schema.field("open").nullable is False


@pytest.mark.parametrize(
    ("exchange", "symbol", "tz", "interval", "span"),
    [
        ("asx", "BHP", SYDNEY, "1d", APRIL),
        ("asx", "BHP", SYDNEY, "1d", OCTOBER),
        ("asx", "CBA", SYDNEY, "1h", APRIL),
        ("asx", "CBA", SYDNEY, "4h", APRIL),
        ("asx", "BHP", SYDNEY, "3h", OCTOBER),
        ("asx", "BHP", SYDNEY, "90m", OCTOBER),
        ("asx", "BHP", SYDNEY, "1w", APRIL),
        ("asx", "BHP", SYDNEY, "1mo", (APRIL[0], OCTOBER[1])),
        ("nyse", "AAPL", NEW_YORK, "1d", (datetime(2024, 3, 6, tzinfo=UTC), datetime(2024, 3, 16, tzinfo=UTC))),
        ("nyse", "AAPL", NEW_YORK, "2h", (datetime(2024, 3, 6, tzinfo=UTC), datetime(2024, 3, 16, tzinfo=UTC))),
        ("nyse", "AAPL", NEW_YORK, "1d", (datetime(2024, 10, 30, tzinfo=UTC), datetime(2024, 11, 9, tzinfo=UTC))),
        ("nyse", "AAPL", NEW_YORK, "4h", (datetime(2024, 10, 30, tzinfo=UTC), datetime(2024, 11, 9, tzinfo=UTC))),
    ],
)
def test_exchange_alignment_across_dst(
    seeded: Seeded, engine: QueryEngine, exchange: str, symbol: str, tz: str, interval: str, span: Any
) -> None:
    start, end = span
    result = engine.ohlcv(symbol, exchange, interval, start, end, align="exchange")
    assert result.window is not None
    rows = picked(seeded, exchange, symbol, result.window.start, result.window.end)
    expected = bar_oracle.time_bars(rows, interval, "exchange", tz)
    assert plain(result.table.to_pylist()) == plain(expected)
    assert len(expected) > 1


def test_a_local_day_across_dst_is_23_or_25_hours(seeded: Seeded, engine: QueryEngine) -> None:
    april = engine.ohlcv("BHP", "asx", "1d", *APRIL, align="exchange", fill="null").table.to_pylist()
    starts = [r["bar_start"] for r in april]
    lengths = {starts[i].isoformat(): starts[i + 1] - starts[i] for i in range(len(starts) - 1)}
    assert lengths["2024-04-06T13:00:00+00:00"] == timedelta(hours=25)  # Sunday 7 April, Sydney
    october = engine.ohlcv("BHP", "asx", "1d", *OCTOBER, align="exchange", fill="null").table.to_pylist()
    starts = [r["bar_start"] for r in october]
    lengths = {starts[i].isoformat(): starts[i + 1] - starts[i] for i in range(len(starts) - 1)}
    assert lengths["2024-10-05T14:00:00+00:00"] == timedelta(hours=23)  # Sunday 6 October, Sydney


@pytest.mark.parametrize("interval", ["1h", "45m", "1d", "1w", "1mo"])
def test_session_alignment(seeded: Seeded, engine: QueryEngine, interval: str) -> None:
    start, end = (APRIL[0], OCTOBER[1]) if interval == "1mo" else APRIL
    result = engine.ohlcv("BHP", "asx", interval, start, end, align="session")
    assert result.window is not None
    rows = picked(seeded, "asx", "BHP", result.window.start, result.window.end)
    expected = bar_oracle.time_bars(
        rows, interval, "session", SYDNEY, ASX_OPEN, ASX_CLOSE, bar_oracle.ASX_2024_HOLIDAYS
    )  # Easter Monday 1 April is an ASX holiday: April's month and that week's bars start on Tuesday the 2nd
    assert plain(result.table.to_pylist()) == plain(expected)
    assert len(expected) > 1


def _grid_utc(start: datetime, end: datetime, freq: str) -> list[datetime]:
    import pandas as pd

    return [t.to_pydatetime() for t in pd.date_range(start, end, freq=freq, inclusive="left")]


def _grid_session(start: datetime, end: datetime) -> list[datetime]:
    """Hourly session intervals of ASX weekdays: 10:00 .. 15:00 Sydney."""
    import pandas as pd

    days = pd.date_range(start.date() - timedelta(days=1), end.date() + timedelta(days=1), freq="D")
    out = []
    for day in days:
        if day.weekday() >= 5:
            continue
        for hour in range(10, 16):
            moment = pd.Timestamp(datetime.combine(day.date(), time(hour))).tz_localize(SYDNEY).tz_convert("UTC")
            if start <= moment < end:
                out.append(moment.to_pydatetime())
    return out


@pytest.mark.parametrize("how", ["previous", "null", "linear"])
@pytest.mark.parametrize("align", ["utc", "session"])
def test_fill(seeded: Seeded, engine: QueryEngine, how: str, align: str) -> None:
    start, end = datetime(2024, 4, 4, 0, 7, tzinfo=UTC), datetime(2024, 4, 9, 3, 0, tzinfo=UTC)
    interval = "15m" if align == "utc" else "1h"
    result = engine.ohlcv("CBA", "asx", interval, start, end, align=align, fill=how)
    assert result.window is not None
    window = (result.window.start, result.window.end)

    def expected(symbol: str) -> list[dict[str, Any]]:
        rows = picked(seeded, "asx", symbol, *window)
        if align == "utc":
            bars = bar_oracle.time_bars(rows, interval, "utc")
            grid = _grid_utc(*window, "15min")
        else:
            bars = bar_oracle.time_bars(rows, interval, "session", SYDNEY, ASX_OPEN, ASX_CLOSE)
            grid = _grid_session(*window)
        return bar_oracle.filled(bars, grid, how)

    got = result.table.to_pylist()
    assert plain(got) == plain(expected("CBA"))
    assert any(r["trade_count"] == 0 for r in got)
    assert any(r["trade_count"] > 0 for r in got)
    assert all(r["symbol"] == "CBA" for r in got)
    # The whole exchange, filled in one query for every symbol, paged: each symbol's rows as the oracle fills them,
    # in (bar_start, symbol) order.
    whole = all_pages(partial(engine.ohlcv_many, None, "asx", interval, start, end, align=align, fill=how), 41)
    assert [(r["bar_start"], r["symbol"]) for r in whole] == sorted((r["bar_start"], r["symbol"]) for r in whole)
    for symbol in ("BHP", "CBA"):
        assert plain([r for r in whole if r["symbol"] == symbol]) == plain(expected(symbol))
    assert {r["symbol"] for r in whole} == {"BHP", "CBA"}


def test_fill_pages_through_the_same_answer(seeded: Seeded, engine: QueryEngine) -> None:
    start, end = datetime(2024, 4, 4, tzinfo=UTC), datetime(2024, 4, 5, tzinfo=UTC)
    whole = engine.ohlcv("CBA", "asx", "10m", start, end, fill="linear").table.to_pylist()
    paged = all_pages(lambda **k: engine.ohlcv("CBA", "asx", "10m", start, end, fill="linear", **k), 7)
    assert paged == whole
    assert len(whole) == 144


@pytest.mark.parametrize(("kind", "size"), [("tick", "7"), ("tick", "1"), ("volume", "2500"), ("dollar", "150000.5")])
def test_activity_bars(seeded: Seeded, engine: QueryEngine, kind: str, size: str) -> None:
    start, end = datetime(2024, 4, 4, 3, tzinfo=UTC), datetime(2024, 4, 6, tzinfo=UTC)
    result = engine.ohlcv("BHP", "asx", start=start, end=end, bar_type=kind, size=size)
    expected = bar_oracle.activity_bars(picked(seeded, "asx", "BHP", start, end), kind, Decimal(size))
    keys = (*KEYS, "bar_end", "complete")
    got = result.table.to_pylist()
    assert plain(got, keys) == plain(expected, keys)
    assert len(got) > 2
    assert all(r["complete"] for r in got[:-1])
    paged = all_pages(lambda **k: engine.ohlcv("BHP", "asx", start=start, end=end, bar_type=kind, size=size, **k), 5)
    assert paged == got


def test_whole_exchange(seeded: Seeded, engine: QueryEngine) -> None:
    start, end = APRIL
    for interval, align in (("1h", "exchange"), ("1d", "utc"), ("1m", "utc")):
        result = all_pages(partial(engine.ohlcv_many, None, "asx", interval, start, end, align=align), 97)
        expected = []
        for symbol in ("BHP", "CBA"):
            rows = picked(seeded, "asx", symbol, start, end)
            expected += bar_oracle.time_bars(rows, interval, align, SYDNEY)
        expected.sort(key=lambda b: (b["bar_start"], b["symbol"]))
        assert plain(result, ("symbol", *KEYS)) == plain(expected, ("symbol", *KEYS))
    ticks = get_ohlcv_many(engine, None, "asx", start=start, end=end, bar_type="tick", size=50).to_pylist()
    expected = []
    for symbol in ("BHP", "CBA"):
        found = bar_oracle.activity_bars(picked(seeded, "asx", symbol, start, end), "tick", Decimal(50))
        expected += [{"symbol": symbol, **b} for b in found]
    expected.sort(key=lambda b: (b["bar_start"], b["symbol"]))  # stable: a symbol's bars stay in their order
    keys = ("symbol", *KEYS, "bar_end", "complete")
    assert plain(ticks, keys) == plain(expected, keys)


def test_whole_exchange_reads_one_scan_and_fills_every_symbol(
    seeded: Seeded, engine: QueryEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    register = scan.register

    def spy(con: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(name)
        return register(con, name, *args, **kwargs)

    monkeypatch.setattr(exchange_bars.scan, "register", spy)
    monkeypatch.setattr(routing.scan, "register", spy)
    start, end = datetime(2024, 4, 4, tzinfo=UTC), datetime(2024, 4, 5, tzinfo=UTC)
    whole = engine.ohlcv_many(None, "asx", "30m", start, end, fill="previous").table.to_pylist()
    assert reads == ["market_ice"]  # one scan of the exchange, not one per symbol
    one_by_one = engine.ohlcv_many(["BHP", "CBA"], "asx", "30m", start, end, fill="previous").table.to_pylist()
    assert whole == one_by_one
    assert len(whole) == 2 * 48


def test_over_http(seeded: Seeded) -> None:
    start, end = APRIL
    params = {"exchange": "asx", "interval": "1d", "align": "exchange", "fill": "previous"}
    params |= {"start": start.isoformat(), "end": end.isoformat(), "limit": "3"}
    with local_client(create_app(seeded.settings)) as client:
        got: list[dict[str, Any]] = []
        cursor = None
        while True:
            body = client.get("/v1/ohlcv", params={**params, "symbol": "BHP", **({"cursor": cursor} if cursor else {})})
            assert body.status_code == 200, body.text
            got += body.json()["data"]
            cursor = body.json()["next_cursor"]
            if cursor is None:
                break
        assert body.json()["align"] == "exchange"
        everything = client.get("/v1/ohlcv", params={**params, "limit": "1000"}).json()
        assert {b["symbol"] for b in everything["data"]} == {"BHP", "CBA"}
        ticks = client.get(
            "/v1/ohlcv",
            params={
                "symbol": "BHP",
                "exchange": "asx",
                "bar_type": "volume",
                "size": "1000",
                "start": start.isoformat(),
                "end": end.isoformat(),
            },
        )
        assert ticks.status_code == 200, ticks.text
        assert "complete" in ticks.json()["data"][0]
        legacy = client.get(
            "/v1/ohlcv",
            params={
                "symbol": "BHP",
                "exchange": "asx",
                "interval": "1h",
                "start": start.isoformat(),
                "end": end.isoformat(),
            },
        ).json()
        assert "complete" not in legacy["data"][0]
        assert "align" not in legacy
        for query, word in (
            ({"interval": "0s"}, "interval"),
            ({"interval": "2mo"}, "interval"),
            ({"align": "local"}, "align"),
            ({"fill": "zero"}, "fill"),
            ({"bar_type": "range"}, "bar_type"),
            ({"bar_type": "volume", "size": "0"}, "size"),
            ({"bar_type": "tick", "size": "10", "fill": "previous"}, "fill"),
        ):
            bad = client.get("/v1/ohlcv", params={"symbol": "BHP", "exchange": "asx", **query})
            assert bad.status_code == 400, (query, bad.text)
            assert bad.json()["detail"].startswith(word), bad.json()
    with QueryEngine.from_settings(seeded.settings, cache=False) as engine:
        bars = bar_oracle.time_bars(
            picked(seeded, "asx", "BHP", start - timedelta(days=1), end), "1d", "exchange", SYDNEY
        )
        result = engine.ohlcv("BHP", "asx", "1d", start, end, align="exchange")
        assert result.window is not None
        grid = [
            r["bar_start"]
            for r in get_ohlcv(engine, "BHP", "asx", "1d", start, end, align="exchange", fill="null").to_pylist()
        ]
        expected = bar_oracle.filled([b for b in bars if result.window.start <= b["bar_start"]], grid, "previous")
    assert [(g["bar_start"], g["close"], g["trade_count"]) for g in got] == [
        (
            b["bar_start"].isoformat().replace("+00:00", "Z"),
            f"{b['close']:.8f}" if b["close"] is not None else None,
            b["trade_count"],
        )
        for b in expected
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": "0s"}, r"^interval must be"),
        ({"interval": "2mo"}, r"^interval must be at most one month"),
        ({"interval": "32d"}, r"^interval must be at most one month"),
        ({"interval": "25h", "align": "exchange"}, r"^interval 25h is longer than a day"),
        ({"align": "local"}, r"^align must be one of utc, exchange, session"),
        ({"fill": "zero"}, r"^fill must be one of none, previous, null, linear"),
        ({"bar_type": "range", "size": 3}, r"^bar_type must be one of"),
        ({"bar_type": "volume"}, r"^size is required"),
        ({"bar_type": "volume", "size": -1}, r"^size must be a positive number"),
        ({"bar_type": "tick", "size": "2.5"}, r"^size must be a whole number"),
        ({"bar_type": "tick", "size": 5, "fill": "previous"}, r"^fill applies to time bars only"),
        ({"bar_type": "dollar", "size": 5, "align": "session"}, r"^align applies to time bars only"),
        ({"size": 5}, r"^size applies to tick, volume and dollar bars only"),
        ({"interval": "1s", "start": "2024-01-01", "end": "2024-03-01", "align": "exchange"}, r"^interval 1s over"),
    ],
)
def test_bad_input(engine: QueryEngine, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        engine.ohlcv("BHP", "asx", **kwargs)


def test_empty_windows(engine: QueryEngine) -> None:
    """No trades in the window: no activity bars, no time bars, and with a fill every interval as a null row."""
    start, end = datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 2, tzinfo=UTC)
    assert engine.ohlcv("BHP", "asx", start=start, end=end, bar_type="volume", size=10).table.num_rows == 0
    assert engine.ohlcv("BHP", "asx", "2h", start, end, align="exchange").table.num_rows == 0
    filled = engine.ohlcv("BHP", "asx", "2h", start, end, fill="previous").table.to_pylist()
    assert [r["bar_start"] for r in filled] == [start + timedelta(hours=2 * i) for i in range(12)]
    assert {(r["close"], r["vwap"], r["volume"], r["trade_count"]) for r in filled} == {(None, None, Decimal(0), 0)}


def test_cli(seeded: Seeded) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app
    from tests.support.clients import cli_env

    start, end = APRIL
    window = ["--start", start.isoformat(), "--end", end.isoformat()]
    with QueryEngine.from_settings(seeded.settings, cache=False) as engine:
        expected = engine.ohlcv_many(None, "asx", "1d", start, end, align="session", fill="null").table.num_rows
        volume = engine.ohlcv("BHP", "asx", start=start, end=end, bar_type="volume", size="5000").table.num_rows
    args = ["query", "ohlcv", "-e", "asx", "-i", "1d", "--align", "session", "--fill", "null", *window]
    shown = CliRunner().invoke(app, [*args, "-f", "ndjson"], env=cli_env(seeded.settings))
    assert shown.exit_code == 0, shown.output
    lines = [json.loads(line) for line in shown.stdout.strip().splitlines()]
    assert len(lines) == expected
    assert {line["symbol"] for line in lines} == {"BHP", "CBA"}
    args = ["query", "ohlcv", "BHP", "-e", "asx", "--bar-type", "volume", "--size", "5000", *window, "-f", "ndjson"]
    shown = CliRunner().invoke(app, args, env=cli_env(seeded.settings))
    assert shown.exit_code == 0, shown.output
    assert len(shown.stdout.strip().splitlines()) == volume
    bad = CliRunner().invoke(
        app, ["query", "ohlcv", "BHP", "-e", "asx", "--align", "moon"], env=cli_env(seeded.settings)
    )
    assert bad.exit_code == 2
    assert "align must be one of" in bad.output


def test_whole_exchange_minute_bars_precomputed_and_open_day_page_in_order(tmp_path: Path) -> None:
    """The whole exchange's 1m bars over a closed day (served by the precomputed `ohlcv_1m`, read in no order) and
    an open one (computed from trades), paged in small pages: every bar the pandas oracle makes, in (bar_start,
    symbol) order, each once."""
    settings = Settings(home=tmp_path / "k2home", catalog=CatalogSettings(name=f"wholepre{random.randrange(10**9)}"))
    settings.query.tail_enabled = False
    rng = random.Random(7)
    first = datetime(2024, 5, 6, tzinfo=UTC)
    rows: list[dict[str, Any]] = []
    for symbol in ("ANZ", "BHP", "CBA", "NAB", "WBC"):
        t, seq = first, 0
        while t < first + timedelta(days=2):
            t += timedelta(seconds=rng.choice((1, 20, 45, 90, 600, 3600)))
            seq += 1
            rows.append(
                trade(symbol, seq, t, Decimal(rng.randrange(1000, 1100)) / 100, Decimal(rng.randrange(1, 9)), "asx")
            )
    rows.sort(key=lambda r: (r["exchange_timestamp"], r["symbol"]))
    lay_out(settings, [(TRADES, TRADES.to_arrow(rows))], [first.date()])  # the first day closed, the second open
    with QueryEngine.from_settings(settings, cache=False) as engine:
        end = first + timedelta(days=2)
        listed = all_pages(partial(engine.ohlcv_many, None, "asx", "1m", first, end), 53)
        sources = engine.ohlcv_many(None, "asx", "1m", first, end).sources
    assert set(sources) == {"precomputed", "iceberg"}
    in_window = query_oracle.window(rows, first, first + timedelta(days=2))
    expected = sorted(query_oracle.bars(in_window, "1m"), key=lambda r: (r["bar_start"], r["symbol"]))
    assert [(r["bar_start"], r["symbol"]) for r in listed] == [(r["bar_start"], r["symbol"]) for r in expected]
    assert plain(listed) == plain(expected)


@pytest.mark.parametrize("how", ["previous", "null", "linear"])
def test_fill_of_large_prices(tmp_path: Path, how: str) -> None:
    """Closes far above 100 (make run's nyse names, BTC): the exact interpolation in 1e-8 units must not overflow
    DECIMAL(18), whatever the fill (the interpolation is computed for every fill)."""
    settings = Settings(home=tmp_path / "k2home", catalog=CatalogSettings(name=f"bigfill{random.randrange(10**9)}"))
    settings.query.tail_enabled = False
    start = datetime(2024, 5, 6, 14, tzinfo=UTC)
    rows = [
        trade("BTCUSDT", seq, start + timedelta(minutes=minute, seconds=5), Decimal(price), Decimal("0.5"), "binance")
        for seq, (minute, price) in enumerate([(0, "213.05"), (3, "97123.45678901"), (4, "250000.12345678")], 1)
    ]
    lake = open_lake(settings)
    lake.append("trades", rows)
    lake.catalog.close()
    end = start + timedelta(minutes=6)
    with QueryEngine.from_settings(settings, cache=False) as engine:
        got = engine.ohlcv("BTCUSDT", "binance", "1m", start, end, fill=how).table.to_pylist()
        whole = engine.ohlcv_many(None, "binance", "1m", start, end, fill=how).table.to_pylist()
    expected = bar_oracle.filled(bar_oracle.time_bars(rows, "1m", "utc"), _grid_utc(start, end, "1min"), how)
    assert plain(got) == plain(expected)
    assert plain(whole) == plain(expected)
