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
import time
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Sequence

import numpy as np
import torch

from genentropy_cli.envelope import envelope
from genentropy_cli.run.allocator import reusing_freed_memory
from genentropy_cli.defaults import COMPARE_SIGNIFICANCE_LEVEL
from genentropy_cli.errors import first_line
from genentropy_cli.run.batches import batch_plan
from genentropy_cli.run.hooks import LogCallback, ProgressCallback
from genentropy_cli.run.options import EstimateOptions, options_from
from genentropy_cli.run.results import ScaleEstimate, estimates_from_moments
from genentropy_cli.core.terms import compute_sample_terms
from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.device import resolve_device, resolve_dtype, strict_float32
from genentropy_cli.run.planning import resolve_work_sizes
from genentropy_cli.errors import EstimationError, InputError
from genentropy_cli.core.latents import LatentSpec, LatentStream, block_seed, distribution_label, make_latent_spec
from genentropy_cli.core.stats import BlockAccumulator, RunningMoments


# --------------------------------------------------------------------------- pure statistics


def unpaired_stderr(stderr_a: float, stderr_b: float) -> float:
    """Standard error of a difference of two independent means: sqrt(se_a^2 + se_b^2)."""
    return math.sqrt(stderr_a**2 + stderr_b**2)


def correlation_from_moments(std_a: float, std_b: float, std_difference: float) -> float:
    """Pearson correlation of a and b from var(a - b) = var a + var b - 2 cov(a, b)."""
    if not (std_a > 0 and std_b > 0):
        return math.nan
    covariance = 0.5 * (std_a**2 + std_b**2 - std_difference**2)
    return covariance / (std_a * std_b)


