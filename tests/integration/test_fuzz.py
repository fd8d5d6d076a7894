"""Schemathesis fuzzes a real `python -m k2_api` server (auth on, an admin key) from its own OpenAPI document:
no 5xx, every status code and content type documented, every body and header matching its schema, invalid
input refused, requests without credentials refused (`ignored_auth`).

Three runs, three tests (each with a server of its own, so they share the suite's workers), each bounded by
examples per operation:

* the document as published, with an admin key and again with a key holding only `read:trades:asx`, every phase
  (boundary and negative values included);
* the same document with parameter values narrowed to K2's input grammar and the seeded data (known symbols
  and exchanges, formats, intervals, ISO times around the seeded day), so that most requests get past
  validation into the query engine instead of stopping at a 400; `POST /v1/sql` gets its body from a list of
  queries (answered ones over every table, hostile ones refused), checked in the run's HAR record. Being
  narrower than what the API accepts, this run leaves `negative_data_rejection` and the coverage phase to the
  first.

`positive_data_acceptance` is left out of both: the published document types symbols, exchanges, formats and
times as free strings while the API refuses malformed ones with a 400 naming the parameter, which that check
counts as a failure. Publishing the patterns and enums in the OpenAPI document would let it run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from k2_core.access.auth import KeyStore
from k2_core.lake.sqldb import catalog_engine
from k2_core.model.bars import INTERVALS
from k2_core.read.params import GAP_STATUSES
from k2_core.settings import Settings
from tests.support.api import api_server
from tests.support.lake import seed

SettingsFactory = Callable[..., Settings]
CHECKS_EXCLUDED = "positive_data_acceptance"


@dataclass(frozen=True)
class Server:
    url: str
    token: str  # admin
    narrow_token: str  # read:trades:asx only: most requests end in a 403


@pytest.fixture
def fuzzed_api(make_settings: SettingsFactory, tmp_path: Path) -> Iterator[Server]:
    settings = make_settings()
    seed(settings)
    engine = catalog_engine(settings)
    try:
        expires = datetime.now(UTC) + timedelta(hours=1)
        _, token = KeyStore(engine).create("fuzzer", ["admin"], expires)
        _, narrow = KeyStore(engine).create("narrow-fuzzer", ["read:trades:asx"], expires)
    finally:
        engine.dispose()
    # Rate limits off, per key and per client (the `ignored_auth` check's requests without credentials would
    # spend the fuzzer's failure budget): what is fuzzed is the answers, not the limits.
    env = {
        "K2_AUTH_MODE": "on",
        "K2_AUTH_RATE_LIMIT_PER_SECOND": "0",
        "K2_AUTH_CLIENT_FAILURES_PER_SECOND": "0",
        "K2_LOG_LEVEL": "WARNING",
    }
    with api_server(settings, tmp_path / "api.log", **env) as url:
        yield Server(url, token, narrow)


SQL_BODIES = [
    "SELECT exchange, count(*) AS n FROM trades GROUP BY exchange ORDER BY exchange",
    "SELECT * FROM trades ORDER BY exchange_sequence_number LIMIT 3",
    "SELECT symbol, max(bid_price) AS bid FROM quotes GROUP BY symbol",
    "SELECT * FROM ohlcv_1m LIMIT 5",
    "SELECT count(*) AS n FROM ohlcv_1d",
    "SELECT * FROM sequence_gaps",
    "WITH t AS (SELECT * FROM trades WHERE exchange = 'asx') SELECT DISTINCT exchange FROM t",
    "SELECT t.symbol, count(*) AS n FROM trades t JOIN quotes q USING (symbol, exchange) GROUP BY t.symbol",
    "SELECT exchange FROM trades UNION SELECT exchange FROM quotes",
    "SELECT [1, 2] AS l, {'a': 1} AS s, INTERVAL 1 DAY AS i, 'abc'::BLOB AS b, 1.5::DOUBLE AS f, NULL AS n",
    "SELECT 'infinity'::TIMESTAMP AS t",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "WITH pg_settings AS (SELECT * FROM pg_settings) SELECT * FROM pg_settings",
    "SELECT getenv('HOME') AS h",
    "COPY trades TO '/tmp/k2-fuzz-out.csv'",
    "SELECT 1 AS a; DROP VIEW trades",
    "SELECT " + "(" * 3000 + "1" + ")" * 3000 + " AS x",
]


def with_input_grammar(spec: dict[str, Any], max_limit: int) -> dict[str, Any]:
    """The published document with the rules k2_core.read.params applies written into the parameters."""
    # Mostly the seeded data (BHP on asx and nyse, 2024-01-02) so requests reach the query engine; the first run
    # already fuzzes free-form strings. ZZZ9 is a valid ticker without data.
    moments = ["2024-01-01", "2024-01-02T00:00:00Z", "2024-01-02T01:00:01.5+00:00", "2024-01-02T12:00:00+10:00"]
    grammar: dict[str, dict[str, Any]] = {
        "symbol": {"type": "string", "enum": ["BHP", "ZZZ9"]},
        "exchange": {"type": "string", "enum": ["asx", "nyse"]},
        "format": {"type": "string", "enum": ["json", "csv", "arrow", "parquet"]},
        "interval": {"type": "string", "enum": list(INTERVALS)},
        "date": {"anyOf": [{"enum": ["2024-01-02"]}, {"type": "string", "format": "date"}]},
        "start": {"anyOf": [{"enum": moments}, {"type": "string", "format": "date-time"}]},
        "end": {"anyOf": [{"enum": ["2024-01-03", "2024-01-02T02:00:00Z"]}, {"type": "string", "format": "date-time"}]},
        "as_of": {"type": "string", "format": "date-time"},
        "limit": {"type": "integer", "minimum": 1, "maximum": max_limit},
        "status": {"type": "string", "enum": list(GAP_STATUSES)},
        # Joins on time (/v1/asof, /v1/window, /v1/markouts).
        "right_symbol": {"type": "string", "enum": ["BHP", "ZZZ9"]},
        "right_exchange": {"type": "string", "enum": ["asx", "nyse"]},
        "right_kind": {"type": "string", "enum": ["quotes", "trades"]},
        "direction": {"type": "string", "enum": ["backward", "forward", "nearest"]},
        "tolerance": {"type": "string", "enum": ["0s", "500ms", "2s", "1d"]},
        "before": {"type": "string", "enum": ["0s", "250ms", "1s", "1d"]},
        "after": {"type": "string", "enum": ["0s", "250ms", "1s", "1d"]},
        "horizons": {"type": "string", "enum": ["1s", "1s,5s,60s", "500ms,1d"]},
    }
    # POST /v1/sql's body: answered queries over every table and shape, and hostile ones refused with a 400,
    # instead of free text that stops at the parser.
    sql = spec["components"]["schemas"]["SqlRequest"]["properties"]["sql"]
    sql.pop("examples", None)
    sql["enum"] = SQL_BODIES
    spec["components"]["schemas"]["SqlRequest"]["properties"].pop("as_of_snapshot", None)
    for operations in spec["paths"].values():
        for operation in operations.values():
            parameters = operation.get("parameters", [])
            # as_of and as_of_snapshot are alternatives; fuzz the time form and leave the id to the first run.
            operation["parameters"] = [p for p in parameters if p["name"] != "as_of_snapshot"]
            for parameter in operation["parameters"]:
                if parameter["name"] in grammar:
                    parameter["schema"] = grammar[parameter["name"]]
    return spec


def schemathesis(location: str, token: str, examples: int, *extra: str, exclude: str = "", cwd: Path) -> str:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        location,
        *extra,
        "--max-examples",
        str(examples),
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(filter(None, [CHECKS_EXCLUDED, exclude])),
        "--header",
        f"Authorization: Bearer {token}",
        "--generation-database",
        "none",
        "--seed",
        "20261125",
        "--request-timeout",
        "20",
        "--no-color",
    ]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=270)  # within pytest's 300 s
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    return result.stdout


def test_schemathesis_finds_no_server_error_or_schema_violation(fuzzed_api: Server, tmp_path: Path) -> None:
    schemathesis(f"{fuzzed_api.url}/openapi.json", fuzzed_api.token, 30, cwd=tmp_path)


def test_schemathesis_on_the_refusal_paths(fuzzed_api: Server, tmp_path: Path) -> None:
    """The refusal paths (403 with a WWW-Authenticate quoting the request) get fuzzed inputs too."""
    schemathesis(f"{fuzzed_api.url}/openapi.json", fuzzed_api.narrow_token, 15, cwd=tmp_path)


def test_schemathesis_within_the_input_grammar(fuzzed_api: Server, tmp_path: Path) -> None:
    with urllib.request.urlopen(f"{fuzzed_api.url}/openapi.json") as response:
        spec = json.load(response)
    tightened = tmp_path / "openapi-with-grammar.json"
    tightened.write_text(json.dumps(with_input_grammar(spec, Settings().api.max_limit)))
    # Its values are a narrower set than the API accepts, so "invalid" ones there may be valid: the negative
    # check belongs to the first run.
    har = tmp_path / "grammar.har"
    schemathesis(
        str(tightened),
        fuzzed_api.token,
        50,
        "--url",
        fuzzed_api.url,
        "--report",
        "har",
        "--report-har-path",
        str(har),
        # Into the engine: the first run already covered boundaries and negative values of the published document.
        "--phases",
        "examples,fuzzing",
        exclude="negative_data_rejection",
        cwd=tmp_path,
    )
    # POST /v1/sql got bodies from its grammar: queries answered, hostile ones refused, none a 5xx.
    sent = [
        (json.loads(entry["request"]["postData"]["text"]).get("sql"), entry["response"]["status"])
        for entry in json.loads(har.read_text())["log"]["entries"]
        if entry["request"]["method"] == "POST" and entry["request"]["url"].split("?")[0].endswith("/v1/sql")
        and entry["request"].get("postData", {}).get("text", "").startswith("{")
    ]  # fmt: skip
    statuses = {status for _, status in sent}
    assert {200, 400} <= statuses, statuses
    assert all(status < 500 for status in statuses)
    assert len({sql for sql, _ in sent if sql in SQL_BODIES}) >= 10
