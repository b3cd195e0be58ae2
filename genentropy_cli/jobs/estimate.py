"""``estimate_entropy``: the Python API of ``genentropy estimate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence
import torch
from genentropy_cli.defaults import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SCALES,
    DEFAULT_SEED,
    CHECKPOINT_INTERVAL_SECONDS,
    PRECISION_PROBE_SAMPLES,
    TARGET_STDERR_MIN_SAMPLES,
)
from genentropy_cli.errors import InputError
from genentropy_cli.core.device import resolve_dtype
from genentropy_cli.core.latents import LatentDistribution, LatentSpec, make_latent_spec
from genentropy_cli.run.batches import BatchCallback, ProgressCallback
from genentropy_cli.run.options import validate_scales
from genentropy_cli.run.results import EntropyResult

def estimate_entropy(
    decoder: Any,
    latent: LatentSpec | int | Sequence[int],
    scales: Sequence[float] = DEFAULT_SCALES,
    n_samples: int = DEFAULT_NUM_SAMPLES,
    batch_size: int | None = None,
    device: str | torch.device = DEFAULT_DEVICE,
    dtype: str | torch.dtype = DEFAULT_DTYPE,
    seed: int = DEFAULT_SEED,
    progress: ProgressCallback | None = None,
    *,
    latent_distribution: str | LatentDistribution | None = None,
    skip_nonfinite: bool = False,
    tangent_chunk: int | None = None,
    on_batch: BatchCallback | None = None,
    target_stderr: float | None = None,
    min_samples: int = TARGET_STDERR_MIN_SAMPLES,
    checkpoint: str | Path | None = None,
    checkpoint_every: float = CHECKPOINT_INTERVAL_SECONDS,
    per_sample: str | Path | None = None,
    save_latents: bool = False,
    probe_samples: int = PRECISION_PROBE_SAMPLES,
    handle_signals: bool = False,
    log: Callable[[str], None] | None = None,
    distributed: bool | None = None,
    max_memory: int | str | None = None,
) -> EntropyResult:
    """Estimate the differential entropy of ``decoder``'s output distribution (nats).

    ``decoder`` maps a batch of latents shaped (B, *latent_shape) to outputs (B, ...), which
    are flattened to D. ``latent`` is a LatentSpec, a dimension or a shape (standard normal
    unless ``latent_distribution`` says otherwise). Same seed, same answer: sample i's latent
    depends only on (seed, i), whatever the batch size, device, process count or interruption.

    Long and large runs (``runner`` has the loop):

    * ``target_stderr``: stop at the first sample count (>= ``min_samples``) where the standard
      error is at most this at every scale, ``n_samples`` being the cap;
    * ``checkpoint``: a file saved atomically every ``checkpoint_every`` seconds and at the end;
      an existing one (same settings) is resumed, one with other settings refused;
    * ``per_sample``: a .npy/.csv/.jsonl file of per-sample rows (with ``save_latents`` the latents);
    * ``probe_samples``: how many first samples are also computed in float64 (0: no probe);
    * ``handle_signals``: SIGINT/SIGTERM finish the batch and return a partial result;
    * ``log``: where run notes go (out-of-memory retries, the precision warning; default:
      ``warnings.warn``); ``distributed``: None joins torchrun's process group when launched by it;
    * ``max_memory``: bytes (or '2GB', '1.5GiB') the process may hold on the CPU, or PyTorch may
      allocate on a GPU: the batch size and tangent chunk are planned to fit (``planning``).
    """
    from genentropy_cli.run.loop import RunOptions, run_estimate

    if latent_distribution is not None and not isinstance(latent, LatentSpec):
        spec = make_latent_spec(latent, latent_distribution)
    else:
        spec = make_latent_spec(latent)
    scale_values = validate_scales(scales)
    if int(n_samples) <= 0:
        raise InputError(f"the number of samples must be positive, got {n_samples}")
    if batch_size is not None and int(batch_size) <= 0:
        raise InputError(f"the batch size must be positive, got {batch_size}")
    options = RunOptions(
        skip_nonfinite=skip_nonfinite, tangent_chunk=tangent_chunk, on_batch=on_batch, target_stderr=target_stderr,
        min_samples=min_samples, checkpoint=checkpoint, checkpoint_every=checkpoint_every, per_sample=per_sample,
        save_latents=save_latents, probe_samples=probe_samples, handle_signals=handle_signals, log=log,
        distributed=distributed, max_memory=max_memory,
    )
    return run_estimate(decoder, spec, scale_values, int(n_samples), batch_size, device, resolve_dtype(dtype),
                        seed, progress, options)
