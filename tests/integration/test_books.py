"""The done-when test of level-2 books: the simulator's books, through the real broker and the real book ingester,
rebuild at any time exactly as the simulator held them; a gap in the updates is detected, recorded, reported as an
unknown book, and healed by the next snapshot. The simulator's own books (`book_at`) are the oracle."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy
from prometheus_client import REGISTRY
from pyiceberg.expressions import EqualTo
from typer.testing import CliRunner

from k2_api.main import create_app
from k2_cli.main import app
from k2_core.ingest.book_state import instruments_filter, newest_keys
from k2_core.ingest.gaps import HEALED, OPEN, grade
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.lake.offsets import OffsetIndex
from k2_core.model.books import Book
from k2_core.model.registry import FileSchemaRegistry
from k2_core.model.tables import BOOK_SNAPSHOTS, SOURCE_FEED, SOURCE_K2
from k2_core.read.engine import QueryEngine
from k2_core.settings import Settings
from k2_dagster.defs.books import k2_book_snapshots
from k2_stream.admin import cluster_id, ensure_topics
from k2_stream.book_ingester import BookIngester
from k2_stream.producer import FeedProducer
from k2_stream.simulator import Event, FaultConfig, MarketSimulator, SimulatorConfig
from tests.support.clients import cli_env, local_client
from tests.support.databases import private_database
from tests.support.definitions import k2_resources
from tests.support.fixtures import POSTGRES_URI
from tests.support.lake import table_rows
from tests.support.waits import wait_for

SYMBOLS = ("BHP", "CBA")


class StepClock:
    """`step` per reading from an hour ago: distinct, ordered, recent exchange times."""

    def __init__(self, step: timedelta = timedelta(milliseconds=1), start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def simulate(
    trades: int,
    step: timedelta = timedelta(milliseconds=1),
    start: datetime | None = None,
    symbols: tuple[str, ...] = SYMBOLS,
    **config: Any,
) -> tuple[MarketSimulator, list[Event]]:
    sim = MarketSimulator(
        SimulatorConfig(
            "asx",
            symbols=symbols,
            seed=21,
            books=True,
            book_depth=8,
            keep_book_history=True,
            **{"snapshot_every": 60, **config},
        ),
        StepClock(step, start),
    )
    events = [e for e in sim.events(trades) if e.kind in ("book_updates", "book_snapshots")]
    return sim, events


def produce(settings: Settings, events: list[Event]) -> None:
    layout = ensure_topics(settings)
    producer = FeedProducer(settings, layout, FileSchemaRegistry(settings.kafka.schemas_dir))
    for kind, record in events:
        producer.send_event(kind, record)
    producer.flush()


def levels(book: Any, depth: int) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
    return book.levels("bid", depth), book.levels("ask", depth)


def stored(settings: Settings, table: str) -> int:
    return len(table_rows(settings, table))


def test_books_rebuild_at_any_time_exactly_as_the_simulator_held_them(
    broker: str, make_settings: Callable[..., Settings], running_book_ingester: Callable[[Settings], BookIngester]
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.2)
    sim, events = simulate(400)
    updates = [r for kind, r in events if kind == "book_updates"]
    snapshots = [r for kind, r in events if kind == "book_snapshots"]
    produce(settings, events)
    produce(settings, events[: len(events) // 3])  # re-delivery: stored once
    running_book_ingester(settings)
    wait_for(lambda: stored(settings, "book_updates") >= len(updates), timeout=120)
    wait_for(lambda: stored(settings, "book_snapshots") >= len(snapshots), timeout=60)
    assert stored(settings, "book_updates") == len(updates)
    assert stored(settings, "book_snapshots") == len(snapshots)
    assert table_rows(settings, "book_validity") == []
    rng = random.Random(4)
    with QueryEngine.from_settings(settings, cache=False) as engine:
        for symbol in SYMBOLS:
            times = [r["exchange_timestamp"] for r in updates if r["symbol"] == symbol]
            picks = [*rng.sample(times, 12), times[-1], times[0] + timedelta(microseconds=500)]
            for at in picks:
                want = sim.book_at(symbol, at)
                assert want is not None
                got = engine.book(symbol, "asx", at=at, depth=100)
                assert got.valid, got.reason
                assert (got.bids, got.asks) == levels(want, 100)
                assert got.sequence == want.sequence
                shallow = engine.book(symbol, "asx", at=at, depth=3)
                assert (shallow.bids, shallow.asks) == levels(want, 3)
        first_snapshot = min(r["exchange_timestamp"] for r in snapshots)
        before = engine.book("BHP", "asx", at=first_snapshot - timedelta(seconds=1))
        assert not before.valid
        assert "no snapshot" in (before.reason or "")


def unknown_intervals(
    events: list[Event], withheld: dict[str, list[int]]
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Per symbol, from the time of the last update before each withheld number to the first snapshot that
    includes it: when the stored data cannot know the book (plain reading of what was sent)."""
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    for symbol, missing in withheld.items():
        sent = {
            r["exchange_sequence_number"]: r["exchange_timestamp"]
            for k, r in events
            if k == "book_updates" and r["symbol"] == symbol
        }
        snaps = [
            (r["exchange_sequence_number"], r["exchange_timestamp"])
            for k, r in events
            if k == "book_snapshots" and r["symbol"] == symbol
        ]
        for seq in missing:
            start = sent[max(s for s in sent if s < seq)]
            heal = next((t for s, t in snaps if s >= seq), None)
            if heal is not None:
                out.setdefault(symbol, []).append((start, heal))
    return out


