"""The degradation cascade under real pressure: slow catalog commits (a row lock held in PostgreSQL) and a
catalog that refuses writes (its table renamed away), with a real broker and real Iceberg files."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy

from k2_core.ingest.gaps import SHED_GAP_REASON
from k2_core.settings import DegradationSettings, Settings
from k2_stream.ingester import Ingester
from tests.support.databases import private_database
from tests.support.factories import feed_trade
from tests.support.fixtures import POSTGRES_URI
from tests.support.kafka import produce, produced_keys
from tests.support.lake import table_rows
from tests.support.waits import wait_for


@contextmanager
def feeding(settings: Settings, symbols: tuple[str, ...], rate: float = 40.0) -> Iterator[None]:
    """Produce trades for `symbols` at about `rate` per second per symbol until the block ends."""
    stop = threading.Event()

    def run() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            produce(settings, [("trades", feed_trade(s, seq)) for s in symbols])
            time.sleep(1 / rate)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@contextmanager
def ingesting(settings: Settings) -> Iterator[Ingester]:
    ingester = Ingester(settings)
    thread = threading.Thread(target=ingester.run, daemon=True)
    thread.start()
    try:
        yield ingester
    finally:
        ingester.stop()
        thread.join(30)


def hold_row_lock(catalog_name: str, seconds: float) -> None:
    """Block every commit to market.trades for `seconds`: the SQL catalog's compare-and-swap UPDATE waits."""
    engine = sqlalchemy.create_engine(POSTGRES_URI)
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text(
                "SELECT 1 FROM iceberg_tables WHERE catalog_name = :c AND table_name = 'trades' FOR UPDATE"
            ),
            {"c": catalog_name},
        )
        time.sleep(seconds)
    engine.dispose()


def test_slow_writes_raise_the_level_shed_non_critical_symbols_and_recover(
    broker: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(catalog="postgres", bootstrap=broker, batch_max_seconds=0.2, metrics_port=0)
    settings.degradation = DegradationSettings(
        lag_seconds=[600, 1200, 1800],
        write_seconds=[0.25, 0.5, 0.9],
        recover_seconds=0.5,
        critical_symbols=["BHP"],
    )
    levels: list[int] = []

    def stored() -> set[tuple[str, int]]:
        return {(r["symbol"], r["exchange_sequence_number"]) for r in table_rows(settings, "trades")}

    with ingesting(settings) as ingester:
        with feeding(settings, ("BHP", "CBA")):
            wait_for(lambda: len(table_rows(settings, "trades")) > 0, timeout=60)
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    levels.append(ingester.health()["degradation_level"])
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            for _ in range(3):
                hold_row_lock(settings.catalog.name, 2.0)
                time.sleep(0.5)
            wait_for(lambda: ingester.stats["shed"] > 0, timeout=30)
            shed_from = max((n for s, n in stored() if s == "CBA"), default=0)
            wait_for(lambda: ingester.health()["degradation_level"] == 0, timeout=60)
            sampling.set()
            sampler.join()
        peak = max(range(len(levels)), key=lambda i: (levels[i], -i))
        assert levels[peak] == 3
        walk_down = [lv for i, lv in enumerate(levels[peak:]) if i == 0 or lv != levels[peak + i - 1]]
        assert walk_down[-3:] == [2, 1, 0]  # recovery walks down one level at a time
        assert ingester.health()["status"] == "ok"

        bhp_sent = {(s, n) for _, s, n in produced_keys(settings) if s == "BHP"}
        wait_for(lambda: bhp_sent <= stored(), timeout=30)  # the critical symbol was never shed
        wait_for(lambda: any(s == "CBA" and n > shed_from for s, n in stored()), timeout=30)
        assert not ingester.halted  # the gap shedding left, however large, is K2's own doing: never a halt
    gaps = [g for g in table_rows(settings, "sequence_gaps") if g["symbol"] == "CBA"]
    assert any(g["reason"] == SHED_GAP_REASON for g in gaps)


def test_a_catalog_that_refuses_writes_opens_the_breaker_and_nothing_is_lost(
    broker: str, make_settings: Callable[..., Settings]
) -> None:
    with private_database(POSTGRES_URI, "k2_breaker_") as uri:
        settings = make_settings(catalog="postgres", bootstrap=broker, batch_max_seconds=0.2, metrics_port=0)
        settings.catalog.uri = uri
        settings.ingest.retry_backoff_seconds = 0.2
        settings.ingest.max_backoff_seconds = 1.0
        engine = sqlalchemy.create_engine(uri, isolation_level="AUTOCOMMIT")
        with feeding(settings, ("BHP",), rate=20), ingesting(settings) as ingester:
            wait_for(lambda: len(table_rows(settings, "trades")) > 0, timeout=60)
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("ALTER TABLE iceberg_tables RENAME TO iceberg_tables_away"))
            try:
                wait_for(lambda: ingester.health()["circuit_breaker"] in {"open", "half_open"}, timeout=30)
                assert ingester.health()["degradation_level"] == 4
                time.sleep(2)
            finally:
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("ALTER TABLE iceberg_tables_away RENAME TO iceberg_tables"))
            wait_for(lambda: ingester.health()["circuit_breaker"] == "closed", timeout=30)
        engine.dispose()
        _drain_and_check(settings)


def _drain_and_check(settings: Settings) -> None:
    distinct = set(produced_keys(settings))
    settings.kafka.group_id += "-final"  # drain whatever the last run had not reached yet
    with ingesting(settings):
        wait_for(lambda: len(table_rows(settings, "trades")) >= len(distinct), timeout=60)
    keys = [("asx", r["symbol"], r["exchange_sequence_number"]) for r in table_rows(settings, "trades")]
    assert len(keys) == len(set(keys))
    assert set(keys) == distinct
