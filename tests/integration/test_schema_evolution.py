"""Schema evolution end to end (issue 16): a new field in a feed never halts ingestion, loses data or breaks a reader.

Through the real broker and ingester: version-1 messages, then both versions interleaved in the same topics and
batches, then version 2 only. Every row lands with its fields (version-1 rows read the new columns as null), the
table's schema changes exactly once, a snapshot from before the change reads as it did, and a message whose writer
schema id nobody knows is dead-lettered without stopping its partition. The same evolution through `k2 import`
(Databento's receive time), two writers evolving at once, a writer that dies between the schema change and its
data, and compaction after the change."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from typer.testing import CliRunner

from k2_cli.main import app
from k2_core.ingest.formats import ReadOptions, file_format
from k2_core.ingest.importer import Importer
from k2_core.ingest.writer import TableWriter
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.lake.evolution import evolve, schema_history
from k2_core.model.registry import FileSchemaRegistry
from k2_core.model.tables import MARKET_TABLES, QUOTES, TRADES
from k2_core.settings import Settings
from k2_core.upkeep.compaction import compact_day
from k2_stream.admin import ensure_topics
from k2_stream.ingester import Ingester
from k2_stream.producer import FeedProducer
from tests.support import dbn as enc
from tests.support.factories import FEED_START, feed_trade, quote
from tests.support.lake import table_rows
from tests.support.processes import settings_env
from tests.support.waits import wait_for

SettingsFactory = Callable[..., Settings]
TRADE_EXTRAS = [f.name for f in TRADES.extra_columns]
QUOTE_EXTRAS = [f.name for f in QUOTES.extra_columns]


def v2_trade(symbol: str, seq: int) -> dict[str, Any]:
    """A feed trade as a version-2 producer sends it: receive time, conditions on some, order ids."""
    row = feed_trade(symbol, seq)
    return row | {
        "ts_recv": row["exchange_timestamp"] + timedelta(microseconds=300 + seq),
        "conditions": [["@", "I"], None, [], ["F"]][seq % 4],
        "buyer_order_id": f"B{seq}",
        "seller_order_id": None if seq % 5 == 0 else f"S{seq}",
    }


def v1_quote(symbol: str, seq: int) -> dict[str, Any]:
    return quote(symbol, seq, FEED_START + timedelta(milliseconds=250 * seq), bid="45.1", ask="45.2")


def v2_quote(symbol: str, seq: int) -> dict[str, Any]:
    row = v1_quote(symbol, seq)
    return row | {
        "bid_count": seq % 7,
        "ask_count": None if seq % 3 == 0 else seq,
        "ts_recv": row["exchange_timestamp"] + timedelta(microseconds=150),
    }


def expected(row: dict[str, Any], extras: list[str]) -> dict[str, Any]:
    """A sent record as the table holds it: every column, the ones its version lacks null."""
    return row | {name: row.get(name) for name in extras}


def stored(settings: Settings, kind: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["symbol"], r["exchange_sequence_number"]): r for r in table_rows(settings, kind)}


def history(settings: Settings, kind: str) -> list[Any]:
    return schema_history(open_catalog(settings).load_table((settings.catalog.namespace, kind)))


def read_dlq(bootstrap: str, topic: str, timeout: float = 30.0) -> list[dict[str, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-reader", "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    dead: list[dict[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while not dead and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            dead.append(dict(msg.headers() or []))
    consumer.close()
    return dead


def test_version_1_then_both_then_version_2_through_the_broker_evolve_the_tables_once(
    broker: str, make_settings: SettingsFactory, running_ingester: Callable[[Settings], Ingester]
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    layout = ensure_topics(settings)
    registry = FileSchemaRegistry(settings.kafka.schemas_dir)
    producer = FeedProducer(settings, layout, registry)
    v1 = {kind: registry.versions(f"market.equities.{kind}-value")[0][0] for kind in ("trades", "quotes")}
    sent: dict[str, list[dict[str, Any]]] = {"trades": [], "quotes": []}

    def send(kind: str, row: dict[str, Any], version: int) -> None:
        producer.send(kind, row, schema_id=v1[kind] if version == 1 else None)  # type: ignore[arg-type]
        sent[kind].append(row)

    # 1. Old producers only: the tables keep their first columns.
    for seq in range(1, 41):
        for symbol in ("BHP", "CBA"):
            send("trades", feed_trade(symbol, seq), 1)
            send("quotes", v1_quote(symbol, seq), 1)
    producer.flush()
    ingester = running_ingester(settings)
    wait_for(lambda: len(table_rows(settings, "trades")) == 80 and len(table_rows(settings, "quotes")) == 80)
    trades = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    before = trades.metadata.current_snapshot_id
    rows_before = trades.scan(snapshot_id=before).to_arrow()
    assert rows_before.column_names == TRADES.arrow_schema.names
    assert [len(history(settings, kind)) for kind in ("trades", "quotes")] == [1, 1]

    # 2. Old and new producers at once, in the same topics (and batches), around a message nobody can decode.
    topic = layout.spec("asx", "trades").name
    for seq in range(41, 81):
        send("trades", feed_trade("BHP", seq), 1)
        send("trades", v2_trade("CBA", seq), 2)
        send("quotes", v1_quote("BHP", seq), 1)
        send("quotes", v2_quote("CBA", seq), 2)
        if seq == 60:
            unknown = b"\x00" + (999).to_bytes(4, "big") + b"\x06BHP\x06asx"
            producer.send_raw(topic, b"BHP", unknown)
    producer.flush()
    # 3. New producers only.
    for seq in range(81, 121):
        for symbol in ("BHP", "CBA"):
            send("trades", v2_trade(symbol, seq), 2)
            send("quotes", v2_quote(symbol, seq), 2)
    producer.flush()
    wait_for(lambda: len(table_rows(settings, "trades")) == 240 and len(table_rows(settings, "quotes")) == 240)

    # Every row with its own fields; version-1 rows read the new columns as null.
    for kind, extras in (("trades", TRADE_EXTRAS), ("quotes", QUOTE_EXTRAS)):
        rows = stored(settings, kind)
        assert len(rows) == len(sent[kind]) == 240
        for row in sent[kind]:
            assert rows[(row["symbol"], row["exchange_sequence_number"])] == expected(row, extras), row
    assert stored(settings, "trades")[("CBA", 44)]["conditions"] == ["@", "I"]
    assert stored(settings, "quotes")[("BHP", 50)]["bid_count"] is None

    # One evolution per table, adding exactly the version-2 columns, made after the version-1 snapshots.
    for kind, extras in (("trades", TRADE_EXTRAS), ("quotes", QUOTE_EXTRAS)):
        first, changed = history(settings, kind)
        assert first.columns == tuple(MARKET_TABLES[kind].arrow_schema.names)  # type: ignore[index]
        assert changed.added == tuple(extras)
        assert changed.current
        assert changed.by == ingester.writer_id
        assert changed.after_snapshot is not None
    # A snapshot from before the change reads as it did: the old columns and the same rows.
    trades = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    assert trades.scan(snapshot_id=before).to_arrow().equals(rows_before)
    assert trades.metadata.snapshot_by_id(before).schema_id == 0  # type: ignore[union-attr]

    # The message with an unknown writer schema id is a dead letter with its reason; its partition went on.
    (headers,) = read_dlq(broker, topic + ".dlq")
    assert b"unknown schema id 999" in headers["k2.error"]
    assert headers["k2.error.class"] == b"decode_error"
    assert ingester.halted == {}

    result = CliRunner().invoke(app, ["schemas", "history", "trades"], env=settings_env(settings) | {"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "ts_recv, conditions, buyer_order_id, seller_order_id" in result.output
    assert ingester.writer_id in result.output


def test_k2_import_writes_the_extra_columns_a_format_provides(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """A Binance dump carries no version-2 field: the table keeps its columns. A Databento file carries receive
    times: its import adds the column, once, and a second such file changes nothing."""
    settings = make_settings()
    binance = tmp_path / "BTCUSDT-trades-2024-11-25.csv"
    binance.write_text("1,30000.01,0.1,3000.001,1732492800000,true,true\n")
    Importer(settings).import_file(binance, file_format("binance-trades"), ReadOptions("binance", "BTCUSDT"))
    assert len(history(settings, "trades")) == 1

    mappings = {"ESZ4": [(date(2024, 11, 1), date(2024, 11, 3), 101)]}
    records = [
        enc.trade(101, f"2024-11-01T12:00:0{i}", "5000.25", 1, "A", 1000 + i, ts_recv=f"2024-11-01T12:00:0{i}.000250")
        for i in range(5)
    ]
    dbn_file = enc.write(tmp_path / "glbx.trades.dbn", enc.encode(enc.metadata("trades", mappings), records))
    report = Importer(settings).import_file(dbn_file, file_format("databento-trades"), ReadOptions("cme"))
    assert report.written == 5
    later = [enc.trade(101, "2024-11-02T12:00:00", "5001", 1, "B", 2000, ts_recv="2024-11-02T12:00:00.5")]
    again = enc.write(tmp_path / "glbx.trades.2.dbn", enc.encode(enc.metadata("trades", mappings), later))
    Importer(settings).import_file(again, file_format("databento-trades"), ReadOptions("cme"))

    _first, changed = history(settings, "trades")
    assert changed.added == ("ts_recv",)
    assert changed.by is not None
    assert changed.by.startswith("import-")
    rows = {
        (r["exchange"], r["exchange_sequence_number"], r["exchange_timestamp"].date()): r
        for r in table_rows(settings, "trades")
    }
    assert rows[("binance", 1, date(2024, 11, 25))]["ts_recv"] is None
    assert rows[("cme", 3, date(2024, 11, 1))]["ts_recv"] == rows[("cme", 3, date(2024, 11, 1))][
        "exchange_timestamp"
    ] + timedelta(microseconds=250)
    assert rows[("cme", 1, date(2024, 11, 2))]["ts_recv"].microsecond == 500_000


def _v2_rows(first: int, n: int, symbol: str = "BHP") -> Any:
    return TRADES.to_arrow([v2_trade(symbol, s) for s in range(first, first + n)], extra=TRADE_EXTRAS)


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_two_writers_evolving_at_once_end_with_one_evolution(make_settings: SettingsFactory, catalog: str) -> None:
    """Two writers (two ingesters, or an ingester and `k2 import`) each with rows that carry the new columns, on
    table handles loaded before either changed it, released at the same instant: one schema change, both
    batches stored."""
    for attempt in range(3):
        settings = make_settings(catalog=catalog)
        ensure_tables(open_catalog(settings), settings.catalog.namespace)
        writers = [
            TableWriter(
                open_catalog(settings).load_table((settings.catalog.namespace, "trades")),
                f"w{i}",
                "cluster-1",
                backoff_seconds=0.01,
            )
            for i in range(2)
        ]
        start = threading.Barrier(2)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_race, args=(i, w, start, errors)) for i, w in enumerate(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [], (attempt, errors)
        changes = history(settings, "trades")
        assert [c.added for c in changes[1:]] == [tuple(TRADE_EXTRAS)], attempt
        rows = table_rows(settings, "trades")
        assert len(rows) == 100
        assert all(r["buyer_order_id"] is not None for r in rows)


def _race(i: int, writer: TableWriter, start: threading.Barrier, errors: list[BaseException]) -> None:
    start.wait()
    try:
        writer.append(_v2_rows(1 + 100 * i, 50, "BHP" if i else "CBA"), {(f"t{i}", 0): 50}, {(f"t{i}", 0): 0})
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_a_writer_that_lost_the_race_rechecks_instead_of_evolving_again(make_settings: SettingsFactory) -> None:
    """The loser's view is stale when it commits (its refresh saw no change yet): the commit conflicts, it re-reads
    the table, finds the columns, and changes nothing."""
    settings = make_settings()
    ensure_tables(open_catalog(settings), settings.catalog.namespace)
    winner = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    loser = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    assert evolve(winner, TRADES, TRADE_EXTRAS, writer="winner") == 1
    real_refresh = Table.refresh
    refreshes: list[bool] = []

    def stale_once(self: Table) -> Table:
        refreshes.append(True)
        return self if len(refreshes) == 1 else real_refresh(self)  # the first refresh sees nothing new

    conflicts: list[bool] = []
    real_commit = Table._do_commit  # type: ignore[attr-defined]

    def counting_commit(self: Table, *args: Any, **kwargs: Any) -> Any:
        try:
            return real_commit(self, *args, **kwargs)
        except CommitFailedException:
            conflicts.append(True)
            raise

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Table, "refresh", stale_once)
        mp.setattr(Table, "_do_commit", counting_commit)
        assert evolve(loser, TRADES, TRADE_EXTRAS, writer="loser", backoff_seconds=0.01) is None
    assert conflicts == [True]
    assert [c.added for c in schema_history(loser)[1:]] == [tuple(TRADE_EXTRAS)]


def test_a_writer_dying_between_the_change_and_its_data_leaves_a_whole_change(make_settings: SettingsFactory) -> None:
    """The change is one commit with its record: a writer killed right after it leaves the columns (null for every
    row) and no data; the batch written again later neither changes the schema again nor loses a row."""
    settings = make_settings()
    ensure_tables(open_catalog(settings), settings.catalog.namespace)
    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    TableWriter(table, "w", "c").append(TRADES.to_arrow([feed_trade("BHP", 1)]), {("t", 0): 1}, {("t", 0): 0})
    evolve(table, TRADES, TRADE_EXTRAS, writer="dies-now")  # ... and the process ends here
    fresh = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    assert [r["ts_recv"] for r in fresh.scan().to_arrow().to_pylist()] == [None]
    TableWriter(fresh, "w2", "c").append(_v2_rows(2, 3), {("t", 0): 4}, {("t", 0): 1})
    changes = history(settings, "trades")
    assert len(changes) == 2
    assert changes[1].by == "dies-now"
    assert len(table_rows(settings, "trades")) == 4


def test_compaction_after_the_change_writes_the_current_columns(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    ensure_tables(open_catalog(settings), settings.catalog.namespace)
    table = open_catalog(settings).load_table((settings.catalog.namespace, "trades"))
    writer = TableWriter(table, "w", "c")
    writer.append(TRADES.to_arrow([feed_trade("BHP", s) for s in (1, 2)]), {("t", 0): 2}, {("t", 0): 0})
    writer.append(_v2_rows(3, 2), {("t", 0): 4}, {("t", 0): 2})
    writer.append(TRADES.to_arrow([feed_trade("BHP", s) for s in (5, 6)]), {("t", 0): 6}, {("t", 0): 4})
    before = {r["exchange_sequence_number"]: r for r in table.scan().to_arrow().to_pylist()}
    result = compact_day(table, TRADES, FEED_START.date(), target_file_bytes=1 << 27, retries=3, backoff_seconds=0.01)
    assert (result.files_before, result.files_written) == (3, 1)
    table.refresh()
    after = {r["exchange_sequence_number"]: r for r in table.scan().to_arrow().to_pylist()}
    assert after == before
    assert after[3]["conditions"] == v2_trade("BHP", 3)["conditions"]
    for task in table.scan().plan_files():
        with table.io.new_input(task.file.file_path).open() as stream:
            assert pq.read_schema(stream).names == list(TRADES.column_names), task.file.file_path
