"""Conditional decoders x = g(z, y): the entropy of every class on common latents, H(X|Y), H(Y)
and the bounds on the entropy of the mixture (docs/conditional.md).

Each chosen class y is one member of a paired ``Workload``: the decoder bound to y
(``core.labels.ClassBoundDecoder``, every class a view of one private copy of the weights), all
on the same latent sequence z_1..z_N (common random numbers), so that class differences have
paired standard errors exactly as ``compare``'s models do. With class probabilities p(y):

    H(X|y) = mean_i h_y(z_i)                            per class, its own standard error
    H(X|Y) = sum_y p(y) H(X|y) = mean_i w_i,   w_i = sum_y p(y) h_y(z_i)

so H(X|Y)'s standard error is std(w) / sqrt(N), the classes' covariances included (the column w
is one of the loop's statistics columns, ``PairedRows.combinations``). H(Y) = -sum_y p(y) log p(y)
is exact. The mixture X (y ~ p, then x = g(z, y)) has H(X) = H(X|Y) + H(Y) - H(Y|X), so

    H(X|Y) <= H(X) <= H(X|Y) + H(Y),

with the upper end when x determines y (the classes' output sets do not overlap), as for an
injective decoder with distinct class manifolds; the lower end when every class has the same
output distribution (a decoder that ignores y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Sequence

import torch

from genentropy_cli.core.decoder import private_copy
from genentropy_cli.core.device import resolve_dtype
from genentropy_cli.core.labels import LabelSpec, bind_class
from genentropy_cli.core.latents import LatentSpec, distribution_label
from genentropy_cli.core.significance import rank_descending
from genentropy_cli.defaults import CONDITIONAL_MAX_PAIRED_CLASSES
from genentropy_cli.envelope import envelope
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.pairs import PairDifference, column_group, pair_differences, require_two_samples
from genentropy_cli.run.loop import LoopOutcome
from genentropy_cli.run.options import EstimateOptions
from genentropy_cli.run.results import DecoderRunRecord, ScaleEstimate, estimates_from_moments
from genentropy_cli.run.workload import DecoderWork, Workload

__all__ = ["ClassEstimate", "ConditionalResult", "MixtureBounds", "as_label_spec", "class_members",
           "conditional_result", "conditional_workload"]


def as_label_spec(labels: LabelSpec | int) -> LabelSpec:
    """A ``LabelSpec``, or a class count (index labels, second positional argument, uniform p(y))."""
    return labels if isinstance(labels, LabelSpec) else LabelSpec(labels)


@dataclass
class ClassEstimate:
    """H(X|y) of one class at every scale."""

    label: int
    probability: float
    estimates: list[ScaleEstimate]
    ranks: list[int] = field(default_factory=list)  # per scale, 1 = highest entropy
    num_nonfinite: int = 0
    precision_probe: dict | None = None
    diagnostics: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"y={self.label}"

    def to_dict(self) -> dict:
        return {"label": self.label, "name": self.name, "probability": self.probability,
                "estimates": [{**estimate.to_dict(), "rank": rank} for estimate, rank in zip(self.estimates, self.ranks)],
                "num_nonfinite": self.num_nonfinite, "precision_probe": self.precision_probe,
                "diagnostics": dict(self.diagnostics)}


@dataclass(frozen=True)
class MixtureBounds:
    """H(X|Y) <= H(X) <= H(X|Y) + H(Y) at one scale; both ends share H(X|Y)'s standard error."""

    scale: float
    lower: float
    upper: float
    stderr: float

    def to_dict(self) -> dict:
        return {"scale": self.scale, "lower": self.lower, "upper": self.upper, "stderr": self.stderr}


