"""Runs command-line cases one after another in one process, for tests/test_hostile_round3.py.

    python tests/hostile_batch.py CASES.json RESULTS.json

The caller starts it under ``RLIMIT_AS`` (so every case runs with bounded memory) and torch is
imported once for all cases. Each case is ``{"id", "args", "cwd", "env"}``; its result holds the
exit status, stdout, stderr, any exception that escaped the command (a traceback the user would
have seen), every path the case opened (an audit hook on ``open``: ``open()``, ``io.open``,
``os.open``, ``np.load``), resolved, so the test can check that no file was read outside what the
user named, and the files under the case's ``watch`` folder that the case changed (sha256 before
and after; a folder named ``skip`` in a path is not watched).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path


def digests(root: str | None, skip: str) -> dict[str, str]:
    """sha256 of every regular file under ``root`` of at most 64 MiB (sparse giants are not read)."""
    found: dict[str, str] = {}
    for path in sorted(Path(root).rglob("*")) if root else ():
        if skip in path.parts or not stat.S_ISREG(path.lstat().st_mode) or path.stat().st_size > 64 * 1024**2:
            continue
        found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def main(cases_file: str, results_file: str) -> None:
    opened: list[str] = []
    watching = [True]

    def audit(event: str, arguments: tuple) -> None:
        if watching[0] and event == "open" and arguments and isinstance(arguments[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(arguments[0]))

    sys.addaudithook(audit)
    from typer.testing import CliRunner

    from genentropy_cli.cli.app import app

    with open(cases_file) as handle:
        cases = json.load(handle)
    results = {}
    for case in cases:
        environment = dict(os.environ)
        os.environ.update(case.get("env", {}))
        os.chdir(case["cwd"])
        watching[0] = False
        before = digests(case.get("watch"), case.get("skip", "skip"))
        opened.clear()
        watching[0] = True
        result = CliRunner().invoke(app, case["args"])
        watching[0] = False
        after = digests(case.get("watch"), case.get("skip", "skip"))
        watching[0] = True
        escaped = result.exception if not isinstance(result.exception, (SystemExit, type(None))) else None
        results[case["id"]] = {
            "exit": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
            "exception": None if escaped is None else f"{type(escaped).__name__}: {escaped}"[:300],
            "opened": sorted({os.path.realpath(path) for path in opened}),
            "changed": sorted(path for path in set(before) | set(after) if before.get(path) != after.get(path)),
        }
        os.environ.clear()
        os.environ.update(environment)
    with open(results_file, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
