"""K2 as separate processes, the way it runs: an ingester on the environment a container would give it, the whole
platform under `k2 run`, and the processes a platform left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from k2_core.settings import Settings
from tests.support.ports import free_port
from tests.support.waits import wait_for


def settings_env(settings: Settings, metrics_port: int = 0, committer_metrics_port: int = 0) -> dict[str, str]:
    """The same settings, as the K2_ environment a child process reads; the ingester serves /metrics only on
    `metrics_port` when one is given, the committer only on `committer_metrics_port`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env.update(
        K2_HOME=str(settings.home),
        K2_CATALOG_NAME=settings.catalog.name,
        K2_CATALOG_URI=settings.catalog_uri.get_secret_value(),
        K2_CATALOG_WAREHOUSE=settings.warehouse,
        K2_KAFKA_BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        K2_KAFKA_REPLICATION_FACTOR="1",
        K2_KAFKA_GROUP_ID=settings.kafka.group_id,
        K2_KAFKA_SESSION_TIMEOUT_MS=str(settings.kafka.session_timeout_ms),
        K2_KAFKA_HEARTBEAT_INTERVAL_MS=str(settings.kafka.heartbeat_interval_ms),
        K2_INGEST_RETRY_BACKOFF_SECONDS=str(settings.ingest.retry_backoff_seconds),
        K2_INGEST_MAX_BACKOFF_SECONDS=str(settings.ingest.max_backoff_seconds),
        K2_INGEST_BATCH_MAX_SECONDS=str(settings.ingest.batch_max_seconds),
        K2_INGEST_BATCH_MAX_ROWS=str(settings.ingest.batch_max_rows),
        K2_INGEST_METRICS_PORT=str(metrics_port),
        K2_INGEST_BOOK_METRICS_PORT="0",  # a test that runs the book ingester gives it a port of its own
        K2_INGEST_COMMITTER_METRICS_PORT=str(committer_metrics_port),
        K2_INGEST_COMMIT_MODE=settings.ingest.commit_mode,
        K2_INGEST_PIPELINE=str(settings.ingest.pipeline).lower(),
        K2_INGEST_CONTROL_TOPIC=settings.ingest.control_topic,
        K2_INGEST_COMMIT_VERDICT_SECONDS=str(settings.ingest.commit_verdict_seconds),
        K2_INGEST_COMMIT_RESUBMITS=str(settings.ingest.commit_resubmits),
        K2_INGEST_RETENTION_EVERY_COMMITS=str(settings.ingest.retention_every_commits),
        K2_INGEST_KEEP_SNAPSHOTS=str(settings.ingest.keep_snapshots),
        K2_DEGRADATION_WRITE_SECONDS=json.dumps(settings.degradation.write_seconds),
        K2_INSTRUMENTS_DIR=str(settings.instruments.dir),
        K2_INSTRUMENTS_STRICT_EXCHANGES=json.dumps(settings.instruments.strict_exchanges),
        K2_INSTRUMENTS_REFRESH_SECONDS=str(settings.instruments.refresh_seconds),
    )
    if settings.kafka.max_partitions is not None:
        env["K2_KAFKA_MAX_PARTITIONS"] = str(settings.kafka.max_partitions)
    if settings.catalog.type == "rest":
        env.update(
            K2_CATALOG_TYPE="rest",
            K2_CATALOG_REST_URI=settings.catalog.rest_uri,
            K2_CATALOG_REST_CREDENTIAL=settings.catalog.rest_credential.get_secret_value(),
            K2_CATALOG_REST_TOKEN=settings.catalog.rest_token.get_secret_value(),
            K2_CATALOG_REST_PROPERTIES=json.dumps(settings.catalog.rest_properties),
        )
    if settings.s3.endpoint:
        env.update(
            K2_S3_ENDPOINT=settings.s3.endpoint,
            K2_S3_ACCESS_KEY_ID=settings.s3.access_key_id.get_secret_value(),
            K2_S3_SECRET_ACCESS_KEY=settings.s3.secret_access_key.get_secret_value(),
        )
    return env


