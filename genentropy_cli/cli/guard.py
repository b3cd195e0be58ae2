"""Errors at the command line: one line on stderr and an exit status, or with ``--debug``
(before or after the command's name) the traceback.

    InputError (bad input)        error: ...   exit 2
    other GenentropyError         error: ...   exit 1
    Ctrl-C outside a run          interrupted  exit 130 (also one an import wraps in another error)
    anything else                 error: unexpected failure: ... (rerun with --debug)  exit 1
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import typer
from rich.markup import escape

from genentropy_cli.cli.bundles import expand_bundles
from genentropy_cli.cli.config import current_context
from genentropy_cli.cli.output import stderr_console
from genentropy_cli.defaults import INTERRUPTED_EXIT_CODE
from genentropy_cli.errors import GenentropyError, caused_by_interrupt, first_line

DEBUG_KEY = "genentropy.debug"
"""``ctx.meta`` key (shared by the group's and the command's contexts) set by ``--debug``."""


def set_debug(ctx: typer.Context, value: bool) -> bool:
    """``--debug``'s callback, on the group and on every command: once given, it stays on."""
    if value or DEBUG_KEY not in ctx.meta:
        ctx.meta[DEBUG_KEY] = bool(value)
    return value


def debugging() -> bool:
    ctx = current_context()
    return bool(ctx is not None and ctx.meta.get(DEBUG_KEY))


def one_line(message: str) -> str:
    """A message as one line: a line break from user data (a file name) written as ``\\n``."""
    return message.strip().replace("\r", "\\r").replace("\n", "\\n")


def run_guarded(action: Callable[[], Any]) -> None:
    """Run a command body: our errors become one line on stderr and their exit status."""
    try:
        action()
    except GenentropyError as error:
        if debugging():
            raise
        stderr_console.print(f"[red]error:[/red] {escape(one_line(str(error)))}", soft_wrap=True, markup=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        stderr_console.print("[red]interrupted[/red]")
        raise typer.Exit(INTERRUPTED_EXIT_CODE) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:  # an unexpected failure: one line unless --debug
        if caused_by_interrupt(error):  # a Ctrl-C while a command imports torch, wrapped by the import
            stderr_console.print("[red]interrupted[/red]")
            raise typer.Exit(INTERRUPTED_EXIT_CODE) from None
        if debugging():
            raise
        stderr_console.print(
            f"[red]error:[/red] unexpected failure: {type(error).__name__}: {escape(one_line(first_line(error)))} "
            "(rerun with --debug for the traceback)",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def command(function: Callable[..., Any]) -> Callable[..., Any]:
    """A command: its option bundles expanded for Typer (``bundles``), its body guarded."""

    @functools.wraps(function)
    def guarded(**values: Any) -> None:
        run_guarded(lambda: function(**values))

    return expand_bundles(guarded)
