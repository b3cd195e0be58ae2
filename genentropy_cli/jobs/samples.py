"""The samples with the lowest and highest per-sample entropy terms, found by streaming.

The per-sample term h_i = -log p(z_i) + 1/2 log det(J^T J + s^2 I) is the (regularised)
negative log density of the output x_i = g(z_i) on the decoder's manifold: the lowest h_i
are where the model concentrates its mass, the highest where it spreads it thinly.
The scan keeps only the K lowest and K highest (term, index) pairs; the latents of the
chosen indices are regenerated from the seeded LatentStream and decoded at the end. A
conditional decoder's classes are scanned on the same latents, each keeping its own extremes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from genentropy_cli.core.device import strict_float32
from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import LatentSpec, distribution_label, make_latent_spec
from genentropy_cli.defaults import SAMPLES_DEFAULT_K, SAMPLES_DEFAULT_NUM_SAMPLES, SAMPLES_MAX_K
from genentropy_cli.envelope import envelope
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.conditional import as_label_spec, check_conditional_run, conditional_workload
from genentropy_cli.run.hooks import LogCallback, ProgressCallback, RunHooks
from genentropy_cli.run.loop import LoopOutcome, run_loop
from genentropy_cli.run.options import EstimateOptions, options_from
from genentropy_cli.run.rows import PairedRows, SampleRows
from genentropy_cli.run.workload import DecoderWork, Workload

__all__ = ["ConditionalExtremes", "ExtremeKeeper", "ExtremeSamples", "find_extreme_samples", "keep_extremes"]


def keep_extremes(values: np.ndarray, indices: np.ndarray, count: int, lowest: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` smallest (or largest) values with their indices, sorted from the most
    extreme; ties broken by the smaller sample index, so the choice never depends on batching."""
    if count <= 0 or values.size == 0:
        return values[:0], indices[:0]
    key = values if lowest else -values
    order = np.lexsort((indices, key))[:count]
    return values[order], indices[order]


@dataclass
class ExtremeSamples:
    """The chosen samples: index, latent, term pieces and decoder output, lowest and highest."""

    scale: float
    num_samples: int
    latent: LatentSpec
    output_shape: tuple[int, ...]
    lowest: dict
    highest: dict
    settings: dict
    elapsed_seconds: float
    num_nonfinite: int = 0
    partial: bool = False
    """True when the scan was interrupted: the extremes are of the samples scanned so far."""
    stop_reason: str = "num_samples"
    num_scanned: int | None = None
    """Finite samples the extremes were chosen from."""
    model_record: dict | None = field(default=None, repr=False)
    """The model's file record where the scan was of a file (as ``EntropyResult.model_record``)."""

    def model_dict(self, model: dict | None = None) -> dict:
        model = self.model_record if model is None else model
        return {**(model or {}), "latent_shape": list(self.latent.shape),
                "latent_distribution": distribution_label(self.latent.distribution),
                "output_shape": list(self.output_shape)}

    def to_dict(self, model: dict | None = None) -> dict:
        return envelope("samples", {
            "model": self.model_dict(model),
            "settings": dict(self.settings),
            "lowest": sample_rows(self.lowest),
            "highest": sample_rows(self.highest),
            "num_nonfinite": self.num_nonfinite,
            "num_scanned": self.num_scanned,
            "elapsed_seconds": self.elapsed_seconds,
            "partial": self.partial,
            "stop_reason": self.stop_reason,
        })


def sample_rows(part: dict) -> list[dict]:
    """The chosen samples of one end as JSON rows."""
    return [
        {"index": int(index), "entropy_term": float(term), "neg_log_density": float(neg_log),
         "half_log_det": float(half)}
        for index, term, neg_log, half in zip(part["indices"], part["terms"], part["neg_log_density"],
                                              part["half_log_det"])
    ]


