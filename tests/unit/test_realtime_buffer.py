"""The realtime buffer: deduplication by key, bounded size, and what it vouches for after evicting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from k2_core.read.realtime import RealtimeBuffer
from tests.support import factories


def trade(seq: int, at: datetime, symbol: str = "BHP") -> dict[str, Any]:
    return factories.trade(symbol, seq, at, "1.5", Decimal(seq), side="buy", trade_id=str(seq), ingestion_timestamp=at)


def test_not_ready_until_marked_then_vouches_from_the_start_point() -> None:
    NOW = datetime.now(UTC)  # per test: the buffer compares against the real clock
    buffer = RealtimeBuffer(100, timedelta(minutes=10))
    buffer.add("trades", trade(1, NOW), NOW)
    assert buffer.covers_from("trades", "asx") is None
    buffer.mark_ready("trades", "asx", NOW - timedelta(minutes=5))
    assert buffer.covers_from("trades", "asx") == NOW - timedelta(minutes=5)
    assert buffer.covers_from("quotes", "asx") is None


def test_duplicates_are_held_once_and_rows_come_back_in_exchange_order() -> None:
    NOW = datetime.now(UTC)  # per test: the buffer compares against the real clock
    buffer = RealtimeBuffer(100, timedelta(minutes=10))
    for seq, offset in ((3, 2), (1, 0), (2, 2), (1, 0)):
        buffer.add("trades", trade(seq, NOW + timedelta(seconds=offset)), NOW)
    assert buffer.duplicates == 1
    rows = buffer.rows("trades", "BHP", "asx", NOW, NOW + timedelta(seconds=3))
    assert rows.column("exchange_sequence_number").to_pylist() == [1, 2, 3]
    assert buffer.rows("trades", "BHP", "asx", NOW, NOW + timedelta(seconds=2)).num_rows == 1
    assert buffer.latest("trades", "BHP", "asx")["exchange_sequence_number"] == 3  # type: ignore[index]
    assert buffer.latest("trades", "CBA", "asx") is None


def test_evicting_by_count_moves_coverage_past_the_evicted_rows() -> None:
    NOW = datetime.now(UTC)  # per test: the buffer compares against the real clock
    buffer = RealtimeBuffer(3, timedelta(minutes=10))
    buffer.mark_ready("trades", "asx", None)
    for seq in range(1, 6):
        buffer.add("trades", trade(seq, NOW + timedelta(seconds=seq), "BHP" if seq % 2 else "CBA"), NOW)
    assert buffer.size() == 3
    assert buffer.covers_from("trades", "asx") == NOW + timedelta(seconds=2, microseconds=1)
    assert buffer.symbols("asx") == {"BHP", "CBA"}
    held = buffer.rows("trades", "BHP", "asx", NOW, NOW + timedelta(minutes=1))
    assert held.column("exchange_sequence_number").to_pylist() == [3, 5]


def test_old_records_are_not_held_and_expire() -> None:
    NOW = datetime.now(UTC)  # per test: the buffer compares against the real clock
    buffer = RealtimeBuffer(100, timedelta(minutes=1))
    buffer.mark_ready("trades", "asx", None)
    assert not buffer.add("trades", trade(1, NOW - timedelta(minutes=5)), NOW - timedelta(minutes=5))
    assert buffer.covers_from("trades", "asx") == NOW - timedelta(minutes=5) + timedelta(microseconds=1)
    assert buffer.add("trades", trade(2, NOW), NOW - timedelta(seconds=50))
    buffer.expire(NOW + timedelta(seconds=30))
    assert buffer.size() == 0
    assert buffer.covers_from("trades", "asx") == NOW + timedelta(microseconds=1)
