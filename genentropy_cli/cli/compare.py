"""``genentropy compare``: several models on the same latents, ranked, every difference tested."""

from __future__ import annotations

from typing import Annotated

import typer

from genentropy_cli.cli.guard import command
from genentropy_cli.cli.options import (
    ModelFlags,
    ModelsArgument,
    OutputFlags,
    RunFlags,
    ScaleOption,
    check_paths,
    estimate_options,
    open_model,
)
from genentropy_cli.cli.output import Sink
from genentropy_cli.errors import InputError

IndependentLatentsOption = Annotated[bool, typer.Option(
    "--independent-latents", rich_help_panel="Run options",
    help="Give each model its own latents (a check: paired SE then matches unpaired SE).")]


@command
def compare(models: ModelsArgument, *, source: ModelFlags, scale: ScaleOption = None,
            independent_latents: IndependentLatentsOption = False, run: RunFlags, report: OutputFlags) -> None:
    """Estimate several models on the same latents; rank them and test every difference (conditional
    models: class by class and by H(X|Y))."""
    from genentropy_cli.cli.conditional_tables import comparison_models_table, comparison_pairs_table
    from genentropy_cli.cli.tables import models_table, pairs_table
    from genentropy_cli.jobs.compare import compare_models
    from genentropy_cli.jobs.conditional_compare import ConditionalComparison
    from genentropy_cli.jobs.files import model_names

    if len(models) < 2:
        raise InputError("compare needs at least two model files")
    sink = Sink.of(report)
    options = estimate_options(run, scale)
    check_paths(models, source, report, options)
    with sink.progress("comparing", options.scales, stage="loading the models") as progress:
        loaded = [open_model(source, path, sink.warn, sink.info) for path in models]
        labels = [item.label for item in loaded]
        result = compare_models([item.decoder for item in loaded], [item.latent for item in loaded],
                                names=model_names(models), options=options, shared_latents=not independent_latents,
                                labels=labels if any(label is not None for label in labels) else None,
                                progress=progress, log=sink.warn)
    for summary, item in zip(result.models, loaded):
        summary.info.update(item.describe())
    for message in result.warnings:
        sink.warn(message)
    if isinstance(result, ConditionalComparison):
        tables = [(comparison_models_table(result, index), comparison_pairs_table(result, index))
                  for index in range(len(options.scales))]
    else:
        tables = [(models_table(result, index), pairs_table(result, index)) for index in range(len(options.scales))]
    sink.emit(result.to_dict(), lambda: [table for pair in tables for table in pair])
    sink.exit_if_partial(result)
