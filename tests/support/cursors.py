"""Pagination cursors as a client could tamper with them: the JSON body of one the API issued, and unsigned
look-alikes built from a body, so tests can forge, rewind and corrupt cursors without knowing the server's secret."""

from __future__ import annotations

import base64
import json
from typing import Any


def cursor_body(cursor: str) -> dict[str, Any]:
    """The JSON body of an issued cursor (its first `.`-separated part: the part a client can read)."""
    part = cursor.split(".", 1)[0]
    body: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return body


def unsigned_cursor(body: dict[str, Any]) -> str:
    """A cursor with `body` and no signature: what a client without the server's secret can build."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def resigned_cursor(cursor: str, body: dict[str, Any]) -> str:
    """`cursor`'s signature on another body: a tampered position with the original signature kept."""
    _, _, signature = cursor.partition(".")
    return unsigned_cursor(body) + (f".{signature}" if signature else "")
