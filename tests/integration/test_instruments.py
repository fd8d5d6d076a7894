"""Reference data (`market.instruments`) end to end on real components: files loaded into real Iceberg tables on
SQLite and PostgreSQL catalogs (idempotent, one snapshot a change, time travel), the API over HTTP with its scopes,
the `k2 instruments` CLI, the Dagster asset, and strict instruments enforced by the real ingester behind a real Tansu
broker and by `k2 import`: off-tick, off-lot, unlisted and out-of-dates records go to the dead-letter path with their
reason, the rest land, and non-strict instruments are untouched. Expected rows come from the CSV text and Decimal
arithmetic here, not from K2's own parser."""

from __future__ import annotations

import csv
import io
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from typer.testing import CliRunner

from k2_api.main import create_app
from k2_cli.main import app
from k2_core.access.auth import KeyStore
from k2_core.exceptions import ConfigError, QueryError
from k2_core.lake.catalog import open_catalog
from k2_core.lake.instruments import load_reference_files, load_table
from k2_core.read.engine import QueryEngine
from k2_core.settings import AuthSettings, Settings
from k2_dagster.defs.reference import instruments as instruments_asset
from k2_stream.ingester import Ingester
from tests.support import factories
from tests.support.clients import cli_env, local_client
from tests.support.definitions import k2_resources
from tests.support.dumps import write_binance_trades
from tests.support.kafka import produce, read_dead_letters
from tests.support.lake import table_rows
from tests.support.processes import settings_env
from tests.support.waits import wait_for

SettingsFactory = Callable[..., Settings]
HEADER = "symbol,asset_class,currency,tick_size,lot_size,isin,figi,listed,delisted,strict"
ASX = [
    "BHP,equities,AUD,0.01,1,AU000000BHP4,,,,false",
    "CBA,equities,AUD,0.01,1,AU000000CBA7,,2000-01-04,,false",
]
NYSE = ["IBM,equities,USD,0.01,1,US4592001014,,,,true"]


