"""Iceberg's Java JDBC catalog SQL (tests/support/iceberg_jdbc/JdbcUtil.java, copied from apache/iceberg), evaluated
into runnable statements: the test then runs what Trino's or Spark's `JdbcCatalog` runs, not our reading of it.

`JdbcUtil` builds each statement as a `static final String` of string literals and other constants joined with
`+`; the two constants it takes from other classes are the metadata-location column names (from
`BaseMetastoreTableOperations`, copied here)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

SOURCE = Path(__file__).parent / "iceberg_jdbc" / "JdbcUtil.java"
EXTERNAL = {
    "JdbcTableOperations.METADATA_LOCATION_PROP": "metadata_location",
    "JdbcTableOperations.PREVIOUS_METADATA_LOCATION_PROP": "previous_metadata_location",
    "BaseMetastoreTableOperations.METADATA_LOCATION_PROP": "metadata_location",
    "BaseMetastoreTableOperations.PREVIOUS_METADATA_LOCATION_PROP": "previous_metadata_location",
}
_CONSTANT = re.compile(r"static final String (\w+)\s*=\s*(.*?);\s*$", re.MULTILINE | re.DOTALL)
_TERM = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([\w.]+))\s*(\+|$)')


@cache
def statements() -> dict[str, str]:
    """Every String constant of JdbcUtil made of literals and constants alone, by name (the few that use another
    class's constants, such as the `jdbc.` property names, are left out: no SQL there)."""
    raw = {m.group(1): m.group(2) for m in _CONSTANT.finditer(SOURCE.read_text())}
    values: dict[str, str] = dict(EXTERNAL)

    def value(name: str) -> str:
        if name not in values:
            values[name] = _evaluate(raw[name], value)
        return values[name]

    out = {}
    for name in raw:
        try:
            out[name] = value(name)
        except (KeyError, ValueError):  # a constant of a class not copied here, or not a constant expression
            continue
    return out


def _evaluate(expression: str, value: Callable[[str], str]) -> str:
    parts: list[str] = []
    position = 0
    text = expression.strip()
    while position < len(text):
        match = _TERM.match(text, position)
        if match is None:
            raise ValueError(f"not a constant string expression: {text[position:]!r}")
        literal, name = match.group(1), match.group(2)
        parts.append(literal if literal is not None else value(name))
        position = match.end()
    return "".join(parts)


def sql(name: str) -> str:
    """The statement `name` with JDBC's `?` parameters as psycopg's `%s` (none of the statements has a `?` or a `%`
    inside a literal)."""
    text = statements()[name]
    assert "%" not in text
    return text.replace("?", "%s")


def namespace_like(namespace: str) -> str:
    """JdbcUtil.namespaceExists's LIKE argument: the namespace, escaped with `!`, then `.%`."""
    return namespace.replace("!", "!!").replace("_", "!_").replace("%", "!%") + ".%"
