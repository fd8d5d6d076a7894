"""Joins on time (`QueryEngine.asof_join`, `window_join`, `markouts`) checked against independent pandas computations
over the same seeded rows: `pd.merge_asof` for as-of joins and markouts, a plain interval filter for window joins.

The seed is built to catch the shortcuts a time join could take: several quotes at one timestamp (the highest sequence
is in force, and they are delivered shuffled across appends), trades exactly at a quote's time, trades exactly one
tolerance away from a quote, trades before any quote, an instrument without quotes, another instrument's quotes and
another exchange's, and trades of several symbols at one time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from k2_api.main import create_app
from k2_core.access.auth import KeyStore
from k2_core.exceptions import QueryError, UnknownSymbolError
from k2_core.lake.sqldb import catalog_engine
from k2_core.read import timejoins
from k2_core.read.engine import QueryEngine
from k2_core.read.functions import get_asof_join, get_markouts, get_window_join
from k2_core.read.realtime import RealtimeBuffer
from k2_core.settings import AuthSettings, CatalogSettings, Settings
from tests.support.clients import cli_env, local_client
from tests.support.factories import quote, trade
from tests.support.lake import open_lake

T0 = datetime(2024, 5, 6, 1, 0, tzinfo=UTC)
START, END = T0 - timedelta(minutes=1), T0 + timedelta(minutes=10)
TICK = timedelta(milliseconds=250)
Row = dict[str, Any]


@dataclass
class Seeded:
    settings: Settings
    trades: list[Row]
    quotes: list[Row]


def _rows(rng: random.Random) -> tuple[list[Row], list[Row]]:
    trades: list[Row] = []
    quotes: list[Row] = []
    seqs: dict[tuple[str, str, str], int] = {}

    def seq(kind: str, symbol: str, exchange: str = "asx") -> int:
        seqs[(kind, symbol, exchange)] = seqs.get((kind, symbol, exchange), 0) + 1
        return seqs[(kind, symbol, exchange)]

    # Hand-made edges for BHP: a trade before any quote; three quotes at T0 (seq 1..3, the last in force) and a trade
    # exactly at T0; a trade exactly 2s after a quote and another 2s + 1us after one (the tolerance boundary).
    trades.append(trade("BHP", seq("t", "BHP"), T0 - timedelta(seconds=30), "10.00", 1, side="buy"))
    for bid in ("9.90", "9.95", "9.97"):
        quotes.append(quote("BHP", seq("q", "BHP"), T0, bid, Decimal(bid) + Decimal("0.05")))
    trades.append(trade("BHP", seq("t", "BHP"), T0, "9.99", 2, side="sell"))
    trades.append(trade("BHP", seq("t", "BHP"), T0 + timedelta(seconds=2), "10.01", 1, side="unknown"))
    quotes.append(quote("BHP", seq("q", "BHP"), T0 + timedelta(seconds=4, microseconds=1), "9.80", "9.81"))
    # A trade exactly midway between two quotes (T0+6s, T0+8s): nearest takes the backward one.
    quotes.append(quote("BHP", seq("q", "BHP"), T0 + timedelta(seconds=6), "9.60", "9.61"))
    trades.append(trade("BHP", seq("t", "BHP"), T0 + timedelta(seconds=7), "9.70", 1, side="buy"))
    quotes.append(quote("BHP", seq("q", "BHP"), T0 + timedelta(seconds=8), "9.62", "9.63"))
    # Then random streams on a coarse grid (many ties and exact matches) for BHP, CBA and RIO; NOQ has no quotes.
    for symbol in ("BHP", "CBA", "RIO", "NOQ"):
        t = T0 + timedelta(seconds=10)
        for _ in range(120):
            t += TICK * rng.choice((0, 0, 1, 2, 4, 40))
            if rng.random() < 0.6 and symbol != "RIO":
                price = Decimal(rng.randrange(900, 1100)) / 100
                trades.append(
                    trade(symbol, seq("t", symbol), t, price, rng.randrange(1, 9), side=rng.choice(("buy", "sell")))
                )
            if rng.random() < 0.5 and symbol != "NOQ":
                bid = Decimal(rng.randrange(900, 1100)) / 100
                ask = bid + Decimal(rng.randrange(1, 7)) / 1000
                quotes.append(quote(symbol, seq("q", symbol), t, bid, ask))
    # Across UTC midnight, before the window the other tests read (so none of them sees these): MID trades on both
    # sides of midnight, its last quote of the day before 50ms before midnight (a tie of two) and two at midnight
    # exactly; OLD's only quote is two days before its trade (older day partitions).
    midnight = datetime(2024, 5, 6, tzinfo=UTC)
    quotes.append(quote("OLD", seq("q", "OLD"), midnight - timedelta(days=2), "5.00", "5.10"))
    for at, bid in ((-3000, "7.00"), (-50, "7.10"), (-50, "7.20"), (0, "7.30"), (0, "7.40"), (1, "7.50")):
        quotes.append(quote("MID", seq("q", "MID"), midnight + timedelta(milliseconds=at), bid, Decimal(bid) + 1))
    for at, side in ((-1000, "buy"), (-50, "sell"), (-1, "buy"), (0, "buy"), (0, "sell"), (2, "sell"), (5000, "buy")):
        trades.append(trade("MID", seq("t", "MID"), midnight + timedelta(milliseconds=at), "7.25", 1, side=side))
    trades.append(trade("OLD", seq("t", "OLD"), midnight + timedelta(milliseconds=3), "5.05", 1, side="buy"))
    # LAT's quote comes after the day's last trade of the exchange (MID's, 1ms before midnight), its trade after it.
    quotes.append(quote("LAT", seq("q", "LAT"), midnight - timedelta(microseconds=200), "3.00", "3.02"))
    trades.append(trade("LAT", seq("t", "LAT"), midnight - timedelta(minutes=30), "3.01", 1, side="sell"))
    trades.append(trade("LAT", seq("t", "LAT"), midnight + timedelta(milliseconds=4), "3.01", 1, side="sell"))
    # BHP on another exchange, quotes only: for exchange-to-exchange joins.
    t = T0
    for _ in range(60):
        t += TICK * rng.choice((1, 3, 8))
        bid = Decimal(rng.randrange(900, 1100)) / 100
        quotes.append(quote("BHP", seq("q", "BHP", "nyse"), t, bid, bid + Decimal("0.02"), exchange="nyse"))
    return trades, quotes


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    settings = Settings(
        home=tmp_path_factory.mktemp("timejoins") / "k2home",
        catalog=CatalogSettings(name=f"tj{random.randrange(10**9)}"),
    )
    settings.query.tail_enabled = False
    rng = random.Random(23)
    trades, quotes = _rows(rng)
    lake = open_lake(settings)
    for rows, kind in ((trades, "trades"), (quotes, "quotes")):
        delivered = rows[:]
        rng.shuffle(delivered)  # a later append may hold an older row, and ties arrive out of sequence order
        for i in range(0, len(delivered), 150):
            lake.append(kind, delivered[i : i + 150])
    lake.catalog.close()
    return Seeded(settings, trades, quotes)


@pytest.fixture
def engine(seeded: Seeded) -> Iterator[QueryEngine]:
    with QueryEngine.from_settings(seeded.settings, cache=False) as engine:
        yield engine


# --- the oracle: pandas, never the SQL under test ------------------------------------------------------------------


def _left(rows: list[Row], symbols: list[str]) -> pd.DataFrame:
    picked = [
        r for r in rows if r["exchange"] == "asx" and r["symbol"] in symbols and START <= r["exchange_timestamp"] < END
    ]
    frame = pd.DataFrame(picked).sort_values(["exchange_timestamp", "symbol", "exchange_sequence_number"])
    return frame.reset_index(drop=True)


def _in_force(rows: list[Row], symbol: str, exchange: str) -> pd.DataFrame:
    """One right row per timestamp, the highest sequence; times renamed so merge_asof keeps both."""
    mine = pd.DataFrame([r for r in rows if r["symbol"] == symbol and r["exchange"] == exchange])
    if mine.empty:
        return pd.DataFrame({"at": pd.Series([], dtype="datetime64[us, UTC]"), "rseq": pd.Series([], dtype="int64")})
    mine = mine.sort_values(["exchange_timestamp", "exchange_sequence_number"]).drop_duplicates(
        "exchange_timestamp", keep="last"
    )
    return mine.rename(columns={"exchange_timestamp": "at", "exchange_sequence_number": "rseq"})[
        ["at", "rseq", *[c for c in ("bid_price", "ask_price", "price") if c in mine.columns]]
    ].reset_index(drop=True)


def _asof_oracle(
    seeded: Seeded, symbol: str, direction: str, tolerance: timedelta | None, right: tuple[str, str, str]
) -> list[tuple[int, int | None, int | None]]:
    """(trade sequence, matched right sequence, right - left in microseconds) per trade."""
    kind, r_symbol, r_exchange = right
    left = _left(seeded.trades, [symbol])
    right_rows = _in_force(seeded.quotes if kind == "quotes" else seeded.trades, r_symbol, r_exchange)
    left["exchange_timestamp"] = pd.to_datetime(left["exchange_timestamp"], utc=True).astype("datetime64[us, UTC]")
    right_rows["at"] = pd.to_datetime(right_rows["at"], utc=True).astype("datetime64[us, UTC]")
    tol = pd.Timedelta(tolerance) if tolerance is not None else None

    def merged(way: str) -> pd.DataFrame:
        return pd.merge_asof(
            left, right_rows, left_on="exchange_timestamp", right_on="at", direction=way, tolerance=tol,
            allow_exact_matches=True,
        )  # fmt: skip

    if direction == "nearest":  # the closer of the two; equal distance: backward
        back, fwd = merged("backward"), merged("forward")
        pick = []
        for b, f in zip(back.itertuples(), fwd.itertuples(), strict=True):
            if pd.isna(b.at) or (not pd.isna(f.at) and (f.at - f.exchange_timestamp) < (b.exchange_timestamp - b.at)):
                pick.append(f)
            else:
                pick.append(b)
    else:
        if direction == "forward" and tolerance is None:
            tol = pd.Timedelta(days=1)  # the documented look-ahead
        pick = list(merged(direction).itertuples())
    out = []
    for row in pick:
        if pd.isna(row.at):
            out.append((row.exchange_sequence_number, None, None))
        else:
            diff = (row.at - row.exchange_timestamp) // pd.Timedelta(microseconds=1)
            out.append((row.exchange_sequence_number, int(row.rseq), int(diff)))
    return out


def _all_pages(call: Any, limit: int) -> list[Row]:
    rows: list[Row] = []
    cursor = None
    while True:
        page = call(limit=limit, cursor=cursor)
        assert page.table.num_rows <= limit
        rows += page.table.to_pylist()
        cursor = page.next_cursor
        if cursor is None:
            return rows


# --- as-of join ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["backward", "forward", "nearest"])
@pytest.mark.parametrize("tolerance", [None, timedelta(seconds=2), timedelta(0)])
def test_asof_join_matches_merge_asof(seeded: Seeded, engine: QueryEngine, direction: str, tolerance: Any) -> None:
    got = engine.asof_join("BHP", "asx", START, END, 1000, direction=direction, tolerance=tolerance).table.to_pylist()
    expected = _asof_oracle(seeded, "BHP", direction, tolerance, ("quotes", "BHP", "asx"))
    assert [
        (r["exchange_sequence_number"], r["quote_sequence_number"], r["quote_time_diff_us"]) for r in got
    ] == expected
    if direction == "backward" or tolerance is not None:  # a trade before any quote, or none near enough
        assert any(e[1] is None for e in expected)
    assert any(e[1] is not None for e in expected)
    # The three quotes at T0: the trade at T0 sees the third (seq 3) in every direction.
    at_t0 = next(r for r in got if r["exchange_timestamp"] == T0)
    assert (at_t0["quote_sequence_number"], at_t0["bid_price"], at_t0["quote_time_diff_us"]) == (3, Decimal("9.97"), 0)


def test_asof_tolerance_boundary_is_inside(engine: QueryEngine) -> None:
    """The trade at T0+2s: backward, the T0 quote is exactly 2s before it; forward, the next quote is 2s + 1us after."""
    window = (T0 + timedelta(seconds=1), T0 + timedelta(seconds=3))
    back = engine.asof_join("BHP", "asx", *window, direction="backward", tolerance="2s").table.to_pylist()
    assert [(r["quote_sequence_number"], r["quote_time_diff_us"]) for r in back] == [(3, -2_000_000)]
    assert engine.asof_join("BHP", "asx", *window, tolerance="1999999us").table.column(
        "quote_sequence_number"
    ).to_pylist() == [None]
    forward = engine.asof_join("BHP", "asx", *window, direction="forward", tolerance="2s").table.to_pylist()
    assert [r["quote_sequence_number"] for r in forward] == [None]
    nearest = engine.asof_join("BHP", "asx", *window, direction="nearest").table.to_pylist()
    assert [r["quote_sequence_number"] for r in nearest] == [3]  # 2s back beats 2s + 1us ahead
    midway = (T0 + timedelta(seconds=7), T0 + timedelta(seconds=7, microseconds=1))
    tie = engine.asof_join("BHP", "asx", *midway, direction="nearest", tolerance="1s").table.to_pylist()
    assert [(r["quote_sequence_number"], r["quote_time_diff_us"]) for r in tie] == [(5, -1_000_000)]
    assert back[0]["price"] == Decimal("10.01")  # the trade's own columns come through


@pytest.mark.parametrize("direction", ["backward", "nearest"])
def test_asof_instrument_to_instrument_and_across_exchanges(
    seeded: Seeded, engine: QueryEngine, direction: str
) -> None:
    rio = engine.asof_join("BHP", "asx", START, END, 1000, right_symbol="RIO", direction=direction).table.to_pylist()
    assert [(r["exchange_sequence_number"], r["quote_sequence_number"], r["quote_time_diff_us"]) for r in rio] == (
        _asof_oracle(seeded, "BHP", direction, None, ("quotes", "RIO", "asx"))
    )
    assert {r["quote_symbol"] for r in rio if r["quote_symbol"]} == {"RIO"}
    nyse = engine.asof_join("BHP", "asx", START, END, 1000, right_exchange="nyse", direction=direction).table
    assert [
        (r["exchange_sequence_number"], r["quote_sequence_number"], r["quote_time_diff_us"]) for r in nyse.to_pylist()
    ] == _asof_oracle(seeded, "BHP", direction, None, ("quotes", "BHP", "nyse"))
    assert {r["quote_exchange"] for r in nyse.to_pylist() if r["quote_exchange"]} == {"nyse"}


def test_asof_to_another_instruments_trades(seeded: Seeded, engine: QueryEngine) -> None:
    got = engine.asof_join(
        "BHP", "asx", START, END, 1000, right_symbol="CBA", right_kind="trades", direction="forward", tolerance="5s"
    ).table.to_pylist()
    expected = _asof_oracle(seeded, "BHP", "forward", timedelta(seconds=5), ("trades", "CBA", "asx"))
    assert [
        (r["exchange_sequence_number"], r["right_sequence_number"], r["right_time_diff_us"]) for r in got
    ] == expected
    by_seq = {(r["symbol"], r["exchange_sequence_number"]): r for r in seeded.trades if r["exchange"] == "asx"}
    for row in got:
        if row["right_sequence_number"] is not None:
            assert row["right_price"] == by_seq[("CBA", row["right_sequence_number"])]["price"]


def test_asof_no_quotes_at_all(engine: QueryEngine) -> None:
    table = engine.asof_join("NOQ", "asx", START, END, 1000, direction="nearest").table
    assert table.num_rows > 0
    assert table.column("quote_sequence_number").null_count == table.num_rows


@pytest.mark.parametrize("limit", [1, 7])
def test_asof_pages_like_one_read(engine: QueryEngine, limit: int) -> None:
    whole = engine.asof_join("BHP", "asx", START, END, 1000, direction="nearest", tolerance="3s").table.to_pylist()
    paged = _all_pages(
        lambda **k: engine.asof_join("BHP", "asx", START, END, direction="nearest", tolerance="3s", **k), limit
    )
    assert paged == whole
    assert (
        get_asof_join(engine, "BHP", "asx", START, END, 1000, direction="nearest", tolerance="3s").to_pylist() == whole
    )


# --- window join ----------------------------------------------------------------------------------------------


def _window_oracle(
    seeded: Seeded, symbol: str, before: timedelta, after: timedelta, right: str, prevailing: bool
) -> list[dict[str, Any]]:
    left = _left(seeded.trades, [symbol])
    quotes = sorted(
        (q for q in seeded.quotes if q["symbol"] == right and q["exchange"] == "asx"),
        key=lambda q: (q["exchange_timestamp"], q["exchange_sequence_number"]),
    )
    out = []
    for t in left["exchange_timestamp"]:
        if prevailing:  # kdb+ wj: the last quote at or before the start, then those after it
            entered = [q for q in quotes if q["exchange_timestamp"] <= t - before][-1:]
            inside = entered + [q for q in quotes if t - before < q["exchange_timestamp"] <= t + after]
        else:  # wj1
            inside = [q for q in quotes if t - before <= q["exchange_timestamp"] <= t + after]
        if not inside:
            out.append({"quote_count": 0, "min_bid": None, "max_ask": None, "mean_mid": None, "last_mid": None})
            continue
        mids = pd.Series([float(q["bid_price"] + q["ask_price"]) / 2 for q in inside])
        out.append(
            {
                "quote_count": len(inside),
                "min_bid": min(q["bid_price"] for q in inside),
                "max_ask": max(q["ask_price"] for q in inside),
                "mean_mid": mids.mean(),
                "last_mid": (inside[-1]["bid_price"] + inside[-1]["ask_price"]) / 2,
            }
        )
    return out


@pytest.mark.parametrize(("before", "after"), [("1s", "1s"), ("0s", "0s"), ("5s", "250ms")])
@pytest.mark.parametrize("right", ["BHP", "RIO"])
@pytest.mark.parametrize("prevailing", [False, True], ids=["wj1", "wj"])
def test_window_join_matches_an_interval_filter(
    seeded: Seeded, engine: QueryEngine, before: str, after: str, right: str, prevailing: bool
) -> None:
    got = engine.window_join(
        "BHP", "asx", START, END, 1000, before=before, after=after, prevailing=prevailing,
        right_symbol=None if right == "BHP" else right,
    ).table.to_pylist()  # fmt: skip
    spans = (timejoins.parse_span(before, "before"), timejoins.parse_span(after, "after"))
    expected = _window_oracle(seeded, "BHP", *spans, right, prevailing)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g["quote_count"] == e["quote_count"]
        assert (g["min_bid"], g["max_ask"], g["last_mid"]) == (e["min_bid"], e["max_ask"], e["last_mid"])
        assert g["mean_mid"] == (pytest.approx(e["mean_mid"], rel=1e-12) if e["mean_mid"] is not None else None)
    assert any(e["quote_count"] == 0 for e in expected)  # the trade before any quote
    if after != "0s" or not prevailing:  # wj over [t, t] is the one quote in force at t
        assert any(e["quote_count"] > 1 for e in expected)
    if right == "BHP" and before == "0s":  # at T0 three quotes: wj1 counts all, wj the one in force at the start
        at_t0 = next(g for g in got if g["exchange_timestamp"] == T0)
        assert (at_t0["quote_count"], at_t0["last_bid"]) == (1 if prevailing else 3, Decimal("9.97"))


def test_window_join_pages(engine: QueryEngine) -> None:
    whole = engine.window_join("BHP", "asx", START, END, 1000, before="2s").table.to_pylist()
    assert _all_pages(lambda **k: engine.window_join("BHP", "asx", START, END, before="2s", **k), 5) == whole
    assert get_window_join(engine, "BHP", "asx", START, END, 1000, before="2s").to_pylist() == whole


# --- markouts -------------------------------------------------------------------------------------------------


def _markout_oracle(seeded: Seeded, symbols: list[str], horizons: dict[str, timedelta]) -> list[dict[str, Any]]:
    left = _left(seeded.trades, symbols)
    left["exchange_timestamp"] = pd.to_datetime(left["exchange_timestamp"], utc=True).astype("datetime64[us, UTC]")
    out = [dict(r) for r in left[["symbol", "exchange_sequence_number", "price", "side"]].to_dict("records")]
    for name, h in horizons.items():
        for symbol in symbols:
            mine = left[left["symbol"] == symbol].copy()
            mine["target"] = mine["exchange_timestamp"] + pd.Timedelta(h)
            quotes = _in_force(seeded.quotes, symbol, "asx")
            if quotes.empty:
                for i in mine.index:
                    out[i][f"mid_{name}"] = None
                continue
            quotes["at"] = pd.to_datetime(quotes["at"], utc=True).astype("datetime64[us, UTC]")
            merged = pd.merge_asof(mine.sort_values("target"), quotes, left_on="target", right_on="at")
            for i, row in zip(mine.sort_values("target").index, merged.itertuples(), strict=True):
                out[i][f"mid_{name}"] = None if pd.isna(row.at) else (row.bid_price + row.ask_price) / 2
    for row in out:
        sign = {"buy": 1, "sell": -1}.get(row["side"])
        for name in horizons:
            mid = row[f"mid_{name}"]
            mark = None if mid is None or sign is None else (mid - row["price"]) * sign
            row[f"markout_{name}"] = mark
            row[f"markout_bps_{name}"] = None if mark is None else float(mark) / float(row["price"]) * 10_000
    return out


def test_markouts_match_merge_asof_at_t_plus_h(seeded: Seeded, engine: QueryEngine) -> None:
    symbols = ["BHP", "CBA", "NOQ"]
    horizons = {"500ms": timedelta(milliseconds=500), "1s": timedelta(seconds=1), "60s": timedelta(seconds=60)}
    got = engine.markouts(symbols, "asx", START, END, 1000, horizons=["60s", "1s", "500ms"]).table.to_pylist()
    expected = _markout_oracle(seeded, symbols, horizons)
    assert [(r["symbol"], r["exchange_sequence_number"]) for r in got] == [
        (r["symbol"], r["exchange_sequence_number"]) for r in expected
    ]
    for g, e in zip(got, expected, strict=True):
        for name in horizons:
            assert g[f"mid_{name}"] == e[f"mid_{name}"]
            assert g[f"markout_{name}"] == e[f"markout_{name}"]
            bps = e[f"markout_bps_{name}"]
            assert g[f"markout_bps_{name}"] == (pytest.approx(bps, rel=1e-12) if bps is not None else None)
    # A trade of unknown side has a mid but no markout.
    unknown = [g for g in got if g["side"] == "unknown"]
    assert unknown
    assert all(g["markout_1s"] is None and g["mid_1s"] is not None for g in unknown)


def test_markouts_of_a_whole_exchange_page_like_one_read(seeded: Seeded, engine: QueryEngine) -> None:
    whole = engine.markouts(None, "asx", START, END, 1000, horizons="1s,5s").table.to_pylist()
    assert {r["symbol"] for r in whole} == {"BHP", "CBA", "NOQ"}
    assert _all_pages(lambda **k: engine.markouts(None, "asx", START, END, horizons="1s,5s", **k), 9) == whole
    assert get_markouts(engine, "BHP,CBA,NOQ", "asx", START, END, 1000, horizons="1s,5s").to_pylist() == whole


# --- a whole exchange: every trade joined to its own instrument ---------------------------------------------------

# From before midnight (MID's and OLD's rows) to the end of the window the other tests read.
WIDE = (datetime(2024, 5, 5, 23, 0, tzinfo=UTC), END)


def _frame(rows: list[Row], start: datetime, end: datetime) -> pd.DataFrame:
    picked = [r for r in rows if r["exchange"] == "asx" and start <= r["exchange_timestamp"] < end]
    frame = pd.DataFrame(picked)
    frame["exchange_timestamp"] = pd.to_datetime(frame["exchange_timestamp"], utc=True).astype("datetime64[us, UTC]")
    return frame


def _by_symbol_oracle(
    trades: list[Row], quotes: list[Row], window: tuple[datetime, datetime], direction: str, tolerance: Any
) -> list[tuple[str, int, int | None, int | None]]:
    """(symbol, trade sequence, matched quote sequence, quote - trade in us) per trade in (time, symbol, sequence)
    order: `pd.merge_asof(by="symbol")` against each instrument's quotes, one per timestamp (the highest sequence)."""
    left = _frame(trades, *window).sort_values(["exchange_timestamp", "symbol", "exchange_sequence_number"])
    left = left.reset_index(drop=True)
    right = _frame(quotes, datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
    right = right.sort_values(["symbol", "exchange_timestamp", "exchange_sequence_number"]).drop_duplicates(
        ["symbol", "exchange_timestamp"], keep="last"
    )
    right = right.rename(columns={"exchange_timestamp": "at", "exchange_sequence_number": "rseq"})[
        ["symbol", "at", "rseq"]
    ].sort_values("at")

    def merged(way: str, tol: Any) -> pd.DataFrame:
        out = pd.merge_asof(
            left.sort_values("exchange_timestamp"), right, left_on="exchange_timestamp", right_on="at", by="symbol",
            direction=way, tolerance=None if tol is None else pd.Timedelta(tol),
        )  # fmt: skip
        return out.set_index(left.sort_values("exchange_timestamp").index).sort_index()

    back = merged("backward", tolerance)
    fwd = merged("forward", tolerance if tolerance is not None else timedelta(days=1))
    out = []
    for b, f in zip(back.itertuples(), fwd.itertuples(), strict=True):
        pick = b if direction == "backward" else f
        if direction == "nearest":
            far_b = pd.isna(b.at)
            pick = (
                f
                if far_b or (not pd.isna(f.at) and (f.at - f.exchange_timestamp) < (b.exchange_timestamp - b.at))
                else b
            )
        if pd.isna(pick.at):
            out.append((b.symbol, b.exchange_sequence_number, None, None))
        else:
            diff = (pick.at - pick.exchange_timestamp) // pd.Timedelta(microseconds=1)
            out.append((b.symbol, b.exchange_sequence_number, int(pick.rseq), int(diff)))
    return out


def _keyed(rows: list[Row]) -> list[tuple[str, int, int | None, int | None]]:
    return [
        (r["symbol"], r["exchange_sequence_number"], r["quote_sequence_number"], r["quote_time_diff_us"]) for r in rows
    ]


@pytest.mark.parametrize("direction", ["backward", "forward", "nearest"])
@pytest.mark.parametrize("tolerance", [None, timedelta(seconds=2), timedelta(0)])
def test_asof_join_of_a_whole_exchange_matches_merge_asof_by_symbol(
    seeded: Seeded, engine: QueryEngine, direction: str, tolerance: Any
) -> None:
    got = engine.asof_join(None, "asx", *WIDE, 10_000, direction=direction, tolerance=tolerance).table.to_pylist()
    expected = _by_symbol_oracle(seeded.trades, seeded.quotes, WIDE, direction, tolerance)
    assert _keyed(got) == expected
    assert {r["symbol"] for r in got} == {"BHP", "CBA", "NOQ", "MID", "OLD", "LAT"}
    assert all(r["quote_symbol"] in (None, r["symbol"]) for r in got)
    by_seq = {(q["symbol"], q["exchange_sequence_number"]): q for q in seeded.quotes if q["exchange"] == "asx"}
    for row in got:
        if row["quote_sequence_number"] is not None:
            quote_row = by_seq[(row["symbol"], row["quote_sequence_number"])]
            assert (row["bid_price"], row["ask_price"]) == (quote_row["bid_price"], quote_row["ask_price"])
            assert row["quote_timestamp"] == quote_row["exchange_timestamp"]
    if direction == "backward" and tolerance is None:
        # Just after midnight: MID's trade 1ms before it sees the later of the two quotes 50ms before midnight (the
        # day before's last), those at midnight see the second quote there; OLD's the quote two days before.
        mid = {r["exchange_timestamp"]: r["quote_sequence_number"] for r in got if r["symbol"] == "MID"}
        midnight = datetime(2024, 5, 6, tzinfo=UTC)
        assert mid[midnight - timedelta(milliseconds=1)] == 3
        assert mid[midnight] == 5
        old = next(r for r in got if r["symbol"] == "OLD")
        assert (old["quote_sequence_number"], old["bid_price"]) == (1, Decimal("5.00"))
        lat = [(r["quote_sequence_number"], r["quote_time_diff_us"]) for r in got if r["symbol"] == "LAT"]
        assert lat == [(None, None), (1, -4200)]


def test_a_whole_exchange_without_trades_is_an_empty_answer(engine: QueryEngine) -> None:
    """nyse has quotes but no trades: no rows, in the columns a page with rows has."""
    empty = engine.asof_join(None, "nyse", START, END)
    assert (empty.table.num_rows, empty.next_cursor) == (0, None)
    assert empty.table.schema == engine.asof_join(None, "asx", START, END, 1).table.schema
    marks = engine.markouts(None, "nyse", START, END, horizons="1s").table
    assert marks.num_rows == 0
    assert marks.schema == engine.markouts(None, "asx", START, END, 1, horizons="1s").table.schema


def test_a_whole_exchange_read_through_pyiceberg(seeded: Seeded) -> None:
    """The same answer when pyiceberg, not DuckDB, reads the files (the path for delete files or remote storage)."""
    with QueryEngine.from_settings(seeded.settings, cache=False) as engine:
        engine.sources.direct_reads = False
        got = engine.asof_join(None, "asx", *WIDE, 10_000).table.to_pylist()
    assert _keyed(got) == _by_symbol_oracle(seeded.trades, seeded.quotes, WIDE, "backward", None)


@pytest.mark.parametrize(
    "options",
    [
        {"direction": "nearest", "tolerance": "3s"},
        {"right_kind": "trades", "direction": "forward"},
        {"right_exchange": "nyse", "direction": "backward"},
    ],
)
def test_asof_join_of_a_whole_exchange_equals_the_per_symbol_join(engine: QueryEngine, options: Any) -> None:
    """The same rows, column for column, as each instrument's own join merged in (time, symbol, sequence) order: to
    quotes, to the instrument's own trades, to its quotes on another exchange."""
    whole = engine.asof_join(None, "asx", START, END, 1000, **options).table
    parts = [engine.asof_join(s, "asx", START, END, 1000, **options).table for s in ("BHP", "CBA", "NOQ")]
    merged = pa.concat_tables(parts).sort_by(
        [("exchange_timestamp", "ascending"), ("symbol", "ascending"), ("exchange_sequence_number", "ascending")]
    )
    assert whole.schema == merged.schema
    assert whole.to_pylist() == merged.to_pylist()
    matched = whole.column("right_sequence_number" if "right_kind" in options else "quote_sequence_number")
    assert matched.null_count < whole.num_rows  # something matched


# A page per row is a query per row: that case over the first minutes only (ties on time among symbols included).
@pytest.mark.parametrize(("limit", "window"), [(1, (START, T0 + timedelta(minutes=1))), (7, WIDE)])
def test_a_whole_exchange_pages_like_one_read(
    engine: QueryEngine, limit: int, window: tuple[datetime, datetime]
) -> None:
    whole = engine.asof_join(None, "asx", *window, 10_000, direction="nearest").table.to_pylist()
    assert len(whole) > 3 * limit
    assert _all_pages(lambda **k: engine.asof_join(None, "asx", *window, direction="nearest", **k), limit) == whole
    marks = engine.markouts(None, "asx", *window, 10_000, horizons="1s,5s").table.to_pylist()
    assert _all_pages(lambda **k: engine.markouts(None, "asx", *window, horizons="1s,5s", **k), limit) == marks


def _by_symbol_markouts(
    trades: list[Row],
    quotes: list[Row],
    window: tuple[datetime, datetime],
    horizons: dict[str, timedelta],
    known_until: datetime | None = None,
) -> list[dict[str, Any]]:
    """pandas' markouts; a horizon after `known_until` (the reader's now) has not come yet: null."""
    left = _frame(trades, *window).sort_values(["exchange_timestamp", "symbol", "exchange_sequence_number"])
    left = left.reset_index(drop=True)
    right = _frame(quotes, datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
    right = right.sort_values(["symbol", "exchange_timestamp", "exchange_sequence_number"]).drop_duplicates(
        ["symbol", "exchange_timestamp"], keep="last"
    )
    right = right.rename(columns={"exchange_timestamp": "at"})[["symbol", "at", "bid_price", "ask_price"]]
    out = [dict(r) for r in left[["symbol", "exchange_sequence_number", "price", "side"]].to_dict("records")]
    for name, h in horizons.items():
        target = left.assign(target=left["exchange_timestamp"] + pd.Timedelta(h)).sort_values("target")
        merged = pd.merge_asof(target, right.sort_values("at"), left_on="target", right_on="at", by="symbol")
        for i, row in zip(target.index, merged.itertuples(), strict=True):
            future = known_until is not None and row.target > pd.Timestamp(known_until)
            mid = None if pd.isna(row.at) or future else (row.bid_price + row.ask_price) / 2
            sign = {"buy": 1, "sell": -1}.get(out[i]["side"])
            mark = None if mid is None or sign is None else (mid - out[i]["price"]) * sign
            out[i] |= {
                f"mid_{name}": mid,
                f"markout_{name}": mark,
                f"markout_bps_{name}": None if mark is None else float(mark) / float(out[i]["price"]) * 10_000,
            }
    return out


def _assert_markouts(got: list[Row], expected: list[dict[str, Any]], horizons: Collection[str]) -> None:
    assert [(r["symbol"], r["exchange_sequence_number"]) for r in got] == [
        (r["symbol"], r["exchange_sequence_number"]) for r in expected
    ]
    for g, e in zip(got, expected, strict=True):
        for name in horizons:
            assert (g[f"mid_{name}"], g[f"markout_{name}"]) == (e[f"mid_{name}"], e[f"markout_{name}"])
            bps = e[f"markout_bps_{name}"]
            assert g[f"markout_bps_{name}"] == (pytest.approx(bps, rel=1e-12) if bps is not None else None)


def test_markouts_of_a_whole_exchange_match_merge_asof_by_symbol(seeded: Seeded, engine: QueryEngine) -> None:
    horizons = {"1ms": timedelta(milliseconds=1), "1s": timedelta(seconds=1), "60s": timedelta(seconds=60)}
    result = engine.markouts(None, "asx", *WIDE, 10_000, horizons=["60s", "1s", "1ms"])
    got = result.table.to_pylist()
    expected = _by_symbol_markouts(seeded.trades, seeded.quotes, WIDE, horizons)
    _assert_markouts(got, expected, horizons)
    assert result.table.schema == engine.markouts(["BHP"], "asx", *WIDE, 10, horizons="60s,1s,1ms").table.schema
    # MID's trade 1ms before midnight: at +1ms, the second of the two quotes at midnight (bid 7.40, ask 8.40).
    before = next(g for g in got if g["symbol"] == "MID" and g["exchange_sequence_number"] == 3)
    assert (before["mid_1ms"], before["markout_1ms"]) == (Decimal("7.9"), Decimal("0.65"))
    assert any(g["mid_1s"] is None for g in got)
    assert any(g["markout_1s"] is not None for g in got)


def test_a_whole_exchange_joins_the_realtime_tail(seeded: Seeded) -> None:
    """Tail quotes inside the window and before it (NOQ's only quote) join like committed ones."""
    buffer = RealtimeBuffer(1000, retention=timedelta(days=3650))
    tail_quotes = [
        quote("NOQ", 1, START - timedelta(seconds=1), "8.00", "8.02"),
        quote("BHP", 10_000, END - timedelta(seconds=2), "9.50", "9.60"),
        quote("CBA", 10_000, END - timedelta(milliseconds=500), "9.70000001", "9.85"),
    ]
    tail_trades = [
        trade("BHP", 10_000, END - timedelta(seconds=1), "9.55", 1, side="buy"),
        trade("CBA", 10_000, END - timedelta(milliseconds=400), "9.55", 1, side="sell"),
    ]
    for row in tail_quotes:
        buffer.add("quotes", row, datetime.now(UTC))
    for row in tail_trades:
        buffer.add("trades", row, datetime.now(UTC))
    buffer.mark_ready("trades", "asx", None)
    buffer.mark_ready("quotes", "asx", None)
    lake = open_lake(seeded.settings)
    try:
        engine = QueryEngine(lake.catalog, seeded.settings.catalog.namespace, realtime=buffer, clock=lambda: END)
        trades, quotes = [*seeded.trades, *tail_trades], [*seeded.quotes, *tail_quotes]
        result = engine.asof_join(None, "asx", START, END, 1000)
        assert "realtime" in result.sources
        got = _keyed(result.table.to_pylist())
        assert got == _by_symbol_oracle(trades, quotes, (START, END), "backward", None)
        assert {r[2] for r in got if r[0] == "NOQ"} == {1}
        assert got[-1] == ("CBA", 10_000, 10_000, -100_000)
        horizons = {"1s": timedelta(seconds=1)}
        marks = engine.markouts(None, "asx", START, END, 1000, horizons="1s").table.to_pylist()
        _assert_markouts(marks, _by_symbol_markouts(trades, quotes, (START, END), horizons, END), horizons)
        # CBA's trade 400 ms before now: its +1 s has not come, so no mid (not the latest one known).
        assert marks[-1]["symbol"] == "CBA"
        assert (marks[-1]["mid_1s"], marks[-1]["markout_1s"]) == (None, None)
    finally:
        lake.catalog.close()


def test_a_whole_exchange_cursor_pins_the_quotes_read(make_settings: Any) -> None:
    settings = make_settings()
    settings.query.tail_enabled = False
    lake = open_lake(settings)
    lake.append("quotes", [quote("BHP", 1, T0, "9", "11"), quote("CBA", 1, T0, "19", "21")])
    time.sleep(0.01)
    lake.append(
        "trades", [trade(s, i, T0 + timedelta(seconds=i), "10", 1) for i in range(1, 4) for s in ("BHP", "CBA")]
    )
    window = (T0 - timedelta(minutes=1), T0 + timedelta(minutes=1))
    try:
        with QueryEngine.from_settings(settings, cache=False) as engine:
            first = engine.asof_join(None, "asx", *window, 3)
            time.sleep(0.01)
            lake.append("quotes", [quote("CBA", 2, T0 + timedelta(milliseconds=1500), "18", "22")])
            second = engine.asof_join(None, "asx", *window, 3, cursor=first.next_cursor)
            assert second.next_cursor is None
            rows = [*first.table.to_pylist(), *second.table.to_pylist()]
            assert [(r["symbol"], r["quote_sequence_number"]) for r in rows] == [("BHP", 1), ("CBA", 1)] * 3
            fresh = engine.asof_join(None, "asx", *window, 10).table.to_pylist()
            assert [r["quote_sequence_number"] for r in fresh] == [1, 1, 1, 2, 1, 2]
            with pytest.raises(QueryError, match=r"^cursor"):
                engine.markouts(None, "asx", *window, 3, cursor=first.next_cursor)
    finally:
        lake.catalog.close()


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: e.asof_join("BHP", "asx", START, END, direction="sideways"), r"^direction must be one of"),
        (lambda e: e.asof_join("BHP", "asx", START, END, tolerance="-1s"), r"^tolerance must be a duration"),
        (lambda e: e.asof_join("BHP", "asx", START, END, tolerance=timedelta(seconds=-1)), r"^tolerance must be at"),
        (lambda e: e.asof_join("BHP", "asx", START, END, tolerance="2d"), r"^tolerance must be at most"),
        (lambda e: e.asof_join("BHP", "asx", START, END, right_kind="bars"), r"^right_kind must be"),
        (lambda e: e.asof_join("BHP", "asx", START, END, right_symbol="rio"), r"^right_symbol must be"),
        (lambda e: e.asof_join("BHP", "asx", START, END, right_exchange="mars"), r"^right_exchange must be one of"),
        (lambda e: e.window_join("BHP", "asx", START, END, before="-1s"), r"^before must be"),
        (lambda e: e.window_join("BHP", "asx", START, END, after="1 week"), r"^after must be a duration"),
        (lambda e: e.markouts("BHP", "asx", START, END, horizons="0s"), r"^horizons must be more than 0"),
        (lambda e: e.markouts("BHP", "asx", START, END, horizons="25h"), r"^horizons must be at most"),
        (lambda e: e.markouts("BHP", "asx", START, END, horizons=""), r"^horizons must be a duration"),
        (lambda e: e.markouts("BHP", "asx", START, END, limit=0), r"^limit must be"),
        (lambda e: e.asof_join(None, "asx", START, END, right_symbol="RIO"), r"^right_symbol needs a symbol"),
        (lambda e: e.asof_join(None, "asx", START, END, direction="up"), r"^direction must be one of"),
        (lambda e: e.markouts(None, "asx", START, END, limit=0), r"^limit must be"),
    ],
)
def test_bad_input(engine: QueryEngine, call: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        call(engine)


def test_a_cursor_belongs_to_its_join(engine: QueryEngine) -> None:
    page = engine.asof_join("BHP", "asx", START, END, 3, tolerance="1s")
    assert page.next_cursor is not None
    with pytest.raises(QueryError, match=r"^cursor"):
        engine.asof_join("BHP", "asx", START, END, 3, tolerance="2s", cursor=page.next_cursor)
    with pytest.raises(QueryError, match=r"^cursor"):
        engine.window_join("BHP", "asx", START, END, 3, cursor=page.next_cursor)


# --- HTTP and CLI ---------------------------------------------------------------------------------------------


def test_http_endpoints(seeded: Seeded, engine: QueryEngine) -> None:
    window = {"exchange": "asx", "start": START.isoformat(), "end": END.isoformat()}
    with local_client(create_app(seeded.settings)) as client:
        asof = client.get(
            "/v1/asof", params={**window, "symbol": "BHP", "direction": "nearest", "tolerance": "2s", "limit": "1000"}
        )
        assert asof.status_code == 200, asof.text
        want = engine.asof_join("BHP", "asx", START, END, 1000, direction="nearest", tolerance="2s").table.to_pylist()
        body = asof.json()
        assert body["count"] == len(want)
        assert [
            (r["exchange_sequence_number"], r["quote_sequence_number"], r["quote_time_diff_us"]) for r in body["data"]
        ] == [(r["exchange_sequence_number"], r["quote_sequence_number"], r["quote_time_diff_us"]) for r in want]
        assert [r["bid_price"] for r in body["data"]] == [
            None if r["bid_price"] is None else f"{r['bid_price']:.8f}" for r in want
        ]
        win = client.get("/v1/window", params={**window, "symbol": "BHP", "before": "2s", "after": "0s", "limit": "4"})
        assert win.status_code == 200, win.text
        assert win.json()["next_cursor"] is not None
        assert [r["quote_count"] for r in win.json()["data"]] == [
            r["quote_count"]
            for r in engine.window_join("BHP", "asx", START, END, 4, before="2s", after="0s").table.to_pylist()
        ]
        wj = client.get("/v1/window", params={**window, "symbol": "BHP", "before": "0s", "prevailing": "true"})
        assert [r["quote_count"] for r in wj.json()["data"]] == [
            r["quote_count"]
            for r in engine.window_join("BHP", "asx", START, END, before="0s", prevailing=True).table.to_pylist()
        ]
        marks = client.get(
            "/v1/markouts", params=[*window.items(), ("symbol", "BHP"), ("symbol", "CBA"), ("horizons", "1s,5s")]
        )
        assert marks.status_code == 200, marks.text
        want_marks = engine.markouts("BHP,CBA", "asx", START, END, horizons="1s,5s").table.to_pylist()
        assert [r["markout_5s"] for r in marks.json()["data"]] == [
            None if r["markout_5s"] is None else f"{r['markout_5s']:.9f}" for r in want_marks
        ]
        every = client.get("/v1/markouts", params={**window, "limit": "1000"})
        assert every.status_code == 200, every.text
        assert {r["symbol"] for r in every.json()["data"]} == {"BHP", "CBA", "NOQ"}
        # No symbol: every trade of the exchange, each joined to its own instrument's quotes, paged.
        whole: list[Row] = []
        cursor: str | None = None
        while True:
            extra = {"cursor": cursor} if cursor else {}
            page = client.get("/v1/asof", params={**window, "limit": "25", **extra})
            assert page.status_code == 200, page.text
            assert page.json()["symbol"] is None
            whole += page.json()["data"]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        want_whole = engine.asof_join(None, "asx", START, END, 100_000).table.to_pylist()
        assert [(r["symbol"], r["exchange_sequence_number"], r["quote_sequence_number"]) for r in whole] == [
            (r["symbol"], r["exchange_sequence_number"], r["quote_sequence_number"]) for r in want_whole
        ]
        assert len(whole) > 25
        csv = client.get("/v1/asof", params={**window, "symbol": "BHP", "format": "csv"})
        assert csv.status_code == 200
        assert "quote_time_diff_us" in csv.text.splitlines()[0]
        for path, params in (
            ("/v1/asof", {"direction": "sideways"}),
            ("/v1/asof", {"tolerance": "-2s"}),
            ("/v1/window", {"before": "-1s"}),
            ("/v1/markouts", {"horizons": "0s"}),
            ("/v1/markouts", {"horizons": "2d"}),
        ):
            bad = client.get(path, params={**window, "symbol": "BHP", **params})
            assert bad.status_code == 400, (path, params, bad.text)


def test_joins_need_the_trades_and_quotes_scopes_of_every_exchange(seeded: Seeded) -> None:
    settings = seeded.settings.model_copy(deep=True)
    settings.auth = AuthSettings(mode="on")
    engine = catalog_engine(settings)
    store = KeyStore(engine)
    expires = datetime.now(UTC) + timedelta(days=1)
    window = {"start": START.isoformat(), "end": END.isoformat(), "symbol": "BHP", "exchange": "asx"}
    try:
        with local_client(create_app(settings)) as client:

            def get(path: str, *scopes: str, **params: str) -> int:
                _, token = store.create(f"t{random.randrange(10**9)}", scopes, expires)
                response = client.get(path, params={**window, **params}, headers={"Authorization": f"Bearer {token}"})
                return response.status_code

            for path in ("/v1/asof", "/v1/window", "/v1/markouts"):
                assert get(path, "read:trades:asx") == 403
                assert get(path, "read:quotes:asx") == 403
                assert get(path, "read:trades:asx", "read:quotes:asx") == 200
            across = {"right_exchange": "nyse"}
            assert get("/v1/asof", "read:trades:asx", "read:quotes:asx", **across) == 403
            assert (
                get("/v1/asof", "read:trades:asx", "read:quotes:asx", "read:quotes:nyse", "read:trades:nyse", **across)
                == 200
            )
            assert get("/v1/window", "read:trades:*", "read:quotes:*", **across) == 200
    finally:
        engine.dispose()


def test_cli(seeded: Seeded) -> None:
    from typer.testing import CliRunner

    from k2_cli.main import app

    env = cli_env(seeded.settings)
    window = ["-e", "asx", "--start", START.isoformat(), "--end", END.isoformat()]
    runner = CliRunner()
    asof = runner.invoke(app, ["query", "asof", "BHP", *window, "--direction", "nearest", "--tolerance", "2s"], env=env)
    assert asof.exit_code == 0, asof.output
    assert "quote seq" in asof.stdout
    win = runner.invoke(
        app, ["query", "window", "BHP", *window, "--before", "2s", "--prevailing", "-f", "csv"], env=env
    )
    assert win.exit_code == 0, win.output
    assert win.stdout.splitlines()[0].endswith('"last_mid"')
    marks = runner.invoke(app, ["query", "markouts", "BHP,CBA", *window, "--horizons", "1s,5s", "-f", "csv"], env=env)
    assert marks.exit_code == 0, marks.output
    assert len(marks.stdout.splitlines()) == 1 + len(_left(seeded.trades, ["BHP", "CBA"]))
    every = runner.invoke(app, ["query", "asof", *window, "-f", "csv"], env=env)
    assert every.exit_code == 0, every.output
    assert len(every.stdout.splitlines()) == 1 + len(
        [t for t in seeded.trades if t["exchange"] == "asx" and START <= t["exchange_timestamp"] < END]
    )
    bad = runner.invoke(app, ["query", "asof", "BHP", *window, "--direction", "up"], env=env)
    assert bad.exit_code == 2


def test_a_cursor_and_time_travel_pin_the_quotes_read(make_settings: Any) -> None:
    """A quote committed between two pages is not seen by the second (the cursor pins the quotes snapshot, as
    with_quote's does); a fresh read sees it; a read as of the trades snapshot reads quotes as of its commit."""
    settings = make_settings()
    settings.query.tail_enabled = False
    lake = open_lake(settings)
    lake.append("quotes", [quote("BHP", 1, T0, "9", "11")])
    time.sleep(0.01)  # commit times are in milliseconds: keep the three commits apart
    trades_snapshot = lake.append("trades", [trade("BHP", i, T0 + timedelta(seconds=i), "10", 1) for i in range(1, 7)])
    window = (T0 - timedelta(minutes=1), T0 + timedelta(minutes=1))
    try:
        with QueryEngine.from_settings(settings, cache=False) as engine:
            first = engine.asof_join("BHP", "asx", *window, 3)
            time.sleep(0.01)
            lake.append("quotes", [quote("BHP", 2, T0 + timedelta(milliseconds=2500), "9.5", "10.5")])
            second = engine.asof_join("BHP", "asx", *window, 3, cursor=first.next_cursor)
            assert [r["quote_sequence_number"] for r in [*first.table.to_pylist(), *second.table.to_pylist()]] == [
                1
            ] * 6
            fresh = engine.asof_join("BHP", "asx", *window, 10).table.column("quote_sequence_number").to_pylist()
            assert fresh == [1, 1, 2, 2, 2, 2]
            then = engine.asof_join("BHP", "asx", *window, 10, as_of_snapshot=trades_snapshot)
            assert then.table.column("quote_sequence_number").to_pylist() == [1] * 6
            marks = engine.markouts("BHP", "asx", *window, 10, horizons="1s", as_of_snapshot=trades_snapshot)
            assert marks.table.column("mid_1s").to_pylist() == [Decimal(10)] * 6
    finally:
        lake.catalog.close()


def test_the_realtime_tail_is_joined_too(seeded: Seeded) -> None:
    """Trades and quotes not committed yet (the API's tail) join like committed ones, on both sides."""
    buffer = RealtimeBuffer(1000, retention=timedelta(days=3650))
    tail_quotes = [
        quote("BHP", 10_000, END - timedelta(seconds=2), "9.50", "9.60"),
        quote("BHP", 10_001, END - timedelta(milliseconds=500), "9.70000001", "9.85"),  # mid needs 9 places
    ]
    tail_trades = [trade("BHP", 10_000, END - timedelta(seconds=1), "9.55", 1, side="buy")]
    for row in tail_quotes:
        buffer.add("quotes", row, datetime.now(UTC))
    for row in tail_trades:
        buffer.add("trades", row, datetime.now(UTC))
    buffer.mark_ready("trades", "asx", None)
    buffer.mark_ready("quotes", "asx", None)
    lake = open_lake(seeded.settings)
    try:
        engine = QueryEngine(lake.catalog, seeded.settings.catalog.namespace, realtime=buffer, clock=lambda: END)
        result = engine.asof_join("BHP", "asx", START, END, 1000, direction="nearest")
        assert "realtime" in result.sources
        both = Seeded(seeded.settings, [*seeded.trades, *tail_trades], [*seeded.quotes, *tail_quotes])
        got = result.table.to_pylist()
        assert [(r["exchange_sequence_number"], r["quote_sequence_number"], r["quote_time_diff_us"]) for r in got] == (
            _asof_oracle(both, "BHP", "nearest", None, ("quotes", "BHP", "asx"))
        )
        assert got[-1]["quote_sequence_number"] == 10_001
        marks = engine.markouts("BHP", "asx", START, END, 1000, horizons="1s").table.to_pylist()
        assert (marks[-1]["mid_1s"], marks[-1]["markout_1s"]) == (Decimal("9.775000005"), Decimal("0.225000005"))
    finally:
        lake.catalog.close()


def test_unknown_right_symbol_and_too_many_right_rows(engine: QueryEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnknownSymbolError, match="symbol 'NOPE'"):
        engine.asof_join("BHP", "asx", START, END, right_symbol="NOPE")
    # A page may read at most RIGHT_ROWS_PER_LEFT_ROW * max_limit right rows: beyond, a 400 naming the remedy.
    monkeypatch.setattr(timejoins, "RIGHT_ROWS_PER_LEFT_ROW", 10 / engine.limits.max_limit)  # 10 rows a page
    with pytest.raises(QueryError, match=r"^limit: .* more than 10: lower limit"):
        engine.window_join("BHP", "asx", START, END, 50, before="1d")
    assert engine.window_join("BHP", "asx", START, START + timedelta(seconds=31), before="0s").table.num_rows == 1


@pytest.mark.parametrize("symbols", [None, ["BHP", "CBA", "NOQ"]])
def test_a_horizon_that_has_not_come_yet_is_null(seeded: Seeded, symbols: Any) -> None:
    """Read live at `now`, a trade's +h after now has no mid yet (not the latest one known), exactly as pandas computes
    it with that cut-off, for a whole exchange and for a list. Read as of a moment, the cut-off is that moment."""
    horizons = {"1s": timedelta(seconds=1), "60s": timedelta(seconds=60)}
    asx = [r for r in seeded.trades if r["exchange"] == "asx"]
    last = max(r["exchange_timestamp"] for r in asx if r["exchange_timestamp"] < END)
    now = last + timedelta(seconds=30)
    lake = open_lake(seeded.settings)
    try:
        engine = QueryEngine(lake.catalog, seeded.settings.catalog.namespace, clock=lambda: now)
        window = (START, last + timedelta(microseconds=1))
        got = engine.markouts(symbols, "asx", *window, 10_000, horizons="1s,60s").table.to_pylist()
        picked = [t for t in seeded.trades if symbols is None or t["symbol"] in symbols]
        _assert_markouts(got, _by_symbol_markouts(picked, seeded.quotes, window, horizons, now), horizons)
        assert any(g["mid_60s"] is None and g["mid_1s"] is not None for g in got)
        # Read as of a moment after every commit (long after these trades' exchange times), the market is known up to
        # that moment, whatever the reader's clock says: every horizon with a quote gets its mid.
        travelled = engine.markouts(symbols, "asx", *window, 10_000, horizons="1s,60s", as_of=datetime.now(UTC))
        expected = _by_symbol_markouts(picked, seeded.quotes, window, horizons)
        _assert_markouts(travelled.table.to_pylist(), expected, horizons)
        assert travelled.table.to_pylist() != got
    finally:
        lake.catalog.close()
