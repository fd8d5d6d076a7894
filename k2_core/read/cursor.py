"""Opaque pagination cursors: keyset positions, not offsets, signed by the server that issued them.

A page ends at some row; the cursor records that row's position in the result's order (its time and sequence
number, or a snapshot's place in the log), the snapshot the page was read from when it came from Iceberg alone
(so the next pages read the same table state, even if the ingester commits in between), and a fingerprint of
the query, so a cursor cannot be replayed against a different query.

The text is `<body>.<signature>`: URL-safe base64 of compact JSON, then of its HMAC-SHA256 under the installation's
cursor secret (`CursorCodec`; the key comes from `cursor_key`). Clients treat it as opaque; they can read the body
but not write it. A cursor is refused with a `QueryError` naming it (an HTTP 400) when it is too long, not ours in
shape, or its signature does not verify (altered, forged, or issued by another installation or under an earlier
secret), compared in constant time before its body is parsed. A verified body is still checked field by field:
every number within 64 bits, and the engine checks the position lies in the query's window, so no cursor reaches
a query as anything but a position this server issued.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from k2_core.exceptions import ConfigError, QueryError
from k2_core.settings import MIN_SECRET_BYTES, Settings

_VERSION = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_LENGTH = 1024  # an issued cursor is under 250 characters
_INT64 = range(-(2**63), 2**63)
_MAX_SYMBOL = 64
_DOMAIN = b"k2 cursor\x00"  # keeps these MACs apart from anything else a shared secret might sign
KEY_FILE = "cursor.key"  # under K2_HOME, when query.cursor_secret is not set
_NOT_OURS = "cursor is not a cursor this API issued (pass next_cursor from a previous page)"


@dataclass(frozen=True)
class Cursor:
    """The position after the last row of a page. `after` is the last row's sort key (e.g. micros since
    the epoch and sequence number); `snapshot_id` pins the Iceberg snapshot, or is None when not pinned."""

    after: tuple[int, ...]
    snapshot_id: int | None
    fingerprint: str
    quote_snapshot_id: int | None = None  # the quotes snapshot a with_quote listing joins
    symbol: str | None = None  # the last row's symbol, in a listing of a whole exchange (ordered by it after time)


class CursorCodec:
    """Signs cursors on the way out and verifies them on the way in, with one installation's key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_SECRET_BYTES:
            raise ConfigError(f"a cursor key must be at least {MIN_SECRET_BYTES} bytes")
        self._key = key

    def encode(self, cursor: Cursor) -> str:
        body: dict[str, Any] = {
            "v": _VERSION,
            "a": list(cursor.after),
            "s": cursor.snapshot_id,
            "f": cursor.fingerprint,
        }
        if cursor.quote_snapshot_id is not None:
            body["q"] = cursor.quote_snapshot_id
        if cursor.symbol is not None:
            body["y"] = cursor.symbol
        text = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{text}.{_b64(self._sign(text))}"

    def decode(
        self, text: str, expected_fingerprint: str, key_length: int, *, first_within: tuple[int, int] | None = None
    ) -> Cursor:
        """Parse a cursor from a client; any malformed, forged, altered, foreign, mismatched or out-of-range cursor is
        a `QueryError` naming it. `first_within` bounds the position's first value (inclusive), e.g. the query's
        window in micros."""
        if len(text) > _MAX_LENGTH:
            raise QueryError(f"cursor is too long ({len(text)} characters) to be one this API issued")
        body_text, dot, signature_text = text.partition(".")
        if not (dot and text.isascii()):
            raise QueryError(_NOT_OURS)
        try:
            signature = _unb64(signature_text)
        except (binascii.Error, ValueError):
            raise QueryError(_NOT_OURS) from None
        if not hmac.compare_digest(signature, self._sign(body_text)):
            raise QueryError(
                "cursor does not carry this server's signature: it was altered, or issued by another installation or "
                "under an earlier cursor secret (start again from the first page)"
            )
        try:
            body: Any = json.loads(_unb64(body_text))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise QueryError(_NOT_OURS) from None
        if not (
            isinstance(body, dict)
            and body.get("v") == _VERSION
            and isinstance(body.get("a"), list)
            and len(body["a"]) == key_length
            and all(_int64(v) for v in body["a"])
            and all(body.get(k) is None or _int64(body[k]) for k in "sq")
            and isinstance(body.get("f"), str)
            and (body.get("y") is None or (isinstance(body["y"], str) and 0 < len(body["y"]) <= _MAX_SYMBOL))
        ):
            raise QueryError("cursor is malformed (pass next_cursor from a previous page unchanged)")
        if body["f"] != expected_fingerprint:
            raise QueryError(
                "cursor belongs to a different query: keep every other parameter as it was on the first page"
            )
        if first_within is not None and not first_within[0] <= body["a"][0] <= first_within[1]:
            raise QueryError("cursor position lies outside the query's window (pass next_cursor unchanged)")
        return Cursor(
            after=tuple(body["a"]),
            snapshot_id=body.get("s"),
            fingerprint=body["f"],
            quote_snapshot_id=body.get("q"),
            symbol=body.get("y"),
        )

    def _sign(self, body_text: str) -> bytes:
        return hmac.new(self._key, _DOMAIN + body_text.encode("ascii"), hashlib.sha256).digest()


def cursor_key(settings: Settings) -> bytes:
    """The installation's cursor key: `query.cursor_secret` when set, else the random key in `K2_HOME/cursor.key`,
    made on first use (mode 0600) so that every process of one installation, the API and the CLI, signs and verifies
    alike. A key file other users may read is refused, since whoever reads it can forge cursors."""
    configured = settings.query.cursor_secret
    if configured is not None:
        return configured.get_secret_value().encode()
    return _home_key(settings.home / KEY_FILE)


def _home_key(path: Path) -> bytes:
    """The 32-byte key kept in `path`, created if missing. Processes racing to create it all end up with the
    winner's key: each writes a private temporary file and links it into place, which never replaces a file."""
    if not path.exists():
        try:
            _create_key(path)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the cursor key {path}: {exc}. Make K2_HOME writable, or set K2_QUERY_CURSOR_SECRET"
            ) from exc
    return _read_key(path)


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(MIN_SECRET_BYTES) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _read_key(path: Path) -> bytes:
    try:
        with path.open() as handle:
            mode = os.fstat(handle.fileno()).st_mode & 0o777
            text = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the cursor key {path}: {exc}") from exc
    if mode & 0o077:
        raise ConfigError(
            f"the cursor key {path} is readable by other users (mode {mode:o}), who could forge cursors: "
            f"`chmod 600 {path}`, or delete it to have a new one made (cursors issued so far then stop working)"
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(f"the cursor key {path} is damaged: delete it to have a new one made")
    return key


def micros(moment: datetime) -> int:
    """A time as a cursor holds it: microseconds since the epoch, exact (a float timestamp would round)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def fingerprint(*parts: object) -> str:
    """A short digest of the query parameters that must stay fixed from page to page."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _int64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in _INT64


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
