"""The `genentropy` command line: the Typer app, its global options and its commands.

Each command lives in its own module (parse, call the API, hand the result to ``output``);
the options they share are declared once in ``options``. No numerics here.
"""

from __future__ import annotations

import sys
import typing
from inspect import cleandoc
from typing import Annotated, Any

import typer
from rich.markup import escape

try:  # Typer >= 0.20 bundles its own click
    import typer._click as _click
except ImportError:  # pragma: no cover
    import click as _click

from genentropy_cli.cli.compare import compare
from genentropy_cli.cli.convert import convert
from genentropy_cli.cli.estimate import estimate
from genentropy_cli.cli.inspect import inspect
from genentropy_cli.cli.options import DebugOption
from genentropy_cli.cli.output import stderr_console
from genentropy_cli.cli.samples import samples
from genentropy_cli.cli.sweep import sweep_scale_command
from genentropy_cli.cli.track import track
from genentropy_cli.defaults import INTERRUPTED_EXIT_CODE
from genentropy_cli.version import __version__

_TYPE_WORDS = {int: "INTEGER", float: "FLOAT", str: "TEXT"}


def _type_word(param: Any) -> str:
    """The value's type in help, in click's words (INTEGER, FLOAT, TEXT); nothing for a flag.
    Typer >= 0.20 shows Python annotations instead (``<bool>``, ``<list[float]>``)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    while typing.get_args(annotation):  # Optional[X], List[X]
        annotation = [item for item in typing.get_args(annotation) if item is not type(None)][0]
    word = _TYPE_WORDS.get(annotation) or str(getattr(getattr(param, "type", None), "name", "text")).upper()
    return word + ("..." if param.nargs != 1 else "")


def _plain_help_types(params: list) -> list:
    for param in params:
        if hasattr(param, "display_type_rich"):  # Typer >= 0.20; older Typer shows click's words already
            param.display_type_rich = lambda ctx=None, word=_type_word(param): word  # this parameter only
    return params


def _unwrapped(text: str | None) -> str | None:
    """A docstring's paragraphs each on one line, so Rich wraps them to the terminal (Typer keeps
    the source's line breaks inside a paragraph, which cut sentences on a narrow terminal)."""
    if not text:
        return text
    paragraphs = cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in paragraph.splitlines()) for paragraph in paragraphs)


def _readable_help_tables() -> None:
    """Typer's option tables with flag names and types that are never cut (no wrapping) and help
    text that wraps, never ending in "…": patched into ``typer.rich_utils`` when help is shown."""
    import typer.rich_utils as rich_utils
    from rich.table import Table

    if getattr(rich_utils.Table, "readable_help", False):
        return

    class HelpTable(Table):
        readable_help = True

        def add_row(self, *renderables: Any, **settings: Any) -> None:
            for part in getattr(renderables[-1], "renderables", [renderables[-1]]) if renderables else []:
                if hasattr(part, "overflow"):
                    part.overflow = "fold"  # a long word (a path, an example) folds instead of ending in "…"
            super().add_row(*renderables, **settings)
            for index, column in enumerate(self.columns):
                column.no_wrap = index < len(self.columns) - 1
                column.overflow = "fold"

    rich_utils.Table = HelpTable


class PlainGroup(typer.core.TyperGroup):
    """The app: help shows value types as words (see ``_type_word``); a usage error (an unknown
    option, a value click cannot read) is one line on stderr, as every other refusal."""

    def __init__(self, *args: Any, **settings: Any) -> None:
        super().__init__(*args, **settings)
        self.help = _unwrapped(self.help)

    def get_params(self, ctx):
        return _plain_help_types(super().get_params(ctx))

    def format_help(self, ctx: Any, formatter: Any) -> Any:
        _readable_help_tables()
        return super().format_help(ctx, formatter)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _click.exceptions.ClickException as error:
            if isinstance(error, getattr(_click.exceptions, "NoArgsIsHelpError", ())):
                error.show()  # no arguments: the help
            else:
                stderr_console.print(f"[red]error:[/red] {escape(usage_error_line(error))}", soft_wrap=True)
            sys.exit(error.exit_code)
        except typer.Abort:  # end of input at a prompt (genentropy asks nothing)
            stderr_console.print("[red]interrupted[/red]")
            sys.exit(INTERRUPTED_EXIT_CODE)
        sys.exit(code if isinstance(code, int) else 0)


def usage_error_line(error: Any) -> str:
    """click's message on one line, and where to look: ``... ; see `genentropy estimate --help` ``."""
    message = " ".join(error.format_message().split()).rstrip(".")
    context = getattr(error, "ctx", None)
    return f"{message}; see `{context.command_path} --help`" if context is not None else message


class PlainCommand(typer.core.TyperCommand):
    """A command: help shows value types as words (see ``_type_word``); its paragraphs wrap to
    the terminal and its flag names are never cut (``_readable_help_tables``)."""

    def __init__(self, *args: Any, **settings: Any) -> None:
        super().__init__(*args, **settings)
        self.help = _unwrapped(self.help)

    def get_params(self, ctx):
        return _plain_help_types(super().get_params(ctx))

    def format_help(self, ctx: Any, formatter: Any) -> Any:
        _readable_help_tables()
        return super().format_help(ctx, formatter)


app = typer.Typer(
    name="genentropy",
    help="Differential entropy of a generative model's decoder (Struminsky, Figurnov & Vetrov).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    cls=PlainGroup,
)


def _version_callback(value: bool) -> None:
    if value:
        print(f"genentropy {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Estimate how diverse a generative model is: the differential entropy of its decoder."""


app.command("estimate", cls=PlainCommand)(estimate)
app.command("sweep-scale", cls=PlainCommand)(sweep_scale_command)
app.command("compare", cls=PlainCommand)(compare)
app.command("track", cls=PlainCommand)(track)
app.command("samples", cls=PlainCommand)(samples)
app.command("inspect", cls=PlainCommand)(inspect)
app.command("convert", cls=PlainCommand)(convert)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="genentropy")


if __name__ == "__main__":
    sys.exit(main())
