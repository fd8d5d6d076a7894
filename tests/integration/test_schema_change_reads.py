"""Every reader across a schema change (issue 16): a market table gains the optional columns of version 2 of the feeds
between two commits of one day, so that day holds files of both schemas. Time travel to before the change reads the
old columns only; reads after it have the new ones, null for the rows stored before; and every way out (the engine,
pages, the as-of join, replay, the latest row, the realtime tail, precomputed bars, exports, the REST API, the CLI)
carries them. Real SQLite and PostgreSQL catalogs, real Parquet files."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from k2_api.main import create_app
from k2_cli.main import app as cli
from k2_core.logging import fields_of
from k2_core.model.tables import EXTRA_COLUMNS, MARKET_TABLES, QUOTES, TRADES, feed_schema
from k2_core.model.topics import Kind
from k2_core.read.engine import QueryEngine
from k2_core.read.export import EXPORT_FORMATS, Exporter, to_bytes
from k2_core.read.realtime import RealtimeBuffer
from k2_core.settings import Settings
from k2_core.upkeep.ohlcv import rebuild_day
from k2_stream.admin import ensure_topics
from k2_stream.producer import FeedProducer
from k2_stream.registry_confluent import make_registry
from tests.support import query_oracle as oracle
from tests.support.clients import local_client
from tests.support.evolution import (
    DAY,
    EXTRA_NAMES,
    V1_SEQS,
    Changed,
    append,
    changed_lake,
    evolve,
    expected_after,
    expected_before,
    v1_trade,
    v2_trade,
    v2_trade_fields,
    with_nulls,
)
from tests.support.factories import trade
from tests.support.lake import Lake, open_lake
from tests.support.processes import settings_env

SettingsFactory = Callable[..., Settings]
START, END = DAY.isoformat(), (DAY + timedelta(days=1)).isoformat()
V1_NAMES = {"trades": TRADES.arrow_schema.names, "quotes": QUOTES.arrow_schema.names}
V2_NAMES = {kind: [*V1_NAMES[kind], *EXTRA_NAMES[kind]] for kind in EXTRA_NAMES}
KINDS: tuple[Kind, ...] = ("trades", "quotes")


@pytest.fixture(params=["sqlite", "postgres"])
def changed(request: pytest.FixtureRequest, make_settings: SettingsFactory) -> Changed:
    if request.param == "postgres":
        request.getfixturevalue("postgres_uri")
    settings = make_settings(catalog=request.param)
    settings.query.tail_enabled = False  # the realtime tail is fed by hand below
    settings.redis.enabled = False
    return changed_lake(settings)


@pytest.fixture
def engine(changed: Changed) -> QueryEngine:
    return QueryEngine(changed.lake.catalog, changed.settings.catalog.namespace)


def read(engine: QueryEngine, kind: Kind, **travel: Any) -> pa.Table:
    query = engine.market_query("BHP", "asx", START, END, 1000)
    return engine.fetch(kind, query, as_of=_as_of(**travel)).table


def _as_of(**travel: Any) -> Any:
    from k2_core.read.params import validate_as_of

    return validate_as_of(travel.get("as_of_snapshot"), travel.get("as_of"))


# --- the engine ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_time_travel_to_before_the_change_reads_the_old_columns_only(
    kind: Kind, changed: Changed, engine: QueryEngine
) -> None:
    by_id = read(engine, kind, as_of_snapshot=changed.before[kind])
    assert by_id.schema.names == V1_NAMES[kind]
    assert by_id.to_pylist() == expected_before(kind)
    committed = changed.lake.table(kind).snapshot_by_id(changed.before[kind])
    assert committed is not None
    at_time = read(engine, kind, as_of=datetime.fromtimestamp(committed.timestamp_ms / 1000, UTC))
    assert at_time.equals(by_id)


@pytest.mark.parametrize("kind", KINDS)
def test_after_the_change_the_new_columns_are_read_null_for_older_rows(
    kind: Kind, changed: Changed, engine: QueryEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="k2_core.lake.scan")
    for travel in ({}, {"as_of_snapshot": changed.after[kind]}):
        rows = read(engine, kind, **travel)
        assert rows.schema == feed_schema(kind)  # every column, in the table's own types
        assert rows.to_pylist() == expected_after(kind)
    reads = [fields_of(r) for r in caplog.records if r.getMessage() == "query"]
    assert [(r["read_path"], r["planned_files"]) for r in reads] == [("duckdb", 3), ("duckdb", 3)]
    # DuckDB reads the day's files of both schemas by field id; pyiceberg's reader is the reference.
    reference = QueryEngine(changed.lake.catalog, changed.settings.catalog.namespace, direct_reads=False)
    assert read(reference, kind).equals(read(engine, kind))
    assert read(reference, kind, as_of_snapshot=changed.before[kind]).equals(
        read(engine, kind, as_of_snapshot=changed.before[kind])
    )


def test_a_column_renamed_after_its_files_were_written_is_read_by_field_id(changed: Changed) -> None:
    table = changed.lake.table("trades")
    with table.update_schema() as update:  # the files written so far still call it buyer_order_id
        update.rename_column("buyer_order_id", "buyer_id")
    row = {k: v for k, v in v2_trade(30).items() if k != "buyer_order_id"} | {"buyer_id": "B30"}
    append(table, "trades", [row])
    engine = QueryEngine(changed.lake.catalog, changed.settings.catalog.namespace)
    direct = read(engine, "trades")
    assert "buyer_id" in direct.schema.names
    assert "buyer_order_id" not in direct.schema.names
    assert direct.column("buyer_id").to_pylist() == [None] * len(V1_SEQS) + [f"B{s}" for s in range(13, 25)] + ["B30"]
    reference = QueryEngine(changed.lake.catalog, changed.settings.catalog.namespace, direct_reads=False)
    assert read(reference, "trades").equals(direct)


def test_pages_across_the_change_carry_every_column(changed: Changed, engine: QueryEngine) -> None:
    query = engine.market_query("BHP", "asx", START, END, 5)
    pages, cursor = [], None
    while True:
        page = engine.fetch("trades", query, cursor=cursor)
        pages.append(page.table)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(pages) == 5
    assert {tuple(p.schema.names) for p in pages} == {tuple(V2_NAMES["trades"])}
    assert pa.concat_tables(pages).to_pylist() == expected_after("trades")
    # A listing of the old snapshot pages in the old columns.
    old = engine.fetch("trades", query, as_of=_as_of(as_of_snapshot=changed.before["trades"]))
    assert old.table.schema.names == V1_NAMES["trades"]
    assert old.next_cursor is not None
    second = engine.fetch(
        "trades", query, cursor=old.next_cursor, as_of=_as_of(as_of_snapshot=changed.before["trades"])
    )
    assert second.table.schema.names == V1_NAMES["trades"]


def test_the_as_of_join_keeps_the_trades_new_columns(changed: Changed, engine: QueryEngine) -> None:
    joined = engine.trades("BHP", "asx", START, END, 1000, with_quote=True)
    quote_columns = ["quote_timestamp", "quote_sequence_number", "bid_price", "bid_size", "ask_price", "ask_size"]
    assert joined.schema.names == [*V2_NAMES["trades"], *quote_columns]
    trades, quotes = expected_after("trades"), expected_after("quotes")
    want = oracle.asof_quotes(trades, quotes)
    assert joined.to_pylist() == want
    old = engine.trades("BHP", "asx", START, END, 1000, with_quote=True, as_of_snapshot=changed.before["trades"])
    assert old.schema.names == [*V1_NAMES["trades"], *quote_columns]
    assert old.num_rows == len(V1_SEQS)


def test_replay_and_latest_follow_the_snapshot_read(changed: Changed, engine: QueryEngine) -> None:
    for kind in KINDS:
        replay = engine.replay("BHP", "asx", DAY, kind=kind, batch_size=7)
        assert replay.schema.names == V2_NAMES[kind]
        batches = list(replay)
        assert all(b.schema.equals(replay.schema) for b in batches)
        assert pa.Table.from_batches(batches).to_pylist() == expected_after(kind)
        old = engine.replay("BHP", "asx", DAY, kind=kind, as_of_snapshot=changed.before[kind])
        assert old.schema.names == V1_NAMES[kind]
        assert list(old.rows()) == expected_before(kind)
    latest = engine.latest("BHP", "asx").table.to_pylist()
    assert latest == [expected_after("trades")[-1]]
    old_latest = engine.latest("BHP", "asx", as_of_snapshot=changed.before["trades"]).table
    assert old_latest.schema.names == V1_NAMES["trades"]


def test_the_snapshot_log_tells_the_schemas_apart(changed: Changed, engine: QueryEngine) -> None:
    log = {r["snapshot_id"]: r for r in engine.snapshots("trades").table.to_pylist()}
    assert log[changed.after["trades"]]["schema_id"] > log[changed.before["trades"]]["schema_id"]


def test_precomputed_bars_over_files_of_both_schemas(changed: Changed, engine: QueryEngine) -> None:
    lake = changed.lake
    rebuild_day(lake.table("trades"), lake.table("ohlcv_1m"), lake.table("ohlcv_1d"), DAY, retries=2, backoff=0.01)
    stored = expected_after("trades")
    for interval in ("1m", "1d"):
        bars = engine.ohlcv("BHP", "asx", interval, START, END)
        assert "precomputed" in bars.sources
        computed = engine.ohlcv("BHP", "asx", interval, START, END, as_of_snapshot=changed.after["trades"])
        assert "precomputed" not in computed.sources
        assert bars.table.to_pylist() == computed.table.to_pylist() == oracle.bars(stored, interval)


def test_cached_answers_keep_the_columns_of_their_snapshot(changed: Changed) -> None:
    """The in-process LRU and Redis hold answers by snapshot id; an answer of either snapshot comes back with its own
    columns, from another process's engine too."""
    settings = changed.settings
    settings.redis.enabled = True  # the local Redis
    travel = {"as_of_snapshot": changed.before["trades"]}
    with QueryEngine.from_settings(settings) as engine:
        query = engine.market_query("BHP", "asx", START, END, 1000)
        for as_of, want in ((None, expected_after("trades")), (_as_of(**travel), expected_before("trades"))):
            first, again = engine.fetch("trades", query, as_of=as_of), engine.fetch("trades", query, as_of=as_of)
            assert (first.cached, again.cached) == (None, "lru")
            assert first.table.to_pylist() == again.table.to_pylist() == want
    with QueryEngine.from_settings(settings) as other:  # an empty LRU: Redis answers
        query = other.market_query("BHP", "asx", START, END, 1000)
        shared = other.fetch("trades", query)
        assert shared.cached == "redis"
        assert shared.table.schema == feed_schema("trades")
        assert shared.table.to_pylist() == expected_after("trades")
        old = other.fetch("trades", query, as_of=_as_of(**travel))
        assert old.cached == "redis"
        assert old.table.schema.names == V1_NAMES["trades"]


