"""The README's package table is how a newcomer finds a module: it must name every module of every k2_core
package, and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _table_rows() -> dict[str, str]:
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(r"\| `(k2_core/[a-z_]+/|k2_core/\*\.py)` \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def _named(text: str) -> set[str]:
    """The module names a row mentions as the first word of a backticked span (`name` or `name` + ...)."""
    return set(re.findall(r"`([a-z_]+)`", text))


def _modules(directory: Path) -> set[str]:
    return {p.stem for p in directory.glob("*.py") if p.stem != "__init__"}


def test_every_k2_core_package_and_module_is_in_the_readme_table() -> None:
    rows = _table_rows()
    packages = {f"k2_core/{p.name}/" for p in (ROOT / "k2_core").iterdir() if (p / "__init__.py").exists()}
    assert set(rows) == packages | {"k2_core/*.py"}
    for package in packages:
        modules = _modules(ROOT / package)
        assert modules <= _named(rows[package]), (package, modules - _named(rows[package]))
        # every name in the row that looks like a module of this package is one
        assert _named(rows[package]) & _all_module_names() <= modules | _top_level(), package
    assert _top_level() <= _named(rows["k2_core/*.py"])


def _top_level() -> set[str]:
    return _modules(ROOT / "k2_core")


def _all_module_names() -> set[str]:
    return {p.stem for p in (ROOT / "k2_core").rglob("*.py") if p.stem != "__init__"}
