"""The code stays lint-clean: no unused or undefined names, imports sorted (ruff, pyproject's
[tool.ruff] settings)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    found = subprocess.run(["ruff", "check", "genentropy_cli", "tests", "benchmarks", "scripts"], cwd=ROOT,
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stdout[-3000:] + found.stderr[-1000:]
