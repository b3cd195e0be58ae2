"""``genentropy convert``: any loadable model into one self-describing safetensors file."""

from __future__ import annotations

from typing import Annotated

import typer

from genentropy_cli.cli.guard import command
from genentropy_cli.cli.options import ModelArgument, ModelFlags, OutputFlags, check_paths
from genentropy_cli.cli.output import Sink
from genentropy_cli.envelope import envelope

TargetArgument = Annotated[str, typer.Argument(
    help="The .safetensors file to write (weights + embedded spec).", show_default=False)]
ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite TARGET if it exists.")]


@command
def convert(model: ModelArgument, target: TargetArgument, *, source: ModelFlags, force: ForceOption = False,
            report: OutputFlags) -> None:
    """Convert a model (any loadable source) into one self-describing safetensors file, checked by reloading."""
    from genentropy_cli.cli import reporting
    from genentropy_cli.models.convert import convert_to_safetensors

    sink = Sink.of(report)
    check_paths([model], source, report, extra={"TARGET": target})
    document = envelope("convert", convert_to_safetensors(source.model_options(model), target, overwrite=force))
    for message in document["warnings"]:
        sink.warn(message)
    sink.emit(document, lambda: reporting.convert_table(document))
