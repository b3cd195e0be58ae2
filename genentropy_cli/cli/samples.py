"""``genentropy samples``: the outputs with the lowest and highest per-sample entropy terms."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from genentropy_cli.cli.guard import command
from genentropy_cli.cli.options import (
    RUN_DEFAULTS,
    RUN_PANEL,
    ModelArgument,
    ModelFlags,
    OutputFlags,
    SamplesRunFlags,
    check_paths,
    estimate_options,
    open_model,
)
from genentropy_cli.cli.output import Sink
from genentropy_cli.defaults import SAMPLES_DEFAULT_K
from genentropy_cli.errors import InputError

LowestOption = Annotated[int, typer.Option("--lowest", help="How many lowest-term samples (dense regions).")]
HighestOption = Annotated[int, typer.Option("--highest", help="How many highest-term samples (sparse regions).")]
GridOption = Annotated[Optional[str], typer.Option(
    "--grid", rich_help_panel="Output options", help="Image grid to write (PNG, PDF or SVG).")]
OutOption = Annotated[Optional[str], typer.Option(
    "--out", hidden=True, help="Deprecated: the old name of --grid.")]
SampleScaleOption = Annotated[float, typer.Option(
    "--scale", "-s", rich_help_panel=RUN_PANEL, help="Regularisation scale s of the terms.")]


def grid_target(grid: Optional[str], out: Optional[str], sink: Sink) -> Optional[str]:
    """``--grid``, or the deprecated ``--out`` (with a warning); both at once must agree."""
    if out is None:
        return grid
    if grid is not None and grid != out:
        raise InputError(f"--out is the old name of --grid; give one of them, not --grid {grid} and --out {out}")
    sink.warn("--out is deprecated; use --grid (the image grid) or --output (the JSON file)")
    return out


@command
def samples(model: ModelArgument, *, source: ModelFlags, lowest: LowestOption = SAMPLES_DEFAULT_K,
            highest: HighestOption = SAMPLES_DEFAULT_K, scale: SampleScaleOption = RUN_DEFAULTS["scales"][0],
            run: SamplesRunFlags, grid: GridOption = None, out: OutOption = None, report: OutputFlags) -> None:
    """Show the outputs with the lowest and highest per-sample entropy terms h_i = -log p(x_i)
    (a conditional decoder: per class, one grid row each)."""
    from genentropy_cli.cli.conditional_tables import samples_table as class_samples_table
    from genentropy_cli.cli.grids import save_class_extremes_grid, save_extremes_grid
    from genentropy_cli.cli.tables import samples_table
    from genentropy_cli.jobs.samples import ConditionalExtremes, find_extreme_samples

    sink = Sink.of(report)
    grid = grid_target(grid, out, sink)
    if grid is None and not (report.json_output or report.output):
        raise InputError("say where the results go: --grid grid.png for the image grid, "
                         "or --json / --output FILE for the indices and terms")
    options = estimate_options(run, (scale,))
    check_paths([model], source, report, options, {"--grid": grid})
    loaded = open_model(source, model, sink.warn, sink.info)
    with sink.progress("scanning") as progress:
        result = find_extreme_samples(loaded.decoder, loaded.latent, lowest, highest, options=options,
                                      labels=loaded.label, progress=progress, log=sink.warn)
    if result.num_nonfinite:
        sink.warn(f"skipped {result.num_nonfinite} sample(s) with non-finite terms")
    if result.partial:
        sink.warn(f"interrupted: the extremes are PARTIAL, of the first {result.num_scanned} samples scanned")
    document = result.to_dict(model=loaded.describe())
    conditional = isinstance(result, ConditionalExtremes)
    if grid is not None and sink.speaks:
        title = f"{loaded.path}: lowest and highest entropy terms" + (" per class" if conditional else "")
        try:
            document["grid"] = (save_class_extremes_grid if conditional else save_extremes_grid)(result, grid, title)
            sink.info(f"wrote image grid to {document['grid']}")
        except OSError as error:  # the scan is done: its result is still shown, and the exit status says 1
            document["grid"] = None
            sink.lost(f"could not write the image grid {grid} ({error.strerror or error}); the result follows")
    sink.emit(document, lambda: (class_samples_table if conditional else samples_table)(result, loaded.path))
    sink.exit_if_partial(result)
