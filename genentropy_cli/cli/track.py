"""``genentropy track``: the checkpoints of a training run on common latents, entropy by step,
every change between consecutive checkpoints with its paired standard error and significance.

The checkpoints are opened one at a time, in step order (``jobs.track.track_stream``); every
output (``--output``, ``--plot``, ``--checkpoint``) is checked before the first is estimated, as
every command does."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, List

import typer
from rich import box
from rich.table import Table

from genentropy_cli.cli.fitting import Narrowing, narrowing
from genentropy_cli.cli.guard import command
from genentropy_cli.cli.options import (
    ModelFlags,
    OutputFlags,
    PlotOption,
    RunFlags,
    ScaleOption,
    check_paths,
    estimate_options,
    open_model,
)
from genentropy_cli.cli.output import Sink
from genentropy_cli.defaults import CONFIDENCE_Z_95
from genentropy_cli.errors import InputError

if TYPE_CHECKING:  # the jobs layer imports torch: the command imports it when it runs
    from genentropy_cli.jobs.track import TrackResult

CheckpointsArgument = Annotated[List[str], typer.Argument(
    help="Checkpoint files or glob patterns (quote them: 'run/gen-*.safetensors'), two or more; "
         "ordered by the step in their names or metadata.", show_default=False)]
KeepOrderOption = Annotated[bool, typer.Option(
    "--keep-order", help="Keep the checkpoints in the order given instead of sorting them by step.")]
@command
def track(checkpoints: CheckpointsArgument, *, source: ModelFlags, scale: ScaleOption = None,
          keep_order: KeepOrderOption = False, run: RunFlags, plot: PlotOption = None, report: OutputFlags) -> None:
    """Estimate a training run's checkpoints on common latents: entropy by step, each change tested."""
    from genentropy_cli.cli import plotting
    from genentropy_cli.jobs.files import checkpoint_names, expand_checkpoints
    from genentropy_cli.jobs.track import Checkpoint, checkpoint_step, order_by_step, track_stream
    from genentropy_cli.run.files import input_file

    sink = Sink.of(report)
    options = estimate_options(run, scale)
    paths = expand_checkpoints(checkpoints)
    if len(paths) < 2:
        raise InputError(f"track needs at least two checkpoints, got {len(paths)}")
    check_paths(paths, source, report, options, {"--plot": plot})  # every output, before any work
    if plot:
        plotting.check_plot_target(plot)
    for path in paths:
        input_file(path, "checkpoint")  # each one readable before the first is estimated
    found = [checkpoint_step(path) or recorded_step(source, path, sink.warn) for path in paths]
    order = order_by_step(paths, found, keep_order)
    paths, found = [paths[index] for index in order], [found[index] for index in order]
    steps = [item[0] if item else position + 1 for position, item in enumerate(found)]
    step_sources = [item[1] if item else "order given" for item in found]

    def open_checkpoint(index: int) -> Checkpoint:  # one at a time: the previous one is gone by now
        item = open_model(source, paths[index], sink.warn, sink.info)
        return Checkpoint(item.decoder, item.latent, item.label, item.describe())

    with sink.progress("tracking", options.scales) as progress:
        result = track_stream(open_checkpoint, len(paths), steps, checkpoint_names(paths), options=options,
                              step_sources=step_sources, progress=progress, log=sink.warn)
    for message in result.comparison.warnings:
        sink.warn(message)
    if result.partial:
        sink.warn(f"interrupted: the result is PARTIAL ({len(result.steps)} of {len(paths)} checkpoints, the last "
                  f"one on {result.comparison.models[-1].estimates[0].num_samples} samples)")
    if plot and sink.speaks:
        try:
            plot_track(result, plot)
        except OSError as error:  # the track is done: its result is still shown, and the exit status says 1
            sink.lost(f"could not write the plot {plot} ({error.strerror or error}); the result follows")
    sink.emit(result.to_dict(), lambda: [track_table(result, index) for index in range(len(options.scales))])
    sink.exit_if_partial(result)


def recorded_step(source: ModelFlags, path: str, warn: Callable[[str], None]) -> tuple[int, str] | None:
    """The step a checkpoint whose name has none records (its metadata or spec): the file is
    opened for it alone and let go."""
    from genentropy_cli.jobs.track import checkpoint_step

    item = open_model(source, path, warn)
    return checkpoint_step(item.path, item.metadata, item.loaded.spec)


