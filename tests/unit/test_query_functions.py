"""The `get_*` functions are generated from `QueryEngine`'s methods, so a parameter can never be added to one and not
the other."""

from __future__ import annotations

import inspect

import pytest

from k2_core.read import functions
from k2_core.read.engine import QueryEngine
from k2_core.read.params import AsOf, validate_as_of

PAIRS = [
    ("get_trades", "trades"),
    ("get_quotes", "quotes"),
    ("get_ohlcv", "ohlcv"),
    ("get_ohlcv_many", "ohlcv_many"),
    ("get_market_summary", "summary"),
    ("get_latest_price", "latest"),
    ("get_latest_on", "latest_on"),
    ("get_asof_join", "asof_join"),
    ("get_window_join", "window_join"),
    ("get_markouts", "markouts"),
    ("replay_day", "replay"),
    ("get_snapshots", "snapshots"),
    ("get_gaps", "gaps"),
    ("get_instruments", "instruments"),
]


@pytest.mark.parametrize(("function", "method"), PAIRS)
def test_a_function_takes_a_source_then_exactly_its_methods_parameters(function: str, method: str) -> None:
    generated = getattr(functions, function)
    source, *rest = inspect.signature(generated).parameters.values()
    _, *expected = inspect.signature(getattr(QueryEngine, method)).parameters.values()
    assert (source.name, source.kind) == ("source", inspect.Parameter.POSITIONAL_ONLY)
    assert rest == expected
    assert generated.__name__ == function
    assert inspect.getdoc(getattr(QueryEngine, method)) in (generated.__doc__ or "")


def test_an_already_validated_as_of_passes_through() -> None:
    as_of = AsOf(snapshot_id=7)
    assert validate_as_of(None, as_of) is as_of
