"""The ingester's pipeline: one batch written and committed on a thread of its own while the next is consumed and
decoded (K2_INGEST_PIPELINE, on by default: faster in every measured pair, docs/performance.md).

What it can win: the checkpoint's write (about a fifth of a batch's wall: Parquet encoding in pyarrow's C++ pool,
which releases the GIL, and the catalog commit) runs beside the next batch's consume and decode. The loop's own work
(a Python object per consumed message, decode, plan) holds the GIL and stays serial, and where both cores are busy
anyway the overlap wins nothing while the GIL hand-offs cost CPU (docs/performance.md, Pipelined batches).

What keeps it exactly once is what it does not overlap. At most one batch is in flight. The next batch is only
decoded meanwhile: its plan (sequence tracking, gap detection, the dedup window) waits until the batch before it is
committed and its staged state merged (k2_stream.checkpoint's `finish`, on the ingester's thread), so the state sees
batches in order, and its Iceberg commit starts only then. Kafka offsets are committed by `finish`, after the Iceberg
commit. A failed write stops the pipeline: nothing of the next batch is written, both batches' messages are held to
be committed again after the reset, which brings the state and positions up to the table (k2_stream.ingester). A
rebalance waits for the batch in flight before partitions are given up or taken.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import Message

from k2_stream.checkpoint import Checkpoint, Written
from k2_stream.prepare import PreparedBatch


@dataclass
class InFlight:
    """A batch whose write (checkpoint steps 1-3) runs on the writer thread; `finish` follows on the ingester's."""

    batch: list[Message]
    prepared: PreparedBatch
    now: datetime
    lag_seconds: float
    written: Future[Written]


class WriterThread:
    """At most one batch in flight, written by one thread, so Iceberg commits keep the batches' order."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="k2-writer")
        self._flight: InFlight | None = None

    def submit(self, batch: list[Message], prepared: PreparedBatch, now: datetime, lag_seconds: float) -> None:
        if self._flight is not None:
            raise RuntimeError("a batch is already in flight: take it before submitting the next")
        written = self._pool.submit(self.checkpoint.write, prepared, now)
        self._flight = InFlight(batch, prepared, now, lag_seconds, written)

    def written(self) -> bool:
        """Whether the batch in flight is written (or failed), so `take` will not wait."""
        return self._flight is not None and self._flight.written.done()

    def take(self) -> InFlight | None:
        """The batch in flight (its `written` may still be running: `.result()` waits), which is no longer held."""
        flight, self._flight = self._flight, None
        return flight

    def close(self) -> None:
        self._pool.shutdown(wait=True)