# --- the realtime tail -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("evolved", [False, True], ids=["table-v1", "table-v2"])
def test_the_tail_adds_its_rows_with_their_new_columns(evolved: bool, make_settings: SettingsFactory) -> None:
    """Rows of version 2 in the tail, not yet committed: the answer has their columns whether or not the table has
    gained them yet, null for the committed rows that have none."""
    settings = make_settings()
    lake = open_lake(settings)
    now = datetime.now(UTC)
    committed = [trade("BHP", s, now - timedelta(seconds=60 - s), "10", ingestion_timestamp=now) for s in range(1, 6)]
    lake.append("trades", committed)
    if evolved:
        evolve(lake.table("trades"), "trades")
    streamed = [
        trade("BHP", s, now - timedelta(seconds=60 - s), "11", ingestion_timestamp=now)
        | v2_trade_fields(s, now - timedelta(seconds=60 - s))
        for s in range(4, 9)  # 4 and 5 are committed already: the tail's copies are dropped
    ]
    engine = tail_engine(lake, streamed, now)
    result = engine.fetch("trades", engine.market_query("BHP", "asx", now - timedelta(minutes=5), now, 100))
    assert result.sources == ("iceberg", "realtime")
    assert result.table.schema == feed_schema("trades")
    assert result.table.to_pylist() == [with_nulls(r, "trades") for r in committed] + streamed[2:]
    latest = engine.latest("BHP", "asx")
    assert latest.sources == ("realtime",)
    assert latest.table.to_pylist() == [streamed[-1]]
    replay = engine.replay("BHP", "asx", now.date(), kind="trades")
    assert replay.schema == feed_schema("trades")


