"""Comparing decoders with common random numbers: every model sees the same latent sequence.

For models A and B with per-sample terms a_i = h_A(z_i), b_i = h_B(z_i) on shared latents,
the difference H_A - H_B is estimated by mean(a_i - b_i) with the paired standard error

    se_paired = std(a_i - b_i) / sqrt(N) = sqrt(se_A^2 + se_B^2 - 2 cov(a, b) / N),

smaller than the unpaired sqrt(se_A^2 + se_B^2) when the terms are positively correlated,
and equal to it in expectation when the latents are independent. Models whose latent specs
differ (shape or distribution) cannot share latents: the first model's spec uses the seed
(its models' entropies equal ``estimate --seed``), every other spec an independent derived
seed (recorded per model), and differences across specs use the unpaired standard error,
which is then exact. Everything is streamed (float64 moments per
latent block, merged in block order), never stored per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Sequence

import torch

from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import LatentSpec, distribution_label, make_latent_spec
from genentropy_cli.core.significance import rank_descending
from genentropy_cli.core.stats import RunningMoments
from genentropy_cli.defaults import COMPARE_SIGNIFICANCE_LEVEL
from genentropy_cli.envelope import envelope
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.conditional_compare import ConditionalComparison, compare_conditional
from genentropy_cli.jobs.pairs import (
    PairDifference,
    column_group,
    latent_seeds,
    pair_differences,
    require_two_samples,
    same_latents,
)
from genentropy_cli.run.hooks import LogCallback, ProgressCallback, RunHooks
from genentropy_cli.run.loop import LoopOutcome, run_loop
from genentropy_cli.run.options import EstimateOptions, options_from
from genentropy_cli.run.results import RunRecord, ScaleEstimate, estimates_from_moments
from genentropy_cli.run.workload import DecoderWork, Workload

# --------------------------------------------------------------------------- results


@dataclass
class ModelSummary:
    name: str
    latent: LatentSpec
    output_dim: int
    estimates: list[ScaleEstimate]
    latent_seed: int = 0
    ranks: list[int] = field(default_factory=list)  # per scale, 1 = highest entropy
    num_nonfinite: int = 0
    info: dict = field(default_factory=dict)
    precision_probe: dict | None = None
    diagnostics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            **self.info,
            "latent_shape": list(self.latent.shape),
            "latent_distribution": distribution_label(self.latent.distribution),
            "latent_seed": self.latent_seed,
            "output_dim": self.output_dim,
            "estimates": [
                {**estimate.to_dict(), "rank": rank} for estimate, rank in zip(self.estimates, self.ranks)
            ],
            "num_nonfinite": self.num_nonfinite,
            "precision_probe": self.precision_probe,
            "diagnostics": dict(self.diagnostics),
        }


@dataclass
class ComparisonResult(RunRecord):
    models: list[ModelSummary]
    pairs: list[PairDifference]
    warnings: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [model.name for model in self.models]

    def pair(self, first: str, second: str, scale: float | None = None) -> PairDifference:
        """The pair (first, second) at ``scale`` (default the first scale); swapped if needed."""
        names = self.names
        a, b = names.index(first), names.index(second)
        wanted = self.settings["scales"][0] if scale is None else scale
        for item in self.pairs:
            if math.isclose(item.scale, wanted, rel_tol=1e-12) and {item.first, item.second} == {a, b}:
                if item.first == a:
                    return item
                return PairDifference(a, b, item.scale, -item.difference, item.stderr, item.paired_stderr,
                                      item.unpaired_stderr, item.correlation, item.shared_latents,
                                      -item.z_score, item.p_value, item.p_holm)
        raise KeyError((first, second, scale))

    def to_dict(self) -> dict:
        """JSON: settings, models (the estimate schema's keys per scale, plus rank) and pairs."""
        return envelope("compare", {
            "settings": dict(self.settings),
            "models": [model.to_dict() for model in self.models],
            "pairs": [pair.to_dict(self.names) for pair in self.pairs],
            "warnings": list(self.warnings),
            "elapsed_seconds": self.elapsed_seconds,
            "partial": self.partial,
            "stop_reason": self.stop_reason,
            "diagnostics": dict(self.diagnostics),
        })


# --------------------------------------------------------------------------- the run


def compare_models(
    decoders: Sequence[Any],
    latents: Sequence[LatentSpec | int | Sequence[int]],
    names: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
    n_samples: int | None = None,
    *,
    options: EstimateOptions | None = None,
    shared_latents: bool = True,
    labels: LabelSpec | int | Sequence[LabelSpec | int | None] | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
    **settings: Any,
) -> ComparisonResult | ConditionalComparison:
    """Estimate every decoder on the same latent sequence and every pairwise difference.

    Models with equal latent specs see identical latents z_i (common random numbers); each
    model's entropy equals ``estimate_entropy(decoder, latent, seed=model.latent_seed)``
    (``seed`` itself for the first model's spec; see ``latent_seeds``). With
    ``shared_latents=False`` model m draws from its own derived seed (``latent_seeds``), which
    makes the samples independent: the paired standard error then matches the unpaired one
    in expectation (a check of the method, not something to use for decisions).
    A sample that is non-finite for any model is dropped for all (``skip_nonfinite``).
    ``pairs`` are the (first, second) model indices whose differences are estimated and tested
    (Holm over them, per scale); default every pair (``track`` asks for consecutive ones).
    The run's settings are ``options`` and/or its fields as keywords, as for ``estimate_entropy``.
    ``labels`` (one ``LabelSpec`` or class count for all, or one per model) compares conditional
    decoders class by class and by H(X|Y) (``conditional_compare``).
    """
    given = {"scales": scales, "num_samples": n_samples}
    run_options = options_from(options, **{key: value for key, value in given.items() if value is not None},
                               **settings)
    if len(decoders) < 2:
        raise InputError("compare needs at least two models")
    if len(latents) != len(decoders):
        raise InputError(f"got {len(decoders)} decoders but {len(latents)} latent specs")
    names = list(names) if names is not None else [f"model {index + 1}" for index in range(len(decoders))]
    if len(set(names)) != len(names):
        raise InputError(f"model names must be distinct, got {', '.join(names)}")
    specs = [make_latent_spec(latent) for latent in latents]
    if run_options.num_samples < 2:
        raise InputError(f"compare needs at least 2 samples for standard errors, got {run_options.num_samples}")
    identity = {"names": list(names), "shared_latents": bool(shared_latents)}
    if pairs is not None:  # a checkpoint of other pairs has other columns: it cannot be resumed
        identity["pairs"] = [list(pair) for pair in _checked_pairs(pairs, len(decoders))]
    pairs = [tuple(pair) for pair in identity.get("pairs", _checked_pairs(None, len(decoders)))]
    seeds = latent_seeds(specs, run_options.seed, shared_latents)
    warnings = latent_sharing_notes(names, specs, seeds, shared_latents)
    if labels is not None:
        per_model = list(labels) if isinstance(labels, (list, tuple)) else [labels] * len(decoders)
        if len(per_model) != len(decoders):
            raise InputError(f"got {len(decoders)} decoders but {len(per_model)} label specs")
        hooks = RunHooks(progress=progress, log=log)
        return compare_conditional(decoders, specs, names, per_model, run_options, shared_latents, hooks, warnings)
    shared = [shared_latents and same_latents(specs[a], specs[b]) for a, b in pairs]

    def workload(device: torch.device) -> Workload:
        members = [DecoderWork.prepare(decoder, spec, model_seed, run_options, device, name)
                   for decoder, spec, model_seed, name in zip(decoders, specs, seeds, names)]
        return Workload(members, run_options.scales, tuple(pairs), paired=True,
                        extra_identity=identity)

    outcome = run_loop(workload, run_options, RunHooks(progress=progress, log=log))
    return comparison_result(outcome, specs, seeds, shared, warnings, shared_latents)


def latent_sharing_notes(names: Sequence[str], specs: Sequence[LatentSpec], seeds: Sequence[int],
                         shared_latents: bool) -> list[str]:
    """The warning when models' latent specs differ (only equal specs share latents)."""
    if not shared_latents or len(set(seeds)) == 1:
        return []
    described = "; ".join(f"{name}: {spec.describe()}, seed {model_seed}"
                          for name, spec, model_seed in zip(names, specs, seeds))
    return [f"the models' latent specs differ ({described}): only models with the same spec share latents; "
            "each other spec draws from its own seed (independent latents), and differences across specs "
            "use the unpaired standard error"]


def _checked_pairs(pairs: Sequence[tuple[int, int]] | None, count: int) -> list[tuple[int, int]]:
    """Every pair (a < b) by default; else the given ones, each of two distinct model indices."""
    if pairs is None:
        return list(combinations(range(count), 2))
    checked = [(int(a), int(b)) for a, b in pairs]
    for a, b in checked:
        if a == b or not (0 <= a < count and 0 <= b < count):
            raise InputError(f"pair ({a}, {b}) must name two different models among 0..{count - 1}")
    if not checked:
        raise InputError("give at least one pair of models to compare")
    return checked


def comparison_result(outcome: LoopOutcome, specs: Sequence[LatentSpec], seeds: Sequence[int], shared: Sequence[bool],
                      warnings: list[str], shared_latents: bool) -> ComparisonResult:
    """Every model's estimate and every pair's difference from the loop's moments, whose columns
    are every model's h_i per scale, then every pair's h_a - h_b per scale (``PairedRows``)."""
    workload, total, summary = outcome.workload, outcome.moments, outcome.summary
    names, scale_values, pairs = workload.names, workload.scales, list(workload.pairs)
    num_models, num_scales = len(workload.members), len(scale_values)
    require_two_samples(outcome, "model", "nothing to compare")

    def column_moments(column: int) -> RunningMoments:
        return column_group(total, column, num_scales)

    summaries = [
        ModelSummary(names[model], specs[model], member.prepared.output_dim,
                     estimates_from_moments(scale_values, column_moments(model)), latent_seed=seeds[model],
                     num_nonfinite=int(summary.models[model].num_nonfinite),
                     precision_probe=outcome.probe_reports[model],
                     diagnostics={**member.diagnostics(), **outcome.diagnostics["models"][model]})
        for model, member in enumerate(workload.members)
    ]
    for scale_index in range(num_scales):
        ranks = rank_descending([item.estimates[scale_index].entropy for item in summaries])
        for item, rank in zip(summaries, ranks):
            item.ranks.append(rank)
    differences = pair_differences(summaries, pairs, shared, [column_moments(num_models + p) for p in range(len(pairs))],
                                    scale_values)
    if summary.num_nonfinite:
        warnings.append(f"dropped {summary.num_nonfinite} sample(s) that were non-finite for at least one model; "
                        f"N = {total.count} for every model")
    settings = {
        **outcome.settings,
        "num_used": int(total.count),
        "shared_latents": bool(shared_latents),
        "significance_level": COMPARE_SIGNIFICANCE_LEVEL,
        "multiple_comparisons": "holm",
    }
    diagnostics = {key: value for key, value in outcome.diagnostics.items() if key != "models"}
    return ComparisonResult(summaries, differences, warnings, settings=settings,
                            elapsed_seconds=outcome.elapsed_seconds, partial=outcome.partial, stop_reason=outcome.stop_reason, diagnostics=diagnostics)
