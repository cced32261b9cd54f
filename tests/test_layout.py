"""The shape of the codebase: one-way imports between the four packages, no Prefect in the library, small modules."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "neural_data", "pipeline", "flows")
MAX_LINES = 400


def test_import_contracts_hold():
    """The contracts in pyproject.toml ([tool.importlinter]): flows > pipeline > models | neural_data, and
    no Prefect below flows. lint-imports reads the installed packages, so this checks the real import graph."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.is_file():
        pytest.fail(f"{lint} is missing: install the test extras (pip install -e '.[test]')")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout + result.stderr


def test_no_module_is_over_the_size_limit():
    too_long = {str(path.relative_to(ROOT)): n for package in PACKAGES for path in (ROOT / package).rglob("*.py")
                if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
