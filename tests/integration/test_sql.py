"""`POST /v1/sql` and `k2 sql` over a real lake (SQLite catalog, local warehouse): answers checked against Python
arithmetic on the rows pyiceberg reads back, every kind of hostile SQL refused with its reason and no file read (by
the validator, and by the locked DuckDB connection when the validator is bypassed), scopes narrowing rows by exchange
and refusing tables (403 naming the scope), the audit row holding the SQL, the time budget, and the CLI."""

from __future__ import annotations

import io
import random
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from k2_api.main import create_app
from k2_core.access.audit import AuditLog
from k2_core.access.auth import KeyStore
from k2_core.exceptions import QueryError
from k2_core.lake.sqldb import catalog_engine
from k2_core.read import sql as sql_module
from k2_core.read.engine import QueryEngine
from k2_core.read.sql import SqlLimits, run_sql
from k2_core.settings import AuthSettings, Settings
from tests.support.clients import local_client
from tests.support.factories import quote, trade
from tests.support.lake import SEED_DAY, open_lake, seed

SettingsFactory = Callable[..., Settings]
SECRET_TEXT = "k2-secret-line-that-must-never-come-back"


def lake(make_settings: SettingsFactory, *, auth: str = "auto") -> Settings:
    """The security seed (BHP on asx and nyse, a quote, a gap) plus 120 trades and 40 quotes over three symbols."""
    settings = make_settings()
    settings.query.tail_enabled = False
    settings.auth = AuthSettings(mode=auth)  # type: ignore[arg-type]
    seed(settings)
    rng = random.Random(17)
    rows = [
        trade(
            symbol,
            100 + i,
            SEED_DAY + timedelta(hours=3, seconds=i),
            Decimal(rng.randint(1000, 9000)) / 100,
            rng.randint(1, 50),
            exchange,
            trade_id=f"x{i}",
        )
        for i, (symbol, exchange) in enumerate(
            [(rng.choice(["BHP", "CBA", "RIO"]), rng.choice(["asx", "nyse"])) for _ in range(120)]
        )
    ]
    quotes = [
        quote("CBA", 100 + i, SEED_DAY + timedelta(hours=3, seconds=i), "9.5", "9.6", exchange=("asx", "nyse")[i % 2])
        for i in range(40)
    ]
    opened = open_lake(settings)
    opened.append("trades", rows)
    opened.append("quotes", quotes)
    return settings


def stored(settings: Settings, table: str) -> list[dict[str, Any]]:
    return open_lake(settings).rows(table)


def post(client: TestClient, sql: str, **extra: Any) -> Any:
    params = {"format": extra.pop("format")} if "format" in extra else None
    headers = extra.pop("headers", None)
    return client.post("/v1/sql", json={"sql": sql, **extra}, params=params, headers=headers)


# ---- correct answers ---------------------------------------------------------------------------------------------


def test_sql_answers_match_python_on_the_stored_rows(make_settings: SettingsFactory) -> None:
    settings = lake(make_settings)
    rows = stored(settings, "trades")
    want: dict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0), Decimal(0)])
    for row in rows:
        acc = want[(row["symbol"], row["exchange"])]
        acc[0] += 1
        acc[1] += row["price"] * row["volume"]
        acc[2] = max(acc[2], row["price"])
    sql = (
        "SELECT symbol, exchange, count(*) AS n, sum(CAST(price AS DECIMAL(38, 8)) * CAST(volume AS DECIMAL(18, 2))) "
        "AS notional, max(price) AS hi "
        "FROM trades GROUP BY symbol, exchange ORDER BY symbol, exchange"
    )
    with local_client(create_app(settings)) as client:
        answer = post(client, sql)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["count"] == len(want)
        got = {(r["symbol"], r["exchange"]): [r["n"], Decimal(r["notional"]), Decimal(r["hi"])] for r in body["data"]}
        assert got == {k: [int(v[0]), v[1], v[2]] for k, v in want.items()}
        assert [(r["symbol"], r["exchange"]) for r in body["data"]] == sorted(want)
        current = open_lake(settings).table("trades").metadata.current_snapshot_id
        assert body["snapshots"] == {"trades": current}
        assert body["exchanges"] == {"trades": None}

        # A join, a CTE and a UNION; and the same answer as CSV and Parquet.
        joined = post(
            client,
            "WITH q AS (SELECT symbol, exchange, count(*) AS quotes FROM quotes GROUP BY ALL) "
            "SELECT t.exchange, count(*) AS n, max(q.quotes) AS quotes FROM trades t JOIN q USING (symbol, exchange) "
            "GROUP BY t.exchange UNION ALL SELECT 'gaps', count(*), 0 FROM sequence_gaps ORDER BY 1",
        ).json()["data"]
        quotes = stored(settings, "quotes")
        quoted = {(q["symbol"], q["exchange"]) for q in quotes}
        expected = []
        for exchange in ("asx", "nyse"):
            n = sum(1 for r in rows if r["exchange"] == exchange and (r["symbol"], exchange) in quoted)
            most = max(
                sum(1 for q in quotes if (q["symbol"], q["exchange"]) == key) for key in quoted if key[1] == exchange
            )
            expected.append({"exchange": exchange, "n": n, "quotes": most})
        gaps = {"exchange": "gaps", "n": len(stored(settings, "sequence_gaps")), "quotes": 0}
        assert joined == sorted([*expected, gaps], key=lambda r: r["exchange"])

        csv = post(client, sql, format="csv")
        assert csv.status_code == 200
        assert csv.headers["content-type"].startswith("text/csv")
        assert csv.text.splitlines()[0] == '"symbol","exchange","n","notional","hi"'
        assert len(csv.text.splitlines()) == len(want) + 1
        parquet = post(client, sql, format="parquet")
        table = pq.read_table(io.BytesIO(parquet.content))
        assert table.num_rows == len(want)
        assert sum(table.column("n").to_pylist()) == len(rows)


