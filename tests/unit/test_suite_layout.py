"""The suite's own layout: what tests share lives in tests/support, and no module of the suite imports a test module
(nor a conftest). A helper kept in a test module is hard to find and drifts into copies; a test module imported by
another ties the two together and runs its module-level code for both."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from k2_core.settings import REPO_ROOT

TESTS = REPO_ROOT / "tests"


def suite_files(pattern: str) -> list[Path]:
    """The suite's files matching `pattern`, leaving out virtual environments (tests/support/duckdb_iceberg has one:
    its packages are not the suite's)."""
    return sorted(p for p in TESTS.rglob(pattern) if ".venv" not in p.relative_to(TESTS).parts)


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def suite_test_modules() -> set[str]:
    """Every test module and conftest, by its dotted name and by its bare name (pytest puts test directories on
    sys.path, so `import test_ingest` would work too)."""
    paths = [*suite_files("test_*.py"), *suite_files("conftest.py")]
    return {name for path in paths for name in (module_name(path), path.stem)}


def imported(path: Path, root: Path = REPO_ROOT) -> set[str]:
    """The modules `path` imports, and for `from X import Y` also `X.Y` (Y may be a module)."""
    package = module_name(path, root).split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("path", suite_files("*.py"), ids=lambda path: str(path.relative_to(TESTS)))
def test_no_module_of_the_suite_imports_a_test_module(path: Path) -> None:
    assert sorted(imported(path) & suite_test_modules()) == [], "move what they share into tests/support"


def test_the_check_sees_every_way_of_importing_a_test_module(tmp_path: Path) -> None:
    probe = tmp_path / "tests" / "integration" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "from tests.integration.test_ingest import produce\n"
        "from tests.unit import test_records\n"
        "from . import test_api\n"
        "import test_compose\n"
        "from ..conftest import pytest_plugins\n"
        "from tests.support.factories import trade\n"
    )
    assert imported(probe, root=tmp_path) & suite_test_modules() == {
        "tests.integration.test_ingest",
        "tests.unit.test_records",
        "tests.integration.test_api",
        "test_compose",
        "tests.conftest",
    }