@dataclass
class ConditionalExtremes:
    """Every chosen class's extremes (``classes[k]`` is class ``label.chosen[k]``), on common latents."""

    label: LabelSpec
    classes: list[ExtremeSamples]
    settings: dict
    elapsed_seconds: float
    num_nonfinite: int = 0
    model_record: dict | None = field(default=None, repr=False)
    """The model's file record where the scan was of a file (as ``EntropyResult.model_record``)."""

    @property
    def scale(self) -> float:
        return self.classes[0].scale

    @property
    def num_samples(self) -> int:
        return self.classes[0].num_samples

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.classes[0].output_shape

    @property
    def partial(self) -> bool:
        return self.classes[0].partial

    @property
    def stop_reason(self) -> str:
        return self.classes[0].stop_reason

    @property
    def num_scanned(self) -> int | None:
        return self.classes[0].num_scanned

    def to_dict(self, model: dict | None = None) -> dict:
        model = self.model_record if model is None else model
        return envelope("samples", {
            "model": {**self.classes[0].model_dict(model), "label": {**(model or {}).get("label", {}),
                                                                     **self.label.to_dict()}},
            "settings": dict(self.settings),
            "classes": [{"label": chosen, "lowest": sample_rows(item.lowest), "highest": sample_rows(item.highest),
                         "num_nonfinite": item.num_nonfinite} for chosen, item in zip(self.label.chosen, self.classes)],
            "num_nonfinite": self.num_nonfinite,
            "num_scanned": self.num_scanned,
            "elapsed_seconds": self.elapsed_seconds,
            "partial": self.partial,
            "stop_reason": self.stop_reason,
        })


def find_extreme_samples(
    decoder: Any,
    latent: LatentSpec | int | Sequence[int],
    lowest: int = SAMPLES_DEFAULT_K,
    highest: int = SAMPLES_DEFAULT_K,
    scale: float | None = None,
    n_samples: int | None = None,
    *,
    options: EstimateOptions | None = None,
    labels: LabelSpec | int | None = None,
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
    **settings: Any,
) -> ExtremeSamples | ConditionalExtremes:
    """Scan N seeded latents, keep the ``lowest``/``highest`` per-sample entropy terms at
    ``scale``, and decode those samples, through the one batch loop (so every run option
    applies; with ``skip_nonfinite`` non-finite terms are left out and counted).
    The run's settings are ``options`` and/or its fields as keywords, as for ``estimate_entropy``
    (default N here: ``SAMPLES_DEFAULT_NUM_SAMPLES``); it takes one scale. With ``labels`` (a
    conditional decoder) every chosen class gets its own extremes (``ConditionalExtremes``)."""
    given = {"scales": None if scale is None else (scale,), "num_samples": n_samples}
    base = options if options is not None else EstimateOptions(num_samples=SAMPLES_DEFAULT_NUM_SAMPLES)
    run_options = options_from(base, **{key: value for key, value in given.items() if value is not None}, **settings)
    if len(run_options.scales) != 1:
        raise InputError(f"samples ranks the terms at one scale; got {len(run_options.scales)}")
    if lowest < 0 or highest < 0 or lowest + highest == 0:
        raise InputError(f"ask for at least one sample: --lowest and --highest must be >= 0, got {lowest} and {highest}")
    if max(lowest, highest) > SAMPLES_MAX_K:
        raise InputError(f"--lowest and --highest are at most {SAMPLES_MAX_K} (their outputs are kept and decoded); "
                         "for every sample's term use estimate --per-sample FILE")
    if run_options.num_samples < max(lowest, highest):
        raise InputError(f"--num-samples ({run_options.num_samples}) must be at least --lowest/--highest "
                         f"({max(lowest, highest)})")
    spec = make_latent_spec(latent)
    if labels is not None:
        return _conditional_extremes(decoder, spec, as_label_spec(labels), lowest, highest, run_options,
                                     RunHooks(progress=progress, log=log))
    keeper = ExtremeKeeper(lowest, highest)
    outcome = run_loop(lambda device: Workload([DecoderWork.prepare(decoder, spec, run_options.seed, run_options, device)],
                                               run_options.scales),
                       run_options, RunHooks(progress=progress, log=log, on_rows=keeper.add))
    return _extremes_of(outcome.workload.members[0], keeper, outcome, run_options, log)


