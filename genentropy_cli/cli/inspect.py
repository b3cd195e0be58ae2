"""``genentropy inspect``: what a model file holds and how its decoder behaves."""

from __future__ import annotations

from typing import Annotated

import typer

from genentropy_cli.cli import reporting
from genentropy_cli.cli.guard import command
from genentropy_cli.cli.options import (
    RUN_DEFAULTS,
    DeviceFlags,
    ModelArgument,
    ModelFlags,
    OutputFlags,
    check_paths,
    open_model,
)
from genentropy_cli.cli.output import Sink
from genentropy_cli.defaults import INSPECT_PROBE_LATENTS
from genentropy_cli.jobs.inspect import inspect_model
from genentropy_cli.run.options import validate_scales

ProbeLatentsOption = Annotated[int, typer.Option("--probe-latents", help="Latents whose Jacobians are probed.")]
RankScaleOption = Annotated[float, typer.Option("--scale", "-s", help="Scale s at which the rank is counted.")]


@command
def inspect(model: ModelArgument, *, source: ModelFlags, probe_latents: ProbeLatentsOption = INSPECT_PROBE_LATENTS,
            scale: RankScaleOption = RUN_DEFAULTS["scales"][0], machine: DeviceFlags, report: OutputFlags) -> None:
    """Describe a model: format, parameters, latent spec and its source, output, speed, Jacobian probe."""
    sink = Sink.of(report)
    check_paths([model], source, report)
    resolved = open_model(source, model, sink.warn)
    document = inspect_model(resolved, device=machine.device, dtype=machine.dtype, probe_latents=probe_latents,
                             scale=validate_scales([scale])[0], seed=machine.seed)
    sink.emit(document, lambda: reporting.inspect_table(document))
