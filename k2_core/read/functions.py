"""The query functions researchers call (`get_trades(Settings(), "BHP", "asx", ...)`), generated from
`QueryEngine`'s methods: each takes a source first, then exactly the method's parameters, and returns a
`pyarrow.Table` (or, for `replay_day`, rows one at a time). Generated, not written out, so that a parameter added to a
query reaches the API, the CLI and these functions at once, and their docs cannot drift from the engine's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyarrow as pa
from pyiceberg.catalog import Catalog

from k2_core.read.engine import QueryEngine
from k2_core.read.result import QueryResult, Replay
from k2_core.settings import Settings

Source = QueryEngine | Catalog | Settings
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])

_SOURCE_NOTE = """`source` is a `QueryEngine` (reuse it for many calls), a pyiceberg `Catalog` (read in the default
namespace), or `Settings` (opens the catalog for this one call and checks `exchange` against the topic layout). Raises
`QueryError` on bad input."""


@contextmanager
def engine_for(source: Source) -> Iterator[QueryEngine]:
    """`source` as an engine: itself, or one opened for the call and closed after it."""
    if isinstance(source, QueryEngine):
        yield source
        return
    engine = QueryEngine.from_settings(source) if isinstance(source, Settings) else QueryEngine(source)
    with engine:
        yield engine


def _table_function(
    name: str, method: Callable[Concatenate[QueryEngine, P], QueryResult | pa.Table]
) -> Callable[Concatenate[Source, P], pa.Table]:
    def function(source: Source, /, *args: P.args, **kwargs: P.kwargs) -> pa.Table:
        with engine_for(source) as engine:
            result = method(engine, *args, **kwargs)
        return result.table if isinstance(result, QueryResult) else result

    return _described(function, name, method, "pa.Table")


def _rows_function(
    name: str, method: Callable[Concatenate[QueryEngine, P], Replay]
) -> Callable[Concatenate[Source, P], Iterator[dict[str, Any]]]:
    def function(source: Source, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[dict[str, Any]]:
        with engine_for(source) as engine:
            yield from method(engine, *args, **kwargs).rows()

    return _described(function, name, method, "Iterator[dict[str, Any]]")


def _described(function: F, name: str, method: Callable[..., Any], returns: str) -> F:
    """Give a generated function the method's parameters, `source` first, and its docstring, so that `help()` and
    editors show what the method takes."""
    signature = inspect.signature(method)
    source = inspect.Parameter("source", inspect.Parameter.POSITIONAL_ONLY, annotation="Source")
    parameters = [source, *list(signature.parameters.values())[1:]]
    function.__name__ = function.__qualname__ = name
    function.__doc__ = f"{inspect.getdoc(method)}\n\n{_SOURCE_NOTE}"
    setattr(function, "__signature__", signature.replace(parameters=parameters, return_annotation=returns))  # noqa: B010
    return function


get_trades = _table_function("get_trades", QueryEngine.trades)
get_quotes = _table_function("get_quotes", QueryEngine.quotes)
get_ohlcv = _table_function("get_ohlcv", QueryEngine.ohlcv)
get_ohlcv_many = _table_function("get_ohlcv_many", QueryEngine.ohlcv_many)
get_market_summary = _table_function("get_market_summary", QueryEngine.summary)
get_latest_price = _table_function("get_latest_price", QueryEngine.latest)
get_latest_on = _table_function("get_latest_on", QueryEngine.latest_on)
get_asof_join = _table_function("get_asof_join", QueryEngine.asof_join)
get_window_join = _table_function("get_window_join", QueryEngine.window_join)
get_markouts = _table_function("get_markouts", QueryEngine.markouts)
get_snapshots = _table_function("get_snapshots", QueryEngine.snapshots)
get_gaps = _table_function("get_gaps", QueryEngine.gaps)
get_instruments = _table_function("get_instruments", QueryEngine.instruments)
# Lazy, as a generator is: the input is validated on the first `next()`.
replay_day = _rows_function("replay_day", QueryEngine.replay)
