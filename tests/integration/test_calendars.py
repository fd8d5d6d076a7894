"""Trading calendars drive session bars and freshness: NYSE's half day after Thanksgiving ends its session bars at
13:00 New York (18:00Z) and Independence Day has none; ASX's Christmas closures and Christmas Eve early close; a
DST change; Binance around the clock. Expectations come from the exchanges' published 2024 calendars written out
by hand (`tests.support.bar_oracle`), never from exchange_calendars itself, and bars are checked against the
independent pandas oracle over the same seeded trades."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from k2_core.exceptions import QueryError
from k2_core.model import calendars
from k2_core.model.buckets import parse_interval, segments
from k2_core.read.engine import QueryEngine
from k2_core.settings import CatalogSettings, MaintenanceSettings, MarketHours, Settings
from k2_core.upkeep.quality import freshness, market_open
from tests.support import bar_oracle
from tests.support.factories import trade
from tests.support.lake import open_lake

HOURS = MaintenanceSettings().market_hours  # the defaults: asx XASX, nyse XNYS, binance 24/7
KEYS = ("bar_start", "open", "high", "low", "close", "volume", "vwap", "trade_count")
NY, SYD = "America/New_York", "Australia/Sydney"
# exchange -> (symbol, local trading-clock days to seed around the clock, every 10 minutes)
DAYS = {
    "nyse": ("AAPL", [date(2024, 3, d) for d in (7, 8, 11)] + [date(2024, 7, d) for d in (2, 3, 4, 5)]
             + [date(2024, 11, d) for d in (27, 28, 29)] + [date(2024, 12, 2)]),
    "asx": ("BHP", [date(2024, 12, d) for d in (23, 24, 25, 26, 27)]),
    "binance": ("BTCUSDT", [date(2024, 12, d) for d in (20, 21, 22, 23)]),
}  # fmt: skip
CALENDARS = {
    "nyse": (NY, time(9, 30), time(16), bar_oracle.NYSE_2024_HOLIDAYS, bar_oracle.NYSE_2024_EARLY_CLOSES),
    "asx": (SYD, time(10), time(16), bar_oracle.ASX_2024_HOLIDAYS, bar_oracle.ASX_2024_EARLY_CLOSES),
}


@dataclass
class Seeded:
    settings: Settings
    trades: list[dict[str, Any]]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    catalog = CatalogSettings(name=f"calendars{random.randrange(10**9)}")
    settings = Settings(home=tmp_path_factory.mktemp("calendars") / "k2home", catalog=catalog)
    settings.query.tail_enabled = False
    rng = random.Random(18)
    rows = []
    for exchange, (symbol, days) in DAYS.items():
        zone = ZoneInfo(CALENDARS[exchange][0]) if exchange in CALENDARS else UTC
        seq = 0
        for day in days:
            local = datetime.combine(day, time(0), tzinfo=zone)
            for k in range(0, 24 * 6):
                seq += 1
                price = Decimal(rng.randrange(1000, 9999)) / 100
                moment = (local + timedelta(minutes=10 * k, seconds=rng.randrange(600))).astimezone(UTC)
                rows.append(trade(symbol, seq, moment, price, Decimal(rng.randrange(1, 500)), exchange))
    lake = open_lake(settings)
    lake.append("trades", rows)
    lake.catalog.close()
    return Seeded(settings, rows)


@pytest.fixture
def engine(seeded: Seeded) -> Iterator[QueryEngine]:
    with QueryEngine.from_settings(seeded.settings, cache=False) as engine:
        yield engine


def expected_bars(seeded: Seeded, exchange: str, interval: str, start: datetime, end: datetime) -> list[dict]:
    symbol = DAYS[exchange][0]
    rows = [
        r
        for r in seeded.trades
        if r["exchange"] == exchange and r["symbol"] == symbol and start <= r["exchange_timestamp"] < end
    ]
    return bar_oracle.time_bars(rows, interval, "session", *CALENDARS[exchange])


def plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in KEYS if k in r} for r in rows]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("exchange", "interval", "start", "end"),
    [
        ("nyse", "1d", utc(2024, 11, 26), utc(2024, 12, 4)),  # Thanksgiving closed, the day after a half day
        ("nyse", "1h", utc(2024, 11, 26), utc(2024, 12, 4)),
        ("nyse", "45m", utc(2024, 7, 1), utc(2024, 7, 6)),  # 3 July half day, 4 July closed
        ("nyse", "1d", utc(2024, 3, 6), utc(2024, 3, 13)),  # the DST change of 10 March
        ("nyse", "1w", utc(2024, 11, 25), utc(2024, 12, 7)),  # week bars start at the first session open
        ("asx", "1d", utc(2024, 12, 20), utc(2024, 12, 30)),  # Christmas and Boxing Day closed, Christmas Eve short
        ("asx", "30m", utc(2024, 12, 20), utc(2024, 12, 30)),
    ],
)
def test_session_bars_follow_the_exchange_calendar(
    seeded: Seeded, engine: QueryEngine, exchange: str, interval: str, start: datetime, end: datetime
) -> None:
    symbol = DAYS[exchange][0]
    result = engine.ohlcv(symbol, exchange, interval, start, end, align="session")
    assert result.window is not None
    expected = expected_bars(seeded, exchange, interval, result.window.start, result.window.end)
    assert plain(result.table.to_pylist()) == plain(expected)
    assert len(expected) > 1
    holidays = CALENDARS[exchange][3]
    local = ZoneInfo(CALENDARS[exchange][0])
    assert not any(r["bar_start"].astimezone(local).date() in holidays for r in result.table.to_pylist())


def test_the_half_day_session_ends_at_its_early_close(engine: QueryEngine) -> None:
    hours = HOURS["nyse"]
    day = segments(parse_interval("1d"), "session", hours, utc(2024, 11, 29), utc(2024, 11, 30)).to_pylist()
    micros = int((utc(2024, 11, 29, 18) - utc(1970, 1, 1)) / timedelta(microseconds=1))
    assert [s["seg_end"] for s in day] == [micros]  # 13:00 New York
    # 1h session bars with fill on the half day: 09:30, 10:30, 11:30, 12:30 New York, the last cut at 13:00; the
    # trades from 13:00 to 16:00 belong to none, and Thanksgiving (the day before) has no bars to fill at all.
    filled = engine.ohlcv("AAPL", "nyse", "1h", utc(2024, 11, 28), utc(2024, 11, 30), align="session", fill="previous")
    starts = [r["bar_start"] for r in filled.table.to_pylist()]
    assert starts == [utc(2024, 11, 29, h, 30) for h in (14, 15, 16, 17)]
    assert all(r["trade_count"] > 0 for r in filled.table.to_pylist())


def test_fill_has_no_bars_on_a_holiday(seeded: Seeded, engine: QueryEngine) -> None:
    got = engine.ohlcv("AAPL", "nyse", "2h", utc(2024, 7, 2), utc(2024, 7, 6), align="session", fill="null")
    grid = []  # by hand from the published calendar: 2 July full, 3 July to 13:00, 4 July closed, 5 July full
    for day, close in ((2, time(16)), (3, time(13)), (5, time(16))):
        opening = pd.Timestamp(datetime.combine(date(2024, 7, day), time(9, 30))).tz_localize(NY)
        closing = pd.Timestamp(datetime.combine(date(2024, 7, day), close)).tz_localize(NY)
        grid += [
            t.tz_convert("UTC").to_pydatetime() for t in pd.date_range(opening, closing, freq="2h", inclusive="left")
        ]
    assert [r["bar_start"] for r in got.table.to_pylist()] == grid
    assert got.window is not None
    bars = expected_bars(seeded, "nyse", "2h", got.window.start, got.window.end)
    assert plain([r for r in got.table.to_pylist() if r["trade_count"]]) == plain(bars)


def test_dst_moves_the_session_open_in_utc() -> None:
    day_bars = segments(parse_interval("1d"), "session", HOURS["nyse"], utc(2024, 3, 8), utc(2024, 3, 12)).to_pylist()
    opens = [datetime.fromtimestamp(s["seg_start"] / 1e6, UTC) for s in day_bars]
    assert opens == [utc(2024, 3, 8, 14, 30), utc(2024, 3, 11, 13, 30)]  # EST, then EDT after 10 March


def test_binance_is_always_open(engine: QueryEngine) -> None:
    start, end = utc(2024, 12, 20), utc(2024, 12, 24)
    session = engine.ohlcv("BTCUSDT", "binance", "1d", start, end, align="session").table.to_pylist()
    daily = engine.ohlcv("BTCUSDT", "binance", "1d", start, end).table.to_pylist()
    assert [r["bar_start"] for r in session] == [utc(2024, 12, d) for d in (20, 21, 22, 23)]  # the weekend too
    assert plain(session) == plain(daily)
    assert market_open(HOURS["binance"], utc(2024, 12, 21, 3))  # a Saturday
    assert market_open(HOURS["binance"], utc(2024, 12, 25, 12))  # Christmas


def oracle_open(exchange: str, now: datetime) -> bool:
    tz, open_, close, holidays, early = CALENDARS[exchange]
    local = now.astimezone(ZoneInfo(tz))
    day = local.date()
    return local.weekday() < 5 and day not in holidays and open_ <= local.time() < early.get(day, close)


INSTANTS = {
    "nyse": [
        utc(2024, 7, 4, 15),  # Independence Day
        utc(2024, 7, 3, 16, 59),  # 12:59 on the half day
        utc(2024, 7, 3, 17, 1),  # 13:01: closed early
        utc(2024, 11, 29, 17),
        utc(2024, 11, 29, 19),  # after the early close
        utc(2024, 11, 28, 15),  # Thanksgiving
        utc(2024, 3, 8, 13, 45),  # 08:45 EST: not yet
        utc(2024, 3, 11, 13, 45),  # 09:45 EDT: open
        utc(2024, 3, 9, 15),  # Saturday
    ],
    "asx": [
        utc(2024, 12, 23, 4),  # 15:00 Sydney
        utc(2024, 12, 24, 3),  # 14:00: open
        utc(2024, 12, 24, 4),  # 15:00: after the 14:10 early close
        utc(2024, 12, 24, 23, 30),  # Christmas Day 10:30
        utc(2024, 12, 25, 23, 30),  # Boxing Day
        utc(2024, 12, 26, 23, 30),  # 27 December: open
        utc(2024, 4, 6, 23, 30),  # Sunday 7 April, the day DST ended
        utc(2024, 4, 8, 0, 30),  # Monday 10:30 AEST
        utc(2024, 4, 7, 23, 30),  # Monday 09:30 AEST: not yet
    ],
}


@pytest.mark.parametrize(("exchange", "now"), [(e, t) for e, ts in INSTANTS.items() for t in ts])
def test_market_open_follows_the_calendar(exchange: str, now: datetime) -> None:
    assert market_open(HOURS[exchange], now) == oracle_open(exchange, now)


def test_freshness_expects_trades_only_during_a_session(seeded: Seeded) -> None:
    table = open_lake(seeded.settings).table("trades")
    lag = timedelta(minutes=5)
    hours = {"nyse": HOURS["nyse"]}
    holiday = freshness(table, hours, utc(2024, 7, 4, 15, 3), lag)[0]  # trades arrive, but none are expected
    assert (holiday.market_open, holiday.passed) == (False, True)
    after_close = freshness(table, hours, utc(2024, 11, 29, 21, 0), lag)[0]  # 16:00 New York, after the early close
    assert after_close.market_open is False
    assert after_close.passed is True
    assert after_close.newest is not None  # the seeded feed still trades: a lag the hand-written hours called stale
    silent = freshness(table, hours, utc(2024, 12, 3, 15), lag)[0]  # a session, and the feed is silent: stale
    assert (silent.market_open, silent.newest, silent.passed) == (True, None, False)
    monday = freshness(table, {"asx": HOURS["asx"]}, utc(2024, 12, 29, 23, 30), lag)[0]  # 30 December 10:30
    assert (monday.market_open, monday.newest, monday.passed) == (True, None, False)
    christmas = freshness(table, {"asx": HOURS["asx"]}, utc(2024, 12, 24, 23, 30), lag)[0]
    assert (christmas.market_open, christmas.passed) == (False, True)


def test_weekly_hours_remain_the_fallback_without_a_calendar() -> None:
    weekly = MarketHours(timezone=NY, open=time(9, 30), close=time(16), weekdays=(0, 1, 2, 3, 4))
    assert market_open(weekly, utc(2024, 7, 4, 15))  # no calendar: a Thursday like any other
    assert not market_open(HOURS["nyse"], utc(2024, 7, 4, 15))
    found = calendars.sessions(HOURS["nyse"], date(1989, 12, 29), date(1990, 1, 2))  # before the calendar's range
    assert [str(d) for d in found.labels] == ["1989-12-29", "1990-01-01", "1990-01-02"]  # the weekly hours


def test_an_unknown_calendar_code_is_a_query_error(seeded: Seeded) -> None:
    settings = seeded.settings.model_copy(deep=True)
    settings.maintenance.market_hours = {"nyse": MarketHours(timezone=NY, calendar="NOPE")}
    with QueryEngine.from_settings(settings, cache=False) as engine, pytest.raises(QueryError, match="NOPE"):
        engine.ohlcv("AAPL", "nyse", "1d", utc(2024, 7, 1), utc(2024, 7, 6), align="session")
