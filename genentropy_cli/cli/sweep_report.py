"""Rendering a scale sweep: a Table-1-shaped Rich table, convergence bars and the verdict."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from genentropy_cli.cli.reporting import entropy_digits, format_error, format_number, latent_label
from genentropy_cli.jobs.sweep import Comparison, SweepResult, format_stderrs

BAR_WIDTH = 32
"""Characters of the longest convergence bar (on a console wide enough: 77 columns)."""
MIN_BAR_WIDTH = 8
"""The shortest a bar axis gets on a narrow console (the rest of a line takes 45 columns)."""
BAR_LINE_EXTRA = 45
"""Columns of a bar line besides the bar: the scale, the difference, the standard errors, the word."""


def format_difference(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    return f"{value:+.4f}" if abs(value) >= 1e-3 else f"{value:+.1e}"


def scale_header(scale: float) -> str:
    return f"s = {scale:.0e}"


def agreement_cell(item: Comparison, tolerance_se: float) -> Text:
    """✔ (green) or ✘ (red), with the difference in combined standard errors."""
    agrees = item.agrees(tolerance_se)
    return Text(f"{'✔' if agrees else '✘'} {format_stderrs(item.stderrs)} se", style="green" if agrees else "red")


def sweep_table(sweep: SweepResult, model_path: str) -> Table:
    """Table 1's shape: one column per scale (largest first), a Reference column when known."""
    result, convergence, reference = sweep.result, sweep.convergence, sweep.reference
    estimates = sorted(result.estimates, key=lambda item: item.scale, reverse=True)
    settings = result.settings
    described = "" if reference is None else (
        f"Reference {reference.label}" + (f" ({reference.description})" if reference.description else "")
        + f" = {reference.value:.6f}. ")
    table = Table(
        title=f"Scale sweep of {model_path}",
        caption_justify="left",
        caption=(
            f"latent {latent_label(result)}, D = {result.output_dim}, N = {estimates[0].num_samples:,}; "
            f"{settings['device']}, {settings['dtype']}, seed {settings['seed']}; {result.elapsed_seconds:.1f} s, "
            f"one pass for all scales. {described}Entropy in nats; Std = per-sample std; "
            f"Std. error = Std / sqrt(N); λ_min < s² = samples where J^T J has an eigenvalue below s² (if few, "
            "rare latents carry the bias at that s and the std. error may understate it); agrees = within "
            f"{convergence.tolerance_se:g} combined standard errors."
        ),
    )
    table.add_column("", justify="left", style="bold", no_wrap=True)
    if reference is not None:
        table.add_column("Reference", justify="right")
    for item in estimates:
        table.add_column(scale_header(item.scale), justify="right", min_width=len(scale_header(item.scale)))

    def add(label: str, cells: list, reference_cell: str = "") -> None:
        table.add_row(label, *([reference_cell] if reference is not None else []), *cells)

    add("Entropy", [format_number(item.entropy, entropy_digits(item.stderr)) for item in estimates],
        format_number(reference.value) if reference is not None else "")
    add("Std. error", [format_error(item.stderr) for item in estimates])
    add("Std", [format_error(item.std) for item in estimates])
    if reference is not None:
        differences = {item.scale: item for item in sweep.reference_comparisons()}
        add("H - ref.", [format_difference(differences[item.scale].difference) for item in estimates])
        add("(H - ref.) / se", [format_signed_stderrs(differences[item.scale]) for item in estimates])
    if sweep.collapsed_samples:
        add("λ_min < s²", [f"{count:,}" for count in sweep.collapsed_samples])
    add("Δ to next s", [format_difference(item.difference) for item in convergence.successive] + ["-"])
    add("Next s agrees", [agreement_cell(item, convergence.tolerance_se) for item in convergence.successive]
        + ["-"])
    return table


def format_signed_stderrs(item: Comparison) -> str:
    stderrs = item.stderrs
    return f"{math.copysign(stderrs, item.difference):+.1f}" if math.isfinite(stderrs) else "-"


def bar(stderrs: float, axis_max: float, tolerance_se: float, width: int = BAR_WIDTH) -> tuple[str, int]:
    """A bar of log10(1 + stderrs) on an axis up to log10(1 + axis_max); the tolerance is a tick."""
    scale = width / math.log10(1.0 + axis_max)
    length = width if not math.isfinite(stderrs) else min(width, round(math.log10(1.0 + stderrs) * scale))
    tick = min(width - 1, round(math.log10(1.0 + tolerance_se) * scale))
    cells = ["█" if position < length else ("┆" if position == tick else " ") for position in range(width)]
    return "".join(cells), length


class ConvergenceBars:
    """``convergence_bars`` drawn as wide as the console allows (a line never wraps: the bar's
    axis shrinks from ``BAR_WIDTH`` down to ``MIN_BAR_WIDTH``)."""

    def __init__(self, sweep: SweepResult):
        self.sweep = sweep

    def __rich_console__(self, console: Any, options: Any) -> Any:
        width = max(MIN_BAR_WIDTH, min(BAR_WIDTH, options.max_width - BAR_LINE_EXTRA))
        yield convergence_bars(self.sweep, width)

    def __rich_measure__(self, console: Any, options: Any) -> Measurement:
        return Measurement(MIN_BAR_WIDTH + BAR_LINE_EXTRA, BAR_WIDTH + BAR_LINE_EXTRA)


def convergence_bars(sweep: SweepResult, width: int = BAR_WIDTH) -> Group:
    """One bar per scale: its distance to the smallest-scale estimate in combined standard
    errors, on a log axis; green within the tolerance (the ┆ tick), red beyond it. Converged
    sweeps end in short green bars."""
    convergence = sweep.convergence
    tolerance = convergence.tolerance_se
    finite = [item.stderrs for item in convergence.to_smallest if math.isfinite(item.stderrs)]
    axis_max = max([10.0 * tolerance, *finite])
    lines = [Text(f"Distance to the s = {convergence.smallest_scale:.0e} estimate, in standard errors "
                  f"(log axis; ┆ = {tolerance:g} se, the agreement limit):", style="bold")]
    for item in convergence.to_smallest:
        drawn, _ = bar(item.stderrs, axis_max, tolerance, width)
        agrees = item.agrees(tolerance)
        lines.append(Text.assemble(
            f"  {scale_header(item.scale):>10}  ", (drawn, "green" if agrees else "red"),
            f"  {format_difference(item.difference):>9}  {format_stderrs(item.stderrs):>6} se  ",
            ("agrees" if agrees else "differs", "green" if agrees else "red"),
        ))
    drawn, _ = bar(0.0, axis_max, tolerance, width)
    lines.append(Text.assemble(f"  {scale_header(convergence.smallest_scale):>10}  ", (drawn, "green"),
                               "  (the smallest scale)"))
    for line in lines[1:]:
        line.no_wrap = True
    return Group(*lines)


def verdict_line(sweep: SweepResult) -> Text:
    convergence = sweep.convergence
    if convergence.converged is None:
        return Text(convergence.verdict, style="yellow")
    mark, style = ("✔", "bold green") if convergence.converged else ("✘", "bold red")
    return Text(f"{mark} {convergence.verdict}", style=style)


def render_sweep(sweep: SweepResult, model_path: str) -> Group:
    """Everything ``sweep-scale`` prints on stdout without ``--json``."""
    parts: list = [sweep_table(sweep, model_path)]
    if sweep.convergence.to_smallest:
        parts += [Text(""), ConvergenceBars(sweep)]
    parts += [Text(""), verdict_line(sweep)]
    return Group(*parts)