@dataclass
class ConditionalResult(DecoderRunRecord):
    """Every class's H(X|y), their paired differences, H(X|Y), H(Y) and the mixture's bounds.
    Its ``precision_probe`` is the class whose h_i the decoder dtype moves most (every class's is
    in ``classes``)."""

    label: LabelSpec
    classes: list[ClassEstimate]
    conditional: list[ScaleEstimate]
    """H(X|Y) per scale."""
    pairs: list[PairDifference]
    """H(X|a) - H(X|b) for every pair of classes (``first``/``second`` index ``classes``)."""
    warnings: list[str] = field(default_factory=list)

    @property
    def estimates(self) -> list[ScaleEstimate]:
        """H(X|Y) per scale (what a run's notes and a sweep's convergence read)."""
        return self.conditional

    @property
    def label_entropy(self) -> float:
        """H(Y) = -sum_y p(y) log p(y), exact."""
        return self.label.label_entropy()

    @property
    def mixture(self) -> list[MixtureBounds]:
        return [MixtureBounds(item.scale, item.entropy, item.entropy + self.label_entropy, item.stderr)
                for item in self.conditional]

    @property
    def samples_per_second(self) -> float:
        """Class-samples (one decoder's term per latent and class) per second."""
        used = self.settings["num_samples"] if self.samples_computed is None else self.samples_computed
        return used * len(self.classes) / self.elapsed_seconds if self.elapsed_seconds > 0 else math.inf

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.classes]

    def class_estimate(self, label: int) -> ClassEstimate:
        for item in self.classes:
            if item.label == label:
                return item
        raise KeyError(label)

    def to_dict(self, command: str = "estimate", model: dict | None = None) -> dict:
        """JSON: the model (with its label), settings, classes, class pairs, H(X|Y), H(Y), mixture bounds."""
        labels = {index: item.label for index, item in enumerate(self.classes)}
        model = (self.model_record if model is None else model) or {}
        return envelope(command, {
            "model": {**model, "latent_shape": list(self.latent.shape),
                      "latent_distribution": distribution_label(self.latent.distribution),
                      "output_dim": self.output_dim, "output_shape": list(self.output_shape),
                      "label": {**model.get("label", {}), **self.label.to_dict(),
                                "probabilities": list(self.label.probabilities)}},
            "settings": dict(self.settings),
            "classes": [item.to_dict() for item in self.classes],
            "class_pairs": [{**pair.to_dict(self.names), "first_label": labels[pair.first],
                             "second_label": labels[pair.second]} for pair in self.pairs],
            "conditional_entropy": [item.to_dict() for item in self.conditional],
            "label_entropy": self.label_entropy,
            "mixture_entropy": [item.to_dict() for item in self.mixture],
            "warnings": list(self.warnings),
            **self.run_dict(),
        })


# --------------------------------------------------------------------------- the workload


def class_members(decoder: Any, spec: LatentSpec, label: LabelSpec, seed: int, options: EstimateOptions,
                  device: torch.device, prefix: str = "") -> list[DecoderWork]:
    """One member per chosen class, named ``{prefix}y={class}``, on the latents of ``seed``; they
    all run views of ONE private copy of the decoder (one set of weights on the device)."""
    shared, _ = private_copy(decoder, device, resolve_dtype(options.dtype))
    return [DecoderWork.prepare(bind_class(decoder, label, chosen), spec, seed, options, device,
                                name=f"{prefix}y={chosen}", computed=bind_class(shared, label, chosen))
            for chosen in label.chosen]


def class_pairs(count: int) -> tuple[tuple[int, int], ...]:
    """Every pair of classes, up to ``CONDITIONAL_MAX_PAIRED_CLASSES`` classes (their number grows
    as K^2; beyond it, none)."""
    return tuple(combinations(range(count), 2)) if count <= CONDITIONAL_MAX_PAIRED_CLASSES else ()


def conditional_workload(decoder: Any, spec: LatentSpec, label: LabelSpec, options: EstimateOptions,
                         device: torch.device, every_eigenvalue: bool = False) -> Workload:
    """Every chosen class on the latents of ``options.seed``; columns: each class's h_y, each pair's
    difference, and w = sum_y p(y) h_y (``every_eigenvalue``: ``Workload.every_eigenvalue``)."""
    members = class_members(decoder, spec, label, options.seed, options, device)
    return Workload(members, options.scales, class_pairs(len(members)), paired=True,
                    extra_identity={"label": label.to_dict()}, combinations=(label.probabilities,),
                    every_eigenvalue=every_eigenvalue)


