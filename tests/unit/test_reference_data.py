"""The shipped reference files (config/instruments) against the simulator they describe, and the strict rules over
columns against a plain-Decimal oracle."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from k2_core.ingest.reference import ReferenceRules
from k2_core.model.instruments import Instrument, fingerprint, isin_check_digit_ok, parse_dir
from k2_core.model.records import PRICE_FIELDS, SIZE_FIELDS
from k2_core.model.tables import MARKET_TABLES
from k2_core.settings import InstrumentSettings
from k2_stream.simulator.generator import MarketSimulator, SimulatorConfig
from k2_stream.simulator.instruments import CATALOG
from tests.support.factories import trade

SHIPPED = parse_dir(InstrumentSettings().dir)


def test_the_shipped_files_list_every_simulated_instrument_once() -> None:
    shipped = sorted((i.exchange, i.symbol) for i in SHIPPED)
    simulated = sorted((exchange, i.symbol) for exchange, listed in CATALOG.items() for i in listed)
    assert shipped == simulated


@pytest.mark.parametrize("exchange", sorted(CATALOG))
def test_the_simulators_prices_and_sizes_are_on_the_shipped_ticks_and_lots(exchange: str) -> None:
    """Every instrument made strict: nothing the simulator sends (faults off) is refused, and the oracle (Decimal
    remainders) agrees row by row."""
    rules = ReferenceRules.of(replace(i, strict=True) for i in SHIPPED)
    sim = MarketSimulator(SimulatorConfig(exchange, seed=7))
    events = [e for _ in range(3000) for e in sim.step()]
    for kind, table_def in MARKET_TABLES.items():
        records = [e.record for e in events if e.kind == kind]
        ref = {i.symbol: i for i in SHIPPED if i.exchange == exchange}
        off = [
            r
            for r in records
            if any(r[f] % ref[r["symbol"]].tick_size for f in PRICE_FIELDS[kind])
            or any(r[f] % ref[r["symbol"]].lot_size for f in SIZE_FIELDS[kind])
        ]
        assert off == []
        assert rules.refuse(kind, exchange, table_def.to_arrow(records)) == []


def test_the_rules_refuse_what_the_oracle_refuses_and_name_why() -> None:
    bhp = Instrument("BHP", "asx", "equities", "AUD", Decimal("0.005"), Decimal(10), listed=date(2024, 1, 2),
                     delisted=date(2024, 1, 3), strict=True)  # fmt: skip
    cba = replace(bhp, symbol="CBA", strict=False)
    rules = ReferenceRules.of([bhp, cba])
    day = datetime(2024, 1, 2, 23, 59, tzinfo=UTC)
    rows = [
        trade("BHP", 1, day, "45.125", "20"),
        trade("BHP", 2, day, "45.127", "20"),
        trade("BHP", 3, day, "45.125", "25"),
        trade("BHP", 4, datetime(2024, 1, 3, 23, 0, tzinfo=UTC), "45.13", "10"),  # the delisting day still trades
        trade("BHP", 5, datetime(2024, 1, 4, tzinfo=UTC), "45.13", "10"),
        trade("BHP", 6, datetime(2024, 1, 1, 23, 59, tzinfo=UTC), "45.13", "10"),
        trade("CBA", 1, day, "45.127", "3"),  # not strict
        trade("NAB", 1, day, "45.127", "3"),  # unknown, and asx is not a strict exchange
    ]
    table = pa.Table.from_pylist(rows, schema=MARKET_TABLES["trades"].arrow_schema)  # in this order, unsorted
    refused = rules.refuse("trades", "asx", table)
    assert [(i, why.split(": ", 2)[-1]) for i, why in refused] == [
        (1, "price 45.127 is not a multiple of tick_size 0.005"),
        (2, "volume 25 is not a multiple of lot_size 10"),
        (4, "exchange_timestamp's date 2024-01-04 is outside its listed dates [2024-01-02, 2024-01-03]"),
        (5, "exchange_timestamp's date 2024-01-01 is outside its listed dates [2024-01-02, 2024-01-03]"),
    ]
    strict_asx = ReferenceRules.of([bhp, cba], strict_exchanges={"asx"})
    indices = [i for i, _ in strict_asx.refuse("trades", "asx", table)]
    assert indices == [1, 2, 4, 5, 6, 7]  # CBA strict by its exchange now, NAB not listed


def test_isin_check_digits_and_row_fingerprints() -> None:
    assert isin_check_digit_ok("AU000000BHP4")
    assert isin_check_digit_ok("US4592001014")
    assert not isin_check_digit_ok("US4592001015")
    assert fingerprint(SHIPPED) == fingerprint(reversed(SHIPPED))
    assert fingerprint(SHIPPED) != fingerprint([replace(SHIPPED[0], lot_size=Decimal(7)), *SHIPPED[1:]])
