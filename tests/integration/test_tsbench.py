"""bench/tsbench.py end to end at a tiny scale: K2 (its real catalog, warehouse, compaction and minute bars), DuckDB,
chdb and polars answer every query over the same generated rows, and their answers must agree (the bench's own
cross-check is the assertion; nothing is timed). Also: the generated data keeps the promises the queries rely on, and
a wrong answer is caught."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from bench import tsbench
from k2_core.settings import Settings

TINY = ["--symbols", "20", "--days", "1", "--trades-per-day", "3000", "--reps", "1"]


def test_every_engine_agrees_on_every_query_at_a_tiny_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # K2's as-of join and markouts through its native whole-exchange joins (asof_join / markouts without a symbol).
    assert tsbench.main([*TINY, "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out
    for query in tsbench.QUERIES:
        assert f"\n{query} " in out
    # Every day is closed: the whole exchange's minute bars come from the precomputed table (read in no order).
    assert "K2 path, bars_1m: ohlcv_many(whole exchange) from precomputed\n" in out
    # And through its public with-quote listing (fetch_many), over the same rows.
    assert (
        tsbench.main(
            [*TINY, "--workdir", str(tmp_path), "--reuse", "--k2-asof", "with_quote", "--queries", "asof_join"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "MISMATCH" not in out
    assert "\nasof_join " in out


def test_the_generated_rows_keep_the_promises_the_queries_rely_on() -> None:
    shape = tsbench.Shape(symbols=30, days=2, trades_per_day=4_000, seed=3)
    settings = Settings()
    trades, quotes = tsbench.generate(shape, settings)
    assert quotes.num_rows == tsbench.QUOTES_PER_TRADE * trades.num_rows
    spans = tsbench.sessions(shape, settings)
    for table in (trades, quotes):
        frame = table.select(["symbol", "exchange", "exchange_timestamp", "exchange_sequence_number"]).to_pandas()
        micros = pd.Series(table.column("exchange_timestamp").cast(pa.int64()).to_numpy(), index=frame.index)
        assert micros.is_monotonic_increasing  # time order, as the ingester appends
        assert set(frame["exchange"]) == set(tsbench.EXCHANGES)
        # Sequence numbers 1, 2, 3 ... per (symbol, exchange) stream, rising with time.
        for _, stream in frame.groupby(["symbol", "exchange"]):
            assert stream["exchange_sequence_number"].tolist() == list(range(1, len(stream) + 1))
        # Every row inside its exchange's session of one of the trading days.
        for exchange, rows in frame.assign(us=micros).groupby("exchange"):
            inside = pd.Series(False, index=rows.index)
            for start, end in spans[str(exchange)]:
                inside |= (rows["us"] >= start) & (rows["us"] < end)
            assert inside.all()
    # Zipf-like: the busiest symbol trades far more than the quietest.
    counts = trades.column("symbol").value_counts().to_pylist()
    by_count = sorted(c["counts"] for c in counts)
    assert by_count[-1] > 5 * by_count[0]
    # Ties exist (several quotes of one stream at one millisecond), so the highest-sequence rule is exercised.
    keys = quotes.select(["symbol", "exchange", "exchange_timestamp"]).to_pandas()
    assert keys.duplicated().any()


def test_a_wrong_answer_is_reported_as_a_mismatch() -> None:
    good = pa.table({"hour": pa.array([0], pa.timestamp("us", tz="UTC")), "volume": pa.array([1], pa.int64())})
    bad = good.set_column(1, "volume", pa.array([2], pa.int64()))
    engines: dict[str, tsbench.Engine] = {"a": {"hourly_volume": lambda: good}, "b": {"hourly_volume": lambda: bad}}
    outcome = tsbench.run_all(engines, 1, ("hourly_volume",))
    assert outcome.agree == {"hourly_volume": False}
    assert len(outcome.mismatches) == 1
    assert "b differs from a" in outcome.mismatches[0]
