"""The simulator's level-2 books: consistent with its own quotes and trades, numbered without holes, snapshots that
are the book, and a trades/quotes feed unchanged by books being on. The oracle replays the published updates with
plain dicts, independently of k2_core.model.books."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from k2_core.model.avro import Decoder, encode
from k2_core.model.registry import FileSchemaRegistry
from k2_core.settings import REPO_ROOT
from k2_stream.simulator import Event, FaultConfig, MarketSimulator, SimulatorConfig

T0 = datetime(2024, 3, 1, 0, 0, tzinfo=UTC)
DEPTH = 6


class TickingClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now


def run(
    exchange: str = "asx", trades: int = 300, books: bool = True, **config: Any
) -> tuple[MarketSimulator, list[Event]]:
    sim = MarketSimulator(
        SimulatorConfig(exchange, seed=5, books=books, book_depth=DEPTH, snapshot_every=20, **config), TickingClock()
    )
    return sim, list(sim.events(trades))


Side = dict[Decimal, Decimal]


def replay(events: list[Event]) -> dict[str, list[tuple[datetime, int, Side, Side]]]:
    """Per symbol, the book after each update: (time, sequence, bids, asks), from the updates alone."""
    books: dict[str, tuple[Side, Side]] = defaultdict(lambda: ({}, {}))
    states: dict[str, list[tuple[datetime, int, Side, Side]]] = defaultdict(list)
    for kind, r in events:
        if kind != "book_updates":
            continue
        bids, asks = books[r["symbol"]]
        side = bids if r["side"] == "bid" else asks
        if r["size"] == 0:
            del side[r["price"]]
        else:
            side[r["price"]] = r["size"]
        states[r["symbol"]].append((r["exchange_timestamp"], r["exchange_sequence_number"], dict(bids), dict(asks)))
    return states


def state_at(states: list[tuple[datetime, int, Side, Side]], at: datetime) -> tuple[Side, Side]:
    before = [s for s in states if s[0] <= at]
    return (before[-1][2], before[-1][3]) if before else ({}, {})


def test_trades_and_quotes_are_the_same_with_books_on() -> None:
    _, off = run(books=False)
    _, on = run(books=True)
    assert [e for e in on if e.kind in ("trades", "quotes")] == off
    assert {e.kind for e in on} == {"trades", "quotes", "book_updates", "book_snapshots"}


def test_each_quote_is_the_top_of_the_book_and_books_never_cross() -> None:
    _, events = run("nyse")
    states = replay(events)
    quotes = [r for kind, r in events if kind == "quotes"]
    assert quotes
    for q in quotes:
        bids, asks = state_at(states[q["symbol"]], q["exchange_timestamp"])
        best_bid, best_ask = max(bids), min(asks)
        assert (best_bid, bids[best_bid], best_ask, asks[best_ask]) == (
            q["bid_price"],
            q["bid_size"],
            q["ask_price"],
            q["ask_size"],
        )
    for per_symbol in states.values():
        last_per_time = {at: (bids, asks) for at, _, bids, asks in per_symbol}  # a step's updates share one time
        for bids, asks in last_per_time.values():
            assert len(bids) <= DEPTH
            assert len(asks) <= DEPTH
            if bids and asks:
                assert max(bids) < min(asks)


def test_a_buy_at_the_shown_ask_takes_its_volume_out_of_that_level() -> None:
    _, events = run("binance", trades=400)
    states = replay(events)
    checked = 0
    for kind, t in events:
        if kind != "trades" or t["side"] != "buy":
            continue
        _, asks_before = state_at(states[t["symbol"]], t["exchange_timestamp"] - timedelta(microseconds=1))
        if t["price"] not in asks_before:
            continue  # inside the spread: hidden liquidity, the visible book is unchanged
        _, asks_after = state_at(states[t["symbol"]], t["exchange_timestamp"])
        # the shown ask is the top level (churn never resizes it), so what is left there is exactly this
        assert asks_after.get(t["price"], Decimal(0)) == max(asks_before[t["price"]] - t["volume"], Decimal(0))
        checked += 1
    assert checked > 10


def test_updates_are_numbered_per_symbol_from_one_and_snapshots_are_the_book() -> None:
    sim, events = run("asx", keep_book_history=True)
    states = replay(events)
    seqs: dict[str, list[int]] = defaultdict(list)
    for kind, r in events:
        if kind == "book_updates":
            seqs[r["symbol"]].append(r["exchange_sequence_number"])
    for numbers in seqs.values():
        assert numbers == list(range(1, len(numbers) + 1))
    snapshots = [r for kind, r in events if kind == "book_snapshots"]
    assert {s["symbol"] for s in snapshots} == set(seqs)
    for s in snapshots:
        by_seq = {seq: (b, a) for _, seq, b, a in states[s["symbol"]]}
        bids, asks = by_seq.get(s["exchange_sequence_number"], ({}, {}))
        assert [(lv["price"], lv["size"]) for lv in s["bids"]] == sorted(bids.items(), reverse=True)
        assert [(lv["price"], lv["size"]) for lv in s["asks"]] == sorted(asks.items())
    # book_at answers what the updates say, at any time
    last = events[-1].record["exchange_timestamp"]
    for symbol, per_symbol in states.items():
        for at in (T0, per_symbol[0][0], per_symbol[len(per_symbol) // 2][0] + timedelta(microseconds=1), last):
            book = sim.book_at(symbol, at)
            bids, asks = state_at(per_symbol, at)
            got = (book.bids, book.asks) if book is not None else ({}, {})
            assert got == (bids, asks)


def test_book_gaps_withhold_updates_only_and_every_record_encodes() -> None:
    sim, events = run("asx", book_faults=FaultConfig(gap_every=7))
    updates = [r for kind, r in events if kind == "book_updates"]
    assert updates
    assert all(r["exchange_sequence_number"] % 7 for r in updates)
    assert sum(kind == "book_snapshots" for kind, _ in events) == sim.book_snapshots_generated  # never withheld
    trades = [r for kind, r in events if kind == "trades"]
    assert len(trades) == sim.trades_generated  # the book faults touch book updates only
    registry = FileSchemaRegistry(REPO_ROOT / "schemas" / "avro")
    decoder = Decoder(registry)
    for kind, r in events:
        if kind.startswith("book_"):
            sid, schema = registry.latest(f"market.equities.{kind}-value")
            assert decoder.decode(encode(sid, schema, r)) == r
    assert sim.book_updates_generated == len(updates) + sum(len(v) for v in sim.book_faults.stats.withheld.values())


@pytest.mark.parametrize("exchange", ["asx", "nyse", "binance"])
def test_book_prices_are_on_tick_and_sizes_on_lot(exchange: str) -> None:
    sim, events = run(exchange, trades=200)
    instruments = {i.symbol: i for i in sim.instruments}
    for kind, r in events:
        if kind == "book_updates":
            inst = instruments[r["symbol"]]
            assert inst.on_tick(r["price"])
            assert r["size"] % inst.lot_step == 0


def test_the_recovery_store_hands_out_the_newest_snapshot_at_or_before_a_time() -> None:
    sim, events = run("asx", keep_book_history=True)
    snapshots = [r for kind, r in events if kind == "book_snapshots" and r["symbol"] == "BHP"]
    middle = snapshots[len(snapshots) // 2]
    assert sim.recovery.snapshot("BHP", middle["exchange_timestamp"]) == middle
    assert sim.recovery.snapshot("BHP") == snapshots[-1]
    assert sim.recovery.snapshot("BHP", T0) is None
    asked = sim.snapshot_now("BHP")
    assert asked.kind == "book_snapshots"
    book = sim.book_at("BHP", asked.record["exchange_timestamp"])
    assert book is not None
    assert asked.record["exchange_sequence_number"] == book.sequence
    assert sim.recovery.snapshot("BHP") == asked.record