def write(directory: Path, exchange: str, lines: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{exchange}.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def expected_rows(files: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The oracle: the CSV text read with the csv module and Decimal, by (exchange, symbol)."""
    rows = []
    for exchange, lines in files.items():
        for r in csv.DictReader(io.StringIO("\n".join([HEADER, *lines]))):
            rows.append(
                {
                    "symbol": r["symbol"],
                    "exchange": exchange,
                    "asset_class": r["asset_class"],
                    "currency": r["currency"],
                    "tick_size": Decimal(r["tick_size"]),
                    "lot_size": Decimal(r["lot_size"]),
                    "isin": r["isin"] or None,
                    "figi": r["figi"] or None,
                    "listed": date.fromisoformat(r["listed"]) if r["listed"] else None,
                    "delisted": date.fromisoformat(r["delisted"]) if r["delisted"] else None,
                    "strict": r["strict"] == "true",
                }
            )
    return sorted(rows, key=lambda r: (r["exchange"], r["symbol"]))


def snapshot_count(settings: Settings) -> int:
    table = load_table(open_catalog(settings), settings.catalog.namespace)
    return 0 if table is None else len(table.snapshots())


# ---- files, loads, time travel -------------------------------------------------------------------------------


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_loads_are_idempotent_and_each_change_is_one_snapshot_to_travel_back_to(
    make_settings: SettingsFactory, tmp_path: Path, catalog: str
) -> None:
    settings = make_settings(catalog=catalog)
    settings.instruments.dir = tmp_path / "instruments"
    write(settings.instruments.dir, "asx", ASX)
    with QueryEngine.from_settings(settings, cache=False) as engine:
        assert engine.instruments().table.num_rows == 0  # before any load: no table, no rows
        before_any = datetime.now(UTC)
        time.sleep(0.01)

        first = load_reference_files(settings)
        assert (first.changed, first.rows) == (True, 2)
        again = load_reference_files(settings)
        assert (again.changed, again.snapshot_id) == (False, first.snapshot_id)
        # The rows decide, not the bytes: reordered lines and a blank line change nothing.
        write(settings.instruments.dir, "asx", [*reversed(ASX), ""])
        assert load_reference_files(settings).changed is False
        assert snapshot_count(settings) == 1
        between = datetime.now(UTC)
        time.sleep(0.01)

        changed_asx = [ASX[0].replace(",0.01,", ",0.005,"), ASX[1]]
        write(settings.instruments.dir, "asx", changed_asx)
        write(settings.instruments.dir, "nyse", NYSE)
        second = load_reference_files(settings)
        assert second.changed
        assert snapshot_count(settings) == 2  # one new snapshot, not a delete and an append

        now = engine.instruments()
        assert now.snapshot_id == second.snapshot_id
        assert now.table.to_pylist() == expected_rows({"asx": changed_asx, "nyse": NYSE})
        old = engine.instruments(as_of_snapshot=first.snapshot_id).table.to_pylist()
        assert old == expected_rows({"asx": ASX})
        assert engine.instruments(as_of=between).table.to_pylist() == old
        assert engine.instruments(as_of=before_any).table.num_rows == 0
        narrowed = engine.instruments("asx", "BHP").table.to_pylist()
        assert narrowed == [r for r in expected_rows({"asx": changed_asx}) if r["symbol"] == "BHP"]
        assert engine.instruments("nyse").table.column("symbol").to_pylist() == ["IBM"]
        with pytest.raises(QueryError, match="is not a snapshot of table instruments"):
            engine.instruments(as_of_snapshot=12345)
        with pytest.raises(QueryError, match="symbol must be an uppercase ticker"):
            engine.instruments(symbol="bhp")


BAD_FILES = [
    ("asx.csv", f"{HEADER}\nBHP,equities,AUD,0.0x,1,,,,,false\n", r"asx\.csv:2: tick_size: '0\.0x' is not a decimal"),
    ("asx.csv", f"{HEADER}\nBHP,equities,AUD,0.01,0,,,,,false\n", r"asx\.csv:2: lot_size: '0' must be a positive"),
    ("asx.csv", f"{HEADER}\nBHP,equities,AUD,0.000000001,1,,,,,false\n", r"asx\.csv:2: tick_size: .* 8 decimal places"),
    ("asx.csv", f"{HEADER}\nbhp,equities,AUD,0.01,1,,,,,false\n", r"asx\.csv:2: symbol: 'bhp' is not a valid symbol"),
    ("asx.csv", f"{HEADER}\nBHP,equities,AUD,0.01,1,AU000000BHP5,,,,false\n", r"asx\.csv:2: isin: .*check digit"),
    ("asx.csv", f"{HEADER}\nBHP,equities,AUD,0.01,1,,,2024-13-01,,false\n", r"asx\.csv:2: listed: .*not an ISO date"),
    (
        "asx.csv",
        f"{HEADER}\nBHP,equities,AUD,0.01,1,,,2024-02-01,2024-01-01,false\n",
        r"asx\.csv:2: delisted: 2024-01-01 is before listed 2024-02-01",
    ),
    ("asx.csv", f"{HEADER}\nBHP,equities,AUD,0.01,1,,,,,maybe\n", r"asx\.csv:2: strict: 'maybe' is not true or false"),
    ("asx.csv", f"{HEADER}\nBHP,equities,AUD,0.01,1,,,,\n", r"asx\.csv:2: has 9 fields, the header 10"),
    (
        "asx.csv",
        f"{HEADER}\nBHP,equities,AUD,0.01,1,,,,,false\n\nBHP,equities,AUD,0.02,1,,,,,false\n",
        r"asx\.csv:4: symbol: BHP is listed already on line 2",
    ),
    (
        "asx.csv",
        "symbol,currency,tick_size,lot_size,venue\n",
        r"asx\.csv:1: header: missing column\(s\) \['asset_class'\]",
    ),
    ("ASX.csv", f"{HEADER}\n", r"ASX\.csv: the file name must be <exchange>\.csv"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_FILES)
def test_a_bad_file_is_refused_naming_file_line_and_field_and_nothing_stored_changes(
    make_settings: SettingsFactory, tmp_path: Path, name: str, text: str, message: str
) -> None:
    settings = make_settings()
    settings.instruments.dir = tmp_path / "instruments"
    write(settings.instruments.dir, "nyse", NYSE)
    stored = load_reference_files(settings)
    (settings.instruments.dir / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_reference_files(settings)
    with QueryEngine.from_settings(settings, cache=False) as engine:
        now = engine.instruments()
    assert now.snapshot_id == stored.snapshot_id
    assert now.table.to_pylist() == expected_rows({"nyse": NYSE})


# ---- the API and the CLI -----------------------------------------------------------------------------------------


def test_the_api_serves_instruments_to_callers_who_may_read_the_exchanges_trades_or_quotes(
    make_settings: SettingsFactory, tmp_path: Path, key_store: Callable[[Settings], KeyStore]
) -> None:
    settings = make_settings()
    settings.query.tail_enabled = False
    settings.auth = AuthSettings(mode="on")
    settings.instruments.dir = tmp_path / "instruments"
    write(settings.instruments.dir, "asx", ASX)
    first = load_reference_files(settings)
    write(settings.instruments.dir, "nyse", NYSE)
    second = load_reference_files(settings)
    store = key_store(settings)
    expires = datetime.now(UTC) + timedelta(days=1)
    tokens = {
        scope: store.create(f"t-{uuid.uuid4().hex[:6]}", [scope], expires)[1]
        for scope in ("read:trades:asx", "read:quotes:nyse", "read:trades:*", "read:gaps")
    }

    def get(scope: str, **params: str) -> Any:
        return client.get("/v1/instruments", params=params, headers={"Authorization": f"Bearer {tokens[scope]}"})

    every = expected_rows({"asx": ASX, "nyse": NYSE})
    wire = [
        r
        | {k: format(r[k].quantize(Decimal("1e-8")), "f") for k in ("tick_size", "lot_size")}
        | {k: r[k] and r[k].isoformat() for k in ("listed", "delisted")}
        for r in every
    ]
    with local_client(create_app(settings)) as client:
        assert client.get("/v1/instruments").status_code == 401
        asx = get("read:trades:asx", exchange="asx")
        assert asx.status_code == 200, asx.text
        assert asx.json()["data"] == [r for r in wire if r["exchange"] == "asx"]
        assert asx.headers["K2-Snapshot-Id"] == str(second.snapshot_id)
        refused = get("read:trades:asx", exchange="nyse")
        assert refused.status_code == 403
        assert "missing scope read:trades:nyse or read:quotes:nyse" in refused.json()["detail"]
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
        # No exchange named: the rows of the exchanges the caller may read, and which those were.
        listing = get("read:quotes:nyse").json()
        assert (listing["data"], listing["exchanges"]) == ([r for r in wire if r["exchange"] == "nyse"], ["nyse"])
        everything = get("read:trades:*").json()
        assert (everything["data"], everything["exchanges"]) == (wire, None)
        assert get("read:gaps").status_code == 403
        assert get("read:gaps", exchange="asx").status_code == 403

        travelled = get("read:trades:*", as_of_snapshot=str(first.snapshot_id)).json()
        assert travelled["data"] == [r for r in wire if r["exchange"] == "asx"]
        assert travelled["snapshot_id"] == first.snapshot_id
        as_csv = get("read:trades:*", exchange="asx", symbol="CBA", format="csv")
        assert as_csv.status_code == 200
        parsed = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert [(r["symbol"], Decimal(r["tick_size"]), r["listed"]) for r in parsed] == [
            ("CBA", Decimal("0.01"), "2000-01-04")
        ]
        bad = get("read:trades:*", symbol="cba")
        assert bad.status_code == 400
        assert "symbol must be an uppercase ticker" in bad.json()["detail"]
        assert get("read:trades:*", as_of_snapshot="1").status_code == 400


def test_k2_instruments_load_and_list(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    directory = tmp_path / "instruments"
    write(directory, "asx", ASX)
    env = {**cli_env(settings), "K2_INSTRUMENTS_DIR": str(directory)}
    runner = CliRunner()

    loaded = runner.invoke(app, ["instruments", "load"], env=env)
    assert loaded.exit_code == 0, loaded.output
    assert "2 instruments stored" in loaded.output
    unchanged = runner.invoke(app, ["instruments", "load"], env=env)
    assert "2 instruments unchanged" in unchanged.output
    assert "nothing committed" in unchanged.output

    listed = runner.invoke(app, ["instruments", "list", "-e", "asx", "-s", "CBA"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "CBA" in listed.output
    assert "BHP" not in listed.output
    assert "2000-01-04" in listed.output
    assert "1 rows" in listed.output

    write(directory, "asx", [*ASX, "WES,equities,AUD,ten,1,,,,,false"])
    refused = runner.invoke(app, ["instruments", "load"], env=env)
    assert refused.exit_code == 2
    assert "asx.csv:4: tick_size: 'ten' is not a decimal number" in refused.output
    bad_exchange = runner.invoke(app, ["instruments", "list", "-e", "ASX"], env=env)
    assert bad_exchange.exit_code == 2
    assert "exchange must be a lowercase exchange name" in bad_exchange.output


# ---- strict instruments on the way in ----------------------------------------------------------------------------

TODAY = datetime.now(UTC).date()
STRICT_ASX = [
    "BHP,equities,AUD,0.01,1,,,,,true",
    "CBA,equities,AUD,0.01,1,,,,,false",
    f"NEW,equities,AUD,0.01,1,,,{TODAY + timedelta(days=1)},,true",
]


def refused_by(files: dict[str, list[str]], strict_exchanges: set[str], rec: dict[str, Any]) -> str | None:
    """The oracle of the strict rules: why `rec` is refused (a word for the reason), or None."""
    known = {(r["exchange"], r["symbol"]): r for r in expected_rows(files)}
    ref = known.get((rec["exchange"], rec["symbol"]))
    if ref is None:
        return "not listed" if rec["exchange"] in strict_exchanges else None
    if not (ref["strict"] or rec["exchange"] in strict_exchanges):
        return None
    if rec["price"] % ref["tick_size"]:
        return "tick_size"
    if rec["volume"] % ref["lot_size"]:
        return "lot_size"
    day = rec["exchange_timestamp"].date()
    if (ref["listed"] and day < ref["listed"]) or (ref["delisted"] and day > ref["delisted"]):
        return "listed dates"
    return None


def test_strict_instruments_dead_letter_through_the_broker_and_a_reload_needs_no_restart(
    broker: str, make_settings: SettingsFactory, tmp_path: Path, running_ingester: Callable[[Settings], Ingester]
) -> None:
    settings = make_settings(bootstrap=broker, batch_max_seconds=0.3, metrics_port=0)
    settings.instruments.dir = tmp_path / "instruments"
    settings.instruments.strict_exchanges = ["nyse"]
    settings.instruments.refresh_seconds = 0.5
    files = {"asx": STRICT_ASX, "nyse": NYSE}
    for exchange, lines in files.items():
        write(settings.instruments.dir, exchange, lines)
    load_reference_files(settings)

    trades = [
        factories.trade("BHP", 1, price="45.12", volume="100"),
        factories.trade("BHP", 2, price="45.125", volume="100"),  # off tick
        factories.trade("BHP", 3, price="45.13", volume="100.5"),  # off lot
        factories.trade("BHP", 4, price="45.14", volume="7"),
        factories.trade("CBA", 1, price="152.405", volume="0.5"),  # off both, but CBA is not strict
        factories.trade("NEW", 1, price="1.00", volume="1"),  # listed tomorrow
        factories.trade("IBM", 1, price="231.45", volume="10", exchange="nyse"),
        factories.trade("IBM", 2, price="231.451", volume="10", exchange="nyse"),  # off tick
        factories.trade("ZZZ", 1, price="1", volume="1", exchange="nyse"),  # nyse is strict: not listed
    ]
    quotes = [
        factories.quote("BHP", 1, bid="45.11", ask="45.13"),
        factories.quote("BHP", 2, bid="45.11", ask="45.135"),  # off tick
    ]
    verdicts = [refused_by(files, {"nyse"}, t) for t in trades]
    assert verdicts.count(None) == 4  # the oracle agrees with the comments above
    produce(settings, [*(("trades", t) for t in trades), *(("quotes", q) for q in quotes)])
    running_ingester(settings)

    def stored(kind: str) -> set[tuple[str, str, int]]:
        return {(r["exchange"], r["symbol"], r["exchange_sequence_number"]) for r in table_rows(settings, kind)}

    landed = {
        (t["exchange"], t["symbol"], t["exchange_sequence_number"])
        for t, v in zip(trades, verdicts, strict=True)
        if v is None
    }
    wait_for(lambda: stored("trades") == landed and stored("quotes") == {("asx", "BHP", 1)}, timeout=60)

    asx_dead = read_dead_letters(broker, "market.equities.trades.asx.dlq", expected=3)
    nyse_dead = read_dead_letters(broker, "market.equities.trades.nyse.dlq", expected=2)
    quote_dead = read_dead_letters(broker, "market.equities.quotes.asx.dlq", expected=1)
    reasons = sorted(h["k2.error"].decode() for h in [*asx_dead, *nyse_dead, *quote_dead])
    assert {h["k2.error.class"] for h in [*asx_dead, *nyse_dead, *quote_dead]} == {b"reference_data"}
    assert reasons == sorted(
        [
            "ReferenceDataError: BHP on asx: price 45.125 is not a multiple of tick_size 0.01",
            "ReferenceDataError: BHP on asx: volume 100.5 is not a multiple of lot_size 1",
            f"ReferenceDataError: NEW on asx: exchange_timestamp's date {TODAY} is outside its listed dates "
            f"[{TODAY + timedelta(days=1)}, -]",
            "ReferenceDataError: IBM on nyse: price 231.451 is not a multiple of tick_size 0.01",
            "ReferenceDataError: ZZZ is not listed in market.instruments for strict exchange nyse",
            "ReferenceDataError: BHP on asx: ask_price 45.135 is not a multiple of tick_size 0.01",
        ]
    )

    # CBA made strict: the running ingester applies it within its refresh interval, no restart.
    reloaded = {
        "asx": [
            line.replace("CBA,equities,AUD,0.01,1,,,,,false", "CBA,equities,AUD,0.01,1,,,,,true") for line in STRICT_ASX
        ]
    }
    write(settings.instruments.dir, "asx", reloaded["asx"])
    assert load_reference_files(settings).changed
    time.sleep(settings.instruments.refresh_seconds * 3)
    later = [
        factories.trade("CBA", 2, price="152.405", volume="1"),
        factories.trade("CBA", 3, price="152.41", volume="1"),
    ]
    assert [refused_by(reloaded, set(), t) for t in later] == ["tick_size", None]
    produce(settings, [("trades", t) for t in later])
    wait_for(lambda: ("asx", "CBA", 3) in stored("trades"), timeout=60)
    asx_dead = read_dead_letters(broker, "market.equities.trades.asx.dlq", expected=4)
    assert len(asx_dead) == 4
    assert ("asx", "CBA", 2) not in stored("trades")
    assert any(
        h["k2.error"] == b"ReferenceDataError: CBA on asx: price 152.405 is not a multiple of tick_size 0.01"
        for h in asx_dead
    )


def test_k2_import_rejects_a_strict_instruments_off_tick_rows_and_leaves_the_others_alone(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    settings.instruments.dir = tmp_path / "instruments"
    files = {
        "binance": [
            "BTCUSDT,crypto,USDT,0.05,0.01,,,,,true",
            "ETHUSDT,crypto,USDT,0.05,0.01,,,,,false",
        ]
    }
    write(settings.instruments.dir, "binance", files["binance"])
    load_reference_files(settings)
    day = datetime(2024, 11, 25, tzinfo=UTC)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    # The same prices in both (the ETH file an hour later: an import skips a file whose bytes it has imported).
    for hour, symbol in enumerate(("BTCUSDT", "ETHUSDT")):
        write_binance_trades(dumps / f"{symbol}-trades-2024-11-25.csv", range(1, 201), day + timedelta(hours=hour))
    runner, env = CliRunner(), settings_env(settings)

    results = {
        symbol: runner.invoke(
            app,
            [
                "import",
                str(dumps / f"{symbol}-trades-2024-11-25.csv"),
                "-f",
                "binance-trades",
                "-e",
                "binance",
            ],
            env=env,
        )
        for symbol in ("BTCUSDT", "ETHUSDT")
    }
    for result in results.values():
        assert result.exit_code == 0, result.output

    # The oracle: each dump line read back with the csv module, judged with Decimal.
    def verdicts(symbol: str) -> dict[int, str | None]:
        out = {}
        for line in csv.reader((dumps / f"{symbol}-trades-2024-11-25.csv").read_text().splitlines()[1:]):
            rec = {
                "exchange": "binance",
                "symbol": symbol,
                "price": Decimal(line[1]),
                "volume": Decimal(line[2]),
                "exchange_timestamp": datetime.fromtimestamp(int(line[4]) / 1000, UTC),
            }
            out[int(line[0])] = refused_by(files, set(), rec)
        return out

    rows = table_rows(settings, "trades")
    for symbol in ("BTCUSDT", "ETHUSDT"):
        judged = verdicts(symbol)
        stored = sorted(r["exchange_sequence_number"] for r in rows if r["symbol"] == symbol)
        assert stored == sorted(seq for seq, why in judged.items() if why is None)
        refused = sum(why is not None for why in judged.values())
        assert (symbol, refused > 0) == (symbol, symbol == "BTCUSDT")
        assert f"200 rows read, {200 - refused} written" in results[symbol].output
    assert "ReferenceDataError: BTCUSDT on binance: price" in results["BTCUSDT"].output
    assert "is not a multiple of tick_size 0.05" in results["BTCUSDT"].output


def test_the_dagster_asset_reloads_the_files(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings()
    settings.instruments.dir = tmp_path / "instruments"
    write(settings.instruments.dir, "asx", ASX)
    resources = k2_resources(settings)

    def run() -> dg.ExecuteInProcessResult:
        return dg.materialize([instruments_asset], resources=resources, raise_on_error=False)

    first = run()
    assert first.success
    (materialized,) = first.asset_materializations_for_node("instruments")
    assert (materialized.metadata["rows"].value, materialized.metadata["changed"].value) == (2, True)
    (unchanged,) = run().asset_materializations_for_node("instruments")
    assert unchanged.metadata["changed"].value is False
    assert snapshot_count(settings) == 1

    write(settings.instruments.dir, "asx", [*ASX, "WES,equities,AUD,0.01,1,,,,,perhaps"])
    failed = run()
    assert not failed.success
    assert "asx.csv:4: strict: 'perhaps' is not true or false" in str(failed.failure_data_for_node("instruments"))
    with QueryEngine.from_settings(settings, cache=False) as engine:
        assert engine.instruments().table.to_pylist() == expected_rows({"asx": ASX})