def test_a_gap_in_book_updates_is_recorded_reported_unknown_and_healed_by_the_next_snapshot(
    broker: str, make_settings: Callable[..., Settings], running_book_ingester: Callable[[Settings], BookIngester]
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.2)
    sim, events = simulate(300, book_faults=FaultConfig(gap_every=97))
    withheld = {stream.symbol: seqs for stream, seqs in sim.book_faults.stats.withheld.items()}
    assert sum(len(v) for v in withheld.values()) >= 4
    updates = [r for kind, r in events if kind == "book_updates"]
    produce(settings, events)
    running_book_ingester(settings)
    wait_for(lambda: stored(settings, "book_updates") >= len(updates), timeout=120)
    gaps = [g for g in table_rows(settings, "sequence_gaps") if g["data_type"] == "book_updates"]
    assert sorted((g["symbol"], g["first_missing"]) for g in gaps) == sorted(
        (symbol, seq) for symbol, seqs in withheld.items() for seq in seqs
    )
    intervals = unknown_intervals(events, withheld)
    healed_count = sum(len(v) for v in intervals.values())
    wait_for(
        lambda: sum(g["status"] == HEALED for g in table_rows(settings, "sequence_gaps")) == healed_count, timeout=60
    )
    ing = settings.ingest
    for g in table_rows(settings, "sequence_gaps"):
        assert g["missing_count"] == 1
        assert g["severity"] == grade(1, ing.gap_alert_threshold, ing.gap_halt_threshold)
        assert g["status"] in (HEALED, OPEN)
    open_gaps = [g for g in table_rows(settings, "sequence_gaps") if g["status"] == OPEN]
    assert len(open_gaps) == len(gaps) - healed_count  # the ones after each symbol's last snapshot
    with QueryEngine.from_settings(settings, cache=False) as engine:
        for symbol, spans in intervals.items():
            for start, heal in spans:
                inside = start + (heal - start) / 2
                for at in (start, inside, heal - timedelta(microseconds=1)):
                    answer = engine.book(symbol, "asx", at=at)
                    assert not answer.valid, at
                    assert answer.bids == []
                    assert "gap" in (answer.reason or "")
                healed = engine.book(symbol, "asx", at=heal, depth=100)
                assert healed.valid, healed.reason
                want = sim.book_at(symbol, heal)
                assert want is not None
                assert (healed.bids, healed.asks) == levels(want, 100)
            # between gaps the book rebuilds exactly
            compared = 0
            for t in sorted(r["exchange_timestamp"] for r in updates if r["symbol"] == symbol)[::37]:
                if any(s <= t < h for s, h in spans):
                    continue
                answer = engine.book(symbol, "asx", at=t, depth=100)
                if not answer.valid and "gap" in (answer.reason or ""):
                    continue  # after the last gap, which no snapshot healed yet
                want = sim.book_at(symbol, t)
                assert want is not None
                assert answer.valid, answer.reason
                assert (answer.bids, answer.asks) == levels(want, 100)
                compared += 1
            assert compared >= 3
            # the top-of-book series agrees point by point: unknown inside each gap, the simulator's top elsewhere
            first, last = spans[0][0] - timedelta(milliseconds=40), spans[-1][1] + timedelta(milliseconds=40)
            series = engine.book_series(symbol, "asx", first, last, "3ms")
            assert len(series) == (last - first) // timedelta(milliseconds=3) + 1
            for point in series:
                if any(s <= point.at < h for s, h in spans):
                    assert not point.valid, point.at
                    continue
                want = sim.book_at(symbol, point.at)
                assert want is not None
                assert point.valid, point.at
                (bid, bid_size), (ask, ask_size) = want.levels("bid", 1)[0], want.levels("ask", 1)[0]
                got = (point.best_bid, point.bid_size, point.best_ask, point.ask_size)
                assert got == (bid, bid_size, ask, ask_size), point
                assert point.mid == (bid + ask) / 2
                assert point.imbalance == (bid_size - ask_size) / (bid_size + ask_size)


