"""Install (issue 24): one test command in the README, docs/install.md and .ci/run; every install
hint names an extra the distribution declares, in one form; the sdist and the wheel build and
pass twine check (slow: scripts/check_dist.py, which CI runs)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from check_dist import hinted_extras  # noqa: E402


def _command_line(path: str, marker: str) -> str:
    """The one indented command line of a Markdown file that contains ``marker``."""
    lines = [line.strip() for line in (ROOT / path).read_text(encoding="utf-8").splitlines()
             if line.startswith("    ") and marker in line]
    assert len(lines) == 1, (path, lines)
    return lines[0]


def test_one_test_command_everywhere():
    readme = _command_line("README.md", "pytest")
    assert readme == _command_line("docs/install.md", "pytest")
    install, run = [part.strip() for part in readme.split("&&")]
    ci = [line.replace("python3 -m pip install --quiet --disable-pip-version-check", "pip install").strip()
          for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.startswith("python3") or line.startswith("pip")]
    assert install in ci  # the same extras
    assert ci[-1].replace("python3", "python") == run  # and the same pytest call, last


def test_the_cpu_index_is_named_with_its_pip_option():
    option = "--index-url https://download.pytorch.org/whl/cpu"
    for path in ("README.md", "docs/install.md"):
        text = (ROOT / path).read_text(encoding="utf-8")
        assert f"pip install torch {option}" in text and "CPU wheel index" in text, path


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_every_hint_names_a_declared_extra_in_one_form():
    declared = set(_project()["optional-dependencies"])
    hinted = hinted_extras()
    assert {"plot", "onnx", "hub", "lightning"} <= hinted <= declared
    for path in ROOT.joinpath("genentropy_cli").rglob("*.py"):
        for quoted in re.findall(r"pip install (['\"][^'\"]*['\"])", path.read_text(encoding="utf-8")):
            assert re.fullmatch(r"'genentropy\\*\[\w+\\*\]'", quoted), (path.name, quoted)


def test_the_distribution_is_named_genentropy():
    project = _project()
    assert project["name"] == "genentropy" and project["scripts"]["genentropy"] == "genentropy_cli.__main__:main"
    assert project["license"] == "MIT"  # an SPDX string (a table is deprecated by setuptools)


@pytest.mark.slow
@pytest.mark.skipif(not (importlib.util.find_spec("build") and importlib.util.find_spec("twine")),
                    reason="needs: pip install build twine")
def test_the_sdist_and_the_wheel_build_and_pass_twine_check():
    finished = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_dist.py")], capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
