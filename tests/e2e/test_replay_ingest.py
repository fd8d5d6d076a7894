"""A recorded Binance trade dump, replayed (twice: columnar, then per line) through Kafka into Iceberg: every good row
exactly once, and each replay's wait on the ingester (k2_stream.acks) sees its messages committed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from k2_core.settings import Settings
from k2_stream.acks import wait_until_committed
from k2_stream.ingester import Ingester
from k2_stream.replay import replay_file
from tests.support.lake import table_rows
from tests.support.waits import wait_for

LINES = [
    "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match",
    "3000001,67012.55000000,0.01200000,804.15060000,1732492800123,true,true",
    "3000002,67012.56000000,0.00500000,335.06280000,1732492800456,false,true",
    "3000003,not-a-price,0.1,1,1732492800789,false,true",
    "3000004,67013.00000000,1.25000000,83766.25000000,1732492801001,False,True",
    "3000005,67012.10000000,0.00010000,6.70121000,1732492801999,TRUE,TRUE",
]


def test_replayed_file_lands_every_good_row_once(
    broker: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    path = tmp_path / "BTCUSDT-trades-2024-11-25.csv"
    path.write_text("\n".join(LINES) + "\n")

    first = replay_file(settings, path, exchange="binance", symbol="BTCUSDT", fmt="binance-trades")
    assert (first.produced, first.skipped_lines) == (4, [4])
    again = replay_file(settings, path, exchange="binance", symbol="BTCUSDT", fmt="binance-trades", per_line=True)
    assert (again.produced, again.skipped_lines) == (4, [4])  # the whole file sent a second time
    assert [list(o) for o in again.delivered.values()] == [[4, 5, 6, 7]]
    assert [list(o) for o in first.delivered.values()] == [[0, 1, 2, 3]]

    ingester = Ingester(settings)
    thread = threading.Thread(target=ingester.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(table_rows(settings, "trades")) >= 4)
        wait_for(lambda: ingester.stats["trades_duplicates"] >= 4)
        for replay in (first, again):
            ack = wait_until_committed(settings, replay.delivered, replay.cluster_id, timeout=30)
            assert (ack.produced, ack.committed) == (4, 4)
    finally:
        ingester.stop()
        thread.join(30)

    rows = sorted(table_rows(settings, "trades"), key=lambda r: r["exchange_sequence_number"])
    assert [r["exchange_sequence_number"] for r in rows] == [3000001, 3000002, 3000004, 3000005]
    assert [r["trade_id"] for r in rows] == ["3000001", "3000002", "3000004", "3000005"]
    assert rows[0]["price"] == Decimal("67012.55000000")
    assert rows[0]["volume"] == Decimal("0.01200000")
    assert [r["side"] for r in rows] == ["sell", "buy", "buy", "sell"]
    assert rows[0]["exchange_timestamp"].isoformat() == "2024-11-25T00:00:00.123000+00:00"
    # the malformed line is a hole in the recorded sequence: the ingester sees it as a gap
    gaps = table_rows(settings, "sequence_gaps")
    assert [(g["first_missing"], g["last_missing"], g["status"]) for g in gaps] == [(3000003, 3000003, "open")]
