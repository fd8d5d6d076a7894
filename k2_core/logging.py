"""Structured JSON logs: one object per line with timestamp, level, component and message, plus the event's fields.

Every K2 module logs through `get_logger(__name__)`. Its `extra={...}` fields travel in one attribute of the log
record instead of being spread over it, so a field may have any name (`created`, `message`, `name`, ...): with
plain `logging`, a field named like a LogRecord attribute raises `KeyError` in the caller, which once killed the
ingester on its first retention pass. The formatter never raises either: a record it cannot render becomes a
line that says so, and the process goes on.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The record attribute that carries an event's fields.
FIELDS = "k2_fields"
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", FIELDS}
# Correlation id of the request being served (set by the API middleware); every log line in its context carries it.
REQUEST_ID: ContextVar[str | None] = ContextVar("k2_request_id", default=None)

Logger = logging.LoggerAdapter[logging.Logger]


class _FieldsAdapter(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        fields = kwargs.pop("extra", None)
        if fields:
            kwargs["extra"] = {FIELDS: dict(fields)}
        return msg, kwargs


def get_logger(name: str) -> Logger:
    """The logger K2 modules use: `log.info("event", extra={...})` with fields of any name."""
    return _FieldsAdapter(logging.getLogger(name), {})


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record was logged with (through `get_logger`)."""
    return dict(getattr(record, FIELDS, None) or {})


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        try:
            return self._format(record)
        except Exception as exc:  # noqa: BLE001 - a log line must never stop the process that writes it
            return json.dumps(
                {
                    "timestamp": datetime.now(UTC).isoformat(),
                    "level": "error",
                    "component": self.component,
                    "logger": "k2_core.logging",
                    "message": "log record could not be formatted",
                    "record_logger": str(getattr(record, "name", "")),
                    "record_msg": repr(getattr(record, "msg", ""))[:2000],
                    "format_error": f"{type(exc).__name__}: {exc}"[:2000],
                }
            )

    def _format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (request_id := REQUEST_ID.get()) is not None:
            payload["request_id"] = request_id
        envelope = set(payload) | {"request_id", "exception"}
        # Fields logged through get_logger, then extras other libraries put on the record directly.
        fields: Mapping[str, Any] = getattr(record, FIELDS, None) or {}
        others = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        for key, value in (*fields.items(), *others.items()):
            # an event field never overwrites the envelope: it is kept beside it
            payload[f"{key}_" if key in envelope else key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class _StderrHandler(logging.StreamHandler[Any]):
    """Writes to whatever `sys.stderr` is at the time of the call (a test runner or CliRunner swaps it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(component: str, level: str = "INFO", path: Path | None = None) -> None:
    """Route every logger to stderr (or to the file `path`) as JSON; call once at a process's entry point."""
    handler: logging.Handler = _StderrHandler() if path is None else logging.FileHandler(path)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pyiceberg", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
