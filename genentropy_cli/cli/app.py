"""The `genentropy` command line: the Typer app, its global options and its commands.

Each command lives in its own module (parse, call the API, hand the result to ``output``);
the options they share are declared once in ``options``. No numerics here.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from genentropy_cli.cli.compare import compare
from genentropy_cli.cli.convert import convert
from genentropy_cli.cli.estimate import estimate
from genentropy_cli.cli.inspect import inspect
from genentropy_cli.cli.options import DebugOption
from genentropy_cli.cli.samples import samples
from genentropy_cli.cli.sweep import sweep_scale_command
from genentropy_cli.cli.track import track
from genentropy_cli.version import __version__

app = typer.Typer(
    name="genentropy",
    help="Differential entropy of a generative model's decoder (Struminsky, Figurnov & Vetrov).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
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


app.command("estimate")(estimate)
app.command("sweep-scale")(sweep_scale_command)
app.command("compare")(compare)
app.command("track")(track)
app.command("samples")(samples)
app.command("inspect")(inspect)
app.command("convert")(convert)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="genentropy")


if __name__ == "__main__":
    sys.exit(main())