def track_table(result: TrackResult, scale_index: int = 0) -> Table:
    """One row per checkpoint in step order: entropy and its standard error, then the change
    from the previous checkpoint with its paired and unpaired standard errors and its test."""
    from genentropy_cli.cli.reporting import entropy_digits, format_error, format_number

    compared = result.comparison
    settings = compared.settings
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Entropy by step at s = {settings['scales'][scale_index]:.0e} "
              f"(seed {settings['seed']}, N = {settings['num_used']}, common latents)",
        caption=(f"{settings['device']}, {settings['dtype']}; {compared.elapsed_seconds:.1f} s. Entropy in nats. "
                 "Change = H(this) - H(previous) on the same latents; Paired SE = std of the per-sample "
                 "differences / sqrt(N); Unpaired SE = sqrt(SE1^2 + SE2^2), what separate runs would give. "
                 "p: two-sided normal test on the paired SE, Holm-adjusted over the changes; "
                 f"* p < {settings['significance_level']:g}, ** p < 0.01, *** p < 0.001."),
    )
    for header in ("Step", "Checkpoint", "Entropy", "Std. error", "Change", "Paired SE", "Unpaired SE", "z", "p Holm",
                   ""):
        table.add_column(header, justify="left" if header in ("Checkpoint", "") else "right",
                         no_wrap=header != "Checkpoint", overflow="fold")
    changes = {pair.first: pair for pair in result.changes(scale_index)}
    for index, model in enumerate(compared.models):
        estimate = model.estimates[scale_index]
        row = [str(result.steps[index]), model.name,
               format_number(estimate.entropy, entropy_digits(estimate.stderr, 2)), format_error(estimate.stderr)]
        change = changes.get(index)
        if change is None:
            row += ["", "", "", "", "", ""]
        else:
            row += [format_number(change.difference, entropy_digits(change.stderr, 2)),
                    f"[bold]{format_error(change.stderr)}[/bold]", format_error(change.unpaired_stderr),
                    "-" if change.z_score != change.z_score else f"{change.z_score:.1f}",
                    f"{change.p_holm:.0e}" if change.p_holm == change.p_holm else "-", change.mark]
        table.add_row(*row)
    return narrowing(table, TRACK_NARROWING)


TRACK_NARROWING = Narrowing(
    short={"Std. error": "SE", "Change": "Δ", "Paired SE": "Δ SE", "Unpaired SE": "unp. SE", "p Holm": "p"},
    optional=("Unpaired SE", "z"),
    legend="Short headers: SE = Std. error; Δ = Change; Δ SE = its Paired SE; unp. SE = Unpaired SE; p = p Holm.")
"""At 80 columns: short headers, then without the unpaired SE and z (``--json`` has every value)."""


def plot_track(result: TrackResult, path: str) -> Path:
    """Above: entropy against step with 95% error bars (1.96 SE), one line per scale. Below: each
    change between consecutive checkpoints at its later step, with its paired 95% error bar and
    (grey) the unpaired one that separate runs would give."""
    from genentropy_cli.cli.plotting import require_matplotlib

    pyplot = require_matplotlib()
    compared = result.comparison
    figure, (top, bottom) = pyplot.subplots(2, 1, figsize=(7, 6.5), sharex=True, height_ratios=(3, 2))
    for scale_index, scale in enumerate(compared.settings["scales"]):
        estimates = [model.estimates[scale_index] for model in compared.models]
        line: Any = top.errorbar(result.steps, [item.entropy for item in estimates],
                                 yerr=[CONFIDENCE_Z_95 * item.stderr for item in estimates], marker="o", capsize=3,
                                 label=f"s = {scale:.0e}")
        changes = result.changes(scale_index)
        later = [result.steps[pair.first] for pair in changes]
        bottom.errorbar(later, [pair.difference for pair in changes],
                        yerr=[CONFIDENCE_Z_95 * pair.unpaired_stderr for pair in changes], fmt="none", ecolor="0.75",
                        elinewidth=6, alpha=0.6)
        bottom.errorbar(later, [pair.difference for pair in changes],
                        yerr=[CONFIDENCE_Z_95 * pair.stderr for pair in changes], fmt="o", capsize=3,
                        color=line.lines[0].get_color())
    bottom.axhline(0.0, color="0.4", linewidth=0.8)
    top.set_ylabel("entropy (nats)")
    top.set_title(f"Entropy by step (N = {compared.settings['num_used']}, seed {compared.settings['seed']}, "
                  "95% error bars)", fontsize=10)
    top.legend(fontsize=9)
    bottom.set_ylabel("change since previous")
    bottom.set_xlabel("step")
    bottom.set_title("paired 95% error bars (coloured) vs unpaired (grey)", fontsize=9)
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return Path(path)
