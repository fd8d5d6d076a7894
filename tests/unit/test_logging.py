"""K2's logging cannot crash the process that logs: fields of any name, records that cannot be rendered."""

from __future__ import annotations

import ast
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from k2_core.logging import JsonFormatter, get_logger

ROOT = Path(__file__).resolve().parents[2]
RECORD_ATTRIBUTES = [*sorted(logging.makeLogRecord({}).__dict__), "message", "asctime"]


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("k2.test.logging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield buffer
    logger.removeHandler(handler)


def test_a_field_may_have_the_name_of_any_log_record_attribute(lines: io.StringIO) -> None:
    log = get_logger("k2.test.logging")
    fields = {name: f"value of {name}" for name in RECORD_ATTRIBUTES}
    log.info("checkpoint tags", extra={**fields, "table": "trades"})
    payload = json.loads(lines.getvalue().splitlines()[-1])
    assert payload["message"] == "checkpoint tags"
    assert payload["level"] == "info"
    assert payload["table"] == "trades"
    assert payload["created"] == "value of created"
    assert payload["message_"] == "value of message"  # kept beside the envelope, never over it
    for name in RECORD_ATTRIBUTES:
        assert fields[name] in payload.values(), name


def test_plain_logging_would_have_raised() -> None:
    """The failure get_logger exists for: the standard library refuses such a field in the caller."""
    logger = logging.getLogger("k2.test.logging.plain")
    logger.setLevel(logging.INFO)
    with pytest.raises(KeyError, match="created"):
        logger.info("checkpoint tags", extra={"created": 1})


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this value")

    __repr__ = __str__


def test_a_record_that_cannot_be_rendered_becomes_a_line_that_says_so() -> None:
    formatter = JsonFormatter("test")
    bad_args = logging.LogRecord("k2.x", logging.INFO, __file__, 1, "bad arguments %d %d", ("one",), None)
    bad_field = logging.LogRecord("k2.x", logging.INFO, __file__, 2, "bad field", (), None)
    bad_field.k2_fields = {"value": _Unprintable()}
    fine = logging.LogRecord("k2.x", logging.WARNING, __file__, 3, "after both", (), None)
    rendered = [json.loads(formatter.format(r)) for r in (bad_args, bad_field, fine)]
    assert [r["message"] for r in rendered] == [
        "log record could not be formatted",
        "log record could not be formatted",
        "after both",
    ]
    assert "TypeError" in rendered[0]["format_error"]
    assert rendered[1]["record_msg"] == "'bad field'"
    assert "no text for this value" in rendered[1]["format_error"]


def test_k2_modules_log_through_get_logger() -> None:
    """A module-level `logging.getLogger` would bring back the collision; k2_core.logging is the one entry point."""
    offenders = []
    for path in sorted(ROOT.glob("k2_*/**/*.py")):
        if path == ROOT / "k2_core" / "logging.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
                and node.args
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
