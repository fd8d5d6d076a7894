"""Where a `POST /v1/sql` / `k2 sql` query runs: a worker process of its own, so that its budgets are hard ones.

DuckDB's `memory_limit` and `interrupt()` do not reach inside one scalar call or one list being built
(`length(repeat('x', 4000000000))` allocates 4 GB and ignores the interrupt for tens of seconds), so the query's
DuckDB work runs in a worker process, never in the API's:

* **Memory**: while a job runs, the worker's `RLIMIT_DATA` (heap and private mappings; not `RLIMIT_AS`, which DuckDB's
  and Arrow's address-space reservations would exhaust with nothing allocated) is what the worker holds at rest
  plus the query's `memory_limit` plus `K2_QUERY_SQL_WORKER_OVERHEAD_MB` (its connection, threads, the answer and
  its IPC copy). An allocation past it fails inside the
  worker (DuckDB's out-of-memory error, or Python's `MemoryError`): a 400 naming the budget. A worker that dies
  instead (a signal, the kernel's OOM killer) is answered the same 400 and replaced; one whose resting memory grew
  by more than a whole budget (allocators keep what they freed) retires after answering.
* **Time**: inside the worker a timer interrupts the connection at the time budget, as before (a 408, the worker
  kept); a query that ignores the interrupt is killed with SIGKILL `KILL_GRACE_SECONDS` later, answered the same 408,
  logged once (`sql worker killed`, with the reason) and its worker replaced.

`SqlWorkerPool` keeps up to `K2_QUERY_SQL_WORKERS` warm workers (fresh interpreters that import this module, DuckDB and
pyarrow once: not forks of the threaded API, and holding none of its memory or secrets), started lazily and reused
query after query; it is also the concurrency cap of SQL in the
process: a query waits at most `K2_QUERY_SQL_QUEUE_SECONDS` for a free worker, then `SqlBusyError` (the API's 503
with `Retry-After`). The job carries everything the sandbox needs (the views over the pinned data files, or rows as
Arrow IPC); the answer comes back as Arrow IPC, at most `max_rows` rows.
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import duckdb
import pyarrow as pa

from k2_core import duck
from k2_core.exceptions import K2Error, QueryError, QueryTimeoutError
from k2_core.logging import get_logger

logger = get_logger(__name__)

# How long past the time budget a query that ignores DuckDB's interrupt may run before its worker is killed.
KILL_GRACE_SECONDS = 1.0


class SqlBusyError(K2Error):
    """Every SQL worker stayed busy for the whole queue wait; `retry_after` is the seconds to wait (the API's 503)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Source:
    """One table of the sandbox: a view `select` over data files `paths` (the only files the query may open), or
    `rows`, Arrow IPC stream bytes registered as a table (an empty table, or rows pyiceberg read)."""

    name: str
    select: str | None = None
    paths: tuple[str, ...] = ()
    rows: bytes | None = None


@dataclass(frozen=True)
class Job:
    """One query and everything its sandbox needs; `data_limit_bytes` is the worker's RLIMIT_DATA while it runs,
    `hidden_views` DuckDB's catalog views to shadow with empty ones."""

    sql: str
    sources: tuple[Source, ...]
    memory_limit: str
    threads: int
    max_rows: int
    timeout_seconds: float
    data_limit_bytes: int
    hidden_views: tuple[str, ...] = ()


def memory_refusal(memory_limit: str, how: str = "") -> QueryError:
    return QueryError(f"sql: ran out of its memory budget ({memory_limit}, K2_QUERY_SQL_MEMORY_LIMIT){how}")


def time_refusal(timeout_seconds: float, how: str = "") -> QueryTimeoutError:
    return QueryTimeoutError(
        f"sql: interrupted after {timeout_seconds:g} s (the time budget, K2_QUERY_SQL_TIMEOUT_SECONDS){how}"
    )


# --- in the worker: the sandbox ---------------------------------------------------------------------------------------


SandboxKey = tuple[str, int, tuple[str, ...]]
WarmKey = tuple[SandboxKey, tuple[tuple[str, str, tuple[str, ...]], ...]]
# A job arriving this soon after an answer is taken as part of a burst (see `serve`).
BURST_SECONDS = 0.05


def sandbox_key(job: Job) -> SandboxKey:
    """What a sandbox is made of before a query's own views go in: a spare made for one job serves the next one with
    the same key (the settings rarely change between queries)."""
    return (job.memory_limit, job.threads, job.hidden_views)


def _sandbox(job: Job) -> duckdb.DuckDBPyConnection:
    """A database of the query's own: its memory limit is the query's, and nothing else lives in it."""
    con = duckdb.connect(
        config={
            "memory_limit": job.memory_limit,
            "threads": job.threads,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            # No spilling: the memory limit is a hard budget, and the query writes nothing to disk.
            "temp_directory": "",
        }
    )
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    # A name DuckDB cannot resolve must not fall back to a Python variable of the same name in a caller's frame.
    con.execute("SET python_enable_replacements = false")
    # The second wall for DuckDB's catalog views: a name the validator let through that DuckDB resolves there
    # (a CTE it scoped wrongly) finds an empty temp view of that name first.
    con.execute(
        "; ".join(f'CREATE TEMP VIEW "{name}" AS SELECT NULL AS hidden WHERE false' for name in job.hidden_views)
    )
    return con


def _close_configuration(con: duckdb.DuckDBPyConnection, paths: list[str]) -> None:
    """From here on the connection opens only the snapshot's own data files, and its settings cannot change."""
    con.execute(f"SET allowed_paths = [{', '.join(map(duck.sql_text, paths))}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


class _Watchdog(threading.Thread):
    """Interrupts the running query's connection at its deadline. One thread for the worker's life, started before
    any rlimit: a thread per query could not start once the query's memory cap is near."""

    def __init__(self) -> None:
        super().__init__(name="k2-sql-watchdog", daemon=True)
        self._changed = threading.Condition()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._deadline = 0.0

    def arm(self, con: duckdb.DuckDBPyConnection, seconds: float) -> None:
        with self._changed:
            self._con, self._deadline = con, time.monotonic() + seconds
            self._changed.notify()

    def disarm(self) -> None:
        with self._changed:
            self._con = None
            self._changed.notify()

    def run(self) -> None:
        with self._changed:
            while True:
                if self._con is None:
                    self._changed.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._changed.wait(remaining)
                    continue
                self._con.interrupt()
                self._con = None


def warm_key(job: Job) -> WarmKey | None:
    """What makes a used sandbox fit to answer another job as it is: the same settings and the same views over the
    same files (the same snapshots, narrowed to the same exchanges: the same rows). None for a job with rows of its
    own (Arrow IPC), which are registered afresh each time."""
    if any(source.rows is not None for source in job.sources):
        return None
    return sandbox_key(job), tuple((source.name, source.select or "", source.paths) for source in job.sources)


def prepare(con: duckdb.DuckDBPyConnection, job: Job) -> None:
    """Give a fresh sandbox `job`'s tables, then lock it (`_close_configuration`)."""
    paths: list[str] = []
    for source in job.sources:
        if source.rows is not None:
            con.register(source.name, pa.ipc.open_stream(source.rows).read_all())
        else:
            con.execute(f"CREATE TEMP VIEW {source.name} AS {source.select}")
            paths += source.paths
    _close_configuration(con, paths)


def execute(job: Job, watchdog: _Watchdog, con: duckdb.DuckDBPyConnection, *, prepared: bool = False) -> pa.Table:
    """Run `job` on sandbox `con` (in the worker): the answer, or a `QueryError` saying why not. `prepared`: `con`
    already holds the job's tables, locked (a warm sandbox: see `warm_key`); else they go in first. The caller
    closes `con` (or keeps it warm)."""
    try:
        if not prepared:
            prepare(con, job)
        watchdog.arm(con, job.timeout_seconds)
        return _fetch(con, job)
    except duckdb.InterruptException:
        raise time_refusal(job.timeout_seconds) from None
    except (duckdb.OutOfMemoryException, MemoryError):
        raise memory_refusal(job.memory_limit) from None
    except duckdb.PermissionException as exc:
        raise QueryError(f"sql: refused, it reaches outside the tables: {str(exc).splitlines()[0][:300]}") from None
    except duckdb.Error as exc:
        raise QueryError(f"sql: {str(exc).splitlines()[0][:300]}") from None
    finally:
        watchdog.disarm()


def _fetch(con: duckdb.DuckDBPyConnection, job: Job) -> pa.Table:
    """The answer, batch by batch, refused once it holds more than `max_rows` (never cut short quietly)."""
    reader = con.sql(job.sql).to_arrow_reader(min(job.max_rows + 1, 100_000))
    batches: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        batches.append(batch)
        count += batch.num_rows
        if count > job.max_rows:
            raise QueryError(
                f"sql: the answer has more than {job.max_rows} rows (K2_QUERY_SQL_MAX_ROWS); aggregate, or add a LIMIT"
            )
    repeated = sorted({name for name in reader.schema.names if reader.schema.names.count(name) > 1})
    if repeated:  # a JSON row or a CSV header could not tell them apart
        raise QueryError(f"sql: column names must be unique; name them apart with AS: {', '.join(repeated)}")
    return pa.Table.from_batches(batches, schema=reader.schema)


def _ipc(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _answer(
    job: Job, watchdog: _Watchdog, con: duckdb.DuckDBPyConnection, *, prepared: bool = False
) -> tuple[tuple[str, ...], pa.Buffer | None]:
    """What the worker sends back: ("ok",) and the IPC bytes, or (kind, class name, message)."""
    try:
        return ("ok",), _ipc(execute(job, watchdog, con, prepared=prepared))
    except QueryError as exc:
        return ("refused", type(exc).__name__, str(exc)), None
    except MemoryError:
        return ("refused", "QueryError", str(memory_refusal(job.memory_limit))), None
    except Exception as exc:  # noqa: BLE001  # a bug, not the query's fault: the caller gets a 500 with the worker's reason
        return ("failed", type(exc).__name__, str(exc)[:500]), None


def _data_bytes() -> int:
    """This process's data segment as RLIMIT_DATA counts it (VmData): what it holds at rest between queries."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


class _Sandboxes:
    """The worker's sandboxes between jobs. A `warm` one answered the last job and keeps its locked views: a job
    with the same `warm_key` (the same snapshots again: a burst of queries, a dashboard's refresh, a benchmark)
    runs on it as it is, skipping the database's creation (~12-25 ms of CPU, most of a small query's cost). A
    `spare` is a fresh one made while the worker sat idle, for a job whose tables differ."""

    def __init__(self) -> None:
        self.warm: tuple[WarmKey, duckdb.DuckDBPyConnection] | None = None
        self.spare: tuple[SandboxKey, duckdb.DuckDBPyConnection] | None = None

    def take(self, job: Job) -> tuple[duckdb.DuckDBPyConnection, bool]:
        """A sandbox for `job` and whether it is already prepared; whatever does not fit it is closed."""
        warm, spare, self.warm, self.spare = self.warm, self.spare, None, None
        found: tuple[duckdb.DuckDBPyConnection, bool] | None = None
        if warm is not None:
            if warm[0] == warm_key(job):
                found = (warm[1], True)
            else:
                warm[1].close()
        if spare is not None:
            if found is None and spare[0] == sandbox_key(job):
                found = (spare[1], False)
            else:
                spare[1].close()
        return found if found is not None else (_sandbox(job), False)

    def keep(self, job: Job, con: duckdb.DuckDBPyConnection) -> None:
        """Keep `con`, which answered `job`, warm for the next job (one with rows of its own is not reusable)."""
        key = warm_key(job)
        if key is None:
            con.close()
        else:
            self.warm = (key, con)

    def make_spare(self, job: Job) -> None:
        self.spare = (sandbox_key(job), _sandbox(job))


def serve(fd: int) -> None:
    """The worker's loop over the socket `fd`: one job at a time, its data segment capped at what the worker holds
    at rest plus the job's `data_limit_bytes`, until the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal is the parent's to handle
    conn = Connection(fd)
    watchdog = _Watchdog()
    watchdog.start()
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    baseline = _data_bytes()
    sandboxes = _Sandboxes()
    while True:
        try:
            job: Job = conn.recv()
        except (EOFError, OSError):
            return
        con, prepared = sandboxes.take(job)
        soft = _data_bytes() + job.data_limit_bytes
        resource.setrlimit(resource.RLIMIT_DATA, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        try:
            header, body = _answer(job, watchdog, con, prepared=prepared)
        finally:
            resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
        # Memory the allocators keep after a big query raises the next query's cap: past a whole budget, retire.
        retire = _data_bytes() > baseline + job.data_limit_bytes
        if header[0] == "ok" and not retire:
            sandboxes.keep(job, con)
        else:  # a refused or failed query (interrupted, out of memory) leaves nothing behind for the next one
            con.close()
        conn.send((header, retire))
        if body is not None:
            conn.send_bytes(memoryview(body))  # pa.Buffer exports the buffer protocol: no copy
        if not retire and not conn.poll(BURST_SECONDS):
            # Idle: the next query's fresh sandbox, made while the worker would sit waiting. A job arriving at once
            # is a burst: it likely fits the warm sandbox, and making a spare first would only delay it.
            sandboxes.make_spare(job)


# --- in the caller: the pool --------------------------------------------------------------------------------------


# What a worker's environment keeps of the caller's: never K2_* settings (a catalog password) nor other secrets.
_WORKER_ENV = frozenset({"PATH", "PYTHONPATH", "PYTHONHASHSEED", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"})
_WORKER_MAIN = "import sys; from k2_core.read.sqlworker import serve; serve(int(sys.argv[1]))"


class _Worker:
    """One worker process (a fresh interpreter importing this module: nothing of the caller's memory, threads,
    environment or secrets in it) and the caller's end of its socket."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env={name: value for name, value in os.environ.items() if name in _WORKER_ENV},
                start_new_session=True,  # a terminal's Ctrl-C reaches the caller, which decides
            )
        self.conn = Connection(ours.detach())
        self.jobs = 0

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, job: Job) -> pa.Table:
        """The answer to `job`; past the time budget plus the grace the process is killed (then `alive` is False)."""
        self.jobs += 1
        try:
            return self._run(job)
        except (QueryError, RuntimeError):
            raise
        except BaseException:
            self.stop()  # interrupted while waiting (Ctrl-C): its answer must not reach the next query
            raise

    def _run(self, job: Job) -> pa.Table:
        try:
            self.conn.send(job)
            if not self.conn.poll(job.timeout_seconds + KILL_GRACE_SECONDS):
                self.stop()
                self._log("time budget", job, f"still running {KILL_GRACE_SECONDS:g} s past the time budget")
                raise time_refusal(job.timeout_seconds, "; its worker process was killed")
            header, retire = self.conn.recv()
            body = self.conn.recv_bytes() if header[0] == "ok" else None
            if retire:
                self.stop()  # it grew at rest by more than a query's budget; the next query starts a fresh one
        except (EOFError, OSError):
            self.stop()
            code = self.process.returncode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self._log("died", job, how)
            raise memory_refusal(job.memory_limit, f"; its worker process died ({how})") from None
        if header[0] == "ok" and body is not None:
            return pa.ipc.open_stream(body).read_all()
        kind, name, message = header
        if kind == "refused":
            raise (QueryTimeoutError if name == "QueryTimeoutError" else QueryError)(message)
        raise RuntimeError(f"sql worker failed: {name}: {message}")

    def stop(self) -> None:
        """Kill the process (SIGKILL: a query deaf to interrupts is deaf to SIGTERM's Python handler too)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)
        self.conn.close()

    def _log(self, reason: str, job: Job, detail: str) -> None:
        logger.warning(
            "sql worker killed",
            extra={
                "reason": reason,
                "detail": detail,
                "pid": self.process.pid,
                "exit_code": self.process.returncode,
                "timeout_seconds": job.timeout_seconds,
                "memory_limit": job.memory_limit,
                "data_limit_bytes": job.data_limit_bytes,
                "sql": job.sql[:500],
            },
        )


class SqlWorkerPool:
    """Up to `size` warm worker processes, started on first need and reused; a dead or killed one is replaced by
    the next query that takes its slot. At most `size` queries run at once and at most `size` more wait for a
    slot: a flood of SQL is turned away at once instead of holding the API's request threads, which every other
    route needs too."""

    def __init__(self, size: int) -> None:
        self.size = size
        # FIFO: the worker idle the longest first, whose spare sandbox is ready (the one just used is still making
        # its own); None is a slot whose worker is not started (yet, again).
        self._slots: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(size):
            self._slots.put(None)
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self.waiting = 0

    def run(self, job: Job, wait_seconds: float) -> pa.Table:
        """The answer to `job` from a free worker, waiting at most `wait_seconds` for one (else `SqlBusyError`)."""
        busy = SqlBusyError(
            f"sql: all {self.size} SQL workers are busy (K2_QUERY_SQL_WORKERS); retry shortly",
            max(1, math.ceil(min(job.timeout_seconds, 5.0))),
        )
        with self._lock:
            if self.waiting >= self.size and self._slots.empty():
                raise busy
            self.waiting += 1
        try:
            worker = self._slots.get(timeout=wait_seconds) if wait_seconds > 0 else self._slots.get_nowait()
        except queue.Empty:
            raise busy from None
        finally:
            with self._lock:
                self.waiting -= 1
        try:
            if worker is None or not worker.alive:
                if worker is not None:
                    self._forget(worker)
                worker = _Worker()
                with self._lock:
                    self._workers.add(worker)
            return worker.run(job)
        finally:
            if worker is not None and not worker.alive:
                self._forget(worker)
                worker = None
            self._slots.put(worker)

    @property
    def busy(self) -> int:
        """How many queries hold a worker now."""
        return self.size - self._slots.qsize()

    def pids(self) -> list[int]:
        """The live workers' process ids (for operators and tests)."""
        with self._lock:
            return sorted(w.process.pid for w in self._workers if w.alive and w.process.pid is not None)

    def _forget(self, worker: _Worker) -> None:
        worker.stop()
        with self._lock:
            self._workers.discard(worker)

    def close(self) -> None:
        """Stop every worker (idle or not); the pool is not used afterwards."""
        with self._lock:
            workers, self._workers = list(self._workers), set()
        for worker in workers:
            worker.stop()


_pools: dict[int, SqlWorkerPool] = {}
_pools_lock = threading.Lock()


def shared_pool(size: int) -> SqlWorkerPool:
    """The process's pool of `size` workers (one per size, made on first use, stopped at exit)."""
    with _pools_lock:
        pool = _pools.get(size)
        if pool is None:
            pool = _pools[size] = SqlWorkerPool(size)
        return pool


@atexit.register
def _close_pools() -> None:
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()
