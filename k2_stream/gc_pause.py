"""The cyclic garbage collector held off while a batch is collected, decoded and committed.

A batch is tens of thousands of Kafka messages, each a Python object the collector tracks, alive until the batch is
committed: every 700 allocations a young collection scans them, the survivors move to older generations, and every
few batches a full collection walks every tracked object of the process. That was half the wall time of collecting
a batch (`bench/ingest.py --phases`: 50,000 messages took 25 ms to consume without it, 25-95 ms with it) and
nothing of a batch is cyclic garbage: its objects are freed by reference counting when the batch is dropped. So
the collector pauses for the batch and runs, if due, between batches; the objects alive at start-up (modules, the
catalog's metadata) are frozen out of it, so a full collection no longer walks them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside; the collector is as it was after (a collection that fell due runs then)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def freeze_startup() -> None:
    """Move every object alive now out of the collector's reach (Python's `gc.freeze`): it is not garbage, and a
    full collection need not walk it again."""
    gc.collect()
    gc.freeze()
