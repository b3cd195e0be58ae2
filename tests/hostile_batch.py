"""Runs command-line cases one after another in one process, for tests/test_hostile_round3.py.

    python tests/hostile_batch.py CASES.json RESULTS.json

The caller starts it under ``RLIMIT_AS`` (so every case runs with bounded memory) and torch is
imported once for all cases. Each case is ``{"id", "args", "cwd", "env"}``; its result holds the
exit status, stdout, stderr, any exception that escaped the command (a traceback the user would
have seen) and every path the case opened (an audit hook on ``open``: ``open()``, ``io.open``,
``os.open``, ``np.load``), resolved, so the test can check that no file was read outside what the
user named.
"""

from __future__ import annotations

import json
import os
import sys


def main(cases_file: str, results_file: str) -> None:
    opened: list[str] = []

    def audit(event: str, arguments: tuple) -> None:
        if event == "open" and arguments and isinstance(arguments[0], (str, bytes, os.PathLike)):
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
        opened.clear()
        result = CliRunner().invoke(app, case["args"])
        escaped = result.exception if not isinstance(result.exception, (SystemExit, type(None))) else None
        results[case["id"]] = {
            "exit": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
            "exception": None if escaped is None else f"{type(escaped).__name__}: {escaped}"[:300],
            "opened": sorted({os.path.realpath(path) for path in opened}),
        }
        os.environ.clear()
        os.environ.update(environment)
    with open(results_file, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
