"""``genentropy estimate``: H_s of one model at one or more scales."""

from __future__ import annotations

from genentropy_cli.cli.guard import command
from genentropy_cli.cli.options import (
    ModelArgument,
    ModelFlags,
    OutputFlags,
    RunFlags,
    ScaleOption,
    check_paths,
    estimate_options,
    open_model,
)
from genentropy_cli.cli.output import Sink


@command
def estimate(model: ModelArgument, *, source: ModelFlags, scale: ScaleOption = None, run: RunFlags,
             report: OutputFlags) -> None:
    """Estimate the entropy H_s = mean of -log p(z) + 1/2 log det(J^T J + s^2 I).

    Under torchrun the ranks share the samples and rank 0 alone prints. Ctrl-C saves the
    checkpoint, prints the partial result and exits 130. A conditional decoder (--num-classes,
    or a label recorded in the model) gets H(X|y) per class on common latents, H(X|Y), H(Y) and
    the bounds of the mixture entropy H(X).
    """
    from genentropy_cli.jobs.estimate import estimate_entropy

    sink = Sink.of(report)
    options = estimate_options(run, scale)
    check_paths([model], source, report, options)
    with sink.progress("estimating", options.scales, stage="loading the model") as progress:
        loaded = open_model(source, model, sink.warn, sink.info)
        result = estimate_entropy(loaded.decoder, loaded.latent, options=options, labels=loaded.label,
                                  progress=progress, log=sink.warn)
    from genentropy_cli.cli import conditional_tables, reporting  # after the run: nothing delays its first batch
    from genentropy_cli.jobs.conditional import ConditionalResult

    if isinstance(result, ConditionalResult):
        for message in result.warnings:
            sink.warn(message)
        sink.emit_run(result.to_dict("estimate", model=loaded.describe()), result, lambda: [
            *conditional_tables.estimate_tables(result, loaded.path), reporting.diagnostics_table(result)])
        return
    sink.emit_run(result.to_dict("estimate", model=loaded.describe()), result, lambda: [
        reporting.estimate_table(result, loaded.path), reporting.diagnostics_table(result)])
