"""Exchange dumps written exactly as their publishers write them, for the import, replay and backfill tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

BINANCE_TRADES_HEADER = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"


def binance_trade_line(trade_id: int, at: datetime, price_cents: int | None = None) -> str:
    """One spot trade row (time in ms, as Binance wrote it before 2025); the price is derived from the id."""
    cents = price_cents if price_cents is not None else 3_000_000 + trade_id % 997
    price = f"{cents // 100}.{cents % 100:02d}000000"
    ms = int(at.timestamp() * 1000)
    return f"{trade_id},{price},0.01000000,{cents / 10000:.8f},{ms},{'true' if trade_id % 2 else 'false'},true"


def write_binance_trades(
    path: Path, ids: Iterable[int], start: datetime, step_ms: int = 10, header: bool = True, extra: Iterable[str] = ()
) -> Path:
    """A dump of `ids`, one every `step_ms` from `start`, then the `extra` lines as they are (malformed ones)."""
    from datetime import timedelta

    lines = [BINANCE_TRADES_HEADER] if header else []
    lines += [binance_trade_line(i, start + timedelta(milliseconds=n * step_ms)) for n, i in enumerate(ids)]
    lines += list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_binance_aggtrades(path: Path, ids: Iterable[int], start: datetime, step_ms: int = 10) -> Path:
    """A spot aggTrades dump without a header (as spot dumps mostly come), a row every `step_ms` by id: agg_trade_id,
    price, quantity, first_trade_id, last_trade_id, transact_time (ms), is_buyer_maker, is_best_match."""
    from datetime import timedelta

    lines = []
    for i in ids:  # timed by id, so that a file with holes times its rows as the whole file does
        ms = int((start + timedelta(milliseconds=i * step_ms)).timestamp() * 1000)
        maker = "true" if i % 3 else "false"
        lines.append(f"{i},{2000 + i % 50}.25000000,0.50000000,{3 * i},{3 * i + 2},{ms},{maker},true")
    path.write_text("\n".join(lines) + "\n")
    return path
