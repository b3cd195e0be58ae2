"""The documentation: the site builds with ``mkdocs build --strict`` (broken links and anchors
fail), the README stays a short front door, and nothing points to files outside the repository."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 220
SEARCHED = ("README.md", "docs", "genentropy_cli", "tests")
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".sh", ".json", ".csv"}
FORBIDDEN = ("NOTES" + ".md", "shared" + "/" + "paper")
"""Files that are not in the repository (built from pieces so that this file does not name them)."""


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (the docs extra)")
def test_the_site_builds_strictly(tmp_path):
    # no -q: mkdocs counts the warnings that --strict turns into failures only when it logs them
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, env=environment, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_the_readme_is_short():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/ (at most {README_MAX_LINES})"


def searched_files() -> list[Path]:
    files = []
    for name in SEARCHED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [item for item in candidates if item.is_file() and item.suffix in TEXT_SUFFIXES
                  and "__pycache__" not in item.parts]
    return files


def test_nothing_points_outside_the_repository():
    files = searched_files()
    assert len(files) > 50  # the search found the package, tests and docs
    offenders = [f"{item.relative_to(ROOT)}: {needle}" for item in files
                 for needle in FORBIDDEN if needle in item.read_text(encoding="utf-8", errors="replace")]
    assert not offenders, "references to files outside the repository:\n" + "\n".join(offenders)
