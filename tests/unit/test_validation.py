"""The read path's input rules: every rejection is a QueryError naming the parameter."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from k2_core.exceptions import QueryError
from k2_core.read.params import (
    AsOf,
    TimeRange,
    parse_time,
    validate_as_of,
    validate_bar_count,
    validate_date,
    validate_exchange,
    validate_gap_status,
    validate_interval,
    validate_limit,
    validate_market_query,
    validate_snapshot_id,
    validate_symbol,
    validate_time_range,
)

EXCHANGES = ("asx", "nyse", "binance")
NOW = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("symbol", ["BHP", "BRK.B", "BTCUSDT", "A", "0700", "BF-B", "X" * 20])
def test_valid_symbols_pass_through(symbol: str) -> None:
    assert validate_symbol(symbol) == symbol


@pytest.mark.parametrize("symbol", ["", "bhp", "Bhp", ".BHP", "-BHP", "BHP X", "BHP\n", "X" * 21, "BHP;DROP", "B_P"])
def test_invalid_symbols_are_rejected_naming_symbol(symbol: str) -> None:
    with pytest.raises(QueryError, match=r"^symbol must be an uppercase ticker"):
        validate_symbol(symbol)


def test_unknown_exchange_lists_the_known_ones() -> None:
    with pytest.raises(QueryError, match=r"^exchange must be one of asx, binance, nyse; got 'lse'"):
        validate_exchange("lse", EXCHANGES)


def test_exchange_match_is_exact() -> None:
    assert validate_exchange("asx", EXCHANGES) == "asx"
    with pytest.raises(QueryError, match=r"^exchange"):
        validate_exchange("ASX", EXCHANGES)


def test_exchange_without_a_layout_must_still_look_like_one() -> None:
    assert validate_exchange("lse", None) == "lse"
    with pytest.raises(QueryError, match=r"^exchange must be a lowercase exchange name"):
        validate_exchange("ASX'; --", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T09:30:00Z", datetime(2024, 1, 2, 9, 30, tzinfo=UTC)),
        ("2024-01-02T19:30:00+10:00", datetime(2024, 1, 2, 9, 30, tzinfo=UTC)),
        ("2024-01-02T09:30:00", datetime(2024, 1, 2, 9, 30, tzinfo=UTC)),  # naive: taken as UTC
        ("2024-01-02", datetime(2024, 1, 2, tzinfo=UTC)),
        ("2024-01-02T09:30:00.000123Z", datetime(2024, 1, 2, 9, 30, 0, 123, tzinfo=UTC)),
    ],
)
def test_iso_times_parse_to_utc(text: str, expected: datetime) -> None:
    parsed = parse_time(text, "start")
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_aware_datetimes_are_converted_to_utc_and_naive_ones_labelled() -> None:
    sydney = timezone(timedelta(hours=11))
    assert parse_time(datetime(2024, 1, 2, 20, 0, tzinfo=sydney), "end") == datetime(2024, 1, 2, 9, 0, tzinfo=UTC)
    naive = datetime(2024, 1, 2, 9, 0)  # noqa: DTZ001 - the point of the test
    assert parse_time(naive, "end").tzinfo is UTC


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "", "01/02/2024", "2024-01-02T25:00"])
def test_unparseable_time_names_the_parameter(text: str) -> None:
    with pytest.raises(QueryError, match=r"^end is not an ISO-8601 time"):
        parse_time(text, "end")


def test_times_out_of_datetime_range_are_query_errors_not_crashes() -> None:
    with pytest.raises(QueryError, match=r"^start is out of range in UTC"):
        parse_time("0001-01-01T00:00:00+01:00", "start")
    with pytest.raises(QueryError, match=r"^end is too early"):
        validate_time_range(None, "0001-01-01")
    window = validate_time_range("0001-01-01", "9999-12-31T23:59:59.999999")
    assert window.end.year == 9999


def test_time_range_defaults_to_the_last_day() -> None:
    window = validate_time_range(None, None, now=NOW)
    assert (window.start, window.end) == (NOW - timedelta(days=1), NOW)


def test_time_range_start_only_ends_now_and_end_only_looks_back_a_day() -> None:
    assert validate_time_range("2024-03-01", None, now=NOW).end == NOW
    assert validate_time_range(None, "2024-03-01", now=NOW).start == datetime(2024, 2, 29, tzinfo=UTC)


@pytest.mark.parametrize(("start", "end"), [("2024-01-03", "2024-01-02"), ("2024-01-02", "2024-01-02")])
def test_start_must_be_before_end(start: str, end: str) -> None:
    with pytest.raises(QueryError, match=r"^start must be before end \(start=2024-01-0\d"):
        validate_time_range(start, end)


def test_limit_defaults_and_bounds() -> None:
    assert validate_limit(None, default=1000, maximum=5000) == 1000
    assert validate_limit(None, default=1000, maximum=10) == 10
    assert validate_limit(1, default=1000, maximum=5000) == 1
    assert validate_limit(5000, default=1000, maximum=5000) == 5000


@pytest.mark.parametrize("limit", [0, -1, 5001, True])
def test_limit_out_of_range_names_limit(limit: int) -> None:
    with pytest.raises(QueryError, match=r"^limit must be an integer between 1 and 5000"):
        validate_limit(limit, default=1000, maximum=5000)


@pytest.mark.parametrize("status", ["open", "filled", "unrecoverable"])
def test_gap_statuses(status: str) -> None:
    assert validate_gap_status(status) == status


def test_unknown_gap_status_lists_the_valid_ones() -> None:
    with pytest.raises(QueryError, match=r"^status must be one of open, filled, unrecoverable; got 'closed'"):
        validate_gap_status("closed")


def test_market_query_fills_defaults() -> None:
    query = validate_market_query(
        "BHP", "asx", "2024-01-02", None, None, exchanges=EXCHANGES, default_limit=100, max_limit=1000, now=NOW
    )
    assert query.symbol == "BHP"
    assert query.exchange == "asx"
    assert query.start == datetime(2024, 1, 2, tzinfo=UTC)
    assert query.end == NOW
    assert query.limit == 100


def test_market_query_reports_the_first_bad_parameter_in_reading_order() -> None:
    with pytest.raises(QueryError, match=r"^symbol"):
        validate_market_query("bhp", "lse", "x", "y", 0, exchanges=EXCHANGES, default_limit=1, max_limit=1)
    with pytest.raises(QueryError, match=r"^exchange"):
        validate_market_query("BHP", "lse", "x", "y", 0, exchanges=EXCHANGES, default_limit=1, max_limit=1)
    with pytest.raises(QueryError, match=r"^start"):
        validate_market_query("BHP", "asx", "x", "2024-01-02", 0, exchanges=EXCHANGES, default_limit=1, max_limit=1)
    with pytest.raises(QueryError, match=r"^limit"):
        validate_market_query(
            "BHP", "asx", "2024-01-01", "2024-01-02", 0, exchanges=EXCHANGES, default_limit=1, max_limit=1
        )


# --- intervals, dates, time travel, range limits (issue 3) ------------------------------------------------------


@pytest.mark.parametrize("interval", ["1s", "5s", "1m", "5m", "15m", "1h", "1d"])
def test_supported_intervals(interval: str) -> None:
    assert validate_interval(interval) == interval


@pytest.mark.parametrize("interval", ["", "2m", "1M", "60s", "1w", "1 m"])
def test_unsupported_interval_lists_the_supported_ones(interval: str) -> None:
    with pytest.raises(QueryError, match=r"^interval must be one of 1s, 5s, 1m, 5m, 15m, 1h, 1d; got"):
        validate_interval(interval)


def test_bar_count_limit_names_the_interval() -> None:
    day = TimeRange(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
    validate_bar_count("1s", day, max_bars=86_400)
    with pytest.raises(QueryError, match=r"^interval 1s over .* spans 86400 bars, more than the maximum 86399"):
        validate_bar_count("1s", day, max_bars=86_399)


def test_window_longer_than_the_maximum_is_rejected_naming_end() -> None:
    validate_time_range("2024-01-01", "2024-01-31", max_window=timedelta(days=30))
    with pytest.raises(QueryError, match=r"^end must be at most 30 days after start \(range too large"):
        validate_time_range("2024-01-01", "2024-01-31T00:00:01", max_window=timedelta(days=30))


def test_dates_are_utc_days() -> None:
    assert validate_date("2024-02-29") == TimeRange(datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))
    assert validate_date(date(2024, 1, 1)).start == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_time(date(2024, 1, 1), "start") == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2024-02-30", "yesterday", "2024-01-01T10:00", ""])
def test_bad_dates_name_the_parameter(text: str) -> None:
    with pytest.raises(QueryError, match=r"^date must be a UTC date as YYYY-MM-DD"):
        validate_date(text)


def test_time_travel_takes_one_of_snapshot_or_time() -> None:
    assert validate_as_of() is None
    assert validate_as_of(" 123 ") == AsOf(snapshot_id=123)
    assert validate_as_of(None, "2024-01-02T10:00:00+10:00") == AsOf(timestamp=datetime(2024, 1, 2, tzinfo=UTC))
    with pytest.raises(QueryError, match=r"^as_of_snapshot and as_of are alternatives"):
        validate_as_of(1, "2024-01-01")


@pytest.mark.parametrize("value", ["abc", "1.5", str(2**63), True])
def test_bad_snapshot_ids_name_the_parameter(value: object) -> None:
    with pytest.raises(QueryError, match=r"^as_of_snapshot must be"):
        validate_snapshot_id(value)  # type: ignore[arg-type]
