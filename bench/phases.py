"""Where an ingester's batch time goes (bench/ingest.py --phases): each phase's wall and thread-CPU seconds, and how
much of it leaves the GIL free.

The GIL probe is a thread that only counts, in pure Python. Its rate while a phase runs, over its rate while the
ingester thread sleeps, is the share of the phase during which another Python thread can run: about 1 for a phase
that releases the GIL (C++ Parquet encoding, librdkafka waits), about 0.5 for pure Python (the interpreter hands the
GIL over every switch interval, so the two threads take turns), near 0 for C code that keeps the GIL. The probe
takes a core's worth of CPU and half of every Python phase, so a probed run's throughput is not a figure: run it on
its own, without the pipeline, to see one batch's phases in a row.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The phases, in a batch's order (indented: part of the one above); each is wrapped where the ingester looks it up.
PHASES = (
    "collect (consume)",
    "decode",
    "plan (validate refs, dedup, sequence)",
    "checkpoint write (steps 1-3)",
    "  arrow sort + conform",
    "  parquet write",
    "  catalog commit",
    "checkpoint finish (steps 4-5)",
    "  kafka offset commit",
)


@dataclass
class Probe:
    count: int = 0
    running: bool = True
    rate: float = 0.0  # counts per second with nothing else running

    def spin(self) -> None:
        while self.running:
            self.count += 1

    def calibrate(self, seconds: float = 0.5) -> None:
        start = self.count
        time.sleep(seconds)
        self.rate = (self.count - start) / seconds


@dataclass
class Phases:
    wall: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    probe_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    probe: Probe | None = None

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            count0 = self.probe.count if self.probe else 0
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall[name] += time.perf_counter() - wall0
                self.cpu[name] += time.thread_time() - cpu0
                self.calls[name] += 1
                if self.probe:
                    self.probe_counts[name] += self.probe.count - count0

        return timed

    def as_dict(self) -> dict[str, Any]:
        rate = self.probe.rate if self.probe else 0.0
        return {
            name: {
                "wall": self.wall[name],
                "cpu": self.cpu[name],
                "calls": self.calls[name],
                "gil_free": (self.probe_counts[name] / (self.wall[name] * rate)) if rate and self.wall[name] else None,
            }
            for name in PHASES
            if name in self.calls
        }


def instrument(ingester: Any, probe: bool) -> Phases:
    """Wrap the ingester's phases (and start the GIL probe)."""
    import k2_core.ingest.writer as writer_module
    from k2_core.model.tables import TableDef

    phases = Phases()
    if probe:
        phases.probe = Probe()
        threading.Thread(target=phases.probe.spin, daemon=True).start()
        phases.probe.calibrate()
    ingester._collect = phases.wrap("collect (consume)", ingester._collect)
    ingester.preparer.decode = phases.wrap("decode", ingester.preparer.decode)
    ingester.preparer.plan = phases.wrap("plan (validate refs, dedup, sequence)", ingester.preparer.plan)
    checkpoint = ingester.checkpoint
    checkpoint.write = phases.wrap("checkpoint write (steps 1-3)", checkpoint.write)
    checkpoint.finish = phases.wrap("checkpoint finish (steps 4-5)", checkpoint.finish)
    checkpoint._commit_offsets = phases.wrap("  kafka offset commit", checkpoint._commit_offsets)
    writer_module.write_files = phases.wrap("  parquet write", writer_module.write_files)  # type: ignore[assignment]
    writer_module.append_files = phases.wrap("  catalog commit", writer_module.append_files)  # type: ignore[assignment]
    sort, fit = TableDef.sort, writer_module.TableWriter.fit
    TableDef.sort = phases.wrap("  arrow sort + conform", sort)  # type: ignore[method-assign]
    writer_module.TableWriter.fit = phases.wrap("  arrow sort + conform", fit)  # type: ignore[method-assign]
    return phases


def report(phases: dict[str, Any], batches: int) -> None:
    print(f"  phases over {batches} batches (ms per batch: wall, thread CPU; share of the phase the GIL is free)")
    for name, p in phases.items():
        gil = f"{p['gil_free']:4.2f}" if p["gil_free"] is not None else "   -"
        print(
            f"    {name:<40} wall {p['wall'] / batches * 1000:7.1f}  cpu {p['cpu'] / batches * 1000:7.1f}  "
            f"GIL free {gil}  calls {p['calls']}"
        )
