"""The package's layout holds: imports go one way (the import-linter contract in pyproject.toml),
every subpackage says what it does and what it may import, and no module outgrows a reader."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "job" / "gistnet"
MAX_LINES = 450


def _lint_imports() -> str:
    found = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(found).exists():
        pytest.fail("lint-imports is not installed (the [test] extra installs import-linter)")
    return found


def test_imports_go_one_way():
    result = subprocess.run([_lint_imports(), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(REPO / "job"), "PATH": str(Path(sys.executable).parent)})
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout + result.stderr


def test_every_subpackage_says_what_it_does_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc and len(doc.splitlines()) <= 3, f"{init.relative_to(REPO)}: {doc!r}"


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules (>{MAX_LINES} lines): {long}"


def test_the_walk_from_a_unit_to_fit_never_calls_back_into_the_pipeline():
    """No module below the pipeline names it, not even lazily inside a function."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("pipeline.py", "__main__.py") or path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module
                     else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.startswith(("gistnet.pipeline", "gistnet.cli"))]
    assert offenders == []


def test_the_longest_files_first_hint_names_test_files_that_exist():
    """tests/conftest.py orders the slowest files first for xdist; a renamed file would drop out silently."""
    from tests.conftest import LONGEST_FILES_FIRST

    missing = [path for path in LONGEST_FILES_FIRST if not (REPO / path).is_file()]
    assert not missing, f"LONGEST_FILES_FIRST names files that do not exist: {missing}"