def test_a_tail_of_version_1_records_answers_in_the_tables_columns(make_settings: SettingsFactory) -> None:
    """A tail whose decoder yields no new field (version 1 is the newest registered) adds no column; one whose reader
    schema has them answers with them, null for records that had none to give."""
    settings = make_settings()
    lake = open_lake(settings)
    now = datetime.now(UTC)
    lake.append("trades", [trade("BHP", 1, now - timedelta(seconds=30), ingestion_timestamp=now)])
    streamed = [trade("BHP", 2, now - timedelta(seconds=20), ingestion_timestamp=now)]
    engine = tail_engine(lake, streamed, now)
    query = engine.market_query("BHP", "asx", now - timedelta(minutes=5), now, 100)
    assert engine.fetch("trades", query).table.schema == TRADES.arrow_schema
    assert engine.sources.realtime is not None
    engine.sources.realtime.carries("trades", ["symbol", *EXTRA_NAMES["trades"]])
    rows = engine.fetch("trades", query).table
    assert rows.schema == feed_schema("trades")
    assert rows.column("conditions").to_pylist() == [None, None]


def tail_engine(lake: Lake, streamed: list[dict[str, Any]], now: datetime) -> QueryEngine:
    """An engine whose realtime tail holds `streamed` and has caught up with the trades topic."""
    buffer = RealtimeBuffer(1000, retention=timedelta(minutes=10))
    for record in streamed:
        buffer.add("trades", record, now)
    buffer.mark_ready("trades", "asx", None)
    return QueryEngine(lake.catalog, lake.settings.catalog.namespace, realtime=buffer)


