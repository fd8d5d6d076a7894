"""The straightforward per-message pipeline, kept as the benchmark's baseline: the ingester's hot path as it was
before issue 7 (each message decoded by fastavro into a dict and validated, every row classified by
`SequenceTxn.observe`, dicts -> Arrow with `pa.Table.from_pylist`).

It is a `Preparer` (k2_stream.prepare), the ingester's seam for its hot path, so only the hot path differs:

    Ingester(settings, preparer=PerMessagePreparer)

Everything after it (the checkpoint: dead letters, gaps, fenced append, state, Kafka offsets) and around it
(lifecycle, rebalances, resets, degradation) is the real ingester's, and so are the rules it applies (record rules,
shedding, halting, late numbers already stored). Only history is not loaded for rows older than the dedup window:
the bench's backlog is live data.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
from confluent_kafka import Message

from k2_core.exceptions import DecodeError, ValidationError
from k2_core.ingest.dead_letters import shed_reason
from k2_core.ingest.dedup import to_us
from k2_core.ingest.plan import BatchPlan, Halt, LateRows, halts_partition
from k2_core.ingest.sequence import Verdict
from k2_core.lake.offsets import TopicPartition as TP
from k2_core.model.records import check_size, validate
from k2_core.model.tables import MARKET_TABLES
from k2_core.model.topics import Kind
from k2_stream import metrics
from k2_stream.ingester import Ingester
from k2_stream.prepare import DecodedBatch, PreparedBatch


@dataclass
class Pending:
    """A decoded, valid record waiting for its batch to commit."""

    kind: Kind
    record: dict[str, Any]
    tp: TP
    offset: int


class PerMessagePreparer:
    """The pre-issue-7 hot path."""

    def __init__(self, ingester: Ingester) -> None:
        self.ingester = ingester

    def decode(self, batch: list[Message], now: datetime) -> DecodedBatch:
        """Nothing ahead of the plan: this path decodes message by message as it plans."""
        return DecodedBatch(batch, now)

    def plan(self, decoded: DecodedBatch) -> PreparedBatch:
        batch, now = decoded.batch, decoded.now
        newest: dict[TP, tuple[int, int]] = {}
        pending, dead, next_offsets = self._decode(batch, newest)
        plan = self._plan(pending, to_us(now))
        self.ingester.state.settle_late(plan)
        dead = [(m, r) for m, r in dead if not plan.beyond_halt((m.topic() or "", m.partition() or 0), m.offset() or 0)]
        return PreparedBatch(plan, dead, plan.commit_offsets(next_offsets), newest)

    def _decode(
        self, batch: list[Message], newest: dict[TP, tuple[int, int]]
    ) -> tuple[list[Pending], list[tuple[Message, str]], dict[TP, int]]:
        ing = self.ingester
        pending: list[Pending] = []
        dead: list[tuple[Message, str]] = []
        next_offsets: dict[TP, int] = {}
        for m in batch:
            topic = m.topic() or ""
            tp = (topic, m.partition() or 0)
            offset = m.offset() or 0
            next_offsets[tp] = offset + 1
            has_ts, ts = m.timestamp()
            newest[tp] = (ts if has_ts else 0, offset)
            metrics.MESSAGES_CONSUMED.labels(topic).inc()
            spec = ing.layout.by_name[topic]
            try:
                check_size(m.value(), ing.settings.records.max_message_bytes)
                record = ing.decoder.decode(m.value(), ing.readers[spec.subject][1])
                validate(spec.kind, spec.exchange, record, ing.settings.records)
            except (DecodeError, ValidationError) as exc:
                dead.append((m, f"{type(exc).__name__}: {exc}"))
                continue
            if ing.degradation.sheds(spec.exchange, record["symbol"]):
                ing.shed_streams.add((spec.kind, spec.exchange, record["symbol"]))
                dead.append((m, shed_reason(int(ing.degradation.level))))
                metrics.SHED_MESSAGES.labels(spec.exchange).inc()
                ing.stats["shed"] += 1
                continue
            pending.append(Pending(spec.kind, record, tp, offset))
        return pending, dead, next_offsets

    def _plan(self, pending: list[Pending], now_us: int) -> BatchPlan:
        """Classify every row, one at a time; a gap that halts its partition cuts it at the revealing message and
        the plan is made again without it (repeat until stable)."""
        ing = self.ingester
        halts: dict[TP, Halt] = {}
        while True:
            plan = BatchPlan(halts=halts)
            rows: dict[Kind, list[dict[str, Any]]] = defaultdict(list)
            late: dict[Kind, list[int]] = defaultdict(list)
            halted = False
            ordered = sorted(
                (p for p in pending if not plan.beyond_halt(p.tp, p.offset)),
                key=lambda p: (
                    p.kind,
                    p.record["exchange"],
                    p.record["symbol"],
                    p.record["exchange_timestamp"],
                    p.record["exchange_sequence_number"],
                    p.offset,
                ),
            )
            for p in ordered:
                txn = plan.txns.get(p.kind)
                if txn is None:
                    txn = plan.txns[p.kind] = ing.state.tracker.begin()
                rec = p.record
                key = (p.kind, rec["exchange"], rec["symbol"])
                ts_us = to_us(rec["exchange_timestamp"])
                verdict, gap = txn.observe(key, rec["exchange_sequence_number"], ts_us, now_us)
                if gap is not None and halts_partition(gap, ing.grading, ing.shed_streams):
                    halts[p.tp] = Halt(min(p.offset, halts[p.tp].offset) if p.tp in halts else p.offset, gap)
                    halted = True
                    break
                if verdict is Verdict.DUPLICATE:
                    plan.duplicates[p.kind] += 1
                    continue
                if verdict is Verdict.FILL:
                    late[p.kind].append(len(rows[p.kind]))
                rows[p.kind].append(rec)
            if halted:
                continue
            for kind, records in rows.items():
                table = plan.rows[kind] = pa.Table.from_pylist(records, schema=MARKET_TABLES[kind].arrow_schema)
                if late[kind]:
                    at = np.array(late[kind], dtype=np.int64)
                    plan.late[kind] = LateRows(table.take(pa.array(at)), at)
                    plan.fills[kind] = (plan.late[kind].table, None)
            plan.take_events()
            return plan
