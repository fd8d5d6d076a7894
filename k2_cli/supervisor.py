"""`k2 run`: starts every K2 process on the embedded default, keeps them up, and stops them all, cleanly.

A process that exits unexpectedly is restarted after a backoff that doubles while it keeps failing soon after
start; after `max_fast_failures` such exits in a row the supervisor gives up, says why, and stops the platform.
The embedded broker keeps messages in memory only: when it has to be restarted, what it held and the ingester had
not yet committed to Iceberg is gone, so that restart is announced loudly and the processes that talk to it start
again with it. Ctrl-C, SIGTERM and SIGHUP all stop everything in order (feeds, Dagster's daemon, the ingester's
last commit, the API and UI, the broker); a second signal kills what is left at once. Every child runs in a
process group of its own, killed whole at the end, and dies with the supervisor if the supervisor is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge
from rich.console import Console
from rich.text import Text

from k2_core.access.auth import auth_banner, auth_required
from k2_core.exceptions import ConfigError, K2Error
from k2_core.logging import configure_logging, get_logger
from k2_core.settings import Settings, SupervisorSettings
from k2_dagster.launcher import DagsterProcess, dagster_processes, webserver_url
from k2_stream.broker import tansu_argv, wait_for_port
from k2_stream.status import serve_status

console = Console(stderr=True, soft_wrap=True)  # one line per message, greppable
log = get_logger(__name__)
EXCHANGES = ("asx", "nyse", "binance")
BROKER = "broker"
COMMITTER = "committer"
CODE_SERVER = "dagster-code-server"
CODE_SERVER_START_SECONDS = 60.0  # importing K2's definitions takes seconds, more on a busy machine
BROKER_LOST_GRACE_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


class GiveUp(Exception):
    """A process kept failing soon after every start."""


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a process that exited, and when to stop trying. Pure, so it is tested on its own."""

    backoff: float
    max_backoff: float
    stable: float
    max_fast_failures: int

    @classmethod
    def of(cls, s: SupervisorSettings) -> RestartPolicy:
        return cls(s.restart_backoff_seconds, s.max_backoff_seconds, s.stable_seconds, s.max_fast_failures)

    def after_exit(self, ran_for: float, fast_failures: int) -> tuple[int, float]:
        """(fast failures in a row counting this exit, seconds to wait before the restart); raises GiveUp."""
        failures = fast_failures + 1 if ran_for < self.stable else 1
        if failures > self.max_fast_failures:
            raise GiveUp(f"exited {failures - 1} times in a row, each within {self.stable:.0f}s of starting")
        return failures, min(self.backoff * 2 ** (failures - 1), self.max_backoff)


