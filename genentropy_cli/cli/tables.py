"""Rich tables for ``compare`` (models ranked, Table 2 style; pairwise differences) and ``samples``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.table import Table

from genentropy_cli.cli.fitting import Narrowing, narrowing
from genentropy_cli.cli.reporting import entropy_digits, format_error, format_number, format_std

if TYPE_CHECKING:  # annotations only
    from genentropy_cli.jobs.compare import ComparisonResult
    from genentropy_cli.jobs.samples import ExtremeSamples


def models_table(result: ComparisonResult, scale_index: int = 0) -> Table:
    """One row per model: entropy, standard error, per-sample std, rank (1 = highest entropy)."""
    scale = result.settings["scales"][scale_index]
    table = Table(
        title=f"Entropy at s = {scale:.0e} (seed {result.settings['seed']}"
              f"{'' if result.settings['shared_latents'] else ', independent latents'}, "
              f"N = {result.settings['num_used']})",
        caption=(f"{result.settings['device']}, {result.settings['dtype']}; {result.elapsed_seconds:.1f} s. "
                 "Entropy in nats; Std = per-sample std; Std. error = Std / sqrt(N); rank 1 = highest entropy."),
    )
    for header, justify in (("Model", "left"), ("Latent", "left"), ("Entropy", "right"), ("Std. error", "right"),
                            ("Std", "right"), ("Rank", "right")):
        table.add_column(header, justify=justify)
    order = sorted(range(len(result.models)), key=lambda index: result.models[index].ranks[scale_index])
    for index in order:
        model = result.models[index]
        estimate = model.estimates[scale_index]
        entropy = format_number(estimate.entropy, entropy_digits(estimate.stderr, 2))
        table.add_row(model.name, model.latent.describe(), entropy, format_error(estimate.stderr),
                      format_std(estimate.std, 2), str(model.ranks[scale_index]))
    return narrowing(table, Narrowing(short={"Std. error": "SE"}, legend="SE = Std. error."))


def pairs_table(result: ComparisonResult, scale_index: int = 0) -> Table:
    """One row per pair, written so the difference is positive (higher-entropy model first)."""
    scale = result.settings["scales"][scale_index]
    level = result.settings["significance_level"]
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Differences at s = {scale:.0e}",
        caption=(
            "Pair: first - second; Diff. = H(first) - H(second), nats. Paired SE = std of the per-sample differences / sqrt(N); "
            "Unpaired SE = sqrt(SE1^2 + SE2^2). The test uses the paired SE where the two models share latents, "
            "the unpaired one where they do not (their paired SE, in brackets, then pairs samples by index "
            "only). Corr = correlation of the two models' per-sample terms. p: two-sided normal test, "
            f"Holm-adjusted over all pairs; * p < {level:g}, ** p < 0.01, *** p < 0.001."
        ),
    )
    for header, justify in (("Pair", "left"), ("Diff.", "right"), ("Paired SE", "right"), ("Unpaired SE", "right"),
                            ("Corr", "right"), ("z", "right"), ("p Holm", "right"), ("", "left")):
        table.add_column(header, justify=justify, no_wrap=header != "Pair", overflow="fold")
    names = result.names
    for pair in result.pairs:
        if pair.scale != scale:
            continue
        first, second = (pair.first, pair.second) if pair.difference >= 0 else (pair.second, pair.first)
        oriented = result.pair(names[first], names[second], scale)
        paired = format_error(oriented.paired_stderr)
        tested_stderr = oriented.paired_stderr if oriented.shared_latents else oriented.unpaired_stderr
        table.add_row(
            f"{names[first]} - {names[second]}",
            format_number(oriented.difference, entropy_digits(tested_stderr, 2)),
            f"[bold]{paired}[/bold]" if oriented.shared_latents else f"({paired})",
            format_error(oriented.unpaired_stderr) if oriented.shared_latents
            else f"[bold]{format_error(oriented.unpaired_stderr)}[/bold]",
            format_number(oriented.correlation, 2),
            format_z(oriented.z_score),
            f"{oriented.p_holm:.0e}" if oriented.p_holm == oriented.p_holm else "-",
            oriented.mark,
        )
    return narrowing(table, Narrowing(short={"Paired SE": "SE", "Unpaired SE": "unp. SE", "p Holm": "p"},
                                      optional=("Corr", "z"),
                                      legend="Short headers: SE = Paired SE; unp. SE = Unpaired SE; p = p Holm."))


def format_z(value: float) -> str:
    """z to one decimal; beyond +-999 just the bound (the p-value is 0 either way)."""
    if value != value:
        return "-"
    if abs(value) > 999:
        return ">999" if value > 0 else "<-999"
    return f"{value:.1f}"


def samples_table(result: ExtremeSamples, model_path: str) -> Table:
    """The chosen samples: which end, sample index, h_i and its two pieces."""
    table = Table(
        title=f"Lowest and highest entropy terms of {model_path}",
        caption=(f"h = -log p(z) + 1/2 log det(J^T J + s^2 I) at s = {result.scale:.0e} (nats), the negative log "
                 f"density of the output; extremes of N = {result.num_samples}, seed {result.settings['seed']}."),
    )
    for header in ("End", "Sample", "h", "-log p(z)", "1/2 log det"):
        table.add_column(header, justify="right")
    for end, part in (("lowest", result.lowest), ("highest", result.highest)):
        for index, term, neg_log, half in zip(part["indices"], part["terms"], part["neg_log_density"],
                                              part["half_log_det"]):
            table.add_row(end, str(int(index)), format_number(float(term), 2), format_number(float(neg_log), 2),
                          format_number(float(half), 2))
    return table
