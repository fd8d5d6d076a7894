"""Where a partition resumes: the rule that makes a crash between the Iceberg commit and the Kafka commit harmless.

A batch's offsets land in the table's snapshot first and in Kafka's consumer group second, so after a crash between
the two the table is ahead; after a rebalance to a peer that found nothing to write, Kafka may be. The newer of the
two is always a position whose every earlier message is stored or dead-lettered. Offsets here are the next offset
to read, as both places store them; None is "never committed anywhere": read the partition from its beginning.
"""

from __future__ import annotations

from collections.abc import Mapping

from k2_core.lake.offsets import TopicPartition


def resume_offset(committed: int | None, stored: int | None) -> int | None:
    """The newer of Kafka's committed offset and the table's."""
    known = [o for o in (committed, stored) if o is not None and o >= 0]
    return max(known) if known else None


def resume_offsets(
    committed: Mapping[TopicPartition, int | None], stored: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int | None]:
    """Per partition of `committed` (the assignment, as the consumer group reports it), where to resume."""
    return {tp: resume_offset(offset, stored.get(tp)) for tp, offset in committed.items()}


def position(resume: int | None, held: int | None = None) -> int:
    """Where this ingester's next batch of a partition starts (what fencing checks its commit against): the resume
    offset, but never behind the position it already holds (a reset after a failed write keeps the batch in hand)."""
    return max(resume if resume is not None else 0, held if held is not None else 0)
