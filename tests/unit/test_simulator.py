"""The simulator's pure core: sequence numbering, exact fault placement, market realism and the recovery store."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from k2_core.exceptions import ConfigError, ReplayFormatError
from k2_core.model.avro import Decoder, encode
from k2_core.model.registry import FileSchemaRegistry
from k2_core.model.topics import KINDS, Kind, TopicLayout
from k2_core.settings import REPO_ROOT, Settings
from k2_stream.simulator import (
    CATALOG,
    Event,
    FaultConfig,
    Instrument,
    MarketSimulator,
    RecoveryStore,
    SimulatorConfig,
    Stream,
    instruments_for,
    load_recovery,
    recovery_path,
)
from k2_stream.simulator.instruments import flat_ladder
from k2_stream.simulator.recovery import (
    DECIMAL_FIELDS,
    OPTIONAL_TIMESTAMP_FIELDS,
    TIMESTAMP_FIELDS,
    append_recovery,
    from_json_line,
    to_json_line,
)

SCHEMAS = REPO_ROOT / "schemas" / "avro"
T0 = datetime(2024, 3, 1, 0, 0, tzinfo=UTC)


class TickingClock:
    """A deterministic clock, one microsecond per reading, so whole event lists compare equal across runs."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now


def simulate(
    exchange: str = "asx",
    trades: int = 400,
    seed: int = 11,
    symbols: tuple[str, ...] | None = None,
    quotes: bool = True,
    **faults: int,
) -> tuple[MarketSimulator, list[Event]]:
    config = SimulatorConfig(exchange, symbols=symbols, quotes=quotes, seed=seed, faults=FaultConfig(**faults))
    sim = MarketSimulator(config, clock=TickingClock())
    return sim, list(sim.events(trades))


def by_stream(events: list[Event]) -> dict[Stream, list[int]]:
    streams: dict[Stream, list[int]] = defaultdict(list)
    for event in events:
        streams[event.stream].append(event.sequence)
    return dict(streams)


def generated_counts(exchange: str, trades: int, seed: int) -> dict[Stream, int]:
    """How many messages each stream generated, from a fault-free run with the same seed (faults do not
    touch the random draws, so the market is identical)."""
    _, clean = simulate(exchange, trades, seed)
    return {s: len(seqs) for s, seqs in by_stream(clean).items()}


def reordered(n: int, every: int) -> list[int]:
    """Reference order for reorder_every: the Nth, 2Nth, ... message swaps with its successor; pairs are
    disjoint; the last message has no successor and stays put."""
    out, i = [], 1
    while i <= n:
        if i % every == 0 and i < n:
            out += [i + 1, i]
            i += 2
        else:
            out.append(i)
            i += 1
    return out


# --- sequence numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", ["asx", "nyse", "binance"])
def test_sequences_start_at_one_without_holes(exchange: str) -> None:
    _, events = simulate(exchange, trades=600)
    streams = by_stream(events)
    assert {s.kind for s in streams} == {"trades", "quotes"}
    for stream, seqs in streams.items():
        assert seqs == list(range(1, len(seqs) + 1)), stream
    assert sum(len(v) for s, v in streams.items() if s.kind == "trades") == 600


def test_trades_and_quotes_have_separate_sequence_spaces() -> None:
    _, events = simulate("nyse", trades=50, symbols=("IBM",))
    kinds = [e.kind for e in events]
    assert kinds == ["quotes", "trades"] * 50, "a quote update precedes each trade"
    assert [e.sequence for e in events if e.kind == "trades"] == list(range(1, 51))
    assert [e.sequence for e in events if e.kind == "quotes"] == list(range(1, 51))


def test_no_quotes() -> None:
    sim, events = simulate("binance", trades=30, quotes=False)
    assert {e.kind for e in events} == {"trades"}
    assert sim.quotes_generated == 0
    assert sim.trades_generated == 30


def test_symbols_restrict_the_feed() -> None:
    _, events = simulate("asx", trades=100, symbols=("BHP", "CBA"))
    assert {e.record["symbol"] for e in events} == {"BHP", "CBA"}


# --- faults -------------------------------------------------------------------------------------------------


def test_gap_every_withholds_exactly_the_multiples() -> None:
    generated = generated_counts("asx", 500, 5)
    sim, events = simulate("asx", trades=500, seed=5, gap_every=4)
    sent = by_stream(events)
    assert set(generated) == set(sent)
    for stream, n in generated.items():
        expected_withheld = list(range(4, n + 1, 4))
        assert sent[stream] == [s for s in range(1, n + 1) if s % 4], stream
        assert sim.stats.withheld.get(stream, []) == expected_withheld, stream
        recovered = sim.recovery.fetch(stream.kind, stream.symbol, 1, n)
        assert [r["exchange_sequence_number"] for r in recovered] == expected_withheld
    assert sim.stats.duplicates == 0
    assert sim.stats.reorders == 0