def test_the_book_over_http_and_the_cli(
    broker: str, make_settings: Callable[..., Settings], running_book_ingester: Callable[[Settings], BookIngester]
) -> None:
    """`GET /v1/book` and `k2 query book` answer what the simulator held, exact decimals as text; an unknown book
    is said to be unknown (HTTP 200 with valid false, CLI exit 1); bad input is a 400 / exit 2."""
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.2)
    settings.query.tail_enabled = False
    sim, events = simulate(200, book_faults=FaultConfig(gap_every=150))
    updates = [r for kind, r in events if kind == "book_updates"]
    produce(settings, events)
    running_book_ingester(settings)
    wait_for(lambda: stored(settings, "book_updates") >= len(updates), timeout=120)
    withheld = {stream.symbol: seqs for stream, seqs in sim.book_faults.stats.withheld.items()}
    (symbol, spans), *_ = unknown_intervals(events, withheld).items()
    start, heal = spans[0]
    at = heal + timedelta(microseconds=1)
    want = sim.book_at(symbol, at)
    assert want is not None
    with local_client(create_app(settings)) as client:
        body = client.get("/v1/book", params={"symbol": symbol, "exchange": "asx", "at": at.isoformat(), "depth": 4})
        assert body.status_code == 200, body.text
        got = body.json()
        assert got["valid"] is True
        assert got["depth"] == 4
        assert [(Decimal(lv["price"]), Decimal(lv["size"])) for lv in got["bids"]] == want.levels("bid", 4)
        assert [(Decimal(lv["price"]), Decimal(lv["size"])) for lv in got["asks"]] == want.levels("ask", 4)
        (best_bid, bid_size), (best_ask, ask_size) = want.levels("bid", 1)[0], want.levels("ask", 1)[0]
        assert Decimal(got["spread"]) == best_ask - best_bid
        assert Decimal(got["mid"]) == (best_ask + best_bid) / 2
        assert Decimal(got["imbalance"]) == (bid_size - ask_size) / (bid_size + ask_size)
        unknown = client.get("/v1/book", params={"symbol": symbol, "exchange": "asx", "at": start.isoformat()})
        assert unknown.status_code == 200
        assert unknown.json()["valid"] is False
        assert unknown.json()["bids"] == []
        assert "gap" in unknown.json()["reason"]
        for bad in ({"depth": 0}, {"at": "yesterday"}, {"symbol": "bhp"}, {"exchange": "lse"}):
            refused = client.get("/v1/book", params={"symbol": symbol, "exchange": "asx", **bad})
            assert refused.status_code == 400, (bad, refused.text)
        series = client.get(
            "/v1/book/series",
            params={
                "symbol": symbol,
                "exchange": "asx",
                "start": start.isoformat(),
                "end": at.isoformat(),
                "every": "1ms",
            },
        )
        assert series.status_code == 200, series.text
        points = series.json()["data"]
        assert points[0]["valid"] is False  # the first point is the gap's start
        assert points[-1]["valid"] is True
        assert Decimal(points[-1]["mid"]) == (best_ask + best_bid) / 2
        assert (
            client.get("/v1/book/series", params={"symbol": symbol, "exchange": "asx", "every": "1s"}).status_code
            == 400
        )
    runner = CliRunner()
    shown = runner.invoke(app, ["query", "book", symbol, "-e", "asx", "--at", at.isoformat()], env=cli_env(settings))
    assert shown.exit_code == 0, shown.output
    assert format(want.levels("bid", 1)[0][0].quantize(Decimal("0.00000001")), "f") in shown.output
    said = runner.invoke(app, ["query", "book", symbol, "-e", "asx", "--at", start.isoformat()], env=cli_env(settings))
    assert said.exit_code == 1
    assert "book unknown" in said.output
    refused = runner.invoke(app, ["query", "book", symbol, "-e", "asx", "--depth", "0"], env=cli_env(settings))
    assert refused.exit_code == 2


def test_k2_writes_a_snapshot_a_minute_that_later_rebuilds_start_from(
    broker: str, make_settings: Callable[..., Settings], running_book_ingester: Callable[[Settings], BookIngester]
) -> None:
    """The Dagster asset stores each book at every minute mark as the simulator held it, skips the marks where the
    book was unknown, writes nothing more when run again, and a rebuild then replays at most a minute of updates."""
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.2)
    settings.maintenance.book_snapshot_lookback_minutes = 120
    sim, events = simulate(
        300, step=timedelta(milliseconds=700), snapshot_every=400, book_faults=FaultConfig(gap_every=333)
    )
    updates = [r for kind, r in events if kind == "book_updates"]
    produce(settings, events)
    running_book_ingester(settings)
    wait_for(lambda: stored(settings, "book_updates") >= len(updates), timeout=120)
    withheld = {stream.symbol: seqs for stream, seqs in sim.book_faults.stats.withheld.items()}
    unknown = unknown_intervals(events, withheld)
    resources = k2_resources(settings)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([k2_book_snapshots], resources=resources, instance=instance).success
    k2 = [r for r in table_rows(settings, "book_snapshots") if r["source"] == SOURCE_K2]
    assert len(k2) >= 2 * len(SYMBOLS)
    for row in k2:
        mark = row["exchange_timestamp"]
        assert mark.second == 0
        assert mark.microsecond == 0
        assert not any(start <= mark < heal for start, heal in unknown.get(row["symbol"], []))
        want = sim.book_at(row["symbol"], mark)
        assert want is not None
        assert row["exchange_sequence_number"] == want.sequence
        assert [(lv["price"], lv["size"]) for lv in row["bids"]] == want.levels("bid", None)
        assert [(lv["price"], lv["size"]) for lv in row["asks"]] == want.levels("ask", None)
    assert dg.materialize([k2_book_snapshots], resources=resources, instance=instance).success
    assert len([r for r in table_rows(settings, "book_snapshots") if r["source"] == SOURCE_K2]) == len(k2)
    with QueryEngine.from_settings(settings, cache=False) as engine:
        for row in k2:
            at = row["exchange_timestamp"] + timedelta(seconds=59)
            answer = engine.book(row["symbol"], "asx", at=at, depth=100)
            if not answer.valid:
                continue  # a gap after the mark
            assert answer.snapshot_at is not None
            assert at - answer.snapshot_at < timedelta(minutes=1)
            want = sim.book_at(row["symbol"], at)
            assert want is not None
            assert (answer.bids, answer.asks) == levels(want, 100)


