"""``genentropy sweep-scale``: H_s at several scales from one pass, and whether it converged."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from genentropy_cli.cli.guard import command
from genentropy_cli.cli.options import (
    ModelArgument,
    ModelFlags,
    OutputFlags,
    PlotOption,
    RunFlags,
    check_paths,
    estimate_options,
    open_model,
)
from genentropy_cli.cli.output import Sink
from genentropy_cli.defaults import DEFAULT_AGREEMENT_SE, DEFAULT_SWEEP_SCALES

ScalesOption = Annotated[Optional[str], typer.Option(
    "--scales", rich_help_panel="Run options",
    help="Comma-separated scales (default "
         + ",".join(f"{s:.0e}".replace("e-0", "e-") for s in DEFAULT_SWEEP_SCALES) + ", Table 1's).")]
ReferenceOption = Annotated[Optional[str], typer.Option(
    "--reference", help="Known true entropy: a number, an expression such as 'log(2*pi)', "
                        "half-sphere, sphere, or model (the value the model file records).")]
ToleranceOption = Annotated[float, typer.Option(
    "--tolerance-se", help="Scales agree when their estimates differ by at most this many combined standard errors.")]


@command
def sweep_scale_command(model: ModelArgument, *, source: ModelFlags, reference: ReferenceOption = None,
                        tolerance_se: ToleranceOption = DEFAULT_AGREEMENT_SE, scales: ScalesOption = None,
                        run: RunFlags, plot: PlotOption = None, report: OutputFlags) -> None:
    """Estimate H_s at several scales in one pass and check convergence as s -> 0 (Table 1); for a
    conditional decoder, H(X|Y) and every class's H(X|y)."""
    from genentropy_cli.cli import plotting, sweep_report
    from genentropy_cli.cli.conditional_tables import class_sweep_table
    from genentropy_cli.jobs.sweep import parse_reference, parse_scales, sweep_scale

    sink = Sink.of(report)
    options = estimate_options(run, parse_scales(scales) if scales is not None else DEFAULT_SWEEP_SCALES)
    check_paths([model], source, report, options, {"--plot": plot})
    if plot:
        plotting.check_plot_target(plot)  # before the estimate, not after it
    with sink.progress("sweeping", sorted(options.scales, reverse=True), stage="loading the model") as progress:
        loaded = open_model(source, model, sink.warn, sink.info)
        known = parse_reference(reference, loaded.metadata) if reference is not None else None
        sweep = sweep_scale(loaded.decoder, loaded.latent, options.scales, reference=known, tolerance_se=tolerance_se,
                            options=options, labels=loaded.label, progress=progress, log=sink.warn)
    title = f"H(X|Y) of {loaded.path}" if sweep.conditional else loaded.path
    if plot and sink.speaks:
        try:
            plotting.plot_sweep(sweep, plot, title=title)
            sink.info(f"wrote plot to {plot}")
        except OSError as error:  # the sweep is done: its result is still shown, and the exit status says 1
            sink.lost(f"could not write the plot {plot} ({error.strerror or error}); the result follows")
    for message in getattr(sweep.result, "warnings", []):
        sink.warn(message)
    sink.emit_run(sweep.to_dict(model=loaded.describe()), sweep.result, lambda: [
        sweep_report.render_sweep(sweep, title), *([class_sweep_table(sweep)] if sweep.conditional else [])])
