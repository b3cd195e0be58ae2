"""Rich tables for conditional decoders: per-class entropies, the summary H(X|Y), H(Y) and the
mixture bounds, class differences, sweeps per class, comparisons class by class, extremes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from rich import box
from rich.table import Table

from genentropy_cli.cli.reporting import entropy_digits, format_error, format_number, format_std
from genentropy_cli.cli.tables import format_z
from genentropy_cli.jobs.pairs import PairDifference

if TYPE_CHECKING:  # annotations only: rendering one result imports no other job
    from genentropy_cli.jobs.conditional import ConditionalResult
    from genentropy_cli.jobs.conditional_compare import ConditionalComparison
    from genentropy_cli.jobs.samples import ConditionalExtremes
    from genentropy_cli.jobs.sweep import SweepResult

BOUNDS_NOTE = ("H(X|Y) <= H(X) <= H(X|Y) + H(Y) for the mixture x = g(z, y), y ~ p(y); H(X) is the upper end "
               "when the classes' outputs do not overlap (docs/conditional.md)")


def _entropy(value: float, stderr: float) -> str:
    return format_number(value, entropy_digits(stderr))


def class_table(result: ConditionalResult, model_path: str, scale_index: int = 0) -> Table:
    """One row per class: p(y), H(X|y), standard error, std, rank (1 = most diverse)."""
    scale = result.conditional[scale_index].scale
    settings = result.settings
    table = Table(
        title=f"Per-class entropy of {model_path} at s = {scale:.0e}"
              + (" [bold red]PARTIAL (interrupted)[/bold red]" if result.partial else ""),
        caption=(f"latent {result.latent.describe()}, D = {result.output_dim}; every class on the same "
                 f"N = {settings['num_used']} latents (seed {settings['seed']}); {settings['device']}, "
                 f"{settings['dtype']}; {result.elapsed_seconds:.1f} s. H(X|y) in nats; rank 1 = highest entropy."),
    )
    for header in ("Class", "p(y)", "H(X|y)", "Std. error", "Std", "Rank"):
        table.add_column(header, justify="right")
    for item in sorted(result.classes, key=lambda entry: entry.ranks[scale_index]):
        estimate = item.estimates[scale_index]
        table.add_row(str(item.label), format_number(item.probability, 3), _entropy(estimate.entropy, estimate.stderr),
                      format_error(estimate.stderr), format_std(estimate.std, 2), str(item.ranks[scale_index]))
    return table


def summary_table(result: ConditionalResult) -> Table:
    """One row per scale: H(X|Y) with its standard error, H(Y), and the mixture entropy's bounds."""
    table = Table(title="Conditional and mixture entropy", caption=BOUNDS_NOTE + "; nats.")
    for header in ("Scale s", "H(X|Y)", "Std. error", "H(Y)", "H(X) lower", "H(X) upper"):
        table.add_column(header, justify="right")
    for item, bounds in zip(result.conditional, result.mixture):
        table.add_row(f"{item.scale:.0e}", _entropy(item.entropy, item.stderr), format_error(item.stderr),
                      format_number(result.label_entropy), _entropy(bounds.lower, item.stderr),
                      _entropy(bounds.upper, item.stderr))
    return table


def _difference_cells(pair: PairDifference) -> list[str]:
    return [format_number(pair.difference, entropy_digits(pair.stderr, 2)), format_error(pair.paired_stderr),
            format_number(pair.correlation, 2), format_z(pair.z_score),
            f"{pair.p_holm:.0e}" if pair.p_holm == pair.p_holm else "-", pair.mark]


def adjacent_pairs_table(result: ConditionalResult, scale_index: int = 0) -> Table | None:
    """Each class against the next in rank: H(X|a) - H(X|b) with its paired standard error (the
    test of every pair is in the JSON's ``class_pairs``)."""
    scale = result.conditional[scale_index].scale
    ranked = sorted(range(len(result.classes)), key=lambda index: result.classes[index].ranks[scale_index])
    found = {(pair.first, pair.second): pair for pair in result.pairs if pair.scale == scale}
    if not found:
        return None
    table = Table(box=box.SIMPLE_HEAD, title=f"Classes next in rank at s = {scale:.0e}",
                  caption="Diff. = H(X|a) - H(X|b) on the same latents; paired SE; p Holm-adjusted over all pairs "
                          "of classes; * p < 0.05, ** p < 0.01, *** p < 0.001.")
    for header in ("Pair", "Diff.", "Paired SE", "Corr", "z", "p Holm", ""):
        table.add_column(header, justify="left" if header in ("Pair", "") else "right")
    for higher, lower in zip(ranked, ranked[1:]):
        pair = found.get((higher, lower)) or found.get((lower, higher))
        if pair is None:
            continue
        if pair.first != higher:
            pair = PairDifference(higher, lower, pair.scale, -pair.difference, pair.stderr, pair.paired_stderr,
                                  pair.unpaired_stderr, pair.correlation, pair.shared_latents, -pair.z_score,
                                  pair.p_value, pair.p_holm)
        labels = result.classes[higher].label, result.classes[lower].label
        table.add_row(f"y={labels[0]} - y={labels[1]}", *_difference_cells(pair))
    return table