def _extremes_of(member: DecoderWork, keeper: "ExtremeKeeper", outcome: LoopOutcome, run_options: EstimateOptions,
                 log: LogCallback | None, num_nonfinite: int | None = None) -> ExtremeSamples:
    """Decode what ``keeper`` chose for one decoder."""
    with strict_float32():
        notify = RunHooks(log=log).notify
        parts = [_decode_chosen(member, chosen, run_options.scales, notify) for chosen in (keeper.low[1], keeper.high[1])]
    (scale_value,) = run_options.scales
    nonfinite = outcome.summary.num_nonfinite if num_nonfinite is None else num_nonfinite
    return ExtremeSamples(scale_value, run_options.num_samples, member.spec, member.prepared.output_shape, parts[0],
                          parts[1], {**outcome.settings, "scale": scale_value}, outcome.elapsed_seconds, nonfinite,
                          outcome.partial, outcome.stop_reason, outcome.moments.count)


def _conditional_extremes(decoder: Any, spec: LatentSpec, label: LabelSpec, lowest: int, highest: int,
                          run_options: EstimateOptions, hooks: RunHooks) -> ConditionalExtremes:
    """Every class on the same latents, each keeping its own extremes."""
    check_conditional_run(label, run_options)
    keepers = [ExtremeKeeper(lowest, highest) for _ in label.chosen]

    def on_rows(first_index: int, rows: PairedRows) -> None:
        for keeper, part in zip(keepers, rows.models):
            keeper.add(first_index, part)

    outcome = run_loop(lambda device: conditional_workload(decoder, spec, label, run_options, device), run_options,
                       RunHooks(progress=hooks.progress, log=hooks.log, on_rows=on_rows))
    classes = [_extremes_of(member, keeper, outcome, run_options, hooks.log, int(summary.num_nonfinite))
               for member, keeper, summary in zip(outcome.workload.members, keepers, outcome.summary.models)]
    return ConditionalExtremes(label, classes, {**outcome.settings, "scale": run_options.scales[0]},
                               outcome.elapsed_seconds, outcome.summary.num_nonfinite)


@dataclass
class ExtremeKeeper:
    """The ``lowest`` smallest and ``highest`` largest finite terms at the (one) scale, with
    their sample indices, over every sample the loop hands out (``on_rows``, every process)."""

    lowest: int
    highest: int
    low: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0, dtype=np.int64))
    high: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0, dtype=np.int64))

    def add(self, first_index: int, rows: SampleRows) -> None:
        values = rows.terms[:, 0]
        indices = np.arange(first_index, first_index + len(rows))
        finite = np.isfinite(values)
        values, indices = values[finite], indices[finite]
        self.low = keep_extremes(np.concatenate([self.low[0], values]), np.concatenate([self.low[1], indices]),
                                 self.lowest, True)
        self.high = keep_extremes(np.concatenate([self.high[0], values]), np.concatenate([self.high[1], indices]),
                                  self.highest, False)


def _decode_chosen(member: DecoderWork, indices: np.ndarray, scales: Sequence[float], log: LogCallback) -> dict:
    """Regenerate the chosen latents (sample i depends only on (seed, i)) and recompute their
    terms and outputs."""
    prepared, stream = member.prepared, member.stream
    if indices.size == 0:
        shape = (0, *prepared.output_shape)
        return {"indices": indices, "terms": np.zeros(0), "neg_log_density": np.zeros(0), "half_log_det": np.zeros(0),
                "latents": torch.zeros(0, stream.spec.dim, dtype=torch.float64), "outputs": torch.zeros(shape)}
    latents = torch.cat([stream.range(int(index), int(index) + 1) for index in indices])
    terms = member.terms(latents, indices, scales, log)
    return {
        "indices": indices,
        "terms": terms.entropy_terms[:, 0].numpy(),
        "neg_log_density": terms.neg_log_density.numpy(),
        "half_log_det": terms.half_log_det[:, 0].numpy(),
        "latents": latents,
        "outputs": prepared.decode(latents).float().cpu(),
    }
