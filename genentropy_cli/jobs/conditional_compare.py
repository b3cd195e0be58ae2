"""Comparing conditional decoders: every model at every class on the same latents.

For models A and B with the same classes, each class y gives H_A(X|y) - H_B(X|y) with its paired
standard error (A and B at class y see the same z_i), and the models' H(X|Y) differ by

    H_A(X|Y) - H_B(X|Y) = mean_i sum_y [p_A(y) h_{A,y}(z_i) - p_B(y) h_{B,y}(z_i)],

one more weighted column of the run (``PairedRows.combinations``), so its paired standard error
includes every covariance between models and classes. Models whose latent specs differ draw
independent latents (``pairs.latent_seeds``) and use unpaired standard errors, as ``compare`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Sequence

import torch

from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import LatentSpec, distribution_label
from genentropy_cli.core.significance import rank_descending
from genentropy_cli.defaults import COMPARE_SIGNIFICANCE_LEVEL
from genentropy_cli.envelope import envelope
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.conditional import (
    ClassEstimate,
    MixtureBounds,
    as_label_spec,
    check_conditional_run,
    class_estimates,
    class_members,
    run_diagnostics,
)
from genentropy_cli.jobs.pairs import (
    PairDifference,
    column_group,
    latent_seeds,
    pair_differences,
    require_two_samples,
    same_latents,
)
from genentropy_cli.run.hooks import RunHooks
from genentropy_cli.run.loop import LoopOutcome, run_loop
from genentropy_cli.run.options import EstimateOptions
from genentropy_cli.run.results import RunRecord, ScaleEstimate, estimates_from_moments
from genentropy_cli.run.workload import Workload

__all__ = ["ConditionalComparison", "ConditionalModel", "compare_conditional"]


@dataclass
class ConditionalModel:
    """One model of a conditional comparison: its classes, H(X|Y) and where its latents came from."""

    name: str
    label: LabelSpec
    latent: LatentSpec
    output_dim: int
    latent_seed: int
    classes: list[ClassEstimate]
    conditional: list[ScaleEstimate]
    ranks: list[int] = field(default_factory=list)  # of H(X|Y) among the models, per scale
    info: dict = field(default_factory=dict)

    @property
    def estimates(self) -> list[ScaleEstimate]:
        return self.conditional

    @property
    def mixture(self) -> list[MixtureBounds]:
        extra = self.label.label_entropy()
        return [MixtureBounds(item.scale, item.entropy, item.entropy + extra, item.stderr) for item in self.conditional]

    def to_dict(self) -> dict:
        return {"name": self.name, **self.info, "latent_shape": list(self.latent.shape),
                "latent_distribution": distribution_label(self.latent.distribution), "latent_seed": self.latent_seed,
                "output_dim": self.output_dim,
                "label": {**self.info.get("label", {}), **self.label.to_dict(),
                          "probabilities": list(self.label.probabilities)},
                "classes": [item.to_dict() for item in self.classes],
                "conditional_entropy": [{**item.to_dict(), "rank": rank}
                                        for item, rank in zip(self.conditional, self.ranks)],
                "label_entropy": self.label.label_entropy(),
                "mixture_entropy": [item.to_dict() for item in self.mixture]}


@dataclass
class ConditionalComparison(RunRecord):
    """Every model's classes and H(X|Y); per class, every pair of models; H(X|Y) pair by pair."""

    models: list[ConditionalModel]
    class_pairs: list[tuple[int, PairDifference]]
    """(class, H_first(X|class) - H_second(X|class)); first/second index ``models``."""
    conditional_pairs: list[PairDifference]
    """H_first(X|Y) - H_second(X|Y)."""
    warnings: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [model.name for model in self.models]

    def to_dict(self) -> dict:
        return envelope("compare", {
            "settings": dict(self.settings),
            "conditional": True,
            "models": [model.to_dict() for model in self.models],
            "class_pairs": [{**pair.to_dict(self.names), "label": label} for label, pair in self.class_pairs],
            "conditional_pairs": [pair.to_dict(self.names) for pair in self.conditional_pairs],
            "warnings": list(self.warnings),
            "elapsed_seconds": self.elapsed_seconds,
            "partial": self.partial,
            "stop_reason": self.stop_reason,
            "diagnostics": dict(self.diagnostics),
        })


def _check_labels(labels: Sequence[LabelSpec | int | None], names: Sequence[str]) -> list[LabelSpec]:
    if any(label is None for label in labels):
        plain = [name for name, label in zip(names, labels) if label is None]
        raise InputError(f"compare needs every model conditional or none; {', '.join(plain)} takes no class label "
                         "(give --num-classes for it, or compare conditional models separately)")
    specs = [as_label_spec(label) for label in labels]
    if len({spec.chosen for spec in specs}) != 1:
        described = "; ".join(f"{name}: {','.join(map(str, spec.chosen))}" for name, spec in zip(names, specs))
        raise InputError(f"conditional models are compared class by class and must have the same classes ({described}); "
                         "choose common ones with --classes")
    return specs