def test_a_restarted_feed_numbering_its_books_again_is_a_new_session(
    broker: str, make_settings: Callable[..., Settings], running_book_ingester: Callable[[Settings], BookIngester]
) -> None:
    """A simulator restarted (as `k2 run` restarts its feeds) numbers its books from 0 again, later in time: its
    books are stored and rebuilt, not dropped as duplicates of the first run's numbers."""
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.2)
    first, first_events = simulate(200)
    second = MarketSimulator(
        SimulatorConfig("asx", symbols=SYMBOLS, seed=99, books=True, book_depth=8, keep_book_history=True),
        StepClock(start=first_events[-1].record["exchange_timestamp"] + timedelta(seconds=5)),
    )
    second_events = [e for e in second.events(200) if e.kind in ("book_updates", "book_snapshots")]
    produce(settings, first_events)
    produce(settings, second_events)
    updates = [r for kind, r in first_events + second_events if kind == "book_updates"]
    running_book_ingester(settings)
    wait_for(lambda: stored(settings, "book_updates") >= len(updates), timeout=120)
    assert stored(settings, "book_updates") == len(updates)
    assert [g for g in table_rows(settings, "sequence_gaps") if g["data_type"] == "book_updates"] == []
    rng = random.Random(5)
    with QueryEngine.from_settings(settings, cache=False) as engine:
        for sim, events in ((first, first_events), (second, second_events)):
            times = [r["exchange_timestamp"] for kind, r in events if kind == "book_updates"]
            for at in rng.sample(times, 10):
                for symbol in SYMBOLS:
                    want = sim.book_at(symbol, at)
                    if want is None:
                        continue
                    got = engine.book(symbol, "asx", at=at, depth=100)
                    assert got.valid, got.reason
                    assert (got.bids, got.asks) == levels(want, 100)


def holes(events: list[Event]) -> dict[str, list[int]]:
    """Per symbol, the first number of each run of update numbers missing from what was sent, a run split after each
    snapshot sent inside it (the snapshot holds the numbers up to its own: only those after it are missing from
    then on): the gaps the book ingester must record, once each, whenever it ran."""
    sent: dict[str, set[int]] = {}
    snapshots: dict[str, set[int]] = {}
    for kind, r in events:
        into = sent if kind == "book_updates" else snapshots
        into.setdefault(r["symbol"], set()).add(r["exchange_sequence_number"])
    out: dict[str, list[int]] = {}
    for symbol, seqs in sent.items():
        for a, b in itertools.pairwise(sorted(seqs)):
            if b > a + 1:
                inside = sorted(n for n in snapshots.get(symbol, set()) if a < n < b - 1)
                out.setdefault(symbol, []).extend([a + 1, *(n + 1 for n in inside)])
    return out


