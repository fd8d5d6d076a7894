"""The rules a market record must meet before storage: each refusal is a ValidationError saying why."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from k2_core.exceptions import MessageTooLargeError, ValidationError
from k2_core.model.records import check_size, validate
from k2_core.settings import RecordSettings
from tests.support import factories

NOW = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)


def trade(**overrides: Any) -> dict[str, Any]:
    fields = {"exchange_timestamp": NOW - timedelta(seconds=1), "ingestion_timestamp": NOW}
    return factories.trade(price="45.12", volume="100", **fields) | overrides


def quote(**overrides: Any) -> dict[str, Any]:
    fields = {"exchange_timestamp": NOW, "ingestion_timestamp": NOW}
    return factories.quote(bid="45.1", ask="45.12", bid_size="0", ask_size="0.00000001", **fields) | overrides


def test_good_records_pass() -> None:
    validate("trades", "asx", trade(), now=NOW)
    validate("quotes", "asx", quote(), now=NOW)
    validate("trades", "asx", trade(side="unknown", price=Decimal("9999999999.99999999")), now=NOW)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("price", Decimal("NaN"), "price is not a finite decimal"),
        ("price", Decimal("sNaN"), "price is not a finite decimal"),
        ("price", Decimal("Infinity"), "price is not a finite decimal"),
        ("price", Decimal("-Infinity"), "price is not a finite decimal"),
        ("price", float("nan"), "price is not a finite decimal"),
        ("price", 45.12, "price is not a finite decimal"),  # a float is not a decimal, however finite
        ("price", Decimal("-1"), "price must be > 0"),
        ("price", Decimal("0"), "price must be > 0"),
        ("price", Decimal("1.123456789"), "more than 8 decimal places"),
        ("price", Decimal("10000000000"), r"does not fit DECIMAL\(18,8\)"),
        ("volume", Decimal("-0.00000001"), "volume must be >= 0"),
        ("volume", Decimal("NaN"), "volume is not a finite decimal"),
    ],
)
def test_prices_and_sizes_must_be_finite_non_negative_decimals(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate("trades", "asx", trade(**{field: value}), now=NOW)


def test_trailing_zeros_beyond_eight_places_are_not_extra_precision() -> None:
    validate("trades", "asx", trade(price=Decimal("45.1200000000")), now=NOW)


@pytest.mark.parametrize("field", ["bid_price", "ask_price"])
def test_quote_prices_must_be_positive(field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field} must be > 0"):
        validate("quotes", "asx", quote(**{field: Decimal("-45")}), now=NOW)


@pytest.mark.parametrize("field", ["exchange_timestamp", "ingestion_timestamp"])
@pytest.mark.parametrize(
    ("at", "message"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), "is before 1990-01-01"),
        (datetime(1989, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "is before 1990-01-01"),
        (datetime(2100, 1, 1, tzinfo=UTC), "is in the future"),
        (NOW + timedelta(minutes=5, microseconds=1), "is in the future"),
    ],
)
def test_timestamps_in_1970_or_2100_are_refused(field: str, at: datetime, message: str) -> None:
    with pytest.raises(ValidationError, match=f"^{field} .* {message}"):
        validate("trades", "asx", trade(**{field: at}), now=NOW)


def test_clock_skew_within_the_tolerance_is_accepted() -> None:
    skewed = NOW + timedelta(minutes=5)
    validate("trades", "asx", trade(exchange_timestamp=skewed, ingestion_timestamp=skewed), now=NOW)
    validate("trades", "asx", trade(exchange_timestamp=datetime(1990, 1, 1, tzinfo=UTC)), now=NOW)


def test_an_event_long_after_its_own_receipt_is_refused() -> None:
    received = NOW - timedelta(hours=1)
    with pytest.raises(ValidationError, match=r"after its ingestion_timestamp .* by more than 300s"):
        validate("trades", "asx", trade(exchange_timestamp=NOW, ingestion_timestamp=received), now=NOW)


def test_time_limits_are_configurable() -> None:
    limits = RecordSettings(earliest_date=date(2020, 1, 1), future_tolerance_seconds=0)
    with pytest.raises(ValidationError, match="before 2020-01-01"):
        validate("trades", "asx", trade(exchange_timestamp=datetime(2019, 6, 1, tzinfo=UTC)), limits, now=NOW)
    with pytest.raises(ValidationError, match="in the future"):
        validate("trades", "asx", trade(ingestion_timestamp=NOW + timedelta(seconds=1)), limits, now=NOW)


def test_naive_or_missing_timestamps_are_refused() -> None:
    naive = datetime(2026, 11, 25, 0, 0)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValidationError, match="exchange_timestamp is missing or not a UTC timestamp"):
        validate("trades", "asx", trade(exchange_timestamp=naive), now=NOW)
    with pytest.raises(ValidationError, match="ingestion_timestamp is missing"):
        validate("trades", "asx", trade(ingestion_timestamp=None), now=NOW)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"side": "\x01\x0c"}, "side must be one of buy, sell, unknown"),
        ({"side": "BUY"}, "side must be one of"),
        ({"trade_id": ""}, "trade_id must be 1-128 printable"),
        ({"trade_id": "\x00\x05\xf5\xe1\x00"}, "trade_id must be 1-128 printable"),
        ({"trade_id": "x" * 129}, "trade_id must be 1-128 printable"),
        ({"exchange": "nyse"}, "does not match topic exchange"),
        ({"symbol": "bhp"}, "invalid symbol"),
        ({"exchange_sequence_number": 0}, "exchange_sequence_number must be >= 1"),
    ],
)
def test_fields_a_wrong_schema_would_garble_are_checked(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate("trades", "asx", trade(**overrides), now=NOW)


def test_size_rule_refuses_before_decoding() -> None:
    check_size(b"x" * 1024, 1024)
    check_size(None, 1024)
    with pytest.raises(MessageTooLargeError, match=r"^message too large: 1025 bytes > 1024"):
        check_size(b"x" * 1025, 1024)