def spawn_ingester(settings: Settings, log: Path, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "k2_stream"],
            env=settings_env(settings, metrics_port),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def spawn_committer(settings: Settings, log: Path, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    """A committer candidate of coordinated commits (`python -m k2_stream.committer`), serving /metrics and /health
    on `metrics_port` when one is given."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "k2_stream.committer"],
            env=settings_env(settings, committer_metrics_port=metrics_port),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def k2_processes(home: Path) -> list[int]:
    """Live processes of the platform rooted at `home`: every K2 process (broker included) carries its K2_HOME,
    and so do their children (Dagster's code servers and run workers)."""
    marker = f"K2_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


class Platform:
    """`k2 run` as the README starts it, in a home and on ports of its own; `env` adds or overrides K2_ settings."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.ports = {
            "kafka": free_port(),
            "api": free_port(),
            "ingester": free_port(),
            "book-ingester": free_port(),
            "committer": free_port(),
            "supervisor": free_port(),
            "dagster": free_port(),
            "dagster-code": free_port(),
        }
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
        self.env.update(
            K2_HOME=str(home),
            K2_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{self.ports['kafka']}",
            K2_API_PORT=str(self.ports["api"]),
            K2_INGEST_METRICS_PORT=str(self.ports["ingester"]),
            K2_INGEST_BOOK_METRICS_PORT=str(self.ports["book-ingester"]),
            K2_INGEST_COMMITTER_METRICS_PORT=str(self.ports["committer"]),
            K2_SUPERVISOR_PORT=str(self.ports["supervisor"]),
            K2_MAINTENANCE_DAGSTER_PORT=str(self.ports["dagster"]),
            K2_MAINTENANCE_DAGSTER_CODE_PORT=str(self.ports["dagster-code"]),
            K2_KAFKA_MAX_PARTITIONS="2",
        )
        self.env.update(env)
        self.api = f"http://127.0.0.1:{self.ports['api']}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = home / "run.out"

    def start(self, *args: str, sigint_ignored: bool = False) -> Platform:
        """`sigint_ignored`: started as a shell starts a background job (`&`, nohup), SIGINT ignored."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "k2_cli.main", "run", *args],
            env=self.env,
            stdout=self.output.open("ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
        )
        wait_for(lambda: self.health() is not None, timeout=60)
        return self

    def health(self) -> dict[str, Any] | None:
        import httpx

        try:
            return dict(httpx.get(f"http://127.0.0.1:{self.ports['supervisor']}/health", timeout=5).json())
        except (httpx.HTTPError, ValueError):
            return None

    def process(self, name: str) -> dict[str, Any]:
        """The supervisor's view of process `name`; not up while `k2 run` has not started it yet (its /health
        answers from the start and lists each process once started, so a wait must not fail on its absence)."""
        health = self.health()
        assert health is not None, "the supervisor does not answer"
        not_started = {"pid": None, "up": False, "uptime_seconds": 0.0, "started_at": None, "restarts": 0}
        return dict(health["processes"].get(name, {**not_started, "last_exit_code": None}))

    def api_up(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.api}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def trades(self, symbol: str, exchange: str, **window: str) -> int:
        """Trades the API returns (its default window, the last 24 h, unless `start`/`end` are given); -1 if it
        does not answer."""
        import httpx

        params = {"symbol": symbol, "exchange": exchange, "limit": 100000, **window}
        try:
            resp = httpx.get(f"{self.api}/v1/trades", params=params, timeout=10)
        except httpx.HTTPError:
            return -1
        return int(resp.json()["count"]) if resp.status_code == 200 else -1

    def run_k2(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "k2_cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self, sig: int = 2) -> int:
        """Signal `k2 run` (SIGINT by default) and wait for it; returns its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(90)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def out(self) -> str:
        return self.output.read_text()
