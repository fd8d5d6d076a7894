"""`k2 status`'s exit rule on reports shaped like each incident, and its reading of the ingester's real metrics."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from pydantic import SecretStr

from k2_cli.probes import (
    BookIngesterState,
    CatalogState,
    IngesterState,
    ProcessStatus,
    Report,
    SupervisorState,
    lag_per_topic,
    redact,
)
from k2_cli.status import problems

SUPERVISOR = SupervisorState("http://127.0.0.1:9109/health", reachable=True, status="ok", pid=1, home="/k2")
HEALTHY = Report(
    checked_at=datetime(2026, 11, 26, tzinfo=UTC),
    supervisor=SUPERVISOR,
    processes=[ProcessStatus(name, up=True) for name in ("broker", "ingester", "api", "simulator-asx")],
    ingester=IngesterState(0, "normal", "closed", 8, {}, {}),
    lag=[],
    catalog=CatalogState(reachable=True, uri="sqlite:///k2/catalog.db"),
    book_ingester=BookIngesterState(None, 6, "2026-11-26T00:00:00+00:00", 0.4, 0.2, {}, {}),
)


def _ingester(**changes: object) -> Report:
    assert HEALTHY.ingester is not None
    return replace(HEALTHY, ingester=replace(HEALTHY.ingester, **changes))


def _books(**changes: object) -> Report:
    assert HEALTHY.book_ingester is not None
    return replace(HEALTHY, book_ingester=replace(HEALTHY.book_ingester, **changes))


def test_healthy_is_exit_0() -> None:
    assert problems(HEALTHY) == []


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (_ingester(degradation_level=2, degradation="skip_non_critical"), None),  # shown, not judged
        (_ingester(degradation_level=3, degradation="shed_symbols"), "ingester at degradation level 3 (shed_symbols)"),
        (_ingester(degradation_level=4, circuit_breaker="open"), "ingester circuit breaker is open"),
        (_ingester(degradation_level=4, circuit_breaker="half_open"), "ingester circuit breaker is half-open"),
        (
            _ingester(halted_partitions={"market.crypto.trades.binance[1]": "gap of 996"}),
            "1 partition(s) halted on a sequence gap: market.crypto.trades.binance[1]: gap of 996",
        ),
        (
            replace(HEALTHY, catalog=CatalogState(reachable=False, uri="postgresql://k2:***@db/k2", error="refused")),
            "catalog unreachable (postgresql://k2:***@db/k2): refused",
        ),
        (replace(HEALTHY, api_catalog_error="OperationalError: locked"), "the API cannot read the catalog"),
        (replace(HEALTHY, supervisor=replace(SUPERVISOR, status="stopping")), "k2 run is stopping"),
        # A book unknown for a while (until the feed's next snapshot) is shown; past 10 minutes it is a problem.
        (_books(unknown_books={"asx:BHP": 599.0}), None),
        (
            _books(unknown_books={"asx:BHP": 601.0, "asx:CBA": 30.0, "nyse:AAPL": 3600.0}),
            "2 book(s) unknown for more than 10m00s (a gap no snapshot has healed): asx:BHP 10m01s, nyse:AAPL 1h00m",
        ),
        (
            _books(error="CommitConflictError: book_validity", last_commit_age_seconds=900.0, lag_seconds=900.0),
            "book ingester cannot commit, retrying: CommitConflictError: book_validity",
        ),
        (_books(last_commit_age_seconds=3600.0, lag_seconds=120.0), None),  # shown, judged by the alerts
        (replace(HEALTHY, book_ingester=None), None),  # no answer: said by the process's own state
        (
            replace(HEALTHY, processes=[*HEALTHY.processes[:2], ProcessStatus("api", up=False, detail="killed")]),
            "api is down: killed",
        ),
    ],
)
def test_each_incident_is_named(report: Report, expected: str | None) -> None:
    found = problems(report)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1
        assert found[0].startswith(expected)


def test_nothing_running_is_one_clear_sentence() -> None:
    down = [ProcessStatus(n, up=False, endpoint=f"127.0.0.1:{p}") for n, p in (("broker", 9092), ("api", 8000))]
    report = replace(
        HEALTHY,
        supervisor=replace(SUPERVISOR, reachable=False, status=None),
        processes=down,
        ingester=None,
        catalog=CatalogState(reachable=None, uri="sqlite:///k2/catalog.db", error="not read: nothing is running"),
    )
    assert problems(report) == [
        "K2 is not running: nothing answers (http://127.0.0.1:9109/health, 127.0.0.1:9092, 127.0.0.1:8000). "
        "Start it with `k2 run`."
    ]


def test_an_unknown_process_is_not_down() -> None:
    report = replace(HEALTHY, processes=[*HEALTHY.processes, ProcessStatus("ingester-metrics", up=None)])
    assert problems(report) == []


def test_lag_per_topic_from_the_ingesters_gauges() -> None:
    registry = CollectorRegistry()
    seconds = Gauge("kafka_consumer_lag_seconds", "", ["topic", "partition"], registry=registry)
    messages = Gauge("kafka_consumer_lag_messages", "", ["topic", "partition"], registry=registry)
    for partition, (s, m) in enumerate([(0.5, 3), (12.0, 40)]):
        seconds.labels("market.equities.trades.asx", str(partition)).set(s)
        messages.labels("market.equities.trades.asx", str(partition)).set(m)
    seconds.labels("market.crypto.trades.binance", "0").set(0)
    lag = lag_per_topic(generate_latest(registry).decode())
    assert [(t.topic, t.partitions, t.lag_seconds, t.lag_messages) for t in lag] == [
        ("market.crypto.trades.binance", 1, 0.0, None),
        ("market.equities.trades.asx", 2, 12.0, 43),
    ]
    assert lag_per_topic("not prometheus { text") == []


def test_catalog_uri_loses_its_password() -> None:
    assert redact(SecretStr("postgresql+psycopg://k2:s3cret@db:5432/k2")) == "postgresql+psycopg://k2:***@db:5432/k2"
    assert redact(SecretStr("sqlite:////k2/catalog.db")) == "sqlite:////k2/catalog.db"
