"""docker-compose's production-shaped configuration, run for real without a Docker engine.

The K2 services' commands and environments come from docker-compose.yml and an env file shaped like .env.example
(its secrets filled in, as an operator does), with compose's `${VAR}` interpolation resolved. Only what names the
stack's own machines changes: `kafka` becomes a Tansu broker, `postgres` the local PostgreSQL (a role and the
databases the postgres service creates, under names of this test's own), `minio` SeaweedFS (MinIO's root user
creating the bucket, K2's own S3 user allowed only that bucket, as minio-init sets them up); plus listen ports,
K2_HOME, and the schema registry URL (no Schema Registry runs here: the file registry). Everything else (auth on
because the API binds 0.0.0.0, the Dagster storage URL, every other K2_* value) is compose's, so a broken compose
configuration fails here. Prometheus runs on config/prometheus with only its targets changed.

Checked: trades of a `k2 simulate` feed land as Parquet in SeaweedFS and read back through the Iceberg catalog on
PostgreSQL; the API refuses a request without a key (401) and serves it with one made by `k2 keys create` (200);
Prometheus scrapes both /metrics (`up == 1`); Dagster keeps its runs and events in PostgreSQL, and a run launched
through the webserver's GraphQL API is run by the daemon, succeeds and is recorded there.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy
import yaml
from dagster import DagsterEventType

from k2_core.lake.catalog import open_catalog
from k2_core.settings import REPO_ROOT, Settings
from tests.support.compose import ENV_EXAMPLE, environment, interpolate, k2_services, services
from tests.support.lake import table_rows
from tests.support.ports import free_port
from tests.support.seaweedfs import S3Server, seaweedfs

TRADES = 200
SYMBOL, EXCHANGE = "BHP", "asx"
DEADLINE = 120.0  # seconds for any one thing to happen; the whole test takes under a minute


# --- the env file and compose's environment ---------------------------------------------------------------


def write_env_file(path: Path) -> Path:
    """.env.example with every empty secret given a value of its own, as its header tells the operator to
    (`openssl rand -hex 24`)."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#") and not value:
            line = f"{name}={secrets.token_hex(24)}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose reads .env (comments and blank lines skipped)."""
    pairs = (line.partition("=") for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, _, value in pairs}


def compose_environment(service: str, variables: dict[str, str]) -> dict[str, str]:
    return {name: interpolate(value, variables) for name, value in environment(services()[service]).items()}


def swap(value: str, service: str, native: str) -> str:
    assert service in value, f"{value!r} no longer names {service}: update this test with the compose file"
    return value.replace(service, native)


class Native:
    """Compose's addresses and paths, swapped for the native ones."""

    def __init__(self, broker: str, s3: str, databases: dict[str, str], role: str, home: Path) -> None:
        self.broker, self.s3, self.databases, self.role, self.home = broker, s3, databases, role, home
        self.ports = {"K2_API_PORT": free_port(), "K2_INGEST_METRICS_PORT": free_port()}
        self.ports["K2_INGEST_BOOK_METRICS_PORT"] = free_port()
        self.ports["K2_MAINTENANCE_DAGSTER_PORT"] = free_port()
        self.ports["K2_MAINTENANCE_DAGSTER_CODE_PORT"] = free_port()

    def postgres_url(self, value: str) -> str:
        url = urlsplit(value)
        assert (url.hostname, url.port, url.username) == ("postgres", 5432, "k2"), value
        database = self.databases[url.path.lstrip("/")]  # a database the postgres service creates
        return urlunsplit(url._replace(netloc=f"{self.role}:{url.password}@127.0.0.1:5432", path=f"/{database}"))

    def env(self, compose_env: dict[str, str]) -> dict[str, str]:
        env = dict(compose_env)
        for name, value in compose_env.items():
            if value.startswith("postgresql"):
                env[name] = self.postgres_url(value)
        env["K2_KAFKA_BOOTSTRAP_SERVERS"] = swap(env["K2_KAFKA_BOOTSTRAP_SERVERS"], "kafka:9092", self.broker)
        env["K2_S3_ENDPOINT"] = swap(env["K2_S3_ENDPOINT"], "http://minio:9000", self.s3)
        env["K2_KAFKA_SCHEMA_REGISTRY_URL"] = ""  # no Schema Registry here: the file registry
        env["K2_HOME"] = str(self.home)
        if "K2_MAINTENANCE_DAGSTER_CODE_HOST" in env:
            env["K2_MAINTENANCE_DAGSTER_CODE_HOST"] = swap(
                env["K2_MAINTENANCE_DAGSTER_CODE_HOST"], "dagster-code-server", "127.0.0.1"
            )
        env.update({name: str(port) for name, port in self.ports.items() if name in env})
        changed = {name for name in env if env[name] != compose_env[name]}
        assert changed <= {
            "K2_HOME",
            "K2_KAFKA_BOOTSTRAP_SERVERS",
            "K2_KAFKA_SCHEMA_REGISTRY_URL",
            "K2_CATALOG_URI",
            "K2_S3_ENDPOINT",
            "K2_MAINTENANCE_DAGSTER_POSTGRES_URL",
            "K2_MAINTENANCE_DAGSTER_CODE_HOST",
            *self.ports,
        }, changed
        return env