def estimate_tables(result: ConditionalResult, model_path: str) -> list[Any]:
    """What ``estimate`` prints for a conditional decoder."""
    tables: list[Any] = []
    for index in range(len(result.conditional)):
        tables.append(class_table(result, model_path, index))
        adjacent = adjacent_pairs_table(result, index)
        if adjacent is not None:
            tables.append(adjacent)
    tables.append(summary_table(result))
    return tables


def class_sweep_table(sweep: SweepResult) -> Table:
    """One row per class, one column per scale (H(X|y) with its standard error), and the verdict."""
    result = sweep.result
    estimates = sorted(result.conditional, key=lambda item: item.scale, reverse=True)
    table = Table(title="Per-class sweep", caption="H(X|y) (standard error) in nats; converged: every smaller scale "
                                                   "agrees with the smallest (see the H(X|Y) verdict).")
    table.add_column("Class", justify="right")
    for item in estimates:
        table.add_column(f"s = {item.scale:.0e}", justify="right")
    table.add_column("Converged", justify="left")
    for item, verdict in zip(result.classes, sweep.class_convergence):
        by_scale = {estimate.scale: estimate for estimate in item.estimates}
        cells = [f"{_entropy(by_scale[e.scale].entropy, by_scale[e.scale].stderr)} "
                 f"({format_error(by_scale[e.scale].stderr)})" for e in estimates]
        mark = "-" if verdict.converged is None else (f"yes, s <= {verdict.largest_agreeing_scale:.0e}"
                                                     if verdict.converged else "no")
        table.add_row(str(item.label), *cells, mark)
    return table


def comparison_models_table(result: ConditionalComparison, scale_index: int = 0) -> Table:
    """One row per model: H(X|Y), its standard error, H(Y), the mixture bounds, rank."""
    scale = result.models[0].conditional[scale_index].scale
    table = Table(title=f"Conditional entropy H(X|Y) at s = {scale:.0e} (seed {result.settings['seed']}, "
                        f"N = {result.settings['num_used']})", caption=BOUNDS_NOTE + "; rank 1 = highest H(X|Y).")
    for header in ("Model", "H(X|Y)", "Std. error", "H(Y)", "H(X) upper", "Rank"):
        table.add_column(header, justify="left" if header == "Model" else "right")
    for model in sorted(result.models, key=lambda item: item.ranks[scale_index]):
        item, bounds = model.conditional[scale_index], model.mixture[scale_index]
        table.add_row(model.name, _entropy(item.entropy, item.stderr), format_error(item.stderr),
                      format_number(model.label.label_entropy()), _entropy(bounds.upper, item.stderr),
                      str(model.ranks[scale_index]))
    return table


def comparison_pairs_table(result: ConditionalComparison, scale_index: int = 0) -> Table:
    """Per class and for H(X|Y): first model minus second, paired standard error, z, Holm p."""
    scale = result.models[0].conditional[scale_index].scale
    names = result.names
    table = Table(box=box.SIMPLE_HEAD, title=f"Differences at s = {scale:.0e}",
                  caption="Diff. = first - second on the same latents (per class: H(X|y); last rows: H(X|Y)); "
                          "paired SE; p Holm-adjusted (per class over all class rows, H(X|Y) over its rows).")
    for header in ("Class", "Pair", "Diff.", "Paired SE", "Corr", "z", "p Holm", ""):
        table.add_column(header, justify="left" if header in ("Pair", "") else "right")
    rows: Sequence[tuple[str, PairDifference]] = [(str(label), pair) for label, pair in result.class_pairs
                                                  if pair.scale == scale]
    rows = [*rows, *[("H(X|Y)", pair) for pair in result.conditional_pairs if pair.scale == scale]]
    for label, pair in rows:
        table.add_row(label, f"{names[pair.first]} - {names[pair.second]}", *_difference_cells(pair))
    return table


def samples_table(result: ConditionalExtremes, model_path: str) -> Table:
    """Every class's chosen samples: class, end, sample index, h_i and its two pieces."""
    table = Table(title=f"Lowest and highest entropy terms of {model_path}, per class",
                  caption=(f"h = -log p(z) + 1/2 log det(J^T J + s^2 I) at s = {result.scale:.0e} (nats); extremes of "
                           f"the same N = {result.num_samples} latents for every class, seed {result.settings['seed']}."))
    for header in ("Class", "End", "Sample", "h", "-log p(z)", "1/2 log det"):
        table.add_column(header, justify="right")
    for label, item in zip(result.label.chosen, result.classes):
        for end, part in (("lowest", item.lowest), ("highest", item.highest)):
            for index, term, neg_log, half in zip(part["indices"], part["terms"], part["neg_log_density"],
                                                  part["half_log_det"]):
                table.add_row(str(label), end, str(int(index)), format_number(float(term), 2),
                              format_number(float(neg_log), 2), format_number(float(half), 2))
    return table
