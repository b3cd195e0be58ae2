"""``genentropy inspect``: what a model file holds and how its decoder behaves."""

from __future__ import annotations

from typing import Annotated

import typer

from genentropy_cli.cli.guard import command
from genentropy_cli.cli.options import (
    RUN_DEFAULTS,
    DeviceFlags,
    MaxMemoryOption,
    ModelArgument,
    ModelFlags,
    OutputFlags,
    check_paths,
    open_model,
)
from genentropy_cli.cli.output import Sink
from genentropy_cli.defaults import INSPECT_PROBE_LATENTS
from genentropy_cli.errors import InputError

ProbeLatentsOption = Annotated[int, typer.Option("--probe-latents", help="Latents whose Jacobians are probed.")]
RankScaleOption = Annotated[float, typer.Option("--scale", "-s", help="Scale s at which the rank is counted.")]


@command
def inspect(model: ModelArgument, *, source: ModelFlags, probe_latents: ProbeLatentsOption = INSPECT_PROBE_LATENTS,
            scale: RankScaleOption = RUN_DEFAULTS["scales"][0], max_memory: MaxMemoryOption = RUN_DEFAULTS["max_memory"],
            machine: DeviceFlags, report: OutputFlags) -> None:
    """Describe a model: format, parameters, latent spec and its source, output, speed, Jacobian probe;
    for a checkpoint also the sub-models it holds, with the --select flag and spec lines for each."""
    from genentropy_cli.cli import reporting
    from genentropy_cli.jobs.inspect import checkpoint_report, inspect_model
    from genentropy_cli.models.contents import checkpoint_contents
    from genentropy_cli.run.options import validate_scales

    sink = Sink.of(report)
    check_paths([model], source, report)
    contents = checkpoint_contents(source.model_options(model))
    try:
        resolved = open_model(source, model, sink.warn, sink.info)
    except InputError as error:
        if not contents or not contents["candidates"]:
            raise
        sink.warn(f"no model built yet: {error}")
        document = checkpoint_report(contents, error)
        sink.emit(document, lambda: reporting.checkpoint_tables(document["checkpoint"], model))
        return
    document = inspect_model(resolved, device=machine.device, dtype=machine.dtype, probe_latents=probe_latents,
                             scale=validate_scales([scale])[0], seed=machine.seed, checkpoint=contents,
                             max_memory=max_memory)
    if document["predicted_run_time"]["note"]:  # a default-length run would be long: what would take a minute
        sink.info(f"estimate with the default -n: {document['predicted_run_time']['note']}")
    several = contents is not None and (len(contents["candidates"]) > 1 or contents["other_entries"])
    sink.emit(document, lambda: [reporting.inspect_table(document)]
              + (reporting.checkpoint_tables(contents, model) if several else []))
