"""``genentropy inspect``: what a model file is and how its decoder behaves, before a long run.

Format, parameters, latent spec and where it came from, output shape, forward time per
sample, and a Jacobian probe on a few latents: singular values sigma_j of J (square roots of
the eigenvalues of J^T J, float64) and the rank at scale s, #{j : sigma_j > s}. A rank below
d at the s you plan to use means the estimate there is dominated by s (check with sweeps).

A checkpoint or safetensors file also gets its contents (``models.contents``): the sub-models
it holds with the ``--select`` flag and spec lines for each, and its other entries. When no
model can be built from it yet (several sub-models, no spec), that listing is the report.
A conditional decoder's label input is shown, and its probe runs at the first chosen class.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple, Sequence

import torch

from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.device import resolve_device, resolve_dtype, strict_float32
from genentropy_cli.core.invariance import radial_collapse
from genentropy_cli.core.labels import bind_class
from genentropy_cli.core.latents import LatentStream, distribution_label
from genentropy_cli.core.logdet import batched_eigvalsh, cholesky_half_log_det, gram_matrices, log_det_path
from genentropy_cli.core.terms import SampleTerms, compute_sample_terms
from genentropy_cli.defaults import (
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SCALES,
    DEFAULT_SEED,
    EIGENVALUE_SUBSAMPLE_STRIDE,
    INSPECT_MAX_PROBE_LATENTS,
    INSPECT_PROBE_BATCH,
    INSPECT_PROBE_LATENTS,
    INSPECT_TIMING_BATCH,
    INSPECT_TIMING_REPEATS,
)
from genentropy_cli.envelope import envelope
from genentropy_cli.errors import InputError
from genentropy_cli.models.loading import FORMATS_RUNNING_CODE
from genentropy_cli.models.resolve import ResolvedModel
from genentropy_cli.run.compute import plan_for
from genentropy_cli.run.planning import parse_memory_size, predicted_seconds_per_sample, run_time_note

GRAM_TIMING_BYTES = 64 * 1024**2
"""At most this many bytes of random Jacobian columns are timed for the Gram step's cost; a larger
output is timed on a slice of its D and scaled up (the product is linear in D)."""


def parameter_summary(decoder: Any) -> dict:
    """Parameter and buffer counts and their dtypes (a plain callable has none)."""
    if not isinstance(decoder, torch.nn.Module):
        return {"count": 0, "buffers": 0, "dtypes": []}
    parameters = list(decoder.parameters())
    buffers = list(decoder.buffers())
    dtypes = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in parameters + buffers
                     if tensor.is_floating_point()})
    return {"count": sum(p.numel() for p in parameters), "buffers": sum(b.numel() for b in buffers), "dtypes": dtypes}


def forward_seconds_per_sample(prepared, latents: torch.Tensor, repeats: int = INSPECT_TIMING_REPEATS) -> float:
    """Best of ``repeats`` timed batched forward passes, divided by the batch size."""
    prepared.decode(latents)  # warm-up
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        prepared.decode(latents)
        if prepared.device.type == "cuda":
            torch.cuda.synchronize(prepared.device)
        best = min(best, time.perf_counter() - started)
    return best / latents.shape[0]


class GramSeconds(NamedTuple):
    """One sample's float64 Gram step: on the log-det path a run takes, and with the eigenvalues
    of every sample (what inspect's own probes compute)."""

    run: float
    every_eigenvalue: float


def gram_seconds_per_sample(dim: int, output_dim: int, dtype: torch.dtype, device: torch.device,
                            samples: int = 4, scales: Sequence[float] = DEFAULT_SCALES) -> GramSeconds:
    """One sample's float64 Gram step (J^T J and its log-determinants on the path a run at
    ``scales`` takes, ``logdet.log_det_path``), timed on random columns: J^T J costs d^2 D, linear
    in D, so an output over ``GRAM_TIMING_BYTES`` is timed on a slice and scaled; the
    log-determinants (d^3) are timed as they are: the eigenvalues of every sample, or a Cholesky
    factorisation per scale and the eigenvalues of one sample in ``EIGENVALUE_SUBSAMPLE_STRIDE``."""
    width = max(1, min(output_dim, GRAM_TIMING_BYTES // max(1, dim * samples * 8)))
    columns = torch.randn(dim, samples, width, dtype=dtype, device=device)
    gram_matrices(columns)  # warm-up (thread pool, workspaces)
    started = time.perf_counter()
    gram = gram_matrices(columns).cpu()
    product = time.perf_counter() - started
    gram += dim * torch.eye(dim, dtype=gram.dtype)  # positive definite, as J^T J + s^2 I is
    started = time.perf_counter()
    batched_eigvalsh(gram)
    eigen = time.perf_counter() - started
    log_det = eigen
    if log_det_path(dim, scales) == "cholesky":
        started = time.perf_counter()
        cholesky_half_log_det(gram, scales)
        log_det = time.perf_counter() - started + eigen / EIGENVALUE_SUBSAMPLE_STRIDE
    product = product * output_dim / width
    return GramSeconds((product + log_det) / samples, (product + eigen) / samples)


def probe_terms(prepared, stream: LatentStream, count: int, step: int, scale: float,
                chunk: int) -> tuple[SampleTerms, float | None]:
    """The first ``count`` latents' terms (every eigenvalue), ``step`` at a time, and the median
    seconds per sample of the calls after the first (a warm-up); None with a single call."""
    parts, seconds = [], []
    for start in range(0, count, step):
        latents = stream.range(start, min(count, start + step))
        started = time.perf_counter()
        parts.append(compute_sample_terms(prepared, latents, [scale], tangent_chunk=chunk))
        seconds.append((time.perf_counter() - started) / len(latents))
    later = sorted(seconds[1:])
    return SampleTerms.concat(parts), (later[len(later) // 2] if later else None)


PREDICTION_BASES = {
    "probes": "the probe latents' Jacobians, computed at the run's batch size and tangent chunk",
    "forward": "the forward time x (d + 1) rows x the Jacobian method's cost factor, plus the Gram step",
}
"""What inspect's predicted time per sample rests on (``predicted_run_time.basis``)."""


def run_time_prediction(seconds_per_sample: float, passes: int, num_samples: int = DEFAULT_NUM_SAMPLES) -> dict:
    """Inspect's prediction for ``num_samples`` (the default -n), with the long-run note where it is long."""
    return {"num_samples": num_samples, "seconds": seconds_per_sample * passes * num_samples,
            "seconds_per_sample": seconds_per_sample, "passes": passes,
            "note": run_time_note(num_samples, seconds_per_sample, passes=passes)}


def checkpoint_report(contents: dict, error: Exception) -> dict:
    """The inspect report of a checkpoint no model could be built from yet: what it holds, and why."""
    return envelope("inspect", {"model": None, "load_error": str(error), "checkpoint": contents, "warnings": []})


def inspect_model(resolved: ResolvedModel, device: str = "auto", dtype: str = "float32",
                  probe_latents: int = INSPECT_PROBE_LATENTS, scale: float = DEFAULT_SCALES[0],
                  seed: int = DEFAULT_SEED, timing_batch: int = INSPECT_TIMING_BATCH,
                  checkpoint: dict | None = None, max_memory: int | str | None = None) -> dict:
    """The inspect report as a JSON-ready dict (``checkpoint``: the file's contents, if a checkpoint).
    ``max_memory`` (bytes or "8GB"): plan the probes' batches and tangent chunks, and the speed
    measured for the prediction, as a run under ``--max-memory`` would."""
    if isinstance(probe_latents, bool) or not isinstance(probe_latents, int) \
            or not 0 < probe_latents <= INSPECT_MAX_PROBE_LATENTS:
        raise InputError(f"--probe-latents must be from 1 to {INSPECT_MAX_PROBE_LATENTS} (inspect looks at a few "
                         f"Jacobians; estimate is for many), got {probe_latents!r}")
    latent = resolved.latent
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    stream = LatentStream(latent, seed)
    label = resolved.label
    probe_class = None if label is None else label.chosen[0]
    decoder = resolved.decoder if label is None else bind_class(resolved.decoder, label, probe_class)
    with strict_float32():
        prepared = prepare_decoder(decoder, latent, torch_device, torch_dtype)
        memory = None if max_memory is None else parse_memory_size(max_memory)
        batch, chunk = plan_for(prepared, memory)  # as a run plans it: a large decoder's Jacobian in chunks
        step = max(1, min(INSPECT_PROBE_BATCH, batch))  # a few latents at a time: one call's memory stays small
        terms, probe_seconds = probe_terms(prepared, stream, probe_latents, step, scale, chunk)
        timing_rows = max(1, min(timing_batch, batch * (chunk + 1)))
        per_sample = forward_seconds_per_sample(prepared, stream.range(0, timing_rows))
        with prepared.context(method="forward-mode"):
            collapse = radial_collapse(prepared.flat(), stream.range(0, probe_latents).to(
                device=torch_device, dtype=torch_dtype))
        gram = gram_seconds_per_sample(latent.dim, prepared.output_dim, prepared.dtype, prepared.device)
    if step == batch and probe_seconds is not None:  # the probes ran as a run's batches: their time is a run's
        predicted, basis = max(gram.run, probe_seconds - gram.every_eigenvalue + gram.run), "probes"
    else:
        predicted, basis = predicted_seconds_per_sample(per_sample, latent.dim, prepared.jacobian_method,
                                                        gram.run), "forward"
    singular_values = terms.eigenvalues.clamp_min(0.0).sqrt()  # (k, d), ascending
    ranks = (singular_values > scale).sum(dim=1).tolist()
    spec = resolved.loaded.spec or {}
    return envelope("inspect", {
        "model": {
            **resolved.describe(),
            "latent_shape": list(latent.shape),
            "latent_distribution": distribution_label(latent.distribution),
            "latent_dim": latent.dim,
            "output_shape": list(prepared.output_shape),
            "output_dim": prepared.output_dim,
            "architecture": spec.get("architecture") or spec.get("import"),
            "runs_code_from_file": resolved.format in FORMATS_RUNNING_CODE,
        },
        "parameters": parameter_summary(resolved.loaded.decoder),
        "forward_seconds_per_sample": per_sample,
        "predicted_run_time": {**run_time_prediction(predicted, 1 if label is None else len(label.chosen)),
                               "basis": PREDICTION_BASES[basis]},
        "timing": {"batch": timing_rows, "repeats": INSPECT_TIMING_REPEATS, "device": str(torch_device),
                   "dtype": str(torch_dtype).removeprefix("torch.")},
        "plan": {"batch_size": batch, "tangent_chunk": chunk, "max_memory": memory},
        "jacobian_probe": {
            "num_latents": probe_latents,
            "seed": seed,
            "scale": scale,
            "smallest_singular_value": float(singular_values[:, 0].min()),
            "largest_singular_value": float(singular_values[:, -1].max()),
            "rank_at_scale": [int(rank) for rank in ranks],
            "latent_dim": latent.dim,
            "jacobian_method": prepared.jacobian_method,
            "label": probe_class,
            "always_collapsed": collapse,
        },
        "checkpoint": checkpoint,
        "warnings": list(resolved.loaded.warnings),
    })
