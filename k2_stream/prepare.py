"""Preparing a batch for its checkpoint: Kafka messages -> decoded, validated rows -> a plan (k2_core.ingest.plan).

This is the ingester's hot path and its one seam: the ingester calls a `Preparer`, and whatever the preparer hands
back is committed by the same checkpoint (k2_stream.checkpoint). `BatchPreparer` is the production path (messages
as columns, one Avro block per topic, vector validation, runs of numbers classified at once); the benchmark's
per-message baseline (bench/per_message.py) is another preparer, so the two differ only where they mean to.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Message

from k2_core.ingest.dead_letters import shed_reason
from k2_core.ingest.dedup import to_us
from k2_core.ingest.degradation import Level
from k2_core.ingest.plan import BatchPlan, KindRows, history_wanted, plan_batch
from k2_core.ingest.reference import keep_mask
from k2_core.lake.offsets import TopicPartition as TP
from k2_core.model.tables import MARKET_TABLES, conform
from k2_core.model.topics import Kind
from k2_stream import metrics
from k2_stream.decode import BatchDecoder

if TYPE_CHECKING:
    from k2_stream.ingester import Ingester

Int64Array = npt.NDArray[np.int64]


@dataclass
class PreparedBatch:
    """A batch ready for its checkpoint."""

    plan: BatchPlan
    dead: list[tuple[Message, str]]  # (message, reason) in batch order; none past a halt
    offsets: dict[TP, int]  # the next offset to commit per partition
    newest: dict[TP, tuple[int, int]]  # per partition: its newest message's Kafka timestamp (ms, 0 if none), offset


@dataclass
class DecodedBatch:
    """A batch after the part of its preparation that needs no sequence state: it may be made while the batch
    before it is still being written (the ingester's pipeline, k2_stream.pipeline)."""

    batch: list[Message]
    now: datetime
    view: BatchView | None = None
    topics: list[DecodedTopic] = field(default_factory=list)


@dataclass
class DecodedTopic:
    """One topic's valid rows with their positions in the batch, and its dead letters as (position, reason)."""

    topic: str
    table: pa.Table
    positions: Int64Array
    dead: list[tuple[int, str]]


class Preparer(Protocol):
    """Two phases, so the first can overlap the previous batch's commit: `decode` touches nothing the commit of an
    earlier batch changes; `plan` reads the sequence state, so it runs only once every earlier batch is committed."""

    def decode(self, batch: list[Message], now: datetime) -> DecodedBatch: ...

    def plan(self, decoded: DecodedBatch) -> PreparedBatch: ...


@dataclass
class BatchView:
    """A batch's messages as columns: read each message's coordinates once."""

    topic_names: list[str]
    topic_codes: Int64Array  # index into `topic_names`
    values: list[bytes | None]
    offsets: Int64Array
    tp_codes: Int64Array  # index into `tps`
    tps: list[TP]

    @classmethod
    def of(cls, batch: list[Message]) -> BatchView:
        # map over the C methods: no Python frame per message
        topics = pc.dictionary_encode(pa.array(list(map(Message.topic, batch)), pa.string()))
        partitions = np.fromiter(map(Message.partition, batch), dtype=np.int64, count=len(batch))
        offsets = np.fromiter(map(Message.offset, batch), dtype=np.int64, count=len(batch))
        topic_idx = np.asarray(topics.indices, dtype=np.int64)
        found, tp_codes = np.unique(topic_idx << 32 | partitions, return_inverse=True)
        names = topics.dictionary.to_pylist()
        tps = [(names[int(c >> 32)], int(c & 0xFFFFFFFF)) for c in found]
        return cls(names, topic_idx, list(map(Message.value, batch)), offsets, tp_codes.astype(np.int64), tps)

    def by_topic(self) -> list[tuple[str, Int64Array]]:
        """(topic, indices of its messages in batch order) per topic."""
        if len(self.topic_names) == 1:
            return [(self.topic_names[0], np.arange(len(self.values), dtype=np.int64))]
        order = np.argsort(self.topic_codes, kind="stable")
        bounds = np.searchsorted(self.topic_codes[order], np.arange(len(self.topic_names) + 1))
        return [(name, order[bounds[i] : bounds[i + 1]]) for i, name in enumerate(self.topic_names)]

    def last_index(self) -> list[int]:
        """Per partition (in `tps` order), the index of its last message in the batch."""
        last = np.full(len(self.tps), -1, dtype=np.int64)
        np.maximum.at(last, self.tp_codes, np.arange(len(self.tp_codes), dtype=np.int64))
        return [int(i) for i in last]

    def next_offsets(self) -> dict[TP, int]:
        nxt = np.full(len(self.tps), -1, dtype=np.int64)
        np.maximum.at(nxt, self.tp_codes, self.offsets)
        return {tp: int(o) + 1 for tp, o in zip(self.tps, nxt, strict=True)}

    def newest(self, batch: list[Message]) -> dict[TP, tuple[int, int]]:
        """Per partition, its newest message's Kafka timestamp (ms; 0 when the broker gave none) and offset."""
        out: dict[TP, tuple[int, int]] = {}
        for tp, i in zip(self.tps, self.last_index(), strict=True):
            kind, ts = batch[i].timestamp()
            out[tp] = (ts if kind else 0, int(self.offsets[i]))
        return out


class BatchPreparer:
    """The production hot path: decode each topic's messages as one block (k2_stream.decode), shed non-critical
    symbols at degradation level 3, then plan (k2_core.ingest.plan)."""

    def __init__(self, ingester: Ingester) -> None:
        self.ingester = ingester
        self.decoder = BatchDecoder(ingester.decoder, ingester.settings.records)

    def decode(self, batch: list[Message], now: datetime) -> DecodedBatch:
        """Each topic's messages as one Avro block, validated (k2_stream.decode): no sequence state, no catalog."""
        view = BatchView.of(batch)
        topics = []
        for topic, idx in view.by_topic():
            metrics.MESSAGES_CONSUMED.labels(topic).inc(len(idx))
            spec = self.ingester.layout.by_name[topic]
            reader_id, reader = self.ingester.readers[spec.subject]
            values = view.values if len(idx) == len(batch) else [view.values[i] for i in idx.tolist()]
            out = self.decoder.decode(
                spec.kind, spec.exchange, reader_id, reader, values, MARKET_TABLES[spec.kind], now
            )
            self.ingester.stats["decoded_per_message"] += out.per_message
            dead = [(int(idx[p]), reason) for p, reason in out.dead]
            topics.append(DecodedTopic(topic, out.table, idx[out.positions], dead))
        return DecodedBatch(batch, now, view, topics)

    def plan(self, decoded: DecodedBatch) -> PreparedBatch:
        ing = self.ingester
        batch, view, now = decoded.batch, decoded.view, decoded.now
        if view is None:
            raise TypeError("BatchPreparer.plan takes what BatchPreparer.decode made")
        if ing.state.stale:  # an import committed rows the state has not seen
            ing.state.sync()
        rows, dead = self._screen(decoded, view)
        wanted = history_wanted(ing.state.tracker, rows)
        if wanted:
            ing.state.load_history(wanted)
            ing.stats["history_days_loaded"] += len(wanted)
        plan = plan_batch(rows, view.tps, ing.state.tracker, to_us(now), ing.grading, ing.shed_streams)
        ing.state.settle_late(plan)
        ing.stats["streams_fast"] += plan.fast_streams
        ing.stats["streams_row_by_row"] += plan.slow_streams
        dead = [(m, r) for m, r in dead if not plan.beyond_halt((m.topic() or "", m.partition() or 0), m.offset() or 0)]
        return PreparedBatch(plan, dead, plan.commit_offsets(view.next_offsets()), view.newest(batch))

    def _screen(self, decoded: DecodedBatch, view: BatchView) -> tuple[dict[Kind, KindRows], list[tuple[Message, str]]]:
        """The valid rows per data type, less what the instruments' reference data refuses and what is shed under
        load (both read state the previous batch's commit may change), and the dead letters in batch order."""
        ing = self.ingester
        parts: dict[Kind, list[tuple[pa.Table, Int64Array]]] = defaultdict(list)
        dead: list[tuple[int, str]] = []
        reference = ing.reference.rules()
        for part in decoded.topics:
            spec = ing.layout.by_name[part.topic]
            dead.extend(part.dead)
            table, positions = part.table, part.positions
            refused = reference.refuse(spec.kind, spec.exchange, table)
            if refused:  # strict instruments' reference data (k2_core.ingest.reference)
                dead.extend((int(positions[i]), reason) for i, reason in refused)
                keep = keep_mask(table.num_rows, refused)
                table, positions = table.filter(pa.array(keep)), positions[keep]
            if ing.degradation.level >= Level.SHED_SYMBOLS and table.num_rows:
                table, positions = self._shed(spec.kind, spec.exchange, table, positions, dead)
            parts[spec.kind].append((table, positions))
        rows: dict[Kind, KindRows] = {}
        for kind, chunks in parts.items():
            positions = np.concatenate([p for _, p in chunks])
            # Topics of one data type may carry different versions: the batch has the columns any of them carried.
            schema = MARKET_TABLES[kind].arrow_schema_with({name for t, _ in chunks for name in t.column_names})
            table = pa.concat_tables([conform(t, schema) for t, _ in chunks])
            rows[kind] = KindRows(kind, table, view.tp_codes[positions], view.offsets[positions], positions)
        dead.sort(key=lambda d: d[0])
        return rows, [(decoded.batch[i], reason) for i, reason in dead]

    def _shed(
        self, kind: Kind, exchange: str, table: pa.Table, positions: Int64Array, dead: list[tuple[int, str]]
    ) -> tuple[pa.Table, Int64Array]:
        ing = self.ingester
        symbols = table.column("symbol")
        shed = [s for s in pc.unique(symbols).to_pylist() if ing.degradation.sheds(exchange, s)]
        if not shed:
            return table, positions
        # The shed numbers will show as a gap once the symbol is ingested again: recorded, but never a halt.
        ing.shed_streams.update((kind, exchange, s) for s in shed)
        mask = np.asarray(pc.is_in(symbols, value_set=pa.array(shed, symbols.type)), dtype=np.bool_)
        reason = shed_reason(int(ing.degradation.level))
        dead.extend((int(p), reason) for p in positions[mask])
        count = int(mask.sum())
        metrics.SHED_MESSAGES.labels(exchange).inc(count)
        ing.stats["shed"] += count
        return table.filter(pa.array(~mask)), positions[~mask]