def test_duplicate_every_sends_exactly_every_nth_twice() -> None:
    generated = generated_counts("nyse", 300, 8)
    sim, events = simulate("nyse", trades=300, seed=8, duplicate_every=3)
    sent = by_stream(events)
    for stream, n in generated.items():
        expected: list[int] = []
        for seq in range(1, n + 1):
            expected += [seq, seq] if seq % 3 == 0 else [seq]
        assert sent[stream] == expected, stream
        assert sim.stats.sent[stream] == len(expected)
    assert sim.stats.duplicates == sum(n // 3 for n in generated.values())
    assert sim.stats.withheld == {}


@pytest.mark.parametrize("every", [1, 2, 5])
def test_reorder_every_swaps_exactly_every_nth_with_its_successor(every: int) -> None:
    generated = generated_counts("binance", 300, 9)
    sim, events = simulate("binance", trades=300, seed=9, reorder_every=every)
    sent = by_stream(events)
    swaps = 0
    for stream, n in generated.items():
        expected = reordered(n, every)
        assert sent[stream] == expected, stream
        swaps += sum(1 for a, b in itertools.pairwise(expected) if a > b)
    assert sim.stats.reorders == swaps > 0


def test_faults_combine_without_losing_or_inventing_messages() -> None:
    generated = generated_counts("asx", 400, 3)
    sim, events = simulate("asx", trades=400, seed=3, gap_every=5, duplicate_every=2, reorder_every=3)
    sent = by_stream(events)
    for stream, n in generated.items():
        assert set(sent[stream]) == {s for s in range(1, n + 1) if s % 5}, stream
        assert sim.stats.withheld[stream] == list(range(5, n + 1, 5))
    delivered = sum(generated.values()) - sum(len(v) for v in sim.stats.withheld.values())
    assert len(events) == delivered + sim.stats.duplicates
    assert sum(sim.stats.sent.values()) == len(events)


def test_reorder_tail_is_released_at_finish() -> None:
    sim = MarketSimulator(
        SimulatorConfig("asx", symbols=("BHP",), quotes=False, seed=1, faults=FaultConfig(reorder_every=2)),
        clock=TickingClock(),
    )
    sent = [e.sequence for _ in range(2) for e in sim.step()]
    assert sent == [1], "message 2 is held for its successor"
    assert [e.sequence for e in sim.finish()] == [2]
    assert sim.stats.reorders == 0


@pytest.mark.parametrize(
    "faults", [{"gap_every": -1}, {"duplicate_every": -2}, {"reorder_every": -1}, {"gap_every": 1}]
)
def test_fault_config_rejects_nonsense(faults: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        FaultConfig(**faults)


# --- market realism ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", ["asx", "nyse", "binance"])
def test_prices_on_tick_and_books_consistent(exchange: str) -> None:
    sim, events = simulate(exchange, trades=3000, seed=21)
    instruments = {i.symbol: i for i in sim.instruments}
    last_quote: dict[str, dict[str, object]] = {}
    for kind, record in events:
        inst = instruments[record["symbol"]]
        for value in record.values():
            assert not isinstance(value, float)
        if kind == "quotes":
            assert inst.on_tick(record["bid_price"])
            assert inst.on_tick(record["ask_price"])
            assert record["bid_price"] <= record["ask_price"]
            assert record["bid_size"] > 0
            assert record["ask_size"] > 0
            last_quote[record["symbol"]] = record
            continue
        price, volume = record["price"], record["volume"]
        assert isinstance(price, Decimal)
        assert isinstance(volume, Decimal)
        assert inst.on_tick(price), (record["symbol"], price)
        assert price.as_tuple().exponent >= -8
        assert volume.as_tuple().exponent >= -8
        assert volume > 0
        assert volume % inst.lot_step == 0
        quote = last_quote[record["symbol"]]
        assert quote["bid_price"] < price <= quote["ask_price"]  # type: ignore[operator]
        assert record["side"] in ("buy", "sell")
        assert record["trade_id"] == f"{exchange}-{record['symbol']}-{record['exchange_sequence_number']}"


def test_asx_tick_ladder() -> None:
    pls = next(i for i in CATALOG["asx"] if i.symbol == "PLS")
    assert pls.tick_at(Decimal("0.05")) == Decimal("0.001")
    assert pls.tick_at(Decimal("0.10")) == Decimal("0.005")
    assert pls.tick_at(Decimal("1.995")) == Decimal("0.005")
    assert pls.tick_at(Decimal("2.00")) == Decimal("0.01")
    assert pls.step(Decimal("1.995"), 2) == Decimal("2.01")
    assert pls.step(Decimal("2.00"), -1) == Decimal("1.995")
    assert pls.step(Decimal("0.10"), -1) == Decimal("0.099")
    assert pls.step(Decimal("0.003"), -10) == Decimal("0.001"), "floored at one minimum tick"
    assert pls.round_to_tick(Decimal("1.998")) == Decimal("2.00")
    assert not pls.on_tick(Decimal("1.997"))
    assert not pls.on_tick(Decimal("2.005"))


def test_tick_sizes_per_venue() -> None:
    binance = {i.symbol: i for i in CATALOG["binance"]}
    assert binance["BTCUSDT"].tick_at(Decimal(65000)) == Decimal("0.01")
    assert binance["XRPUSDT"].tick_at(Decimal("0.52")) == Decimal("0.0001")
    assert binance["BTCUSDT"].lot_step == Decimal("0.00001")
    assert all(i.tick_at(i.start_price) == Decimal("0.01") for i in CATALOG["nyse"])
    for instruments in CATALOG.values():
        assert all(i.on_tick(i.start_price) for i in instruments)


def test_volumes_in_sensible_lots() -> None:
    _, nyse = simulate("nyse", trades=2000, seed=4)
    volumes = [r["volume"] for k, r in nyse if k == "trades"]
    assert all(v == v.to_integral_value() for v in volumes)
    round_lots = sum(1 for v in volumes if v % 100 == 0)
    assert round_lots / len(volumes) > 0.6, "NYSE trades are mostly round lots"
    _, asx = simulate("asx", trades=500, seed=4)
    assert all(r["volume"] == r["volume"].to_integral_value() for k, r in asx if k == "trades")
    _, btc = simulate("binance", trades=300, seed=4, symbols=("BTCUSDT",))
    btc_volumes = [r["volume"] for k, r in btc if k == "trades"]
    assert any(v != v.to_integral_value() for v in btc_volumes), "crypto trades fractional quantities"
    assert all(v % Decimal("0.00001") == 0 for v in btc_volumes)


def test_catalog_covers_the_configured_exchanges() -> None:
    layout = TopicLayout.load(REPO_ROOT / "config" / "kafka" / "topics.yaml")
    assert set(CATALOG) == set(layout.exchanges)
    assert {"BHP", "CBA", "CSL", "NAB", "WBC", "ANZ", "WES", "MQG", "RIO", "FMG"} <= {i.symbol for i in CATALOG["asx"]}
    assert {"IBM", "JPM", "GS", "XOM", "KO", "WMT", "DIS", "BA"} <= {i.symbol for i in CATALOG["nyse"]}
    assert {"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT"} <= {i.symbol for i in CATALOG["binance"]}


def test_instruments_must_fit_eight_decimal_places() -> None:
    with pytest.raises(ConfigError, match="at most 8 decimal places"):
        Instrument("X", Decimal(1), flat_ladder("0.000000001"), Decimal(1), "shares", Decimal(1))
    with pytest.raises(ConfigError, match="lot_step"):
        Instrument("X", Decimal(1), flat_ladder("0.01"), Decimal(0), "shares", Decimal(1))


def test_unknown_symbols_and_exchanges_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not listed on asx"):
        instruments_for("asx", ["BHP", "AAPL"])
    with pytest.raises(ConfigError, match="simulated"):
        instruments_for("lse")


# --- determinism and schema -----------------------------------------------------------------------------------


def test_same_seed_same_feed() -> None:
    faults = {"gap_every": 7, "duplicate_every": 5, "reorder_every": 4}
    _, first = simulate("binance", trades=300, seed=42, **faults)
    _, second = simulate("binance", trades=300, seed=42, **faults)
    _, other = simulate("binance", trades=300, seed=43, **faults)
    assert first == second
    assert first != other


def test_timestamps_are_aware_utc() -> None:
    sim = MarketSimulator(SimulatorConfig("asx", seed=1))
    for _, record in sim.events(20):
        for name in ("exchange_timestamp", "ingestion_timestamp"):
            assert record[name].tzinfo is not None
            assert record[name].utcoffset() == timedelta(0)


@pytest.mark.parametrize("kind", KINDS)
def test_records_match_the_avro_schemas(kind: Kind) -> None:
    registry = FileSchemaRegistry(SCHEMAS)
    schema_id, schema = registry.latest(f"market.equities.{kind}-value")
    assert [f["name"] for f in registry.raw[schema_id]["fields"]] == list(
        next(r for k, r in simulate("asx", trades=5)[1] if k == kind)
    )
    decoder = Decoder(registry)
    for event_kind, record in simulate("asx", trades=50)[1]:
        if event_kind == kind:
            assert decoder.decode(encode(schema_id, schema, record)) == record


# --- recovery store -----------------------------------------------------------------------------------------


def test_recovery_field_types_follow_the_avro_schemas() -> None:
    registry = FileSchemaRegistry(SCHEMAS)
    for kind in KINDS:
        sid, _ = registry.latest(f"market.equities.{kind}-value")
        fields = registry.raw[sid]["fields"]

        def logical(f: dict[str, Any]) -> str | None:
            t = f["type"]
            t = next((b for b in t if b != "null"), None) if isinstance(t, list) else t
            return t.get("logicalType") if isinstance(t, dict) else None

        decimals = {f["name"] for f in fields if logical(f) == "decimal"}
        stamps = {f["name"] for f in fields if logical(f) == "timestamp-micros" and not isinstance(f["type"], list)}
        optional_stamps = {
            f["name"] for f in fields if logical(f) == "timestamp-micros" and isinstance(f["type"], list)
        }
        assert DECIMAL_FIELDS[kind] == decimals
        assert stamps == TIMESTAMP_FIELDS
        assert optional_stamps == OPTIONAL_TIMESTAMP_FIELDS


def test_recovery_round_trips_types_through_the_file(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    sim, _ = simulate("asx", trades=200, seed=6, gap_every=3)
    withheld = sim.take_unpersisted()
    assert withheld
    assert sim.take_unpersisted() == []
    path = recovery_path(settings, "asx")
    assert append_recovery(path, withheld) == len(withheld)
    assert path == tmp_path / "recovery" / "asx.jsonl"

    store = load_recovery(settings, "asx")
    assert len(store) == len(withheld)
    for kind, record in withheld:
        [fetched] = store.fetch(
            kind, record["symbol"], record["exchange_sequence_number"], record["exchange_sequence_number"]
        )
        assert fetched == record
        assert type(fetched["exchange_sequence_number"]) is int
        assert fetched["exchange_timestamp"].tzinfo is not None
        price_field = "price" if kind == "trades" else "bid_price"
        assert isinstance(fetched[price_field], Decimal)


def test_recovery_fetch_returns_exactly_the_range_in_order() -> None:
    store = RecoveryStore("asx")
    sim, _ = simulate("asx", trades=300, seed=2, symbols=("BHP",), gap_every=2)
    for event in sim.take_unpersisted():
        store.add(event)
    assert [r["exchange_sequence_number"] for r in store.fetch("trades", "BHP", 3, 11)] == [4, 6, 8, 10]
    assert [r["exchange_sequence_number"] for r in store.fetch("quotes", "BHP", 1, 4)] == [2, 4]
    assert store.fetch("trades", "BHP", 5, 5) == []
    assert store.fetch("trades", "CBA", 1, 100) == []
    assert store.fetch("trades", "BHP", 10, 2) == []
    with pytest.raises(ReplayFormatError):
        store.add(simulate("nyse", trades=1)[1][0])


def test_recovery_file_edge_cases(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert len(load_recovery(settings, "nyse")) == 0, "no file yet is an empty store"
    sim, _ = simulate("nyse", trades=100, seed=1, symbols=("IBM",), quotes=False, gap_every=10)
    first_run = sim.take_unpersisted()
    path = recovery_path(settings, "nyse")
    append_recovery(path, first_run)
    # A later run reusing sequence number 10 wins; a half-written final line is left for the next load.
    later = Event("trades", {**first_run[0].record, "trade_id": "rerun"})
    with path.open("a") as fh:
        fh.write(to_json_line(later) + "\n")
        fh.write(to_json_line(later)[:20])
    store = load_recovery(settings, "nyse")
    assert store.fetch("trades", "IBM", 10, 10)[0]["trade_id"] == "rerun"
    assert len(store) == len(first_run)

    path.write_text(to_json_line(later) + "\n" + json.dumps({"kind": "trades", "record": {}}) + "\n")
    with pytest.raises(ReplayFormatError, match=r"nyse\.jsonl:2"):
        load_recovery(settings, "nyse")
    with pytest.raises(ReplayFormatError, match="timezone"):
        from_json_line(to_json_line(later).replace("+00:00", ""))
