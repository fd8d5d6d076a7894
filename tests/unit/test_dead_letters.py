"""The dead-letter contract: header names and encodings, reason classes, bodies cut to a producible size. Operators
and replay tools read these long after the ingester that wrote them changed, so they are pinned here byte for byte."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from k2_core.ingest.dead_letters import (
    DEAD_LETTER_MAX_BODY,
    dead_letter,
    dead_letter_body,
    is_shed,
    reason_class,
    shed_reason,
    source_of,
)

FAILED_AT = datetime(2026, 11, 26, 9, 30, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("DecodeError: undecodable Avro body for schema id 1: EOFError()", "decode_error"),
        ("ValidationError: price must be > 0, got -1", "validation_error"),
        ("MessageTooLargeError: message too large: 10485765 bytes > 1048576", "too_large"),
        ("shed: degradation level 3 keeps critical symbols only", "shed"),
        ("something new", "other"),
    ],
)
def test_reason_classes_are_a_short_bounded_set(reason: str, label: str) -> None:
    assert reason_class(reason) == label


def test_dead_letter_bodies_are_cut_to_a_producible_size() -> None:
    assert dead_letter_body(b"abc") == (b"abc", {})
    assert dead_letter_body(None) == (None, {})
    body, headers = dead_letter_body(b"x" * 10_000_000)
    assert body is not None
    assert len(body) == DEAD_LETTER_MAX_BODY
    assert headers == {"k2.truncated": b"true", "k2.original_bytes": b"10000000"}


def test_a_dead_letter_carries_its_reason_its_class_and_where_the_original_is() -> None:
    letter = dead_letter(b"\x00bad", "ValidationError: price must be > 0, got -1", "market.x", 3, 41, FAILED_AT)
    assert letter.body == b"\x00bad"
    assert list(letter.headers.items()) == [
        ("k2.error", b"ValidationError: price must be > 0, got -1"),
        ("k2.error.class", b"validation_error"),
        ("k2.source.topic", b"market.x"),
        ("k2.source.partition", b"3"),
        ("k2.source.offset", b"41"),
        ("k2.failed_at", b"2026-11-26T09:30:00.123456+00:00"),
    ]
    assert source_of(letter.headers) == ("market.x", 3, 41)


def test_a_cut_dead_letter_says_so_after_the_source_headers() -> None:
    letter = dead_letter(b"y" * (DEAD_LETTER_MAX_BODY + 1), "DecodeError: junk", "market.x", 0, 7, FAILED_AT)
    assert letter.body == b"y" * DEAD_LETTER_MAX_BODY
    assert list(letter.headers)[-2:] == ["k2.truncated", "k2.original_bytes"]
    assert letter.headers["k2.original_bytes"] == str(DEAD_LETTER_MAX_BODY + 1).encode()
    assert source_of(letter.headers) == ("market.x", 0, 7)


def test_a_message_without_a_body_is_dead_lettered_without_one() -> None:
    letter = dead_letter(None, "DecodeError: no value", "market.x", 1, 0, FAILED_AT)
    assert letter.body is None
    assert "k2.truncated" not in letter.headers


def test_shed_reasons_name_the_level_and_are_their_own_class() -> None:
    reason = shed_reason(3)
    assert reason == "shed: degradation level 3 keeps critical symbols only"
    assert is_shed(reason)
    assert reason_class(reason) == "shed"
    assert not is_shed("ValidationError: invalid symbol 'shed:'")
