"""The mutation check (scripts/mutation_check.py): every mutant still applies to the code, and
(slow) the suite as CI runs it kills every one of them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "mutation_check.py"


def mutation_check():
    spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_mutant_applies_to_the_code_exactly_once():
    """A mutant whose text is gone would never run: edit it in ``MUTANTS`` with the code it mutates.
    (Inside a mutation run the active mutant's text is changed on purpose and is not counted.)"""
    check = mutation_check()
    assert len(check.MUTANTS) >= 25
    assert len({mutant.name for mutant in check.MUTANTS}) == len(check.MUTANTS)
    active = os.environ.get(check.ACTIVE_MUTANT_VARIABLE)
    assert check.stale(tuple(mutant for mutant in check.MUTANTS if mutant.name != active)) == []


def test_first_failure_is_read_from_the_pytest_summary():
    check = mutation_check()
    output = "....F\n=== short test summary info ===\nFAILED tests/test_x.py::test_y[1] - AssertionError\n"
    assert check.first_failure(output, 1) == "tests/test_x.py::test_y[1]"
    assert check.first_failure("", 124) == "timeout" and check.first_failure("1 passed", 0) == "-"
    assert check.first_failure("", -15) == "pytest itself killed by SIGTERM"
    files = check.test_files(ROOT)
    assert files[: len(check.FAST_FIRST)] == list(check.FAST_FIRST)
    assert sorted(files) == sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py"))


@pytest.mark.slow
def test_the_suite_kills_every_mutant():
    """About 50 mutants of the numerics and the run loop, two at a time (tens of minutes on 2 cores)."""
    completed = subprocess.run([sys.executable, str(SCRIPT), "--jobs", "2"], capture_output=True, text=True,
                               cwd=ROOT, timeout=6 * 3600)
    print(completed.stdout)  # the kill table (pytest -s shows it)
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-2000:]