@dataclass
class Child:
    """One supervised process and its history."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    needs_broker: bool = False
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.monotonic() of the current start
    started_wall: float = 0.0
    restarts: int = 0
    fast_failures: int = 0
    restart_at: float | None = None
    last_exit: int | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# Resolved before any fork: the child only calls it.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent(parent: int) -> Callable[[], None]:
    """Run in the child before exec: SIGTERM it when the supervisor dies, even by SIGKILL (Linux prctl). SIGINT back
    to its default: `k2 run` started in the background (`&`, nohup) inherits it ignored, and Dagster's processes
    handle SIGTERM as SIGINT, so they would ignore the stop and be killed at its deadline, runs and all."""

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


def _group_alive(child: Child) -> bool:
    """Whether any process of the child's process group still runs (its leader reaped or not)."""
    if child.proc is None:
        return False
    try:
        os.killpg(child.proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a group of only zombies (the leader not reaped yet) counts as gone
    return any(_in_group(pid, child.proc.pid) for pid in _pids())


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _in_group(pid: int, pgid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[2]) == pgid


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class Supervisor:
    settings: Settings
    simulators: bool = True
    dagster: bool = True
    rate: int = 50
    max_partitions: int = 4
    children: dict[str, Child] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.policy = RestartPolicy.of(self.settings.supervisor)
        self.logs = self.settings.home / "logs"
        self.run_dir = self.settings.home / "run"
        self._signal: int | None = None
        self._force = False
        self._lock: IO[str] | None = None
        self.registry = CollectorRegistry()
        self._up = Gauge("k2_process_up", "1 while a K2 process runs", ["process"], registry=self.registry)
        self._restarts = Counter(
            "k2_process_restarts", "Restarts of a K2 process by k2 run", ["process"], registry=self.registry
        )
        self._started = Gauge(
            "k2_process_start_time_seconds",
            "Unix time of the process's last start",
            ["process"],
            registry=self.registry,
        )
        bootstrap = urlsplit(f"//{self.settings.kafka.bootstrap_servers.split(',')[0]}")
        self.broker_host, self.broker_port = bootstrap.hostname or "127.0.0.1", bootstrap.port or 9092

    # ---- the processes ---------------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        """Children read the same settings; only the embedded defaults below are added when unset."""
        env = dict(os.environ)
        env.setdefault("K2_HOME", str(self.settings.home))
        env.setdefault("K2_KAFKA_MAX_PARTITIONS", str(self.max_partitions))
        env.setdefault("K2_KAFKA_REPLICATION_FACTOR", "1")
        return env

    def _popen(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own: Ctrl-C reaches only us, and the group is killed whole
                preexec_fn=_die_with_parent(os.getpid()),
            )

    def _k2(self, name: str, *args: str, needs_broker: bool = True) -> Child:
        argv = [sys.executable, "-m", "k2_cli.main", *args]
        return Child(name, lambda: self._popen(name, argv, self._env()), needs_broker=needs_broker)

    def _dagster(self, p: DagsterProcess) -> Child:
        if p.name != CODE_SERVER:
            return Child(p.name, lambda: self._popen(p.name, p.argv, p.env, p.cwd))
        m = self.settings.maintenance

        def start() -> subprocess.Popen[bytes]:
            """The webserver and the daemon start after it answers (a daemon that finds no code logs an error and
            waits a minute for its next look); one that cannot load the code is restarted like any process."""
            proc = self._popen(p.name, p.argv, p.env, p.cwd)
            deadline = time.monotonic() + CODE_SERVER_START_SECONDS
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    wait_for_port(m.dagster_code_host, m.dagster_code_port, timeout=1)
                    break
                except K2Error:
                    continue
            return proc

        return Child(p.name, start)

    def _broker(self) -> subprocess.Popen[bytes]:
        argv = tansu_argv(self.broker_host, self.broker_port, self.settings.kafka.broker_binary)
        proc = self._popen(BROKER, argv, {"K2_HOME": str(self.settings.home)})  # K2_HOME marks it as ours
        wait_for_port(self.broker_host, self.broker_port)
        return proc

    def _plan(self) -> list[Child]:
        """Every process in start order."""
        children = [
            # Tansu exits at once on SIGINT; on SIGTERM it waits ~5 s for clients to leave (nothing to flush: memory)
            Child(BROKER, self._broker, stop_signal=signal.SIGINT),
            # coordinated commits: the ingester hands its batches to the committer (docs/scaleout.md)
            *([self._k2(COMMITTER, "committer")] if self.settings.ingest.commit_mode == "coordinated" else []),
            self._k2("ingester", "ingest"),
            self._k2("book-ingester", "ingest-books"),
            self._k2("api", "api"),
        ]
        if self.dagster:
            children += [self._dagster(p) for p in dagster_processes(self.settings, self._env())]
        if self.simulators:
            for exchange in EXCHANGES:
                name = f"simulator-{exchange}"
                children.append(self._k2(name, "simulate", "--exchange", exchange, "--rate", str(self.rate), "--books"))
        return children

    def _ports(self) -> dict[str, tuple[str, int]]:
        s = self.settings
        ports = {
            "broker": (self.broker_host, self.broker_port),
            "api": (s.api.host, s.api.port),
        }
        if s.ingest.metrics_port:
            ports["ingester metrics"] = (s.api.host, s.ingest.metrics_port)
        if s.ingest.book_metrics_port:
            ports["book ingester metrics"] = (s.api.host, s.ingest.book_metrics_port)
        if s.ingest.commit_mode == "coordinated" and s.ingest.committer_metrics_port:
            ports["committer metrics"] = (s.api.host, s.ingest.committer_metrics_port)
        if s.supervisor.port:
            ports["k2 run status"] = (s.api.host, s.supervisor.port)
        if self.dagster:
            ports["dagster"] = (s.maintenance.dagster_host, s.maintenance.dagster_port)
            if s.maintenance.dagster_code_port:
                ports["dagster code server"] = (s.maintenance.dagster_code_host, s.maintenance.dagster_code_port)
        return ports

    # ---- start -----------------------------------------------------------------------------------------------

    def _claim_home(self) -> None:
        """One `k2 run` per K2_HOME: a second would fight the first over ports, catalog and logs."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = (self.run_dir / "k2-run.lock").open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock.seek(0)
            raise SystemExit(
                f"k2 run is already running on {self.settings.home} ({self._lock.read().strip()})"
            ) from exc
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}")
        self._lock.flush()

    def _check_ports(self) -> None:
        taken = [f"{what} {host}:{port}" for what, (host, port) in self._ports().items() if port_in_use(host, port)]
        if taken:
            raise SystemExit(
                f"cannot start: in use: {', '.join(taken)}. Is another K2 running? "
                "Stop it, or choose other ports (K2_KAFKA_BOOTSTRAP_SERVERS, K2_API_PORT, K2_INGEST_METRICS_PORT, "
                "K2_INGEST_BOOK_METRICS_PORT, K2_INGEST_COMMITTER_METRICS_PORT, K2_SUPERVISOR_PORT, "
                "K2_MAINTENANCE_DAGSTER_PORT)."
            )

    def _start(self, child: Child) -> None:
        child.proc = child.start()
        child.started_at, child.started_wall = time.monotonic(), time.time()
        child.restart_at = None
        self._up.labels(child.name).set(1)
        self._started.labels(child.name).set(child.started_wall)
        log.info("process started", extra={"process": child.name, "pid": child.proc.pid, "restarts": child.restarts})

    def run(self) -> int:
        """Start everything and supervise until a signal (exit code 0) or a process that cannot stay up (1)."""
        auth_required(self.settings)  # a refused auth configuration stops `k2 run` before anything starts
        self.logs.mkdir(parents=True, exist_ok=True)
        self._claim_home()
        self._check_ports()
        configure_logging("supervisor", self.settings.log_level, path=self.logs / "supervisor.log")
        try:
            self._load_reference_data()
        except ConfigError as exc:  # a bad reference file stops the start; what is stored stays as it was
            console.print(Text(f"reference data not loaded: {exc}", style="bold red"))
            return 1
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        server = None
        if self.settings.supervisor.port:
            server = serve_status(self.health, self.settings.api.host, self.settings.supervisor.port, self.registry)
        code = 0
        try:
            self._start_all()
            self._watch()
        except GiveUp as exc:
            console.print(f"[bold red]giving up: {exc}[/]")
            code = 1
        finally:
            self.stop()
            if server is not None:
                server.shutdown()
        return code

    def _load_reference_data(self) -> None:
        """`market.instruments` from K2_INSTRUMENTS_DIR before the ingester starts, so strict instruments are strict
        from its first batch; an unchanged file set commits nothing. A bad file raises `ConfigError` (no start); an
        unreachable catalog only warns, since every process then fails and is supervised as usual."""
        from k2_core.lake.catalog import CATALOG_FAILURES
        from k2_core.lake.instruments import load_reference_files

        try:
            result = load_reference_files(self.settings)
        except CATALOG_FAILURES as exc:
            # The catalog is not there (yet): start anyway, as the processes would; they say so, and are supervised.
            reason = (str(exc).splitlines() or [""])[0][:200]
            log.warning("reference data not loaded: catalog unreachable", extra={"error": reason})
            console.print(Text(f"instruments  not loaded, catalog unreachable: {reason}", style="yellow"))
            return
        state = f"new snapshot {result.snapshot_id}" if result.changed else "unchanged"
        console.print(f"instruments  {result.rows} from {self.settings.instruments.dir} ({state})")

    def _start_all(self) -> None:
        s = self.settings
        console.print(f"[bold]K2[/] home: {s.home}  (logs in {self.logs})")
        for child in self._plan():
            if self._signal is not None:
                return
            self.children[child.name] = child
            if child.name == "dagster-webserver":
                self._migrate_dagster()
            self._start(child)
        console.print(f"broker       kafka://{self.broker_host}:{self.broker_port} (Tansu, in memory)")
        console.print(f"ingester     metrics on :{s.ingest.metrics_port}")
        console.print(f"books        metrics on :{s.ingest.book_metrics_port}")
        if COMMITTER in self.children:
            console.print(f"committer    coordinated commits, metrics on :{s.ingest.committer_metrics_port}")
        console.print(f"api          http://{s.api.host}:{s.api.port}/docs")
        console.print(f"auth         {auth_banner(s).removeprefix('auth ')}")
        if self.dagster:
            console.print(f"dagster      {webserver_url(s)}")
        if self.simulators:
            console.print(f"simulators   {', '.join(EXCHANGES)} at {self.rate} trades/s each")
        if s.supervisor.port:
            console.print(f"status       k2 status  (http://{s.api.host}:{s.supervisor.port}/health)")
        console.print("Ctrl-C stops everything; processes that exit are restarted.")

    def _migrate_dagster(self) -> None:
        """The webserver and the daemon would both create the instance's SQLite storage at start and race on its
        schema migration: create it once, before either starts."""
        proc = dagster_processes(self.settings, self._env())[0]
        subprocess.run(
            [sys.executable, "-m", "dagster", "instance", "migrate"],
            env=proc.env,
            cwd=proc.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )

    # ---- supervision -----------------------------------------------------------------------------------------

    def _watch(self) -> None:
        while self._signal is None:
            now = time.monotonic()
            for child in list(self.children.values()):
                if child.proc is not None and child.restart_at is None and not child.running:
                    self._exited(child, now)
                elif child.restart_at is not None and now >= child.restart_at:
                    self._restart(child)
            time.sleep(0.2)

    def _exited(self, child: Child, now: float) -> None:
        assert child.proc is not None
        child.last_exit = child.proc.returncode
        ran_for = now - child.started_at
        self._up.labels(child.name).set(0)
        self._kill_group(child)  # whatever it left behind in its group
        child.fast_failures, delay = self.policy.after_exit(ran_for, child.fast_failures)  # may give up
        child.restart_at = now + delay
        log.error(
            "process exited; restarting",
            extra={"process": child.name, "exit_code": child.last_exit, "ran_s": round(ran_for, 1), "in_s": delay},
        )
        console.print(
            f"[red]{child.name} exited with code {child.last_exit} after {ran_for:.0f}s; restarting in {delay:.0f}s "
            f"(restart {child.restarts + 1}); see {self.logs / (child.name + '.log')}[/]"
        )
        if child.name == BROKER:
            self._broker_lost()

    def _broker_lost(self) -> None:
        """The broker's memory is gone: say so loudly, and stop its clients until it is back. They get a short
        grace (the ingester commits the batch in hand to Iceberg), not the full stop timeout: a feed would wait for
        a broker that is not there."""
        console.print(
            "[bold red]The embedded broker stopped. It keeps messages in memory only: what it held that the ingester "
            "had not yet committed to Iceberg is lost. Re-run any replay-file or import that was in flight (dedup "
            "makes re-running safe); `k2 replay-file` reports what was lost and exits non-zero.[/]"
        )
        log.critical("embedded broker lost; uncommitted messages are gone", extra={"process": BROKER})
        clients = [c for c in self.children.values() if c.needs_broker]
        self._stop_together(clients, BROKER_LOST_GRACE_SECONDS)
        for child in clients:
            child.restart_at = float("inf")  # held until the broker is back

    def _restart(self, child: Child) -> None:
        child.restarts += 1
        self._restarts.labels(child.name).inc()
        try:
            self._start(child)
        except (OSError, K2Error) as exc:
            child.fast_failures, delay = self.policy.after_exit(0.0, child.fast_failures)  # may give up
            child.restart_at = time.monotonic() + delay
            console.print(f"[red]{child.name} could not start ({exc}); trying again in {delay:.0f}s[/]")
            log.error("process could not start", extra={"process": child.name, "error": str(exc)})
            return
        if child.name == BROKER:
            console.print("[bold yellow]broker restarted (a new, empty cluster); its clients start again[/]")
            for other in self.children.values():
                if other.needs_broker and other.restart_at == float("inf"):
                    other.restarts += 1
                    self._restarts.labels(other.name).inc()
                    self._start(other)
        else:
            console.print(f"[yellow]{child.name} restarted (restart {child.restarts})[/]")

    def health(self) -> dict[str, Any]:
        """What the supervisor's /health reports: every process, its uptime and restarts."""
        now = time.monotonic()
        processes = {
            c.name: {
                "pid": c.proc.pid if c.proc is not None else None,
                "up": c.running,
                "uptime_seconds": round(now - c.started_at, 1) if c.running else 0.0,
                "started_at": datetime.fromtimestamp(c.started_wall, UTC).isoformat() if c.started_wall else None,
                "restarts": c.restarts,
                "last_exit_code": c.last_exit,
            }
            for c in self.children.values()
        }
        down = [name for name, p in processes.items() if not p["up"]]
        return {
            "status": "stopping" if self._signal is not None else ("down" if down else "ok"),
            "pid": os.getpid(),
            "home": str(self.settings.home),
            "processes": processes,
            "down": down,
        }

    # ---- stop ------------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._signal is not None:
            self._force = True
            return
        self._signal = signum

    def _stop_tiers(self) -> list[list[Child]]:
        """Feeds and the Dagster daemon first, then the ingester (which commits its last batch), then the API and the
        Dagster UI, then the broker. Each tier stops together."""
        tiers = [
            [n for n in self.children if n.startswith("simulator")] + ["dagster-daemon"],
            ["ingester", "book-ingester"],
            [COMMITTER],  # after the ingesters: it answers their last hand-ins
            ["api", "dagster-webserver", CODE_SERVER],  # the code server's runs finish within the stop's wait
            [BROKER],
        ]
        return [[self.children[n] for n in tier if n in self.children] for tier in tiers]

    def _stop_together(self, children: list[Child], timeout: float) -> None:
        """Its stop signal to each, then wait for all; what is left at the timeout (or a second signal) is killed."""
        running = [c for c in children if c.running]
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(child.stop_signal)
        deadline = time.monotonic() + timeout
        while any(c.running for c in running) and not self._force and time.monotonic() < deadline:
            time.sleep(0.05)
        # What the process started and left behind (Dagster's run workers) may finish, within the same deadline.
        while any(_group_alive(c) for c in running) and not self._force and time.monotonic() < deadline:
            time.sleep(0.1)
        for child in running:
            assert child.proc is not None
            if child.proc.poll() is None or _group_alive(child):
                if not self._force:
                    console.print(f"[yellow]{child.name} did not stop within {timeout:.0f}s; killing it[/]")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        for child in children:
            self._kill_group(child)
            self._up.labels(child.name).set(0)

    @staticmethod
    def _kill_group(child: Child) -> None:
        """Whatever the process left in its group (Dagster's run workers, code servers) goes with it."""
        if child.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(child.proc.pid, sig)
            except ProcessLookupError:
                return
            time.sleep(0.2)

    def stop(self) -> None:
        why = signal.Signals(self._signal).name if self._signal is not None else "a process cannot stay up"
        console.print(f"stopping ({why}); a second signal kills what is left at once ...")
        log.info("stopping", extra={"reason": why})
        for tier in self._stop_tiers():
            for child in tier:
                child.restart_at = None
            self._stop_together(tier, self.settings.supervisor.stop_timeout_seconds)
        log.info("all K2 processes stopped")
        console.print("all K2 processes stopped.")
        if self._lock is not None:
            self._lock.close()