# --- exports ---------------------------------------------------------------------------------------------------------


def test_every_export_format_carries_the_new_columns(engine: QueryEngine) -> None:
    rows = engine.trades("BHP", "asx", START, END, 1000)
    want = expected_after("trades")
    for fmt in EXPORT_FORMATS:
        body = to_bytes(rows, fmt)
        if fmt == "parquet":
            assert pq.read_table(io.BytesIO(body)).to_pylist() == want
        elif fmt == "arrow":
            assert pa.ipc.open_stream(body).read_all().to_pylist() == want
        elif fmt == "ndjson":
            lines = [json.loads(line) for line in body.decode().splitlines()]
            assert [line["conditions"] for line in lines] == [r["conditions"] for r in want]
            assert lines[-1]["ts_recv"] == want[-1]["ts_recv"].isoformat().replace("+00:00", "Z")
            assert lines[0]["ts_recv"] is None
        else:
            text = pa_csv.read_csv(
                io.BytesIO(body),
                convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys(V2_NAMES["trades"], pa.string())),
            ).to_pylist()
            assert list(text[0]) == V2_NAMES["trades"]
            # A list is its JSON text; a null list (a row from before the change) an empty cell.
            assert [json.loads(r["conditions"]) if r["conditions"] else None for r in text] == [
                r["conditions"] for r in want
            ]
            assert b'"[""@"",""F""]"' in body
            assert text[-1]["ts_recv"] == want[-1]["ts_recv"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_an_export_fills_a_later_page_with_fewer_columns_and_refuses_one_with_more() -> None:
    wide = pa.Table.from_pylist([v2_trade(13)], schema=feed_schema("trades"))
    narrow = TRADES.to_arrow([v1_trade(1)])
    sink = io.BytesIO()
    with Exporter(sink, "parquet", wide.schema) as exporter:
        exporter.write(wide)
        exporter.write(narrow)
    assert pq.read_table(io.BytesIO(sink.getvalue())).to_pylist() == [v2_trade(13), with_nulls(v1_trade(1), "trades")]
    with Exporter(io.BytesIO(), "csv", narrow.schema) as exporter, pytest.raises(ValueError, match="conditions"):
        exporter.write(wide)


# --- the REST API ----------------------------------------------------------------------------------------------------


def json_rows(rows: list[dict[str, Any]], schema: pa.Schema) -> list[dict[str, Any]]:
    """Rows as K2's JSON writes them in `schema`'s types (decimals at their scale)."""
    from k2_core.read.export import json_value

    typed = pa.Table.from_pylist(rows, schema=schema).to_pylist()
    return [json.loads(json.dumps(r, default=json_value)) for r in typed]


def test_the_api_carries_the_new_fields_and_leaves_them_out_before_the_change(changed: Changed) -> None:
    params = {"symbol": "BHP", "exchange": "asx", "start": START, "end": END}
    with local_client(create_app(changed.settings)) as client:
        for kind in KINDS:
            now = client.get(f"/v1/{kind}", params=params).json()["data"]
            assert now == json_rows(expected_after(kind), feed_schema(kind))
            assert now[0]["conditions" if kind == "trades" else "bid_count"] is None  # present, null
            old = client.get(f"/v1/{kind}", params=params | {"as_of_snapshot": changed.before[kind]}).json()["data"]
            assert old == json_rows(expected_before(kind), MARKET_TABLES[kind].arrow_schema)
            assert not set(EXTRA_NAMES[kind]) & set(old[0])  # absent: that snapshot has no such column
            parquet = client.get(f"/v1/{kind}", params=params | {"format": "parquet"})
            assert pq.read_table(io.BytesIO(parquet.content)).to_pylist() == expected_after(kind)
            arrow = client.get(f"/v1/{kind}", params=params | {"format": "arrow"})
            assert pa.ipc.open_stream(arrow.content).read_all().schema == feed_schema(kind)
            csv = client.get(f"/v1/{kind}", params=params | {"format": "csv"}).text
            assert csv.splitlines()[0] == ",".join(f'"{n}"' for n in V2_NAMES[kind])
            replay = client.get("/v1/replay", params={"symbol": "BHP", "exchange": "asx", "date": START, "kind": kind})
            assert [json.loads(line) for line in replay.text.splitlines()] == json_rows(
                expected_after(kind), feed_schema(kind)
            )
        joined = client.get("/v1/trades", params=params | {"with_quote": "true"}).json()["data"]
        assert joined[-1]["conditions"] == expected_after("trades")[-1]["conditions"]
        assert joined[-1]["bid_price"] is not None
        latest = client.get("/v1/latest", params={"symbol": "BHP", "exchange": "asx"}).json()["data"]
        assert latest["buyer_order_id"] == "B24"
        snapshots = client.get("/v1/snapshots", params={"table": "trades"}).json()["data"]
        assert {s["schema_id"] for s in snapshots} == {0, 1}
        spec = client.get("/openapi.json").json()["components"]["schemas"]
    for model, kind in (("Trade", "trades"), ("Quote", "quotes")):
        properties, required = spec[model]["properties"], set(spec[model].get("required", []))
        for column in EXTRA_COLUMNS[kind]:
            assert column.name in properties
            assert column.name not in required
            assert column.doc is not None
            assert column.doc in properties[column.name]["description"]
        assert set(V1_NAMES[kind]) <= required
    conditions = spec["Trade"]["properties"]["conditions"]["anyOf"]
    assert {"type": "array", "items": {"type": "string"}} in conditions


# --- the CLI ---------------------------------------------------------------------------------------------------------


def test_k2_query_prints_and_exports_the_new_columns(changed: Changed, tmp_path: Path) -> None:
    env = settings_env(changed.settings) | {"COLUMNS": "400"}
    runner = CliRunner()
    base = ["query", "trades", "BHP", "-e", "asx", "--start", START, "--end", END]
    shown = runner.invoke(cli, base, env=env)
    assert shown.exit_code == 0, shown.output
    assert "conditions" in shown.stdout
    assert "@, F" in shown.stdout
    assert "B24" in shown.stdout
    for fmt in ("csv", "parquet", "arrow", "ndjson"):
        out = tmp_path / f"trades.{fmt}"
        done = runner.invoke(cli, [*base, "--limit", "1000", "-f", fmt, "-o", str(out)], env=env)
        assert done.exit_code == 0, done.output
        if fmt == "parquet":
            assert pq.read_table(out).to_pylist() == expected_after("trades")
        elif fmt == "arrow":
            assert pa.ipc.open_stream(out.read_bytes()).read_all().to_pylist() == expected_after("trades")
        elif fmt == "ndjson":
            assert [json.loads(line) for line in out.read_text().splitlines()] == json_rows(
                expected_after("trades"), feed_schema("trades")
            )
        else:
            assert out.read_text().splitlines()[-1].count('""') >= 2  # the conditions' JSON text, quoted
    old = tmp_path / "old.parquet"
    done = runner.invoke(
        cli, [*base, "-f", "parquet", "-o", str(old), "--as-of-snapshot", str(changed.before["trades"])], env=env
    )
    assert done.exit_code == 0, done.output
    assert pq.read_table(old).to_pylist() == expected_before("trades")
    replayed = tmp_path / "replay.parquet"
    done = runner.invoke(
        cli, ["query", "replay", "BHP", "-e", "asx", "-d", START, "-f", "parquet", "-o", str(replayed)], env=env
    )
    assert done.exit_code == 0, done.output
    assert pq.read_table(replayed).to_pylist() == expected_after("trades")


# --- through the broker ----------------------------------------------------------------------------------------------


def test_the_api_serves_version_2_fields_from_the_tail_beside_version_1_rows(
    make_settings: SettingsFactory, broker: str
) -> None:
    """The API's own tail consumer reads the newest registered version: messages of both versions in the topic, the
    table still without the new columns (nothing committed carries them yet). The answer has them: the version-2
    messages' values, null for the version-1 messages and for the committed rows."""
    settings = make_settings(bootstrap=broker)
    settings.redis.enabled = False
    now = datetime.now(UTC)
    at_ = [now - timedelta(seconds=40 - s) for s in range(9)]
    committed = [trade("BHP", s, at_[s], "10", ingestion_timestamp=now) for s in range(1, 4)]
    lake = open_lake(settings)
    lake.append("trades", committed)
    old = [trade("BHP", s, at_[s], "11", ingestion_timestamp=now) for s in range(4, 6)]
    new = [trade("BHP", s, at_[s], "12", ingestion_timestamp=now) | v2_trade_fields(s, at_[s]) for s in range(6, 9)]
    layout = ensure_topics(settings)
    producer = FeedProducer(settings, layout, make_registry(SecretStr(""), settings.kafka.schemas_dir))
    for record in old:
        producer.send("trades", record, schema_id=1)  # a producer built against version 1
    for record in new:
        producer.send("trades", record)
    producer.flush()
    params = {"symbol": "BHP", "exchange": "asx", "start": (now - timedelta(minutes=2)).isoformat()}
    with local_client(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while True:
            body = client.get("/v1/trades", params=params).json()
            if body.get("count") == 8 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert body["sources"] == ["iceberg", "realtime"]
        want = [with_nulls(r, "trades") for r in [*committed, *old]] + new
        assert body["data"] == json_rows(want, feed_schema("trades"))
        csv = client.get("/v1/trades", params=params | {"format": "csv"}).text.splitlines()
        assert csv[-1].count('"[""T""]"') + csv[-1].count('"[""@"",""F""]"') == 1
    assert "ts_recv" not in {f.name for f in lake.table("trades").schema().fields}  # nothing committed them yet
