"""``--plot``: a sweep as a picture. matplotlib is an optional extra, imported only here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genentropy_cli.defaults import CONFIDENCE_Z_95
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.sweep import SweepResult

INSTALL_HINT = "pip install 'genentropy[plot]'"


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, or a one-line InputError."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        raise InputError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    return pyplot


def check_plot_target(path: str | Path) -> Path:
    """Fail before the (long) estimate, not after it: matplotlib present, a folder that exists,
    and a file type it can write."""
    pyplot = require_matplotlib()
    target = Path(path)
    if not target.parent.exists() or not target.parent.is_dir():
        raise InputError(f"--plot {path}: the folder {target.parent} does not exist")
    if target.is_dir():
        raise InputError(f"--plot {path} is a directory; give a file name such as sweep.png")
    kind = target.suffix.lower().lstrip(".")
    supported = pyplot.figure().canvas.get_supported_filetypes()
    pyplot.close("all")
    if kind not in supported:
        raise InputError(f"--plot {path}: unknown image type {kind!r}; use one of {', '.join(sorted(supported))}")
    return target


def _draw_distances(axes: Any, sweep: SweepResult, baseline: float, baseline_label: str) -> None:
    """|H_s - baseline| (filled: H_s above it, open: below) and the 95% noise level 1.96 se;
    a point inside the grey band is indistinguishable from the baseline."""
    estimates = sorted(sweep.estimates, key=lambda item: item.scale)
    noise = [(item.scale, CONFIDENCE_Z_95 * item.stderr) for item in estimates if item.stderr > 0]
    if noise:
        axes.fill_between([s for s, _ in noise], [level for _, level in noise], color="0.85",
                          label="95% noise level (1.96 se)")
        axes.plot([s for s, _ in noise], [level for _, level in noise], color="0.5", linewidth=1)
    shown = [(item.scale, item.entropy - baseline) for item in estimates if item.entropy != baseline]
    axes.plot([s for s, _ in shown], [abs(d) for _, d in shown], "-", color="tab:purple")
    above = [(s, d) for s, d in shown if d > 0]
    below = [(s, -d) for s, d in shown if d < 0]
    if above:
        axes.plot(*zip(*above), "o", color="tab:purple", label=f"$H_s$ above {baseline_label}")
    if below:
        axes.plot(*zip(*below), "o", color="tab:purple", markerfacecolor="none",
                  label=f"$H_s$ below {baseline_label}")
    axes.set_yscale("log")
    axes.set_xlabel("scale s")
    axes.set_ylabel("distance (nats)")
    axes.legend(loc="upper right", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)


def plot_sweep(sweep: SweepResult, path: str | Path, title: str = "") -> Path:
    """Entropy vs s (log axis, 95% error bars, the reference as a line) and, below, the
    distance to the reference (or to the smallest-scale estimate) against the noise level
    1.96 se on log-log axes, where the bias (about proportional to s) is visible at every
    order of magnitude until it sinks below the noise."""
    pyplot = require_matplotlib()
    estimates = sorted(sweep.estimates, key=lambda item: item.scale)
    scales = [item.scale for item in estimates]
    entropies = [item.entropy for item in estimates]
    half_widths = [CONFIDENCE_Z_95 * item.stderr for item in estimates]
    if sweep.reference is not None:
        baseline, baseline_label = sweep.reference.value, f"reference {sweep.reference.label}"
    else:
        baseline, baseline_label = estimates[0].entropy, f"estimate at s = {scales[0]:.0e}"

    figure, (upper, lower) = pyplot.subplots(2, 1, sharex=True, figsize=(7.0, 6.5),
                                             gridspec_kw={"height_ratios": [3, 2]})
    upper.errorbar(scales, entropies, yerr=half_widths, fmt="o-", color="tab:blue", capsize=4,
                   label="estimate $H_s$ (bars: 95% CI)")
    if sweep.reference is not None:
        upper.axhline(sweep.reference.value, color="tab:green", linestyle="--",
                      label=f"reference {sweep.reference.label} = {sweep.reference.value:.4f}")
    agreeing = [item.entropy for item in estimates if item.scale <= sweep.convergence.largest_agreeing_scale]
    if sweep.convergence.converged:
        upper.plot([s for s in scales if s <= sweep.convergence.largest_agreeing_scale], agreeing, "o",
                   markersize=11, markerfacecolor="none", color="tab:green",
                   label=f"agree with s = {scales[0]:.0e} (within {sweep.convergence.tolerance_se:g} se)")
    upper.set_xscale("log")
    upper.set_ylabel("entropy (nats)")
    upper.legend(loc="upper right", fontsize=9)
    upper.grid(True, which="both", alpha=0.3)
    n = estimates[0].num_samples
    upper.set_title(f"{title}\nN = {n:,}, {sweep.result.settings['dtype']}, seed {sweep.result.settings['seed']}"
                    if title else f"N = {n:,}", fontsize=10)

    _draw_distances(lower, sweep, baseline, baseline_label)
    lower.set_xscale("log")
    lower.invert_xaxis()  # s -> 0 to the right, as the sweep reads (shared with the upper panel)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=120)
    pyplot.close(figure)
    return target
