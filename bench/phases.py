"""Where an ingester's batch time goes (bench/ingest.py --phases): each phase's wall seconds and the CPU seconds of the
thread that ran it (`time.thread_time`). A phase whose work runs in a library's own threads (Parquet encoding in
pyarrow's pool, fetching in librdkafka's) shows little CPU on its caller's thread: that work leaves the GIL free. With
the pipeline on, the checkpoint write runs on the writer thread alongside the next collect and decode, so the walls
overlap and the loop's own thread (collect + decode + plan + finish) sets the pace.
"""

from __future__ import annotations

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
class Phases:
    wall: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall[name] += time.perf_counter() - wall0
                self.cpu[name] += time.thread_time() - cpu0
                self.calls[name] += 1

        return timed

    def as_dict(self) -> dict[str, Any]:
        return {
            name: {"wall": self.wall[name], "cpu": self.cpu[name], "calls": self.calls[name]}
            for name in PHASES
            if name in self.calls
        }


def instrument(ingester: Any) -> Phases:
    """Wrap the ingester's phases where it looks them up."""
    import k2_core.ingest.writer as writer_module
    from k2_core.model.tables import TableDef

    phases = Phases()
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
    print(f"  phases over {batches} batches (ms per batch: wall, CPU of the thread that ran it)")
    for name, p in phases.items():
        print(
            f"    {name:<40} wall {p['wall'] / batches * 1000:7.1f}  cpu {p['cpu'] / batches * 1000:7.1f}  "
            f"calls {p['calls']}"
        )