def check_conditional_run(label: LabelSpec, options: EstimateOptions) -> list[str]:
    """Refuse what a conditional run cannot do; the notes it gives (pairs left out)."""
    if options.num_samples < 2:
        raise InputError(f"a conditional estimate needs at least 2 samples for standard errors, got {options.num_samples}")
    if len(label.chosen) > CONDITIONAL_MAX_PAIRED_CLASSES:
        return [f"{len(label.chosen)} classes: differences between classes are computed for at most "
                f"{CONDITIONAL_MAX_PAIRED_CLASSES}; choose some with --classes to get them"]
    return []


# --------------------------------------------------------------------------- the result


def largest_probe(reports: Sequence[dict | None]) -> dict | None:
    """The precision-probe report with the largest shift in standard errors (None if there is none)."""
    def shift(report: dict | None) -> float:
        values = [abs(value) for value in (report or {}).get("difference_in_stderr") or [] if value == value]
        return max(values, default=-1.0)

    measured = [report for report in reports if report is not None]
    return max(measured, key=shift) if measured else None


def class_estimates(outcome: LoopOutcome, label: LabelSpec, first_member: int = 0,
                    first_group: int = 0) -> list[ClassEstimate]:
    """The classes of the members from ``first_member`` on (statistics groups from
    ``first_group``), with their ranks per scale."""
    workload, scales = outcome.workload, outcome.workload.scales
    classes = []
    for offset, (chosen, probability) in enumerate(zip(label.chosen, label.probabilities)):
        member = first_member + offset
        classes.append(ClassEstimate(
            chosen, probability, estimates_from_moments(scales, column_group(outcome.moments, first_group + offset,
                                                                             len(scales))),
            num_nonfinite=int(outcome.summary.models[member].num_nonfinite),
            precision_probe=outcome.probe_reports[member],
            diagnostics={**workload.members[member].diagnostics(), **outcome.diagnostics["models"][member]}))
    for scale_index in range(len(scales)):
        for item, rank in zip(classes, rank_descending([item.estimates[scale_index].entropy for item in classes])):
            item.ranks.append(rank)
    return classes


def run_diagnostics(outcome: LoopOutcome) -> dict:
    """The run's diagnostics with the first member's decoder facts (every class runs the same
    decoder) and the Jacobians' spectrum over every member's samples (each class's is in its own)."""
    rest = {key: value for key, value in outcome.diagnostics.items() if key != "models"}
    return {**outcome.workload.members[0].diagnostics(), **rest,
            **outcome.summary.pooled().diagnostics(outcome.workload.scales)}


def conditional_result(outcome: LoopOutcome, label: LabelSpec, warnings: list[str]) -> ConditionalResult:
    """Classes, class pairs and H(X|Y) from the loop's moments (columns laid out by ``conditional_workload``)."""
    workload, total, summary = outcome.workload, outcome.moments, outcome.summary
    scales, count, pairs = workload.scales, len(workload.members), list(workload.pairs)
    require_two_samples(outcome, "class")
    classes = class_estimates(outcome, label)
    differences = pair_differences(classes, pairs, [True] * len(pairs),
                                   [column_group(total, count + index, len(scales)) for index in range(len(pairs))],
                                   scales)
    conditional = estimates_from_moments(scales, column_group(total, count + len(pairs), len(scales)))
    if summary.num_nonfinite:
        warnings.append(f"dropped {summary.num_nonfinite} sample(s) that were non-finite for at least one class; "
                        f"N = {total.count} for every class")
    member = workload.members[0]
    return ConditionalResult(
        label, classes, conditional, differences, warnings, latent=member.spec,
        output_dim=member.prepared.output_dim, output_shape=member.prepared.output_shape,
        settings={**outcome.settings, "num_used": int(total.count)}, elapsed_seconds=outcome.elapsed_seconds,
        num_nonfinite=summary.num_nonfinite, nonfinite_indices=list(summary.nonfinite_indices),
        diagnostics=run_diagnostics(outcome), partial=outcome.partial, stop_reason=outcome.stop_reason,
        precision_probe=largest_probe(outcome.probe_reports), samples_computed=outcome.samples_computed)