# --- processes --------------------------------------------------------------------------------------------


class Processes:
    """Every process the test starts, each in its own process group, stopped (SIGTERM, then SIGKILL to the group)
    whatever happens, in reverse start order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def check_running(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}"

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self.check_running()
            assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its group (Dagster's code servers, runs)
            proc.wait(5)


def container_env(compose_env: dict[str, str], home: Path) -> dict[str, str]:
    """What a container of our image sees: its compose environment, the image's ENV and PATH, nothing from the
    test's own environment."""
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {"PATH": path, "HOME": str(home), "PYTHONUNBUFFERED": "1", **compose_env}


def k2_command(argv: list[str]) -> list[str]:
    assert argv[0] == "k2", argv
    return [str(Path(sys.executable).parent / "k2"), *argv[1:]]


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def answers(url: str, **kwargs: Any) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=3, **kwargs).status_code == 200
        except httpx.TransportError:
            return False

    return check


# --- the infrastructure -----------------------------------------------------------------------------------


@pytest.fixture
def postgres(postgres_uri: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The postgres service's role and databases (POSTGRES_DB, then what postgres-init.sql creates), under names
    unique to this test, owned by that role; dropped afterwards. Yields (role, {compose name: native name})."""
    postgres_env = environment(services()["postgres"])
    created = [postgres_env["POSTGRES_DB"]]
    created += re.findall(r"CREATE DATABASE (\w+);", (REPO_ROOT / "config/dagster/postgres-init.sql").read_text())
    prefix = f"k2native_{uuid.uuid4().hex[:8]}"
    databases = {name: f"{prefix}_{name}" for name in created}
    engine = sqlalchemy.create_engine(postgres_uri, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE ROLE {prefix} LOGIN"))
        for database in databases.values():
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {database} OWNER {prefix}"))
    try:
        yield prefix, databases
    finally:
        with engine.connect() as conn:
            for database in databases.values():
                conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            conn.execute(sqlalchemy.text(f"DROP ROLE IF EXISTS {prefix}"))
        engine.dispose()


def prometheus_argv(tmp_path: Path, targets: dict[str, str], port: int) -> list[str]:
    """The prometheus service's command on a copy of config/prometheus with only the scrape targets changed."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: run `make system-deps` (Debian package `prometheus`)"
    service = services()["prometheus"]
    (mount,) = [str(v) for v in service["volumes"] if str(v).startswith("./config/prometheus:")]
    config_dir = tmp_path / "prometheus-config"
    shutil.copytree(REPO_ROOT / mount.split(":")[0], config_dir)
    config_file = config_dir / "prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [targets[t] for t in static["targets"]]
    config_file.write_text(yaml.safe_dump(config))
    container_dir = mount.split(":")[1]
    argv = [binary]
    for arg in service["command"]:
        flag, _, value = str(arg).partition("=")
        if flag == "--config.file":
            value = value.replace(container_dir, str(config_dir))
        elif flag == "--storage.tsdb.path":
            value = str(tmp_path / "prometheus-data")
        elif flag == "--web.listen-address":
            value = f"127.0.0.1:{port}"
        argv.append(f"{flag}={value}")
    return argv


def graphql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}"""
RUN_STATUS = """
query Status($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}"""


# --- the test ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_compose_configuration_runs_natively(
    broker: str, postgres: tuple[str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = read_env_file(write_env_file(tmp_path / ".env"))
    init = compose_environment("minio-init", variables)
    bucket = init["WAREHOUSE_BUCKET"]
    admin = (init["MINIO_ROOT_USER"], init["MINIO_ROOT_PASSWORD"])
    k2_user = (init["K2_S3_ACCESS_KEY_ID"], init["K2_S3_SECRET_ACCESS_KEY"])
    (tmp_path / "logs").mkdir()
    (tmp_path / "home").mkdir()

    with seaweedfs(tmp_path / "seaweedfs", admin, k2_user, bucket, tmp_path / "logs" / "seaweedfs.log") as s3:
        role, databases = postgres
        native = Native(broker, s3.endpoint, databases, role, tmp_path / "k2home")
        envs = {name: native.env(compose_environment(name, variables)) for name in k2_services()}
        assert set(envs) == {
            *("ingester", "book-ingester", "api", "dagster-code-server", "dagster-webserver", "dagster-daemon")
        }
        processes = Processes(tmp_path / "logs")
        stack = Stack(processes, envs, s3, bucket, k2_user, tmp_path)
        try:
            stack.start()
            token = stack.api_key()
            stack.feed()
            served = stack.check_api(token)
            stack.check_warehouse(monkeypatch)
            stack.check_dagster(day=datetime.fromisoformat(served[0]["exchange_timestamp"]).date().isoformat())
            stack.check_prometheus()
            # Nothing failed along the way (checked before the stop, which interrupts whatever Dagster is running).
            for name in processes.procs:
                assert "Traceback" not in processes.log(name), f"{name}:\n{processes.log(name)[-3000:]}"
        finally:
            processes.stop()
        assert processes.procs["ingester"].returncode == 0, processes.log("ingester")[-3000:]
        assert processes.procs["book-ingester"].returncode == 0, processes.log("book-ingester")[-3000:]
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
        assert processes.procs["api"].returncode in (0, -signal.SIGTERM), processes.log("api")[-3000:]


class Stack:
    """The K2 services of the compose file, started natively, and what the test checks of them."""

    def __init__(
        self,
        processes: Processes,
        envs: dict[str, dict[str, str]],
        s3: S3Server,
        bucket: str,
        k2_user: tuple[str, str],
        tmp_path: Path,
    ) -> None:
        self.processes, self.envs, self.s3, self.bucket, self.k2_user = processes, envs, s3, bucket, k2_user
        self.tmp_path, self.home = tmp_path, tmp_path / "home"
        self.prometheus_port = free_port()
        self.api_url = f"http://127.0.0.1:{envs['api']['K2_API_PORT']}"
        self.dagster_url = f"http://127.0.0.1:{envs['dagster-webserver']['K2_MAINTENANCE_DAGSTER_PORT']}"

    def start(self) -> None:
        """Prometheus first, so its first scrapes come as soon as the services are up; then every K2 service with
        its compose command, all at once as compose starts them once their dependencies are healthy."""
        targets = {
            "api:8000": f"127.0.0.1:{self.envs['api']['K2_API_PORT']}",
            "ingester:9108": f"127.0.0.1:{self.envs['ingester']['K2_INGEST_METRICS_PORT']}",
            "book-ingester:9110": f"127.0.0.1:{self.envs['book-ingester']['K2_INGEST_BOOK_METRICS_PORT']}",
            "localhost:9090": f"127.0.0.1:{self.prometheus_port}",
        }
        argv = prometheus_argv(self.tmp_path, targets, self.prometheus_port)
        self.processes.start("prometheus", argv, {"PATH": "/usr/bin:/bin"})
        code_port = int(self.envs["dagster-code-server"]["K2_MAINTENANCE_DAGSTER_CODE_PORT"])
        for name, env in self.envs.items():
            if name in ("dagster-webserver", "dagster-daemon"):  # `depends_on` the code server, healthy
                self.processes.wait_for("dagster-code-server", lambda: listening(code_port))
            self.processes.start(name, k2_command(services()[name]["command"]), container_env(env, self.home))

    def one_off(self, service: str, argv: list[str]) -> str:
        """`docker compose run --rm <service> k2 ...`: a K2 command with that service's environment; its stdout."""
        done = subprocess.run(
            k2_command(argv),
            env=container_env(self.envs[service], self.home),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def api_key(self) -> str:
        """Auth is on, because the API binds 0.0.0.0: a key made the way an operator makes one."""
        assert self.envs["api"]["K2_API_HOST"] == "0.0.0.0"
        self.processes.wait_for("API /health", answers(f"{self.api_url}/health"))
        return self.one_off("api", ["k2", "keys", "create", "--name", "native", "--scope", "read:trades:*"]).strip()

    def feed(self) -> None:
        """A short simulated feed, produced with the ingester service's settings."""
        argv = ["k2", "simulate", "-e", EXCHANGE, "--symbols", SYMBOL, "--count", str(TRADES), "--seed", "7"]
        self.one_off("ingester", argv)

    def check_api(self, token: str) -> list[dict[str, Any]]:
        """401 without credentials, 200 with the key, and every trade there. Returns the trades."""
        params = {"symbol": SYMBOL, "exchange": EXCHANGE, "limit": 10_000}
        refused = httpx.get(f"{self.api_url}/v1/trades", params=params, timeout=30)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"].startswith("Bearer")

        def served() -> list[dict[str, Any]]:
            headers = {"Authorization": f"Bearer {token}"}
            response = httpx.get(f"{self.api_url}/v1/trades", params=params, headers=headers, timeout=30)
            assert response.status_code == 200, response.text
            rows: list[dict[str, Any]] = response.json()["data"]
            return rows

        self.processes.wait_for("every trade served by the API", lambda: len(served()) == TRADES)
        return served()

    def check_warehouse(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The trades are committed to Iceberg through the PostgreSQL catalog, and every data file of the table is
        an object in SeaweedFS."""
        for name in [n for n in os.environ if n.startswith("K2_")]:
            monkeypatch.delenv(name)
        for name, value in self.envs["ingester"].items():
            monkeypatch.setenv(name, value)
        settings = Settings()  # the ingester's own settings
        assert settings.warehouse == f"s3://{self.bucket}/warehouse"
        assert urlsplit(settings.catalog_uri.get_secret_value()).hostname == "127.0.0.1"
        self.processes.wait_for("every trade in Iceberg", lambda: len(table_rows(settings, "trades")) == TRADES)
        catalog = open_catalog(settings)
        table = catalog.load_table((settings.catalog.namespace, "trades"))
        data_files = {task.file.file_path for task in table.scan().plan_files()}
        objects = {f"s3://{key}" for key in self.s3.keys(*self.k2_user, f"{self.bucket}/warehouse/")}
        assert data_files
        assert all(path.endswith(".parquet") for path in data_files)
        assert data_files <= objects
        assert table.metadata_location in objects

    def check_dagster(self, day: str) -> None:
        """Dagster's storage is the dagster database: a run launched through the webserver's GraphQL API is dequeued
        by the daemon, rebuilds the trades' day of OHLCV bars on the S3 warehouse, and is recorded in PostgreSQL."""
        self.processes.wait_for("Dagster webserver", answers(f"{self.dagster_url}/server_info"))
        params = {
            "selector": {"repositoryLocationName": "k2", "repositoryName": "__repository__", "jobName": "ohlcv_job"},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]},
        }
        launched = graphql(self.dagster_url, LAUNCH_RUN, params=params)["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]

        def status() -> str:
            run = graphql(self.dagster_url, RUN_STATUS, runId=run_id)["runOrError"]
            assert run["__typename"] == "Run", run
            value: str = run["status"]
            assert value not in {"FAILURE", "CANCELED"}, f"run {value}:\n{self.processes.log('dagster-daemon')[-3000:]}"
            return value

        self.processes.wait_for(f"Dagster run {run_id} succeeds", lambda: status() == "SUCCESS")
        url = self.envs["dagster-daemon"]["K2_MAINTENANCE_DAGSTER_POSTGRES_URL"]
        storage = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with storage.connect() as conn:
                tables = set(sqlalchemy.inspect(conn).get_table_names())
                assert {"runs", "run_tags", "event_logs", "daemon_heartbeats", "instigators", "job_ticks"} <= tables
                query = "SELECT pipeline_name, status FROM runs WHERE run_id = :id"
                assert [tuple(r) for r in conn.execute(sqlalchemy.text(query), {"id": run_id})] == [
                    ("ohlcv_job", "SUCCESS")
                ]
                query = "SELECT dagster_event_type FROM event_logs WHERE run_id = :id"
                events = {e for (e,) in conn.execute(sqlalchemy.text(query), {"id": run_id})}
                done = (
                    DagsterEventType.RUN_START,
                    DagsterEventType.ASSET_MATERIALIZATION,
                    DagsterEventType.RUN_SUCCESS,
                )
                assert {e.value for e in done} <= events
                daemons = {d for (d,) in conn.execute(sqlalchemy.text("SELECT daemon_type FROM daemon_heartbeats"))}
                assert {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"} <= daemons
        finally:
            storage.dispose()
        bars = self.s3.keys(*self.k2_user, f"{self.bucket}/warehouse/market/ohlcv_1m/data/")
        assert any(key.endswith(".parquet") for key in bars)

    def check_prometheus(self) -> None:
        """Prometheus scrapes every K2 /metrics (at compose's own 15 s interval)."""
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query"

        def up() -> dict[str, str]:
            result = httpx.get(url, params={"query": "up"}, timeout=5).json()["data"]["result"]
            return {r["metric"]["job"]: r["value"][1] for r in result}

        jobs = ("k2-api", "k2-ingester", "k2-book-ingester")
        self.processes.wait_for("Prometheus: up == 1", lambda: all(up().get(job) == "1" for job in jobs))
        assert up() == {"k2-api": "1", "k2-ingester": "1", "k2-book-ingester": "1", "prometheus": "1"}
