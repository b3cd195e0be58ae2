"""Shared fixtures: small decoders saved as files, and a CLI runner with stdout/stderr apart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from genentropy_cli.cli.app import app


def pytest_collection_modifyitems(config, items):
    """Slow reproductions run only with GENENTROPY_SLOW=1; GPU tests only where CUDA exists."""
    run_slow = os.environ.get("GENENTROPY_SLOW") == "1"
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow reproduction: set GENENTROPY_SLOW=1"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


class CliResult:
    def __init__(self, result):
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception

    def json(self) -> dict:
        return json.loads(self.stdout)


@pytest.fixture
def run_cli():
    """Invoke the CLI in-process; returns exit code, stdout and stderr separately."""
    runner = CliRunner()

    def invoke(*args: str) -> CliResult:
        return CliResult(runner.invoke(app, [str(arg) for arg in args]))

    return invoke


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tmp_path


# ----------------------------------------------------------------------------- hermetic tests

PINNED_ENVIRONMENT = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
"""Table width (COLUMNS wins over the piped default, cli/output.py), no colour codes and no
cursor control: what the text assertions on tables and notes were written for."""
UNSET_ENVIRONMENT = ("LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
"""Rich reads these too: a terminal forced on would put control codes into captured output."""
SESSION_THREADS = torch.get_num_threads()
"""torch's intra-op threads as the session started (OMP_NUM_THREADS or the cores): a test that
sets its own count (the threaded eigenvalues) must not leak it into the tests after it."""


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch):
    """Every test sees the same terminal settings and thread count, whatever the caller's shell
    has (``COLUMNS=40``, ``FORCE_COLOR=1``) or an earlier test set."""
    for name, value in PINNED_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    for name in UNSET_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(SESSION_THREADS)
    yield
    torch.set_num_threads(SESSION_THREADS)