def compare_conditional(decoders: Sequence[Any], specs: Sequence[LatentSpec], names: Sequence[str],
                        labels: Sequence[LabelSpec | int | None], options: EstimateOptions, shared_latents: bool,
                        hooks: RunHooks, warnings: list[str]) -> ConditionalComparison:
    """Every model at every class on common latents (see the module doc); ``warnings`` so far."""
    label_specs = _check_labels(labels, names)
    warnings = warnings + check_conditional_run(label_specs[0], options)
    count, classes = len(decoders), len(label_specs[0].chosen)
    seeds = latent_seeds(specs, options.seed, shared_latents)
    model_pairs = list(combinations(range(count), 2))
    member_pairs = tuple((a * classes + k, b * classes + k) for a, b in model_pairs for k in range(classes))

    def weights(model: int, sign: float = 1.0) -> list[float]:
        row = [0.0] * (count * classes)
        row[model * classes:(model + 1) * classes] = [sign * p for p in label_specs[model].probabilities]
        return row

    sums = [weights(model) for model in range(count)]
    sums += [[x + y for x, y in zip(weights(a), weights(b, -1.0))] for a, b in model_pairs]

    def workload(device: torch.device) -> Workload:
        members = [member for decoder, spec, label, seed, name in zip(decoders, specs, label_specs, seeds, names)
                   for member in class_members(decoder, spec, label, seed, options, device, prefix=f"{name}/")]
        return Workload(members, options.scales, member_pairs, paired=True, combinations=tuple(map(tuple, sums)),
                        extra_identity={"names": list(names), "shared_latents": bool(shared_latents),
                                        "labels": [label.to_dict() for label in label_specs]})

    outcome = run_loop(workload, options, hooks)
    shared = [shared_latents and same_latents(specs[a], specs[b]) for a, b in model_pairs]
    return _comparison(outcome, names, label_specs, specs, seeds, shared, warnings, shared_latents)


def _comparison(outcome: LoopOutcome, names: Sequence[str], labels: list[LabelSpec], specs: Sequence[LatentSpec],
                seeds: Sequence[int], shared: list[bool], warnings: list[str],
                shared_latents: bool) -> ConditionalComparison:
    workload, total = outcome.workload, outcome.moments
    require_two_samples(outcome, "model and class", "nothing to compare")
    scales, count, classes = workload.scales, len(names), len(labels[0].chosen)
    members, pairs = count * classes, list(workload.pairs)
    models = [ConditionalModel(
        name, label, spec, workload.members[index * classes].prepared.output_dim, seed,
        class_estimates(outcome, label, first_member=index * classes, first_group=index * classes),
        estimates_from_moments(scales, column_group(total, members + len(pairs) + index, len(scales))))
        for index, (name, label, spec, seed) in enumerate(zip(names, labels, specs, seeds))]
    for scale_index in range(len(scales)):
        for model, rank in zip(models, rank_descending([model.conditional[scale_index].entropy for model in models])):
            model.ranks.append(rank)
    model_pairs = list(combinations(range(count), 2))
    flat = [item for model in models for item in model.classes]
    per_class = pair_differences(flat, pairs, [shared[index // classes] for index in range(len(pairs))],
                                 [column_group(total, members + index, len(scales)) for index in range(len(pairs))],
                                 scales)
    class_pairs = [(flat[item.first].label, PairDifference(
        item.first // classes, item.second // classes, item.scale, item.difference, item.stderr, item.paired_stderr,
        item.unpaired_stderr, item.correlation, item.shared_latents, item.z_score, item.p_value, item.p_holm))
        for item in per_class]
    first_sum = members + len(pairs) + count
    conditional_pairs = pair_differences(models, model_pairs, shared,
                                         [column_group(total, first_sum + index, len(scales))
                                          for index in range(len(model_pairs))], scales)
    if outcome.summary.num_nonfinite:
        warnings.append(f"dropped {outcome.summary.num_nonfinite} sample(s) that were non-finite for at least one "
                        f"model and class; N = {total.count} for every one")
    settings = {**outcome.settings, "num_used": int(total.count), "shared_latents": bool(shared_latents),
                "significance_level": COMPARE_SIGNIFICANCE_LEVEL, "multiple_comparisons": "holm"}
    return ConditionalComparison(models, class_pairs, conditional_pairs, warnings, settings=settings,
                                 elapsed_seconds=outcome.elapsed_seconds, partial=outcome.partial, stop_reason=outcome.stop_reason,
                                 diagnostics=run_diagnostics(outcome))
