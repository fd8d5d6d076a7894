"""Opaque pagination cursors: keyset positions, not offsets.

A page ends at some row; the cursor records that row's position in the result's order (its time and sequence
number, or a snapshot's place in the log), the snapshot the page was read from when it came from Iceberg alone
(so the next pages read the same table state, even if the ingester commits in between), and a fingerprint of
the query, so a cursor cannot be replayed against a different query. Clients treat the text as opaque; it is
URL-safe base64 of compact JSON, tamper-evident through the fingerprint and checked field by field on decode.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from k2_core.exceptions import QueryError

_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cursor:
    """The position after the last row of a page. `after` is the last row's sort key (e.g. micros since
    the epoch and sequence number); `snapshot_id` pins the Iceberg snapshot, or is None when not pinned."""

    after: tuple[int, ...]
    snapshot_id: int | None
    fingerprint: str
    quote_snapshot_id: int | None = None  # the quotes snapshot a with_quote listing joins

    def encode(self) -> str:
        body = {"v": _VERSION, "a": list(self.after), "s": self.snapshot_id, "f": self.fingerprint}
        if self.quote_snapshot_id is not None:
            body["q"] = self.quote_snapshot_id
        raw = json.dumps(body, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def micros(moment: datetime) -> int:
    """A time as a cursor holds it: microseconds since the epoch, exact (a float timestamp would round)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def fingerprint(*parts: object) -> str:
    """A short digest of the query parameters that must stay fixed from page to page."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def decode_cursor(text: str, expected_fingerprint: str, key_length: int) -> Cursor:
    """Parse a cursor from a client; any malformed, foreign or mismatched cursor is a `QueryError` naming it."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        body: Any = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise QueryError("cursor is not a cursor this API issued (pass next_cursor from a previous page)") from None
    if not (
        isinstance(body, dict)
        and body.get("v") == _VERSION
        and isinstance(body.get("a"), list)
        and len(body["a"]) == key_length
        and all(isinstance(v, int) and not isinstance(v, bool) for v in body["a"])
        and all(body.get(k) is None or (isinstance(body[k], int) and not isinstance(body[k], bool)) for k in "sq")
        and isinstance(body.get("f"), str)
    ):
        raise QueryError("cursor is malformed (pass next_cursor from a previous page unchanged)")
    if body["f"] != expected_fingerprint:
        raise QueryError("cursor belongs to a different query: keep every other parameter as it was on the first page")
    return Cursor(
        after=tuple(body["a"]), snapshot_id=body.get("s"), fingerprint=body["f"], quote_snapshot_id=body.get("q")
    )
