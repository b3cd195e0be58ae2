"""The samples with the lowest and highest per-sample entropy terms, found by streaming.

The per-sample term h_i = -log p(z_i) + 1/2 log det(J^T J + s^2 I) is the (regularised)
negative log density of the output x_i = g(z_i) on the decoder's manifold: the lowest h_i
are where the model concentrates its mass, the highest where it spreads it thinly.
The scan keeps only the K lowest and K highest (term, index) pairs; the latents of the
chosen indices are regenerated from the seeded LatentStream and decoded at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from genentropy_cli.defaults import SAMPLES_DEFAULT_K, SAMPLES_DEFAULT_NUM_SAMPLES
from genentropy_cli.envelope import envelope
from genentropy_cli.errors import first_line
from genentropy_cli.run.hooks import LogCallback, ProgressCallback
from genentropy_cli.run.options import EstimateOptions, options_from
from genentropy_cli.core.terms import compute_sample_terms
from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.device import resolve_device, resolve_dtype, strict_float32
from genentropy_cli.run.planning import resolve_work_sizes
from genentropy_cli.errors import EstimationError, InputError
from genentropy_cli.core.latents import LatentSpec, LatentStream, distribution_label, make_latent_spec


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

    def to_dict(self, model: dict | None = None) -> dict:
        def rows(part: dict) -> list[dict]:
            return [
                {"index": int(index), "entropy_term": float(term), "neg_log_density": float(neg_log),
                 "half_log_det": float(half)}
                for index, term, neg_log, half in zip(part["indices"], part["terms"], part["neg_log_density"],
                                                      part["half_log_det"])
            ]

        return envelope("samples", {
            "model": {**(model or {}), "latent_shape": list(self.latent.shape),
                      "latent_distribution": distribution_label(self.latent.distribution),
                      "output_shape": list(self.output_shape)},
            "settings": dict(self.settings),
            "lowest": rows(self.lowest),
            "highest": rows(self.highest),
            "num_nonfinite": self.num_nonfinite,
            "elapsed_seconds": self.elapsed_seconds,
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
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
    **settings: Any,
) -> ExtremeSamples:
    """Scan N seeded latents, keep the ``lowest``/``highest`` per-sample entropy terms at
    ``scale``, and decode those samples. Non-finite terms are skipped and counted.
    The run's settings are ``options`` and/or its fields as keywords, as for ``estimate_entropy``
    (default N here: ``SAMPLES_DEFAULT_NUM_SAMPLES``); it takes one scale."""
    given = {"scales": None if scale is None else (scale,), "num_samples": n_samples}
    base = options if options is not None else EstimateOptions(num_samples=SAMPLES_DEFAULT_NUM_SAMPLES)
    run_options = options_from(base, **{key: value for key, value in given.items() if value is not None}, **settings)
    if len(run_options.scales) != 1:
        raise InputError(f"samples ranks the terms at one scale; got {len(run_options.scales)}")
    (scale,) = run_options.scales
    n_samples, batch_size, tangent_chunk = run_options.num_samples, run_options.batch_size, run_options.tangent_chunk
    device, dtype, seed = run_options.device, run_options.dtype, run_options.seed
    spec = make_latent_spec(latent)
    scale_value = scale
    if lowest < 0 or highest < 0 or lowest + highest == 0:
        raise InputError(f"ask for at least one sample: --lowest and --highest must be >= 0, got {lowest} and {highest}")
    num_samples = int(n_samples)
    if num_samples < max(lowest, highest):
        raise InputError(f"--num-samples ({num_samples}) must be at least --lowest/--highest ({max(lowest, highest)})")
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    started = time.perf_counter()
    with strict_float32():
        prepared = prepare_decoder(decoder, spec, torch_device, torch_dtype)
        chosen_batch, chunk = resolve_work_sizes(spec.dim, prepared.output_dim, torch_dtype, torch_device,
                                                 batch_size, tangent_chunk)
        stream = LatentStream(spec, seed)
        empty = (np.zeros(0), np.zeros(0, dtype=np.int64))
        low, high = empty, empty
        nonfinite = 0
        for start in range(0, num_samples, chosen_batch):
            stop = min(num_samples, start + chosen_batch)
            try:
                terms = compute_sample_terms(prepared, stream.range(start, stop), [scale_value], chunk)
            except RuntimeError as error:
                raise EstimationError(
                    f"the decoder failed on samples {start}..{stop - 1} ({first_line(error)})") from error
            values = terms.entropy_terms[:, 0].numpy()
            indices = np.arange(start, stop)
            finite = np.isfinite(values)
            nonfinite += int((~finite).sum())
            values, indices = values[finite], indices[finite]
            low = keep_extremes(np.concatenate([low[0], values]), np.concatenate([low[1], indices]), lowest, True)
            high = keep_extremes(np.concatenate([high[0], values]), np.concatenate([high[1], indices]), highest, False)
            if progress is not None:
                progress(stop, num_samples, [])
        parts = [_decode_chosen(prepared, stream, chosen, scale_value, chunk) for chosen in (low[1], high[1])]
    settings = {"num_samples": num_samples, "seed": int(seed), "scale": scale_value, "batch_size": chosen_batch,
                "device": str(torch_device), "dtype": str(torch_dtype).removeprefix("torch.")}
    return ExtremeSamples(scale_value, num_samples, spec, prepared.output_shape, parts[0], parts[1], settings,
                          time.perf_counter() - started, nonfinite)


def _decode_chosen(prepared, stream: LatentStream, indices: np.ndarray, scale: float, chunk: int) -> dict:
    """Regenerate the chosen latents (sample i depends only on (seed, i)) and recompute their
    terms and outputs."""
    if indices.size == 0:
        shape = (0, *prepared.output_shape)
        return {"indices": indices, "terms": np.zeros(0), "neg_log_density": np.zeros(0), "half_log_det": np.zeros(0),
                "latents": torch.zeros(0, stream.spec.dim, dtype=torch.float64), "outputs": torch.zeros(shape)}
    latents = torch.cat([stream.range(int(index), int(index) + 1) for index in indices])
    terms = compute_sample_terms(prepared, latents, [scale], chunk)
    return {
        "indices": indices,
        "terms": terms.entropy_terms[:, 0].numpy(),
        "neg_log_density": terms.neg_log_density.numpy(),
        "half_log_det": terms.half_log_det[:, 0].numpy(),
        "latents": latents,
        "outputs": prepared.decode(latents).float().cpu(),
    }


def save_extremes_grid(result: ExtremeSamples, path: str, title: str) -> str:
    """The lowest-term outputs above the highest-term ones, each labelled with its sample
    index and term h_i (nats)."""
    from genentropy_cli.cli.imagegrid import as_images, save_labelled_grid

    chosen = [(heading, part) for heading, part in (
        ("lowest h\n(dense)", result.lowest), ("highest h\n(sparse)", result.highest)) if len(part["indices"])]
    images, note = as_images(torch.cat([part["outputs"] for _, part in chosen]), result.output_shape)
    sections, offset = [], 0
    for heading, part in chosen:
        count = len(part["indices"])
        labels = [f"#{index}\nh={term:.1f}" for index, term in zip(part["indices"], part["terms"])]
        sections.append((heading, images[offset:offset + count], labels))
        offset += count
    caption = (f"per-sample entropy term h = -log p(z) + 1/2 log det(J^T J + s^2 I) at s = {result.scale:.0e}, "
               f"extremes of N = {result.num_samples} (seed {result.settings['seed']}); {note}")
    return str(save_labelled_grid(sections, path, title, caption))