@pytest.mark.parametrize(
    "hours_past_midnight",
    # Fixed starts (deterministic whenever the test runs): from a midnight a snapshot of CBA lies inside a run of
    # its missing numbers; from 7h past one the restart comes before NAB's first update of its day; from 15h past
    # one CBA loses numbers twice before one snapshot heals both gaps.
    [0, 7, 15],
)
def test_a_restarted_book_ingester_reads_the_newest_days_and_decides_across_the_restart_exactly(
    broker: str, make_settings: Callable[..., Settings], hours_past_midnight: int
) -> None:
    """Four days of stored books, the book ingester stopped mid-stream and started again: the new one fills each
    book from its newest stored day only (one day for the books stored that day, the day before for one that was
    not), records exactly the gaps in what was sent (one across the restart, one of a book last stored a day
    earlier), never a continuation, drops a re-delivery of stored records, heals across the restart the gaps a
    snapshot after it covers, and reports the books still unknown. The oracle is what was sent."""
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.2)
    symbols = ("BHP", "CBA", "NAB")
    # From a midnight: where the days begin among the events (and so which books a day holds) is then the same
    # whenever the test runs.
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight - timedelta(days=5, hours=-hours_past_midnight)
    sim, events = simulate(
        200, step=timedelta(minutes=12), start=start, symbols=symbols, book_faults=FaultConfig(gap_every=97)
    )
    days = sorted({r["exchange_timestamp"].date() for _, r in events})
    assert len(days) >= 4
    # The restart comes right after BHP's update before a withheld number, after the first day: the gap is found by
    # the restarted ingester, from what the first one stored.
    withheld = {stream.symbol: seqs for stream, seqs in sim.book_faults.stats.withheld.items()}
    cut = next(
        i + 1
        for i, (kind, r) in enumerate(events)
        if kind == "book_updates"
        and r["symbol"] == "BHP"
        and r["exchange_sequence_number"] + 1 in withheld["BHP"]
        and r["exchange_timestamp"].date() in days[1:-1]
    )
    restart_day = events[cut - 1].record["exchange_timestamp"].date()
    # CBA's feed is lost for the restart's day up to the restart: its book was last stored the day before (and the
    # day's files, holding BHP and NAB, may hold CBA as far as their statistics say: they are read, and it is not).
    sent = [
        e
        for i, e in enumerate(events)
        if not (i < cut and e.record["symbol"] == "CBA" and e.record["exchange_timestamp"].date() == restart_day)
    ]
    before = [e for e in sent if events.index(e) < cut]
    after = sent[len(before) :]
    n_updates = sum(kind == "book_updates" for kind, _ in sent)
    redelivered = before[-len(before) // 4 :]
    counted = {  # the process's own metrics, read before and after (other tests of the session count into them too)
        "written": ("k2_rows_written_total", {"table": "book_updates"}),
        "duplicates": ("k2_duplicates_dropped_total", {"table": "book_updates"}),
        "consumed": ("k2_messages_consumed_total", {"topic": "market.equities.books.asx"}),
    }
    at_start = {k: REGISTRY.get_sample_value(name, labels) or 0.0 for k, (name, labels) in counted.items()}

    first = BookIngester(settings)
    thread = threading.Thread(target=first.run, daemon=True)
    thread.start()
    try:
        produce(settings, before)
        wait_for(lambda: stored(settings, "book_updates") >= sum(k == "book_updates" for k, _ in before), timeout=120)
    finally:
        first.stop()
        thread.join(60)
    assert not thread.is_alive()

    # What a restart reads: the newest day holding each book, no older one.
    tables = {name: table_rows(settings, name) for name in ("book_updates",)}
    assert len({r["exchange_timestamp"].date() for r in tables["book_updates"]}) >= 2
    # Each book's newest stored day, from the stored rows: BHP's is the restart's day, CBA's the day before (its
    # feed was lost that day), NAB's either (the restart may come before NAB's first update of the day).
    newest_day = {
        symbol: max(r["exchange_timestamp"].date() for r in tables["book_updates"] if r["symbol"] == symbol)
        for symbol in symbols
    }
    assert newest_day["BHP"] == restart_day
    assert newest_day["CBA"] == restart_day - timedelta(days=1)
    second = BookIngester(settings)
    for instruments in ({("asx", "BHP"), ("asx", "NAB")}, {("asx", "CBA")}):
        keys, read = newest_keys(second.books.updates, instruments)
        # Newest first, each day down to the oldest of the books' newest days whose files may hold one of them (as
        # pyiceberg's planning prunes files on their symbol bounds: a day holding only BHP is not read for CBA), no
        # older one.
        oldest = (min(newest_day[symbol] for _, symbol in instruments) - date(1970, 1, 1)).days
        scan = second.books.updates.scan(row_filter=instruments_filter(instruments))
        assert read == len({task.file.partition[0] for task in scan.plan_files()} - set(range(oldest)))
        wanted = {
            (r["symbol"], r["exchange_sequence_number"])
            for r in tables["book_updates"]
            if ("asx", r["symbol"]) in instruments and r["exchange_timestamp"].date() == newest_day[r["symbol"]]
        }
        assert (
            set(
                zip(keys.column("symbol").to_pylist(), keys.column("exchange_sequence_number").to_pylist(), strict=True)
            )
            == wanted
        )

    thread = threading.Thread(target=second.run, daemon=True)
    thread.start()
    try:
        produce(settings, redelivered)  # re-delivered after the restart: stored already
        produce(settings, after)
        n_snapshots = sum(kind == "book_snapshots" for kind, _ in sent)
        wait_for(lambda: stored(settings, "book_updates") >= n_updates, timeout=120)
        wait_for(lambda: stored(settings, "book_snapshots") >= n_snapshots, timeout=60)
        expected = holes(sent)
        assert any(seq in withheld["BHP"] for seq in expected["BHP"])
        intervals = unknown_intervals(sent, expected)
        healed = sum(len(v) for v in intervals.values())
        wait_for(
            lambda: sum(g["status"] == HEALED for g in table_rows(settings, "sequence_gaps")) == healed, timeout=60
        )
        assert stored(settings, "book_updates") == n_updates
        assert stored(settings, "book_snapshots") == n_snapshots
        gaps = [g for g in table_rows(settings, "sequence_gaps") if g["data_type"] == "book_updates"]
        assert sorted((g["symbol"], g["first_missing"]) for g in gaps) == sorted(
            (symbol, seq) for symbol, seqs in expected.items() for seq in seqs
        )
        # The books still unknown: those whose last gap no snapshot sent after it covers.
        unknown = {symbol for symbol, seqs in expected.items() if len(intervals.get(symbol, [])) < len(seqs)}
        health = second.health()
        assert {key.split(":")[1] for key in health["unknown_books"]} == unknown
        assert health["last_commit"] is not None
        assert REGISTRY.get_sample_value("k2_books_unknown", {"exchange": "asx"}) == len(unknown)
        moved = {
            k: (REGISTRY.get_sample_value(name, labels) or 0.0) - at_start[k] for k, (name, labels) in counted.items()
        }
        assert moved == {
            "written": n_updates,
            "duplicates": sum(kind == "book_updates" for kind, _ in redelivered),
            "consumed": len(sent) + len(redelivered),
        }
    finally:
        second.stop()
        thread.join(60)


def test_a_restart_takes_the_feeds_snapshots_not_k2s_own(make_settings: Callable[..., Settings]) -> None:
    """K2's minute snapshots (source `k2`) are newer than the feed's, but numbered from stored updates: the tracker's
    last snapshot is the feed's, found on an older day, exactly as a scan of the whole table says."""
    settings = make_settings()
    tables = ensure_tables(open_catalog(settings), settings.catalog.namespace)
    snapshots = tables["book_snapshots"]
    now = datetime.now(UTC)
    rows = [
        {**Book(5).snapshot_record("BHP", "asx", now - timedelta(days=3), now), "source": SOURCE_FEED},
        {**Book(7).snapshot_record("BHP", "asx", now - timedelta(days=2), now), "source": SOURCE_FEED},
        {**Book(9).snapshot_record("BHP", "asx", now - timedelta(hours=1), now), "source": SOURCE_K2},
        {**Book(4).snapshot_record("CBA", "asx", now - timedelta(hours=1), now), "source": SOURCE_FEED},
    ]
    snapshots.append(BOOK_SNAPSHOTS.to_arrow(rows))
    feed = EqualTo(term="source", value=SOURCE_FEED)
    keys, _ = newest_keys(snapshots, {("asx", "BHP"), ("asx", "CBA")}, feed)
    whole = snapshots.scan(row_filter=feed).to_arrow()

    def newest_of(table: Any) -> dict[str, tuple[datetime, int]]:
        out: dict[str, tuple[datetime, int]] = {}
        for r in table.to_pylist():
            out[r["symbol"]] = max(
                out.get(r["symbol"], (r["exchange_timestamp"], -1)),
                (r["exchange_timestamp"], r["exchange_sequence_number"]),
            )
        return out

    newest, got = newest_of(whole), newest_of(keys)
    assert got == newest
    assert got["BHP"][1] == 7


def oracle_bars(
    sim: MarketSimulator, events: list[Event], withheld: list[int], symbol: str, width: timedelta, depth: int
) -> pd.DataFrame:
    """The book of `symbol` as bars, computed with pandas from the simulator's own books: each state weighs from
    the event that made it to the next one; the book is unknown before its first snapshot and from the last update
    before each withheld number until the first snapshot that includes it (for ever if none does)."""
    ups = [r for k, r in events if k == "book_updates" and r["symbol"] == symbol]
    snaps = [r for k, r in events if k == "book_snapshots" and r["symbol"] == symbol]
    unknown = [(snaps[0]["exchange_timestamp"] - timedelta(days=1), snaps[0]["exchange_timestamp"])]
    for seq in withheld:
        began = max(r["exchange_timestamp"] for r in ups if r["exchange_sequence_number"] < seq)
        heal = next((r["exchange_timestamp"] for r in snaps if r["exchange_sequence_number"] >= seq), None)
        unknown.append((began, heal or datetime.max.replace(tzinfo=UTC)))
    first = min(r["exchange_timestamp"] for r in ups)
    start = pd.Timestamp(first).floor(width).to_pydatetime()
    end = max(r["exchange_timestamp"] for r in ups) + timedelta(milliseconds=1)
    cuts = {r["exchange_timestamp"] for r in ups + snaps} | {t for span in unknown for t in span}
    cuts |= {start + i * width for i in range(int((end - start) / width) + 1)}
    times = [*sorted(t for t in cuts if start <= t < end), end]
    rows = []
    for t0, t1 in itertools.pairwise(times):
        book = None if any(a <= t0 < b for a, b in unknown) else sim.book_at(symbol, t0)
        row: dict[str, Any] = {"t": t0, "us": (t1 - t0) // timedelta(microseconds=1), "known": book is not None}
        if book is not None:
            (bid, bid_size), (ask, ask_size) = book.levels("bid", 1)[0], book.levels("ask", 1)[0]
            row |= {
                "mid": (bid + ask) / 2,
                "spread": ask - bid,
                "imbalance": (bid_size - ask_size) / (bid_size + ask_size),
                "bid_depth": sum(s for _, s in book.levels("bid", depth)),
                "ask_depth": sum(s for _, s in book.levels("ask", depth)),
            }
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["bar"] = frame["t"].dt.floor(width)
    frame["updates"] = 0
    counts = pd.Series([pd.Timestamp(r["exchange_timestamp"]).floor(width) for r in ups]).value_counts()
    scale = Decimal("0.00000001")
    out = []
    for bar, seg in frame.groupby("bar"):
        known = seg[seg["known"]]
        total = int(known["us"].sum())
        item: dict[str, Any] = {"start": bar.to_pydatetime(), "known_seconds": total / 1e6,
                                "updates": int(counts.get(bar, 0))}  # fmt: skip
        if total:
            item |= {"mid_open": known["mid"].iloc[0], "mid_high": known["mid"].max(), "mid_low": known["mid"].min(),
                     "mid_close": known["mid"].iloc[-1], "spread_min": known["spread"].min(),
                     "spread_max": known["spread"].max()}  # fmt: skip
            for name in ("spread", "imbalance", "bid_depth", "ask_depth"):
                weighted = sum(v * int(us) for v, us in zip(known[name], known["us"], strict=True))
                item[f"{name}_mean"] = (weighted / total).quantize(scale)
        out.append(item)
    return pd.DataFrame(out)


def nulls_as_none(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(object).where(frame.notna(), None)


def test_book_bars_and_series_agree_with_the_simulators_books(
    broker: str, make_settings: Callable[..., Settings], running_book_ingester: Callable[[Settings], BookIngester]
) -> None:
    """Depth, spread, mid and imbalance as bars (Python, REST, CLI) against a pandas computation over the
    simulator's own books, across gaps that leave the book unknown for part of a bar; the series carries depth."""
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.2)
    settings.query.tail_enabled = False
    sim, events = simulate(300, step=timedelta(milliseconds=20), book_faults=FaultConfig(gap_every=97))
    withheld = {stream.symbol: seqs for stream, seqs in sim.book_faults.stats.withheld.items()}
    updates = [r for kind, r in events if kind == "book_updates"]
    produce(settings, events)
    running_book_ingester(settings)
    wait_for(lambda: stored(settings, "book_updates") >= len(updates), timeout=120)
    symbol = "BHP"
    times = [r["exchange_timestamp"] for r in updates if r["symbol"] == symbol]
    start, end = times[0], times[-1] + timedelta(milliseconds=1)
    want = oracle_bars(sim, events, withheld[symbol], symbol, timedelta(seconds=1), depth=3)
    assert len(want) >= 8
    assert 0 < want["known_seconds"].sum() < (end - want["start"].iloc[0]).total_seconds()  # gaps inside
    with QueryEngine.from_settings(settings, cache=False) as engine:
        bars = engine.book_bars(symbol, "asx", start, end, "1s", depth=3)
        got = pd.DataFrame([vars(b) for b in bars])
        pd.testing.assert_frame_equal(nulls_as_none(got[want.columns]), nulls_as_none(want), check_dtype=False)
        assert got.loc[got["known_seconds"] == 0, "mid_open"].isna().all()
        # number 80: after the first snapshot (60), before the first gap (97)
        at = next(
            r["exchange_timestamp"] for r in updates if r["symbol"] == symbol and r["exchange_sequence_number"] == 80
        )
        point = engine.book_series(symbol, "asx", at, at, "1s", depth=2)[0]
        book = sim.book_at(symbol, at)
        assert book is not None
        assert point.bid_depth == sum(s for _, s in book.levels("bid", 2))
        assert point.ask_depth == sum(s for _, s in book.levels("ask", 2))
    with local_client(create_app(settings)) as client:
        params = {"symbol": symbol, "exchange": "asx", "start": start.isoformat(), "end": end.isoformat(),
                  "interval": "1s", "depth": 3}  # fmt: skip
        body = client.get("/v1/book/bars", params=params)
        assert body.status_code == 200, body.text
        served = body.json()
        assert served["count"] == len(want)
        assert [Decimal(b["mid_close"]) if b["mid_close"] else None for b in served["data"]] == [
            None if pd.isna(v) else v for v in want["mid_close"]
        ]
        assert [b["known_seconds"] for b in served["data"]] == list(want["known_seconds"])
        year_one = {"start": "0001-01-01T00:00:00", "end": "0001-01-01T00:00:05"}
        first_days = client.get("/v1/book/series", params={**params, **year_one})  # a week's look-back fits no more
        assert first_days.status_code == 200, first_days.text
        assert not any(p["valid"] for p in first_days.json()["data"])
        for bad in ({"interval": "1w"}, {"interval": "soon"}, {"depth": 0}, {"end": start.isoformat()},
                    {**year_one, "interval": "31d"}):  # fmt: skip
            refused = client.get("/v1/book/bars", params={**params, **bad})
            assert refused.status_code == 400, (bad, refused.text)
        assert "fixed width" in client.get("/v1/book/bars", params={**params, "interval": "1mo"}).json()["detail"]
        series = client.get("/v1/book/series", params={**params, "every": "1s"}).json()
        assert series["depth"] == 3
        assert {"bid_depth", "ask_depth"} <= series["data"][0].keys()
    runner = CliRunner()
    env = cli_env(settings)
    shown = runner.invoke(
        app,
        ["query", "book-bars", symbol, "-e", "asx", "-i", "1s", "--start", start.isoformat(), "--end", end.isoformat()],
        env=env,
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert f"{len(want)} bars" in shown.output
    listed = runner.invoke(
        app,
        ["query", "book-series", symbol, "-e", "asx", "--start", start.isoformat(), "--end", end.isoformat(),
         "--every", "500ms"],
        env=env,
    )  # fmt: skip
    assert listed.exit_code == 0, listed.output
    assert "points" in listed.output
    refused = runner.invoke(app, ["query", "book-bars", symbol, "-e", "asx", "--start", "x"], env=env)
    assert refused.exit_code == 2


def test_a_book_ingester_whose_catalog_fails_retries_and_stores_every_update_once(
    broker: str, make_settings: Callable[..., Settings], running_book_ingester: Callable[[Settings], BookIngester]
) -> None:
    """The catalog refuses writes for a while (its table of tables renamed away): the book ingester's batches fail,
    /health says so, it backs off and re-reads from its committed positions; once the catalog is back every update
    and snapshot is stored exactly once and the books rebuild as the simulator held them."""
    with private_database(POSTGRES_URI, "k2_books_") as uri:
        settings = make_settings(catalog="postgres", bootstrap=broker, batch_max_seconds=0.2)
        settings.catalog.uri = uri
        settings.ingest.retry_backoff_seconds = 0.2
        settings.ingest.max_backoff_seconds = 1.0
        sim, events = simulate(300)
        updates = [r for kind, r in events if kind == "book_updates"]
        snapshots = [r for kind, r in events if kind == "book_snapshots"]
        half = len(events) // 2
        produce(settings, events[:half])
        ingester = running_book_ingester(settings)
        wait_for(lambda: stored(settings, "book_updates") > 0, timeout=60)
        catalog = sqlalchemy.create_engine(uri, isolation_level="AUTOCOMMIT")
        with catalog.connect() as conn:
            conn.execute(sqlalchemy.text("ALTER TABLE iceberg_tables RENAME TO iceberg_tables_away"))
        try:
            produce(settings, events[half:])
            wait_for(lambda: ingester.health()["error"] is not None, timeout=30)
            assert ingester.health()["status"] == "down"
            time.sleep(1.5)  # a few failed batches, backing off
        finally:
            with catalog.connect() as conn:
                conn.execute(sqlalchemy.text("ALTER TABLE iceberg_tables_away RENAME TO iceberg_tables"))
            catalog.dispose()
        wait_for(lambda: stored(settings, "book_updates") >= len(updates), timeout=60)
        wait_for(lambda: ingester.health()["error"] is None, timeout=30)
        assert ingester.stats["failed_batches"] > 0
        time.sleep(1)
        assert stored(settings, "book_updates") == len(updates)
        assert stored(settings, "book_snapshots") == len(snapshots)
        with QueryEngine.from_settings(settings, cache=False) as engine:
            for symbol in SYMBOLS:
                times = [r["exchange_timestamp"] for r in updates if r["symbol"] == symbol]
                for at in times[len(times) // 3 :: max(1, len(times) // 12)]:
                    want = sim.book_at(symbol, at)
                    assert want is not None
                    got = engine.book(symbol, "asx", at=at, depth=100)
                    assert got.valid, got.reason
                    assert (got.bids, got.asks) == levels(want, 100)


def test_the_book_ingester_thins_its_snapshots_and_resumes_across_a_restart(
    broker: str, make_settings: Callable[..., Settings], running_book_ingester: Callable[[Settings], BookIngester]
) -> None:
    """A book ingester commits a batch a second or more: its tables' snapshots are thinned as it writes (before,
    only the daily 7-day expiry touched them: 86,400 snapshots a day of metadata in every commit), keeping the
    offsets it resumes from, so a restarted ingester stores the rest exactly once."""
    settings = make_settings(
        bootstrap=broker, batch_max_seconds=0.2, batch_max_rows=40, retention_every_commits=4, keep_snapshots=3
    )
    _, events = simulate(300)
    updates = [r for kind, r in events if kind == "book_updates"]
    snapshots = [r for kind, r in events if kind == "book_snapshots"]
    first = 2 * len(events) // 3
    produce(settings, events[:first])
    ingester = BookIngester(settings)
    thread = threading.Thread(target=ingester.run, daemon=True)
    thread.start()
    first_updates = sum(1 for kind, _ in events[:first] if kind == "book_updates")
    try:
        wait_for(lambda: stored(settings, "book_updates") >= first_updates, timeout=120)
    finally:
        ingester.stop()
        thread.join(30)
    assert not thread.is_alive()

    table = open_catalog(settings).load_table(("market", "book_updates"))
    commits = table.metadata.last_sequence_number
    held = len(table.metadata.snapshots)
    assert commits > 20  # batches of at most 40 messages
    # the newest 3, up to 4 more since the last pass, the hour's and day's tags (before: one per commit; thinned but
    # not carrying quiet partitions along, the chain behind the first partition to go quiet kept 22 of 33)
    assert held <= 3 + 4 + 2, (held, commits)

    produce(settings, events[first:])
    running_book_ingester(settings)
    wait_for(lambda: stored(settings, "book_updates") >= len(updates), timeout=120)
    wait_for(lambda: stored(settings, "book_snapshots") >= len(snapshots), timeout=60)
    time.sleep(1)  # nothing more arrives
    assert stored(settings, "book_updates") == len(updates)
    assert stored(settings, "book_snapshots") == len(snapshots)
    updates_table = open_catalog(settings).load_table(("market", "book_updates"))
    resume = OffsetIndex(cluster_id(settings.kafka.bootstrap_servers)).refresh(updates_table)
    assert sum(resume.values()) == len(events)  # every message's offset, from snapshots retention kept
