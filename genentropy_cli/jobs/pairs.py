"""Differences between estimates on common latents: which models can share a latent sequence
(``latent_seeds``), and the columns of one ``PairedRows`` run (models of ``compare``, classes of
a conditional decoder) tested pair by pair.

For terms a_i, b_i on shared latents the difference H_a - H_b is estimated by mean(a_i - b_i),
with the paired standard error std(a_i - b_i) / sqrt(N); the unpaired one, sqrt(se_a^2 + se_b^2),
is what independent latents give. p-values are Holm-adjusted over the pairs of one scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from genentropy_cli.core.latents import LatentSpec, block_seed, distribution_label
from genentropy_cli.core.significance import (
    correlation_from_moments,
    holm_adjust,
    significance_mark,
    two_sided_p_value,
    unpaired_stderr,
    z_score,
)
from genentropy_cli.core.stats import RunningMoments
from genentropy_cli.defaults import COMPARE_SIGNIFICANCE_LEVEL
from genentropy_cli.errors import EstimationError
from genentropy_cli.run.rows import never_finite_note

__all__ = ["INDEPENDENT_SEED_OFFSET", "PairDifference", "column_group", "latent_seeds", "pair_differences",
           "require_two_samples", "same_latents"]


def _spec_key(spec: LatentSpec) -> tuple:
    return (tuple(spec.shape), distribution_label(spec.distribution))


def same_latents(first: LatentSpec, second: LatentSpec) -> bool:
    """Two latent specs that can share one latent sequence (same shape and distribution)."""
    return _spec_key(first) == _spec_key(second)


INDEPENDENT_SEED_OFFSET = 1_000_003
"""Derived seeds are block_seed(seed, INDEPENDENT_SEED_OFFSET + k): streams unrelated to seed's."""


def latent_seeds(specs: Sequence[LatentSpec], seed: int, shared_latents: bool = True) -> list[int]:
    """The seed of each model's latent stream.

    Shared: models with the first model's spec use ``seed`` (each then matches ``estimate
    --seed seed``); the k-th other spec (k = 1, 2, ...) uses a derived seed. Two specs drawn
    from one seed would not be independent (uniform and normal latents come from the same
    generator bits), so neither the paired nor the unpaired standard error would be right.
    Not shared: model m uses the derived seed of k = m + 1, all independent.
    """
    def derived(k: int) -> int:
        return block_seed(seed, INDEPENDENT_SEED_OFFSET + k)

    if not shared_latents:
        return [derived(index + 1) for index in range(len(specs))]
    order: list[tuple] = []
    for spec in specs:
        if _spec_key(spec) not in order:
            order.append(_spec_key(spec))
    return [seed if order.index(_spec_key(spec)) == 0 else derived(order.index(_spec_key(spec))) for spec in specs]


@dataclass
class PairDifference:
    """H_first - H_second at one scale."""

    first: int
    second: int
    scale: float
    difference: float
    stderr: float  # the one used for the test: paired where latents are shared
    paired_stderr: float  # std of per-sample differences (by sample index) / sqrt(N)
    unpaired_stderr: float
    correlation: float  # of the two models' per-sample terms, by sample index
    shared_latents: bool
    z_score: float = math.nan
    p_value: float = math.nan
    p_holm: float = math.nan

    @property
    def significant(self) -> bool:
        return bool(self.p_holm < COMPARE_SIGNIFICANCE_LEVEL)

    @property
    def mark(self) -> str:
        return significance_mark(self.p_holm)

    def to_dict(self, names: Sequence[str]) -> dict:
        return {
            "first": names[self.first],
            "second": names[self.second],
            "scale": self.scale,
            "difference": self.difference,
            "stderr": self.stderr,
            "paired_stderr": self.paired_stderr,
            "unpaired_stderr": self.unpaired_stderr,
            "correlation": self.correlation,
            "shared_latents": self.shared_latents,
            "z": self.z_score,
            "p_value": self.p_value,
            "p_holm": self.p_holm,
            "significant": self.significant,
            "mark": self.mark,
        }



def require_two_samples(outcome: Any, what: str, action: str = "nothing to estimate from") -> None:
    """Refuse a finished run left with fewer than two samples finite for every member (a model, a
    class), naming the members that were never finite (``--skip-nonfinite`` drops a sample
    non-finite for one member for all). An interrupted run is not refused: its partial result
    (NaN where no sample was used) is shown and the command exits 130, as for one decoder."""
    if outcome.moments.count >= 2 or outcome.partial:
        return
    cause = never_finite_note(outcome.summary, outcome.workload.names)
    raise EstimationError(f"fewer than two samples were finite for every {what}; {action}{cause}")


def column_group(total: RunningMoments, group: int, num_scales: int) -> RunningMoments:
    """The moments of one group of statistics columns (one per scale): a model's h_i, a pair's
    difference or a weighted sum, in the order ``PairedRows.terms`` lays them out."""
    window = slice(group * num_scales, (group + 1) * num_scales)
    return RunningMoments(total.count, total.mean[window], total.m2[window])


def pair_differences(summaries: Sequence[Any], pairs: list[tuple[int, int]], shared: list[bool],
                      moments: list[RunningMoments], scales: Sequence[float]) -> list[PairDifference]:
    """Every pair at every scale, with z, p and Holm-adjusted p (per scale, over all pairs);
    ``summaries`` are anything with ``estimates`` per scale (a model, a class, a weighted sum)."""
    result: list[PairDifference] = []
    for scale_index, scale in enumerate(scales):
        at_scale = []
        for (a, b), is_shared, difference in zip(pairs, shared, moments):
            first, second = summaries[a].estimates[scale_index], summaries[b].estimates[scale_index]
            paired = float(difference.stderr[scale_index])
            unpaired = unpaired_stderr(first.stderr, second.stderr)
            used = paired if is_shared else unpaired
            delta = float(difference.mean[scale_index])
            z = z_score(delta, used)
            at_scale.append(PairDifference(
                a, b, float(scale), delta, used, paired, unpaired,
                correlation_from_moments(first.std, second.std, float(difference.std[scale_index])),
                is_shared, z, two_sided_p_value(z)))
        for item, adjusted in zip(at_scale, holm_adjust([item.p_value for item in at_scale])):
            item.p_holm = adjusted
        result.extend(at_scale)
    return result
