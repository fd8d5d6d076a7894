"""`k2 run`: starts every K2 process on the embedded default and stops them all, cleanly, on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rich.console import Console

from k2_core.auth import auth_banner, auth_required
from k2_core.settings import Settings
from k2_stream.broker import start_tansu

console = Console(stderr=True)
EXCHANGES = ("asx", "nyse", "binance")


@dataclass
class Supervisor:
    settings: Settings
    simulators: bool = True
    dagster: bool = True
    rate: int = 50
    max_partitions: int = 4
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _env(self) -> dict[str, str]:
        """Children read the same settings; only the embedded defaults below are added when unset."""
        env = dict(os.environ)
        env.setdefault("K2_HOME", str(self.settings.home))
        env.setdefault("K2_KAFKA_MAX_PARTITIONS", str(self.max_partitions))
        env.setdefault("K2_KAFKA_REPLICATION_FACTOR", "1")
        return env

    def _spawn(self, name: str, *args: str) -> None:
        log_path = self.settings.home / "logs" / f"{name}.log"
        with log_path.open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "k2_cli.main", *args],
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
            )

    def _spawn_dagster(self) -> None:
        from k2_dagster.launcher import dagster_processes, webserver_url

        processes = dagster_processes(self.settings, self._env())
        # The webserver and the daemon would both create the instance's SQLite storage at start and race on its
        # schema migration: create it once, before either starts.
        subprocess.run(
            [sys.executable, "-m", "dagster", "instance", "migrate"],
            env=processes[0].env,
            cwd=processes[0].cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        for proc in processes:
            with (self.settings.home / "logs" / f"{proc.name}.log").open("ab") as log:
                self.procs[proc.name] = subprocess.Popen(
                    proc.argv,
                    env=proc.env,
                    cwd=proc.cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        console.print(f"dagster      {webserver_url(self.settings)}")

    def run(self) -> None:
        auth_required(self.settings)  # a refused auth configuration stops `k2 run` before anything starts
        home = self.settings.home
        (home / "logs").mkdir(parents=True, exist_ok=True)
        bootstrap = urlsplit(f"//{self.settings.kafka.bootstrap_servers.split(',')[0]}")
        host, port = bootstrap.hostname or "127.0.0.1", bootstrap.port or 9092
        console.print(f"[bold]K2[/] home: {home}  (logs in {home / 'logs'})")
        self.procs["broker"] = start_tansu(
            host, port, self.settings.kafka.broker_binary, home / "logs" / "broker.log", new_session=True
        )
        console.print(f"broker       kafka://{host}:{port} (Tansu, in memory)")
        self._spawn("ingester", "ingest")
        console.print(f"ingester     metrics on :{self.settings.ingest.metrics_port}")
        self._spawn("api", "api")
        console.print(f"api          http://{self.settings.api.host}:{self.settings.api.port}/docs")
        console.print(f"auth         {auth_banner(self.settings).removeprefix('auth ')}")
        if self.dagster:
            self._spawn_dagster()
        if self.simulators:
            for exchange in EXCHANGES:
                self._spawn(f"simulator-{exchange}", "simulate", "--exchange", exchange, "--rate", str(self.rate))
            console.print(f"simulators   {', '.join(EXCHANGES)} at {self.rate} trades/s each")
        console.print("Ctrl-C stops everything.")
        try:
            self._watch()
        except KeyboardInterrupt:
            console.print("stopping ...")
        finally:
            self.stop()

    def _watch(self) -> None:
        while True:
            for name, proc in self.procs.items():
                code = proc.poll()
                if code is not None and not name.startswith("simulator"):
                    console.print(f"[red]{name} exited with code {code}; see {self.settings.home / 'logs'}[/]")
                    return
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        """Feeds and the Dagster daemon first, then the ingester (which commits its last batch), then the API, the
        Dagster UI and the broker."""
        order = [n for n in self.procs if n.startswith("simulator")]
        order += ["dagster-daemon", "ingester", "api", "dagster-webserver", "broker"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                console.print(f"[yellow]{name} did not stop in {timeout:.0f}s; killing it[/]")
                proc.kill()
                proc.wait()
        console.print("all K2 processes stopped.")