def test_as_of_snapshot_pins_trades_or_quotes(make_settings: SettingsFactory) -> None:
    settings = lake(make_settings)
    opened = open_lake(settings)
    before = opened.table("trades").metadata.current_snapshot_id
    count_before = len(opened.rows("trades"))
    opened.append("trades", [trade("BHP", 9000, SEED_DAY + timedelta(hours=5), "50", 1, "asx")])
    with local_client(create_app(settings)) as client:
        now = post(client, "SELECT count(*) AS n FROM trades").json()
        assert now["data"] == [{"n": count_before + 1}]
        then = post(client, "SELECT count(*) AS n FROM trades", as_of_snapshot=before).json()
        assert then["data"] == [{"n": count_before}]
        assert then["snapshots"] == {"trades": before}
        # The snapshot is of trades: quotes stay at their current snapshot.
        both = post(client, "SELECT (SELECT count(*) FROM trades) AS t, (SELECT count(*) FROM quotes) AS q",
                    as_of_snapshot=before).json()  # fmt: skip
        assert both["data"] == [{"t": count_before, "q": len(opened.rows("quotes"))}]
        assert both["snapshots"]["quotes"] == opened.table("quotes").metadata.current_snapshot_id
        unknown = post(client, "SELECT 1 AS one FROM trades", as_of_snapshot=12345)
        assert unknown.status_code == 400
        assert "as_of_snapshot: 12345 is not a snapshot of trades or quotes" in unknown.json()["detail"]


# ---- hostile SQL ---------------------------------------------------------------------------------------------------

HOSTILE = [
    ("SELECT * FROM read_csv('{secret}')", "table functions are not allowed"),
    ("SELECT * FROM read_csv_auto('{secret}')", "table functions are not allowed"),
    ("SELECT * FROM read_parquet('{secret}')", "table functions are not allowed"),
    ("SELECT * FROM read_text('{secret}')", "table functions are not allowed"),
    ("SELECT * FROM '{secret}'", "unknown table"),
    ("FROM '{secret}'", "unknown table"),
    ("SELECT * FROM glob('/etc/*')", "table functions are not allowed"),
    ("SELECT * FROM 'http://127.0.0.1:1/x.csv'", "unknown table"),
    ("SELECT * FROM read_csv('https://example.com/x.csv')", "table functions are not allowed"),
    ("SELECT (SELECT count(*) FROM read_csv('{secret}')) AS n FROM trades", "table functions are not allowed"),
    ("SELECT getenv('HOME') AS h", "function getenv is not allowed"),
    ("SELECT current_setting('memory_limit') AS m", "function current_setting is not allowed"),
    ("COPY trades TO '{out}'", "got COPY"),
    ("COPY (SELECT 1) TO '{out}'", "got COPY"),
    ("ATTACH '{out}' AS other", "got ATTACH"),
    ("INSTALL httpfs", "got INSTALL"),
    ("LOAD httpfs", "got LOAD"),
    ("SET enable_external_access = true", "got SET"),
    ("SET memory_limit = '100GB'", "got SET"),
    ("RESET memory_limit", "got RESET"),
    ("PRAGMA database_list", "got PRAGMA"),
    ("CALL pragma_version()", "got CALL"),
    ("CREATE TABLE x AS SELECT * FROM trades", "got CREATE"),
    ("CREATE VIEW v AS SELECT 1", "got CREATE"),
    ("INSERT INTO trades SELECT * FROM trades", "got INSERT"),
    ("UPDATE trades SET price = 0", "got UPDATE"),
    ("DELETE FROM trades", "got DELETE"),
    ("DROP VIEW trades", "got DROP"),
    ("ALTER VIEW trades RENAME TO t2", "got ALTER"),
    ("EXPORT DATABASE '{out}'", "sql: "),
    ("IMPORT DATABASE '{out}'", "sql: "),
    ("SELECT * INTO copied FROM trades", "INTO is not allowed"),
    ("SELECT 1 AS a; SELECT * FROM read_csv('{secret}')", "exactly one statement"),
    ("SELECT 1 AS a; COPY trades TO '{out}'", "exactly one statement"),
    ("DESCRIBE trades", "got DESCRIBE"),
    ("SUMMARIZE trades", "got SUMMARIZE"),
    ("SELECT * FROM duckdb_tables()", "table functions are not allowed"),
    ("SELECT * FROM duckdb_settings()", "table functions are not allowed"),
    ("SELECT * FROM information_schema.tables", "may be read, unqualified"),
    ("SELECT * FROM pg_catalog.pg_class", "may be read, unqualified"),
    ("SELECT * FROM sqlite_master", "unknown table"),
    ("SELECT * FROM duckdb_views", "unknown table"),
    ("SELECT * FROM memory.main.trades", "may be read, unqualified"),
    ("SELECT * FROM temp.trades", "may be read, unqualified"),
    ("SELECT * FROM api_keys", "unknown table"),
    ("SELECT * FROM audit_log", "unknown table"),
    ("SELECT * FROM range(10)", "table functions are not allowed"),
    ("SELEC * FROM trades", "sql: "),
    ("", "empty query"),
]


