"""``python -m genentropy_cli`` (and the ``genentropy`` script): the command line.

``python -m`` puts the working directory first on ``sys.path``; it is taken off before any
command runs, so no module lying in the working directory is ever imported (a spec's
``import:`` comes from ``--code-path`` directories only: docs/safety.md). The command line loads
without torch (help and ``--version`` are instant); a command imports what it runs when it runs.
A Ctrl-C while anything loads ends it at once with "interrupted" and status 130, no traceback
(``errors.end_at_once_when_interrupted_while_importing``).
"""

import os
import signal
import sys

from genentropy_cli.errors import caused_by_interrupt, end_at_once_when_interrupted_while_importing

end_at_once_when_interrupted_while_importing()  # first thing: the rest of start-up is imports


def _drop_working_directory() -> None:
    if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]


def _interrupted() -> None:
    sys.stderr.write("interrupted\n")
    raise SystemExit(130) from None


def main() -> None:
    """Console-script entry point. A Ctrl-C at any moment of start-up (the imports, building the
    command line) ends with "interrupted" and status 130, never a traceback; inside a command
    ``cli.guard`` and the run loop take over. Once the command has returned (its result shown)
    the process only exits: a Ctrl-C then is ignored rather than reported from the interpreter's
    shutdown."""
    end_at_once_when_interrupted_while_importing()
    _drop_working_directory()
    try:
        from genentropy_cli.cli.app import main as run_app

        run_app()
    except SystemExit:
        raise
    except BaseException as error:  # a Ctrl-C inside an import may come wrapped in another error
        if not caused_by_interrupt(error):
            raise
        _interrupted()
    finally:
        if sys.exc_info()[0] in (None, SystemExit):
            signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    main()
