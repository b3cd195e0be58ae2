"""``python -m genentropy_cli`` (and the ``genentropy`` script): the command line.

``python -m`` puts the working directory first on ``sys.path``; it is taken off before any
command runs, so no module lying in the working directory is ever imported (a spec's
``import:`` comes from ``--code-path`` directories only: docs/safety.md). A Ctrl-C while the
command line loads (torch takes seconds) ends it with "interrupted" and status 130, no traceback.
"""

import os
import sys


def _drop_working_directory() -> None:
    if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]


def main() -> None:
    """Console-script entry point."""
    _drop_working_directory()
    try:
        from genentropy_cli.cli.app import main as run_app
    except BaseException as error:  # a Ctrl-C inside an import may come wrapped in another error
        if not _caused_by_interrupt(error):
            raise
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    run_app()


def _caused_by_interrupt(error: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is ``error`` or stands in its chain of causes and contexts."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


if __name__ == "__main__":
    main()
