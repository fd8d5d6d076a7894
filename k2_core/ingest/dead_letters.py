"""The dead-letter contract: what a refused message looks like on `<topic>.dlq`, as plain data.

Operators and replay tools read dead letters long after the ingester that wrote them has changed, so the header names
and their encoding are a contract, stated once here and produced by `k2_stream.dead_letters`. A dead letter's reason
is one line starting with the exception's class name (`DecodeError: ...`), or `shed: ...` for a message K2 itself
set aside under load; `reason_class` folds it into the short, bounded label the `k2.error.class` header and the DLQ
metric carry (the full reason quotes the bad value, so it belongs in the header and the log, never in a label).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

ERROR = "k2.error"  # the full reason
ERROR_CLASS = "k2.error.class"  # `reason_class` of it
SOURCE_TOPIC = "k2.source.topic"  # where the original still is, for the topic's retention
SOURCE_PARTITION = "k2.source.partition"
SOURCE_OFFSET = "k2.source.offset"
FAILED_AT = "k2.failed_at"  # ISO 8601, UTC
TRUNCATED = "k2.truncated"  # present ("true") only when the body was cut
ORIGINAL_BYTES = "k2.original_bytes"  # the original body's length, when cut

# A dead letter must be producible: librdkafka refuses messages over ~1 MB by default, and a dead letter that
# cannot be sent would stall its partition (the batch is retried forever). Larger bodies are cut to this.
DEAD_LETTER_MAX_BODY = 512 * 1024

SHED_PREFIX = "shed:"

ReasonClass = Literal["decode_error", "validation_error", "reference_data", "too_large", "shed", "other"]
_REASON_CLASSES: dict[str, ReasonClass] = {
    "DecodeError": "decode_error",
    "ValidationError": "validation_error",
    "ReferenceDataError": "reference_data",
    "MessageTooLargeError": "too_large",
    "shed": "shed",
}


def reason_class(reason: str) -> ReasonClass:
    """`DecodeError: ...` -> `decode_error`: a label set small enough for a metric."""
    return _REASON_CLASSES.get(reason.split(":", 1)[0].strip(), "other")


def shed_reason(level: int) -> str:
    """Shed messages are replayable, not bad: the reason says so, and which level set them aside."""
    return f"{SHED_PREFIX} degradation level {level} keeps critical symbols only"


def is_shed(reason: str) -> bool:
    return reason.startswith(SHED_PREFIX)


def dead_letter_body(value: bytes | None) -> tuple[bytes | None, dict[str, bytes]]:
    """The body a dead letter carries and the headers that say whether it was cut (`k2.truncated`,
    `k2.original_bytes`); the untouched original stays at `k2.source.*` for the topic's retention."""
    if value is None or len(value) <= DEAD_LETTER_MAX_BODY:
        return value, {}
    return value[:DEAD_LETTER_MAX_BODY], {TRUNCATED: b"true", ORIGINAL_BYTES: str(len(value)).encode()}


@dataclass(frozen=True)
class DeadLetter:
    """One refused message as it goes to its topic's DLQ (the key is the original's, unchanged)."""

    body: bytes | None
    headers: dict[str, bytes]


def dead_letter(
    value: bytes | None, reason: str, topic: str, partition: int, offset: int, failed_at: datetime
) -> DeadLetter:
    body, cut = dead_letter_body(value)
    headers = {
        ERROR: reason.encode(),
        ERROR_CLASS: reason_class(reason).encode(),
        SOURCE_TOPIC: topic.encode(),
        SOURCE_PARTITION: str(partition).encode(),
        SOURCE_OFFSET: str(offset).encode(),
        FAILED_AT: failed_at.isoformat().encode(),
        **cut,
    }
    return DeadLetter(body, headers)


def source_of(headers: Mapping[str, bytes]) -> tuple[str, int, int]:
    """(topic, partition, offset) of the original message: where to read it again to replay it."""
    return (
        headers[SOURCE_TOPIC].decode(),
        int(headers[SOURCE_PARTITION]),
        int(headers[SOURCE_OFFSET]),
    )
