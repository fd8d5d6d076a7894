"""What `k2 status` reads: every process's own endpoint and the catalog, all at once, each within a deadline.

Sources: `k2 run`'s `/health` (which processes it runs, their pids, uptimes and restarts), the ingester's `/health`
(degradation level, breaker, halted partitions) and `/metrics` (consumer lag), the book ingester's `/health` (last
commit, lag, unknown books, failing commits) and `/metrics`, the committer's `/health` in coordinated mode (elected,
rounds), the API's `/health` and `/metrics`,
Dagster's `/server_info`, a TCP connect to the broker, and the catalog through `k2_core.read.engine` (snapshot log per
table, open gaps). Nothing here decides what is wrong: `k2_cli.status` does, from the `Report` built here.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from k2_core.settings import Settings

T = TypeVar("T")

BROKER, INGESTER, BOOK_INGESTER, API, DAGSTER = "broker", "ingester", "book-ingester", "api", "dagster-webserver"
COMMITTER = "committer"  # coordinated commits only (ingest.commit_mode)


@dataclass
class ProcessStatus:
    """One process. `up` is None when it cannot be checked (its endpoint is turned off)."""

    name: str
    up: bool | None
    pid: int | None = None
    uptime_seconds: float | None = None
    restarts: int | None = None
    endpoint: str | None = None
    detail: str = ""


@dataclass
class TopicLag:
    """Consumer lag of one topic: seconds of its worst partition (the figure to trust), and the messages behind
    summed over partitions (from the broker's high watermark, which the embedded broker may misreport)."""

    topic: str
    partitions: int
    lag_seconds: float
    lag_messages: int | None


@dataclass
class IngesterState:
    degradation_level: int
    degradation: str
    circuit_breaker: str
    assigned_partitions: int
    halted_partitions: dict[str, str]
    stats: dict[str, Any]


@dataclass
class BookIngesterState:
    """The book ingester's own report: `error` is why its batches keep failing (None while they commit)."""

    error: str | None
    assigned_partitions: int
    last_commit: str | None
    last_commit_age_seconds: float | None
    lag_seconds: float
    unknown_books: dict[str, float]  # "exchange:symbol" -> seconds unknown
    stats: dict[str, Any]


@dataclass
class CommitterState:
    """The coordinated-commit committer's own report: whether it is the elected one, and its rounds so far."""

    elected: bool
    rounds: int


@dataclass
class TableStatus:
    """A table's retained snapshots and its newest commit; `exists` False before anything created it."""

    name: str
    exists: bool
    snapshots: int = 0
    more_snapshots: bool = False  # the count is a lower bound
    last_commit: datetime | None = None
    last_operation: str | None = None
    rows: int | None = None


@dataclass
class CatalogState:
    reachable: bool | None  # None: not read (see error)
    uri: str
    error: str | None = None
    tables: list[TableStatus] = field(default_factory=list)
    # severity -> exchange -> open gaps; None when the gaps table does not exist yet
    open_gaps: dict[str, dict[str, int]] | None = None


@dataclass
class SupervisorState:
    url: str
    reachable: bool
    status: str | None = None
    pid: int | None = None
    home: str | None = None
    error: str | None = None


@dataclass
class Report:
    checked_at: datetime
    supervisor: SupervisorState | None  # None: its port is 0
    processes: list[ProcessStatus]
    ingester: IngesterState | None
    lag: list[TopicLag]
    catalog: CatalogState
    api_catalog_error: str | None = None  # the API answered but says it cannot read the catalog
    book_ingester: BookIngesterState | None = None  # None: no /health answer (or its port is 0)
    committer: CommitterState | None = None  # None: not in coordinated mode, or no /health answer


# ---- running probes side by side ---------------------------------------------------------------------------------


class _Job(Generic[T]):
    """`fn` on a daemon thread: one that hangs past its deadline is abandoned, never waited for at exit."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, name="k2-status-probe", daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # noqa: BLE001  (not swallowed: result() raises it in the caller)
            self._error = exc
        finally:
            self._done.set()

    def result(self, deadline: float) -> T:
        """The value, or the exception `fn` raised; `TimeoutError` if it is not done by `deadline` (monotonic)."""
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer (any status code), or why there was none."""

    url: str
    status: int | None
    text: str = ""
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.status is not None

    def json(self) -> dict[str, Any] | None:
        try:
            body = json.loads(self.text)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None


def _get(url: str, timeout: float) -> Answer:
    """GET over plain HTTP with the standard library: no proxy from the environment, no TLS context to build."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        return Answer(url, resp.status, resp.read().decode(errors="replace"))
    except (OSError, http.client.HTTPException) as exc:
        return Answer(url, None, error=_why(exc))
    finally:
        conn.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    # First line only (SQLAlchemy appends the statement and a help link), without the "[Errno 111] " prefix.
    text = re.sub(r"^\[Errno -?\d+\] ", "", (str(exc).splitlines() or [""])[0])
    return (text or type(exc).__name__)[:200]


def _connects(servers: str, timeout: float) -> str | None:
    """None if one of the bootstrap servers accepts a TCP connection, else why not."""
    why = "no bootstrap servers"
    for server in servers.split(","):
        parts = urlsplit(f"//{server.strip()}")
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 9092), timeout=timeout):
                return None
        except OSError as exc:
            why = _why(exc)
    return why


def _local(host: str) -> str:
    """Where to reach a server bound to `host`: a wildcard bind is reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def _url(host: str, port: int, path: str) -> str:
    host = _local(host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def redact(secret: SecretStr) -> str:
    """A catalog URI without its password, to show."""
    uri = secret.get_secret_value()
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def catalog_location(settings: Settings) -> str:
    """Where the catalog is, to show: the REST server's URL, or the catalog database's URL without its password."""
    if settings.catalog.type == "rest":
        return redact(SecretStr(settings.catalog.rest_uri))
    return redact(settings.catalog_uri)


# ---- metrics -----------------------------------------------------------------------------------------------------


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    except ValueError:  # not Prometheus text: nothing to read
        return {}
    return found


def lag_per_topic(metrics_text: str) -> list[TopicLag]:
    samples = _samples(metrics_text)
    seconds: dict[str, dict[str, float]] = {}
    for labels, value in samples.get("kafka_consumer_lag_seconds", []):
        seconds.setdefault(labels.get("topic", ""), {})[labels.get("partition", "")] = value
    messages: dict[str, float] = {}
    for labels, value in samples.get("kafka_consumer_lag_messages", []):
        topic = labels.get("topic", "")
        messages[topic] = messages.get(topic, 0.0) + value
    return [
        TopicLag(
            topic,
            len(parts),
            max(parts.values()),
            int(messages[topic]) if topic in messages else None,
        )
        for topic, parts in sorted(seconds.items())
    ]


def _uptime(metrics_text: str, now: float) -> float | None:
    started = _samples(metrics_text).get("process_start_time_seconds")
    return round(max(0.0, now - started[0][1]), 1) if started else None


# ---- the catalog -------------------------------------------------------------------------------------------------


def read_catalog(settings: Settings) -> CatalogState:
    """Each table's snapshot log and the open gaps, through the query engine (the API's own reads). It creates no
    table and changes no property; on the embedded default it does not even create the SQLite catalog file."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    from k2_core.exceptions import ConfigError, QueryError
    from k2_core.lake.catalog import CATALOG_FAILURES, open_catalog
    from k2_core.read.engine import QueryEngine
    from k2_core.read.snapshots import SNAPSHOT_TABLES

    failures: tuple[type[Exception], ...] = (*CATALOG_FAILURES, ConfigError)
    uri = catalog_location(settings)
    embedded = settings.catalog.type == "sql" and not settings.catalog.uri.get_secret_value()
    if embedded and not (settings.home / "catalog.db").exists():
        return CatalogState(
            reachable=True, uri=uri, tables=[TableStatus(name, exists=False) for name in SNAPSHOT_TABLES]
        )
    try:
        engine = QueryEngine(open_catalog(settings), settings.catalog.namespace, owns_catalog=True)
        with engine:
            tables = []
            for name in SNAPSHOT_TABLES:
                try:
                    result = engine.snapshots(name, limit=engine.limits.max_limit)
                except QueryError:  # not created yet
                    tables.append(TableStatus(name, exists=False))
                    continue
                log = result.table.to_pylist()
                newest = log[0] if log else None
                current = next((s for s in log if s["is_current"]), None)
                tables.append(
                    TableStatus(
                        name,
                        exists=True,
                        snapshots=len(log),
                        more_snapshots=result.next_cursor is not None,
                        last_commit=newest["committed_at"] if newest else None,
                        last_operation=newest["operation"] if newest else None,
                        rows=current["total_records"] if current else 0,
                    )
                )
            try:
                gaps = engine.gaps(status="open").select(["severity", "exchange"]).to_pylist()
            except (NoSuchTableError, NoSuchNamespaceError):
                gaps = None
    except failures as exc:
        return CatalogState(reachable=False, uri=uri, error=f"{type(exc).__name__}: {_why(exc)}")
    open_gaps: dict[str, dict[str, int]] | None = None
    if gaps is not None:
        open_gaps = {}
        for (severity, exchange), count in sorted(Counter((g["severity"], g["exchange"]) for g in gaps).items()):
            open_gaps.setdefault(severity, {})[exchange] = count
    return CatalogState(reachable=True, uri=uri, tables=tables, open_gaps=open_gaps)


def read_catalog_within(settings: Settings, timeout: float) -> CatalogState:
    """`read_catalog`, given up after `timeout` seconds. The timeout counts once the catalog client is imported
    (pyiceberg, pyarrow and DuckDB take a second or more, longer on a busy machine), so it measures the catalog, not
    this machine; the import runs here, not on the thread that may be abandoned (an import cut short by the
    interpreter's exit can abort it)."""
    import k2_core.read.engine  # noqa: F401

    try:
        return _Job(lambda: read_catalog(settings)).result(time.monotonic() + timeout)
    except TimeoutError:
        return CatalogState(reachable=False, uri=catalog_location(settings), error=f"no answer within {timeout:g}s")


# ---- putting it together -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    supervisor: str | None
    ingester: str | None  # base URL, without path
    book_ingester: str | None  # base URL, without path
    committer: str | None  # base URL, without path; None unless commits are coordinated
    api: str
    dagster: str

    @classmethod
    def of(cls, s: Settings) -> Endpoints:
        host = s.api.host
        return cls(
            supervisor=_url(host, s.supervisor.port, "/health") if s.supervisor.port else None,
            ingester=_url(host, s.ingest.metrics_port, "") if s.ingest.metrics_port else None,
            book_ingester=_url(host, s.ingest.book_metrics_port, "") if s.ingest.book_metrics_port else None,
            committer=_url(host, s.ingest.committer_metrics_port, "")
            if s.ingest.commit_mode == "coordinated" and s.ingest.committer_metrics_port
            else None,
            api=_url(host, s.api.port, ""),
            dagster=_url(s.maintenance.dagster_host, s.maintenance.dagster_port, "/server_info"),
        )


def gather(settings: Settings, *, timeout: float, catalog_timeout: float, dagster: bool = True) -> Report:
    """Ask every endpoint at once, then the catalog; no endpoint is waited for longer than `timeout`, the catalog
    no longer than `catalog_timeout` (once its client is imported), and not at all when nothing is running."""
    started = time.monotonic()
    ends = Endpoints.of(settings)

    def get(url: str | None) -> _Job[Answer | None]:
        return _Job(lambda: _get(url, timeout) if url is not None else None)

    job_supervisor = get(ends.supervisor)
    job_ingester_health = get(ends.ingester and f"{ends.ingester}/health")
    job_ingester_metrics = get(ends.ingester and f"{ends.ingester}/metrics")
    job_books_health = get(ends.book_ingester and f"{ends.book_ingester}/health")
    job_books_metrics = get(ends.book_ingester and f"{ends.book_ingester}/metrics")
    job_committer_health = get(ends.committer and f"{ends.committer}/health")
    job_committer_metrics = get(ends.committer and f"{ends.committer}/metrics")
    job_api_health, job_api_metrics = get(f"{ends.api}/health"), get(f"{ends.api}/metrics")
    job_dagster = get(ends.dagster)
    job_broker = _Job(lambda: _connects(settings.kafka.bootstrap_servers, timeout))

    http_deadline = started + timeout + 0.5

    def answer(job: _Job[Answer | None], url: str | None) -> Answer | None:
        try:
            return job.result(http_deadline)
        except TimeoutError:
            return Answer(url or "", None, error="no answer in time")

    now_wall = time.time()
    sup_answer = answer(job_supervisor, ends.supervisor)
    supervisor = _supervisor(ends.supervisor, sup_answer)
    ing_health = answer(job_ingester_health, ends.ingester)
    ing_metrics = answer(job_ingester_metrics, ends.ingester)
    books_health = answer(job_books_health, ends.book_ingester)
    books_metrics = answer(job_books_metrics, ends.book_ingester)
    committer_health = answer(job_committer_health, ends.committer)
    committer_metrics = answer(job_committer_metrics, ends.committer)
    api_health = answer(job_api_health, ends.api)
    api_metrics = answer(job_api_metrics, ends.api)
    dagster_answer = answer(job_dagster, ends.dagster)
    try:
        broker_error = job_broker.result(http_deadline)
    except TimeoutError:
        broker_error = "no answer in time"

    # Which processes to expect: those `k2 run` reports; without it, the platform's servers.
    by_k2_run = supervisor is not None and supervisor.reachable and sup_answer is not None
    supervised: dict[str, dict[str, Any]] = {}
    if by_k2_run and sup_answer is not None:
        supervised = (sup_answer.json() or {}).get("processes") or {}
        names = list(supervised)
    else:
        coordinated = [COMMITTER] if settings.ingest.commit_mode == "coordinated" else []
        names = [BROKER, INGESTER, *coordinated, BOOK_INGESTER, API] + ([DAGSTER] if dagster else [])

    processes = []
    for name in names:
        proc = _from_supervisor(name, supervised[name]) if name in supervised else ProcessStatus(name, up=None)
        if name == BROKER:
            _probed(proc, settings.kafka.bootstrap_servers, broker_error)
        elif name == INGESTER:
            _served(proc, ing_health, ends.ingester, "K2_INGEST_METRICS_PORT=0", ing_metrics, now_wall)
        elif name == BOOK_INGESTER:
            off = "K2_INGEST_BOOK_METRICS_PORT=0"
            _served(proc, books_health, ends.book_ingester, off, books_metrics, now_wall)
        elif name == COMMITTER:
            off = "K2_INGEST_COMMITTER_METRICS_PORT=0"
            _served(proc, committer_health, ends.committer, off, committer_metrics, now_wall)
        elif name == API:
            _served(proc, api_health, ends.api, "", api_metrics, now_wall)
        elif name == DAGSTER:
            _served(proc, dagster_answer, ends.dagster, "", None, now_wall)
        processes.append(proc)

    ingester = _ingester(ing_health)
    lag = lag_per_topic(ing_metrics.text) if ing_metrics is not None and ing_metrics.status == 200 else []
    if books_metrics is not None and books_metrics.status == 200:
        lag = sorted([*lag, *lag_per_topic(books_metrics.text)], key=lambda t: t.topic)

    api_catalog_error = None
    if api_health is not None and api_health.status == 503:
        api_catalog_error = (api_health.json() or {}).get("error") or "catalog unreachable"

    # With nothing running, that is the news, given at once: the catalog is not read (its client alone takes a
    # second or more to load).
    if not by_k2_run and all(p.up is False for p in processes):
        catalog = CatalogState(reachable=None, uri=catalog_location(settings), error="not read: nothing is running")
    else:
        catalog = read_catalog_within(settings, catalog_timeout)
    return Report(
        checked_at=datetime.now(UTC),
        supervisor=supervisor,
        processes=processes,
        ingester=ingester,
        lag=lag,
        catalog=catalog,
        api_catalog_error=api_catalog_error,
        book_ingester=_book_ingester(books_health),
        committer=_committer(committer_health),
    )


def _supervisor(url: str | None, ans: Answer | None) -> SupervisorState | None:
    if url is None or ans is None:
        return None
    body = ans.json() if ans.answered else None
    if body is None or "processes" not in body:
        return SupervisorState(url, reachable=False, error=ans.error or f"HTTP {ans.status}, not k2 run's /health")
    return SupervisorState(url, reachable=True, status=body.get("status"), pid=body.get("pid"), home=body.get("home"))


def _from_supervisor(name: str, p: dict[str, Any]) -> ProcessStatus:
    up = bool(p.get("up"))
    detail = ""
    if not up:
        code = p.get("last_exit_code")
        detail = "not running" + (f" (exit code {code})" if code is not None else "") + "; k2 run restarts it"
    return ProcessStatus(
        name,
        up=up,
        pid=p.get("pid") if up else None,
        uptime_seconds=p.get("uptime_seconds") if up else None,
        restarts=p.get("restarts"),
        detail=detail,
    )


def _probed(proc: ProcessStatus, where: str, error: str | None) -> None:
    proc.endpoint = where
    if error is not None:
        if proc.up is not False:  # a supervisor's own reason for a stopped process says more
            proc.detail = f"not answering at {where}: {error}"
        proc.up = False
    elif proc.up is None:
        proc.up = True


def _served(
    proc: ProcessStatus, health: Answer | None, url: str | None, off: str, metrics: Answer | None, now: float
) -> None:
    """Fold what a process's own endpoint says into what the supervisor (if any) said."""
    if url is None or health is None:
        proc.detail = proc.detail or f"not checked ({off})"
        return
    proc.endpoint = url
    if not health.answered:
        if proc.up:  # k2 run started it, but it does not serve (yet)
            proc.detail = f"running for {proc.uptime_seconds or 0:.0f}s but not answering at {url}: {health.error}"
        elif proc.up is None:
            proc.detail = f"not answering at {url}: {health.error}"
        proc.up = False
        return
    if proc.up is None:
        proc.up = True
    if proc.uptime_seconds is None and metrics is not None and metrics.status == 200:
        proc.uptime_seconds = _uptime(metrics.text, now)


def _ingester(health: Answer | None) -> IngesterState | None:
    body = health.json() if health is not None and health.answered else None
    if body is None or "degradation_level" not in body:
        return None
    return IngesterState(
        degradation_level=int(body["degradation_level"]),
        degradation=str(body.get("degradation", "")),
        circuit_breaker=str(body.get("circuit_breaker", "")),
        assigned_partitions=int(body.get("assigned_partitions", 0)),
        halted_partitions=dict(body.get("halted_partitions") or {}),
        stats=dict(body.get("stats") or {}),
    )


def _book_ingester(health: Answer | None) -> BookIngesterState | None:
    body = health.json() if health is not None and health.answered else None
    if body is None or "unknown_books" not in body:
        return None
    age = body.get("last_commit_age_seconds")
    return BookIngesterState(
        error=body.get("error"),
        assigned_partitions=int(body.get("assigned_partitions", 0)),
        last_commit=body.get("last_commit"),
        last_commit_age_seconds=None if age is None else float(age),
        lag_seconds=float(body.get("lag_seconds") or 0.0),
        unknown_books={str(k): float(v) for k, v in (body.get("unknown_books") or {}).items()},
        stats=dict(body.get("stats") or {}),
    )


def _committer(health: Answer | None) -> CommitterState | None:
    body = health.json() if health is not None and health.answered else None
    if body is None or "elected" not in body:
        return None
    return CommitterState(elected=bool(body["elected"]), rounds=int(body.get("rounds", 0)))
