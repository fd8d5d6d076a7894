"""A real Prometheus (the Debian binary) on our prometheus.yml and alerts.yml, scraping a real ingester process, a
real book ingester process and a real API process fed by a real broker, answers with the consumed-message and request
counts we produced."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from k2_core.settings import REPO_ROOT, Settings
from k2_stream.simulator import SimulatorConfig
from k2_stream.simulator.run import run_simulation
from tests.support.ports import free_port
from tests.support.processes import settings_env, spawn_ingester
from tests.support.prometheus import dashboard_queries, dashboards
from tests.support.waits import wait_for

PROMETHEUS_DIR = REPO_ROOT / "config" / "prometheus"
TRADE_REQUESTS = 4
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")


class Processes:
    """Every process the test starts, stopped (SIGTERM, then SIGKILL) at the end whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.stop()


def prometheus_config(tmp_path: Path, targets: dict[str, int]) -> Path:
    """The shipped config with compose service names swapped for local ports and a 1 s scrape interval."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{targets[job['job_name']]}"]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    body = response.json()
    assert body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(prometheus: str, promql: str) -> float:
    result = query(prometheus, promql)
    return float(result[0]["value"][1]) if result else 0.0


def answers(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    return check


def test_prometheus_scrapes_consumed_messages_and_api_requests(
    broker: str, make_settings: Callable[..., Settings], tmp_path: Path, processes: Processes
) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: run `make system-deps` (Debian package `prometheus`)"
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3)
    summary = run_simulation(settings, SimulatorConfig("asx", symbols=("BHP", "CBA"), seed=11), rate=0, count=150)
    assert summary.messages_sent > 0

    ingester_port, api_port, prometheus_port, books_port = free_port(), free_port(), free_port(), free_port()
    ingester = processes.add(spawn_ingester(settings, tmp_path / "ingester.log", metrics_port=ingester_port))
    with (tmp_path / "book-ingester.log").open("ab") as out:
        processes.add(
            subprocess.Popen(
                [sys.executable, "-m", "k2_cli.main", "ingest-books"],
                env={
                    **settings_env(settings),
                    "K2_API_HOST": "127.0.0.1",
                    "K2_INGEST_BOOK_METRICS_PORT": str(books_port),
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    api_log = tmp_path / "api.log"
    with api_log.open("ab") as out:
        api = processes.add(
            subprocess.Popen(
                [sys.executable, "-m", "k2_cli.main", "api"],
                env={**settings_env(settings), "K2_API_HOST": "127.0.0.1", "K2_API_PORT": str(api_port)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    config = prometheus_config(
        tmp_path,
        {
            "k2-api": api_port,
            "k2-ingester": ingester_port,
            "k2-book-ingester": books_port,
            "prometheus": prometheus_port,
        },
    )
    with (tmp_path / "prometheus.log").open("ab") as out:
        processes.add(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    api_url = f"http://127.0.0.1:{api_port}"
    wait_for(answers(f"{api_url}/health"), timeout=60)
    wait_for(answers(f"{prometheus}/-/ready"), timeout=30)

    # Every produced message is consumed; Prometheus reads the ingester's counter back.
    wait_for(lambda: scalar(prometheus, "sum(k2_messages_consumed_total)") >= summary.messages_sent, timeout=90)
    assert scalar(prometheus, "sum(k2_messages_consumed_total)") == summary.messages_sent
    topics = {r["metric"]["topic"] for r in query(prometheus, "k2_messages_consumed_total > 0")}
    assert topics == {"market.equities.trades.asx", "market.equities.quotes.asx"}
    wait_for(lambda: scalar(prometheus, 'sum(k2_rows_written_total{table="trades"})') > 0, timeout=30)

    # Real requests: some trades, one rejected query, each with our own correlation id.
    for n in range(TRADE_REQUESTS):
        response = httpx.get(
            f"{api_url}/v1/trades",
            params={"symbol": "BHP", "exchange": "asx"},
            headers={"X-Request-ID": f"live-{n}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == f"live-{n}"
    assert (
        httpx.get(f"{api_url}/v1/trades", params={"symbol": "BHP", "exchange": "asx", "start": "x"}).status_code == 400
    )

    timed = 'http_request_duration_seconds_count{job="k2-api",endpoint="/v1/trades"}'
    wait_for(lambda: scalar(prometheus, timed) >= TRADE_REQUESTS + 1, timeout=30)  # a scrape after all of them
    assert scalar(prometheus, timed) == TRADE_REQUESTS + 1
    assert (
        scalar(prometheus, 'http_requests_total{job="k2-api",endpoint="/v1/trades",status_code="200"}')
        == TRADE_REQUESTS
    )
    assert scalar(prometheus, 'http_requests_total{job="k2-api",endpoint="/v1/trades",status_code="400"}') == 1
    errors = 'http_request_errors_total{job="k2-api",endpoint="/v1/trades",error_type="client_error"}'
    assert scalar(prometheus, errors) == 1

    def up_jobs() -> dict[str, str]:
        return {r["metric"]["job"]: r["value"][1] for r in query(prometheus, 'up{job=~"k2-.*"}')}

    wait_for(lambda: up_jobs().get("k2-book-ingester") == "1", timeout=60)
    up = up_jobs()
    assert up == {"k2-api": "1", "k2-ingester": "1", "k2-book-ingester": "1"}
    # The cascade's gauges are scraped too, and a healthy run sits at level 0 with the breaker closed (the book
    # ingester does not serve them: one series each).
    lag = query(prometheus, "kafka_consumer_lag_seconds")
    assert {r["metric"]["topic"] for r in lag} >= topics
    assert scalar(prometheus, "max(k2_degradation_level)") == 0
    assert len(query(prometheus, "k2_degradation_level")) == 1
    assert query(prometheus, "circuit_breaker_state")[0]["value"][1] == "0"

    # The shipped alert rules load and evaluate cleanly against live series.
    def rules_evaluated() -> bool:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return bool(rules) and all(rule.get("lastEvaluation", "0001").startswith("20") for rule in rules)

    wait_for(rules_evaluated, timeout=30)
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules} >= {
        "KafkaConsumerLagHigh",
        "IngesterDown",
        "TradesQueryLatencyHigh",
        "BookUnknownTooLong",
        "BookIngesterDown",
    }
    assert [rule["name"] for rule in rules if rule["health"] != "ok"] == []
    assert [rule["name"] for rule in rules if rule["state"] == "firing"] == []  # a healthy run pages nobody

    # Every dashboard query is valid PromQL to this Prometheus (Grafana's variables filled in).
    for path in dashboards():
        for where, expr in dashboard_queries(json.loads(path.read_text())):
            filled = expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$exchange", "asx")
            filled = LABEL_VALUES.sub(r"group by (\2) (\1)", filled)  # Grafana's variable query -> PromQL
            try:
                query(prometheus, filled)
            except AssertionError as exc:
                raise AssertionError(f"{path.name} {where}") from exc

    # The API's JSON log carries each request's correlation id on its access line.
    lines = [json.loads(line) for line in api_log.read_text().splitlines() if line.startswith("{")]
    access = {line["request_id"]: line for line in lines if line["message"] == "http request" and "request_id" in line}
    for n in range(TRADE_REQUESTS):
        assert access[f"live-{n}"]["endpoint"] == "/v1/trades"
        assert access[f"live-{n}"]["component"] == "api"

    processes.stop()
    assert ingester.returncode == 0
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
    assert api.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in api_log.read_text()