def two_sided_p_value(z_score: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    if math.isnan(z_score):
        return math.nan
    return math.erfc(abs(z_score) / math.sqrt(2.0))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control over all pairs):
    the k-th smallest p (k = 0, 1, ...) becomes max over j <= k of min(1, (m - j) p_(j))."""
    count = len(p_values)
    order = sorted(range(count), key=lambda index: (math.inf if math.isnan(p_values[index]) else p_values[index]))
    adjusted = [math.nan] * count
    running = 0.0
    for rank, index in enumerate(order):
        value = p_values[index]
        if math.isnan(value):
            continue
        running = max(running, min(1.0, (count - rank) * value))
        adjusted[index] = running
    return adjusted


def significance_mark(p_value: float) -> str:
    """*** p < 0.001, ** p < 0.01, * p < 0.05 (on Holm-adjusted p), else empty."""
    if math.isnan(p_value):
        return ""
    for threshold, mark in ((0.001, "***"), (0.01, "**"), (0.05, "*")):
        if p_value < threshold:
            return mark
    return ""


def rank_descending(values: Sequence[float]) -> list[int]:
    """Rank 1 = largest value (most entropy); ties share the smaller rank."""
    return [1 + sum(1 for other in values if other > value) for value in values]


# --------------------------------------------------------------------------- results


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
        }


@dataclass
class ComparisonResult:
    models: list[ModelSummary]
    pairs: list[PairDifference]
    settings: dict
    elapsed_seconds: float
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
        })


# --------------------------------------------------------------------------- the run


def _spec_key(spec: LatentSpec) -> tuple:
    return (tuple(spec.shape), distribution_label(spec.distribution))


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


def compare_models(
    decoders: Sequence[Any],
    latents: Sequence[LatentSpec | int | Sequence[int]],
    names: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
    n_samples: int | None = None,
    *,
    options: EstimateOptions | None = None,
    shared_latents: bool = True,
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
    **settings: Any,
) -> ComparisonResult:
    """Estimate every decoder on the same latent sequence and every pairwise difference.

    Models with equal latent specs see identical latents z_i (common random numbers); each
    model's entropy equals ``estimate_entropy(decoder, latent, seed=model.latent_seed)``
    (``seed`` itself for the first model's spec; see ``latent_seeds``). With
    ``shared_latents=False`` model m draws from its own derived seed (``latent_seeds``), which
    makes the samples independent: the paired standard error then matches the unpaired one
    in expectation (a check of the method, not something to use for decisions).
    A sample that is non-finite for any model is dropped for all (``skip_nonfinite``).
    The run's settings are ``options`` and/or its fields as keywords, as for ``estimate_entropy``.
    """
    given = {"scales": scales, "num_samples": n_samples}
    run_options = options_from(options, **{key: value for key, value in given.items() if value is not None},
                               **settings)
    scale_values, num_samples, seed = run_options.scales, run_options.num_samples, run_options.seed
    batch_size, tangent_chunk, skip_nonfinite = run_options.batch_size, run_options.tangent_chunk, run_options.skip_nonfinite
    device, dtype = run_options.device, run_options.dtype
    if len(decoders) < 2:
        raise InputError("compare needs at least two models")
    if len(latents) != len(decoders):
        raise InputError(f"got {len(decoders)} decoders but {len(latents)} latent specs")
    names = list(names) if names is not None else [f"model {index + 1}" for index in range(len(decoders))]
    if len(set(names)) != len(names):
        raise InputError(f"model names must be distinct, got {', '.join(names)}")
    specs = [make_latent_spec(latent) for latent in latents]
    if num_samples < 2:
        raise InputError(f"compare needs at least 2 samples for standard errors, got {num_samples}")
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    num_models, num_scales = len(decoders), len(scale_values)
    pairs = list(combinations(range(num_models), 2))
    warnings: list[str] = []
    seeds = latent_seeds(specs, int(seed), shared_latents)
    if shared_latents and len(set(seeds)) > 1:
        described = "; ".join(f"{name}: {spec.describe()}, seed {model_seed}"
                              for name, spec, model_seed in zip(names, specs, seeds))
        warnings.append(
            f"the models' latent specs differ ({described}): only models with the same spec share latents; "
            "each other spec draws from its own seed (independent latents), and differences across specs "
            "use the unpaired standard error"
        )
    shared = [shared_latents and _spec_key(specs[a]) == _spec_key(specs[b]) for a, b in pairs]

    started = time.perf_counter()
    with strict_float32(), reusing_freed_memory():
        prepared = [prepare_decoder(decoder, spec, torch_device, torch_dtype) for decoder, spec in zip(decoders, specs)]
        sizes = [resolve_work_sizes(spec.dim, item.output_dim, torch_dtype, torch_device, batch_size, tangent_chunk)
                 for spec, item in zip(specs, prepared)]
        chosen_batch = min(batch for batch, _ in sizes)  # every model walks the same batches
        chunks = [chunk for _, chunk in sizes]
        streams = [LatentStream(spec, model_seed) for spec, model_seed in zip(specs, seeds)]
        block_size = streams[0].block_size
        num_blocks = -(-num_samples // block_size)
        # columns: every model's terms (M x S), then every pair's differences (P x S)
        accumulator = BlockAccumulator((num_models + len(pairs)) * num_scales, list(range(num_blocks)))
        nonfinite = np.zeros(num_models, dtype=np.int64)
        dropped = done = 0
        for segments in batch_plan(num_samples, chosen_batch, block_size):
            first_index = segments[0][0] * block_size + segments[0][1]
            values = np.empty((num_models, sum(stop - start for _, start, stop in segments), num_scales))
            for model, (item, stream, chunk) in enumerate(zip(prepared, streams, chunks)):
                batch_latents = torch.cat([stream.block(block)[start:stop] for block, start, stop in segments])
                try:
                    terms = compute_sample_terms(item, batch_latents, scale_values, chunk)
                except (InputError, EstimationError):
                    raise
                except RuntimeError as error:
                    raise EstimationError(
                        f"{names[model]} failed on samples from {first_index} on ({first_line(error)})") from error
                values[model] = terms.entropy_terms.numpy()
            finite_per_model = np.isfinite(values).all(axis=2)  # (M, B)
            finite = finite_per_model.all(axis=0)
            if not finite.all():
                if not skip_nonfinite:
                    model = int(np.argmin(finite_per_model.all(axis=1)))
                    index = _sample_index(segments, int(np.argmin(finite_per_model[model])), block_size)
                    raise EstimationError(
                        f"{names[model]}: sample {index} gave a non-finite entropy term; check the decoder, or pass "
                        "--skip-nonfinite to drop such samples from every model (their count is reported)")
                nonfinite += (~finite_per_model).sum(axis=1)
                dropped += int((~finite).sum())
            differences = np.stack([values[a] - values[b] for a, b in pairs]) if pairs else np.empty((0,) + values.shape[1:])
            columns = np.concatenate([values, differences]).transpose(1, 0, 2).reshape(values.shape[1], -1)
            position = 0
            for block, start, stop in segments:
                length = stop - start
                keep = finite[position:position + length]
                accumulator.add(block, columns[position:position + length][keep])
                position += length
                if stop == min(block_size, num_samples - block * block_size):
                    accumulator.complete_block(block)
            done += values.shape[1]
            if progress is not None:
                progress(done, num_samples, [])
    elapsed = time.perf_counter() - started
    total = accumulator.total
    if total.count < 2:
        raise EstimationError("fewer than two samples were finite for every model; nothing to compare")

    def column_moments(column: int) -> RunningMoments:
        window = slice(column * num_scales, (column + 1) * num_scales)
        return RunningMoments(total.count, total.mean[window], total.m2[window])

    summaries = [
        ModelSummary(names[model], specs[model], prepared[model].output_dim,
                     estimates_from_moments(scale_values, column_moments(model)), latent_seed=seeds[model],
                     num_nonfinite=int(nonfinite[model]))
        for model in range(num_models)
    ]
    for scale_index in range(num_scales):
        ranks = rank_descending([summary.estimates[scale_index].entropy for summary in summaries])
        for summary, rank in zip(summaries, ranks):
            summary.ranks.append(rank)
    differences = _pair_differences(summaries, pairs, shared, [column_moments(num_models + p) for p in range(len(pairs))],
                                    scale_values)
    if dropped:
        warnings.append(f"dropped {dropped} sample(s) that were non-finite for at least one model; "
                        f"N = {total.count} for every model")
    settings = {
        "num_samples": num_samples,
        "num_used": int(total.count),
        "batch_size": chosen_batch,
        "seed": int(seed),
        "shared_latents": bool(shared_latents),
        "device": str(torch_device),
        "dtype": str(torch_dtype).removeprefix("torch."),
        "scales": list(scale_values),
        "skip_nonfinite": bool(skip_nonfinite),
        "significance_level": COMPARE_SIGNIFICANCE_LEVEL,
        "multiple_comparisons": "holm",
    }
    return ComparisonResult(summaries, differences, settings, elapsed, warnings)


def _sample_index(segments: list[tuple[int, int, int]], position: int, block_size: int) -> int:
    for block, start, stop in segments:
        if position < stop - start:
            return block * block_size + start + position
        position -= stop - start
    raise IndexError(position)


def _z_score(difference: float, stderr: float) -> float:
    """difference / stderr; a nonzero difference with zero error is infinitely significant."""
    if stderr > 0:
        return difference / stderr
    return math.nan if difference == 0 else math.copysign(math.inf, difference)


def _pair_differences(summaries: list[ModelSummary], pairs: list[tuple[int, int]], shared: list[bool],
                      moments: list[RunningMoments], scales: Sequence[float]) -> list[PairDifference]:
    """Every pair at every scale, with z, p and Holm-adjusted p (per scale, over all pairs)."""
    result: list[PairDifference] = []
    for scale_index, scale in enumerate(scales):
        at_scale = []
        for (a, b), is_shared, difference in zip(pairs, shared, moments):
            first, second = summaries[a].estimates[scale_index], summaries[b].estimates[scale_index]
            paired = float(difference.stderr[scale_index])
            unpaired = unpaired_stderr(first.stderr, second.stderr)
            used = paired if is_shared else unpaired
            delta = float(difference.mean[scale_index])
            z_score = _z_score(delta, used)
            at_scale.append(PairDifference(
                a, b, float(scale), delta, used, paired, unpaired,
                correlation_from_moments(first.std, second.std, float(difference.std[scale_index])),
                is_shared, z_score, two_sided_p_value(z_score)))
        for item, adjusted in zip(at_scale, holm_adjust([item.p_value for item in at_scale])):
            item.p_holm = adjusted
        result.extend(at_scale)
    return result