@pytest.mark.parametrize(("template", "reason"), HOSTILE)
def test_hostile_sql_is_refused_with_its_reason(
    make_settings: SettingsFactory, tmp_path: Path, template: str, reason: str
) -> None:
    settings = make_settings()
    settings.query.tail_enabled = False
    seed(settings)
    secret = tmp_path / "secret.csv"
    secret.write_text(f"line\n{SECRET_TEXT}\n")
    out = tmp_path / "written"
    sql = template.format(secret=secret, out=out)
    with local_client(create_app(settings)) as client:
        answer = post(client, sql)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith("sql: ")
    assert reason in answer.json()["detail"]
    assert SECRET_TEXT not in answer.text
    assert not out.exists()


def test_the_locked_connection_refuses_what_a_validator_miss_lets_through(
    make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: with validation bypassed, DuckDB itself refuses files, settings and attachments."""
    settings = make_settings()
    settings.query.tail_enabled = False
    seed(settings)
    secret = tmp_path / "secret.csv"
    secret.write_text(f"line\n{SECRET_TEXT}\n")
    out = tmp_path / "written.csv"
    monkeypatch.setattr(sql_module, "validate_sql", lambda _sql: frozenset({"trades"}))
    with QueryEngine.from_settings(settings, cache=False) as engine:
        assert run_sql(engine, "SELECT count(*) AS n FROM trades").table.to_pylist() == [{"n": 5}]
        for hostile in (
            f"SELECT * FROM read_csv('{secret}')",
            f"SELECT * FROM '{secret}'",
            f"COPY trades TO '{out}'",
            f"ATTACH '{tmp_path / 'other.db'}' AS other",
            "SET enable_external_access = true",
            "SET memory_limit = '100GB'",
            "INSTALL httpfs",
            "SELECT * FROM glob('/etc/*')",
        ):
            with pytest.raises(QueryError, match=r"^sql: ") as refused:
                run_sql(engine, hostile)
            assert SECRET_TEXT not in str(refused.value)
    assert not out.exists()


def test_big_or_ambiguous_answers_are_refused(make_settings: SettingsFactory) -> None:
    settings = lake(make_settings)
    with QueryEngine.from_settings(settings, cache=False) as engine:
        with pytest.raises(QueryError, match="more than 10 rows"):
            run_sql(engine, "SELECT * FROM trades", limits=SqlLimits(max_rows=10))
        with pytest.raises(QueryError, match="column names must be unique"):
            run_sql(engine, "SELECT symbol AS a, exchange AS a FROM trades")


# ---- budgets -------------------------------------------------------------------------------------------------------


def test_a_query_past_its_time_budget_is_interrupted(make_settings: SettingsFactory) -> None:
    settings = lake(make_settings)
    settings.query.sql_timeout_seconds = 0.5
    endless = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) AS n FROM t"
    with local_client(create_app(settings)) as client:
        answer = post(client, endless)
        assert answer.status_code == 408
        assert "interrupted after 0.5 s" in answer.json()["detail"]
        # The app goes on answering.
        assert post(client, "SELECT count(*) AS n FROM trades").status_code == 200


def test_a_query_past_its_memory_budget_is_refused(make_settings: SettingsFactory) -> None:
    settings = lake(make_settings)
    with QueryEngine.from_settings(settings, cache=False) as engine, pytest.raises(QueryError, match=r"memory budget"):
        run_sql(
            engine,
            "SELECT count(DISTINCT a || b) AS n FROM (SELECT x::VARCHAR AS a, repeat('y', 200) AS b "
            "FROM (SELECT unnest(generate_series(1, 20000000)) AS x))",
            limits=SqlLimits(memory_limit="20MB", timeout_seconds=20),
        )


# ---- scopes and audit ----------------------------------------------------------------------------------------------


def _key(settings: Settings, *scopes: str) -> dict[str, str]:
    from datetime import UTC, datetime

    engine = catalog_engine(settings)
    try:
        _, token = KeyStore(engine).create("sql-tester", list(scopes), datetime.now(UTC) + timedelta(hours=1))
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {token}"}


def test_scopes_narrow_rows_to_exchanges_and_refuse_tables(make_settings: SettingsFactory) -> None:
    settings = lake(make_settings, auth="on")
    rows = stored(settings, "trades")
    asx_only = _key(settings, "read:trades:asx")
    everything = _key(settings, "read:trades:*", "read:quotes:*", "read:gaps")
    count_sql = "SELECT exchange, count(*) AS n FROM trades GROUP BY exchange ORDER BY exchange"
    with TestClient(create_app(settings), client=("192.0.2.10", 40000)) as client:
        assert post(client, count_sql).status_code == 401
        narrow = post(client, count_sql, headers=asx_only)
        assert narrow.status_code == 200, narrow.text
        assert narrow.json()["data"] == [{"exchange": "asx", "n": sum(1 for r in rows if r["exchange"] == "asx")}]
        assert narrow.json()["exchanges"] == {"trades": ["asx"]}
        # Whatever the SQL says, nyse rows are not there.
        hidden = post(client, "SELECT count(*) AS n FROM trades WHERE exchange = 'nyse'", headers=asx_only)
        assert hidden.json()["data"] == [{"n": 0}]
        assert post(client, "SELECT count(*) AS n FROM ohlcv_1m", headers=asx_only).status_code == 200
        for table, scope in (("quotes", "read:quotes:*"), ("sequence_gaps", "read:gaps")):
            refused = post(client, f"SELECT count(*) AS n FROM trades, {table}", headers=asx_only)
            assert refused.status_code == 403
            assert f"missing scope {scope.replace('*', '<exchange>')}" in refused.json()["detail"]
            assert f'scope="{scope}"' in refused.headers["www-authenticate"]
        wide = post(client, count_sql, headers=everything)
        assert [r["exchange"] for r in wide.json()["data"]] == ["asx", "nyse"]
        assert post(client, "SELECT count(*) AS n FROM quotes, sequence_gaps", headers=everything).status_code == 200
    engine = catalog_engine(settings)
    try:
        entries = [e.as_dict() for e in AuditLog(engine).tail(1000)]
    finally:
        engine.dispose()
    sql_rows = [e for e in entries if e["route"] == "/v1/sql"]
    assert any(e["params"].get("sql") == count_sql and e["status"] == 200 and e["rows"] == 1 for e in sql_rows)
    assert any(e["status"] == 403 and "quotes" in e["params"].get("sql", "") for e in sql_rows)


# ---- CLI -----------------------------------------------------------------------------------------------------------


def cli_env(settings: Settings) -> dict[str, str | None]:
    return {
        "K2_HOME": str(settings.home),
        "K2_CATALOG_NAME": settings.catalog.name,
        "K2_CATALOG_URI": settings.catalog.uri.get_secret_value(),
        "COLUMNS": "250",
    }


def test_cli_sql_prints_exports_and_refuses(make_settings: SettingsFactory, tmp_path: Path) -> None:
    from k2_cli.main import app

    settings = lake(make_settings)
    rows = stored(settings, "trades")
    runner = CliRunner()
    sql = "SELECT exchange, count(*) AS n FROM trades GROUP BY exchange ORDER BY exchange"
    printed = runner.invoke(app, ["sql", sql], env=cli_env(settings))
    assert printed.exit_code == 0, printed.output
    for exchange in ("asx", "nyse"):
        assert str(sum(1 for r in rows if r["exchange"] == exchange)) in printed.stdout
    assert "2 rows; trades @ " in printed.stdout
    exported = runner.invoke(app, ["sql", sql, "--format", "csv"], env=cli_env(settings))
    assert exported.exit_code == 0
    assert exported.stdout.splitlines()[0] == '"exchange","n"'
    refused = runner.invoke(app, ["sql", "SELECT * FROM read_csv('/etc/passwd')"], env=cli_env(settings))
    assert refused.exit_code == 2
    assert "table functions are not allowed" in refused.output
    assert "root:" not in refused.output
