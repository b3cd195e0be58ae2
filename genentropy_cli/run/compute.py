"""Computing one batch: its planned sizes, and an out-of-memory error met by halving.

The batch size and tangent chunk come from ``planning.plan_batch`` (within ``--max-memory`` or
the device's default budget, for the decoder's measured activation bytes per row). Where the
plan is still too large, ``compute_terms_retrying`` halves the batch (then the tangent chunk)
and computes the same samples again, so nothing is skipped; the smaller size is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from genentropy_cli.core.decoder import PreparedDecoder
from genentropy_cli.core.logdet import eigenvalue_subsample
from genentropy_cli.core.terms import SampleTerms, compute_sample_terms
from genentropy_cli.errors import OutOfMemoryError
from genentropy_cli.run.hooks import LogCallback
from genentropy_cli.run.memory import device_memory_budget, is_out_of_memory, memory_in_use, release_cached_memory
from genentropy_cli.run.planning import BatchPlan, format_bytes, plan_batch

__all__ = ["AdaptiveSizes", "compute_terms_retrying", "over_memory_cap", "plan_for"]


@dataclass
class AdaptiveSizes:
    """Batch size and tangent chunk, halved by out-of-memory retries."""

    batch: int
    chunk: int
    initial_batch: int = field(init=False)
    initial_chunk: int = field(init=False)
    oom_retries: int = 0

    def __post_init__(self) -> None:
        self.initial_batch, self.initial_chunk = self.batch, self.chunk


def plan_for(prepared: PreparedDecoder, max_memory: int | None = None, *, dtype: torch.dtype | None = None,
             batch_size: int | None = None, tangent_chunk: int | None = None) -> BatchPlan:
    """Batch size and tangent chunk for ``prepared`` run in ``dtype`` (default its own):
    ``planning.plan_batch`` within ``max_memory`` less what is in use now, else within the
    device's default budget, for the decoder's measured activation bytes per row."""
    dtype = dtype or prepared.dtype
    row_bytes = prepared.activation_bytes_per_row
    if row_bytes and dtype != prepared.dtype:
        row_bytes = row_bytes * dtype.itemsize // prepared.dtype.itemsize
    return plan_batch(
        prepared.latent.dim, prepared.output_dim, dtype, prepared.device, max_memory,
        activation_bytes_per_row=row_bytes,
        memory_in_use=memory_in_use(prepared.device) if max_memory is not None else 0,
        working_memory=device_memory_budget(prepared.device), batch_size=batch_size,
        tangent_chunk=tangent_chunk, method=prepared.jacobian_method,
    )


def over_memory_cap(peak_bytes: int, max_memory: int | None) -> str | None:
    """The warning when the measured peak went over ``--max-memory`` (the planner's memory model
    is an estimate: kernel workspaces and allocator slack are not in it), else None."""
    if max_memory is None or peak_bytes <= max_memory:
        return None
    return (f"peak memory {format_bytes(peak_bytes)} went over --max-memory {format_bytes(max_memory)}: the "
            "planner underestimated this decoder; give a lower --max-memory or a smaller --batch-size")


def compute_terms_retrying(prepared: PreparedDecoder, latents: torch.Tensor, indices: np.ndarray,
                           scales: Sequence[float], sizes: AdaptiveSizes, log: LogCallback,
                           every_eigenvalue: bool = False) -> SampleTerms:
    """``compute_sample_terms`` for a batch; an out-of-memory error halves the batch (then the
    tangent chunk), computes the same samples again, and keeps the smaller size for later
    batches. Nothing is skipped: the terms are those of every sample of the batch. On the
    Cholesky log-det path the eigenvalues are taken for ``eigenvalue_subsample(indices)`` (for
    every sample with ``every_eigenvalue``, the eigenvalue path)."""
    try:
        wanted = None if every_eigenvalue else eigenvalue_subsample(indices)
        return compute_sample_terms(prepared, latents, scales, sizes.chunk, eigenvalues_for=wanted)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
    release_cached_memory(prepared.device)  # outside the except: the traceback holds tensors
    sizes.oom_retries += 1
    count = latents.shape[0]
    where = f"samples {indices[0]}..{indices[-1]} (batch {count}, tangent chunk {sizes.chunk})"
    if count > 1:
        half = (count + 1) // 2
        sizes.batch = min(sizes.batch, half)
        log(f"out of memory on {where}; retrying them in batches of {half}")
        return SampleTerms.concat([
            compute_terms_retrying(prepared, latents[:half], indices[:half], scales, sizes, log, every_eigenvalue),
            compute_terms_retrying(prepared, latents[half:], indices[half:], scales, sizes, log, every_eigenvalue),
        ])
    if sizes.chunk > 1:
        sizes.chunk = max(1, sizes.chunk // 2)
        log(f"out of memory on {where}; retrying with tangent chunk {sizes.chunk}")
        return compute_terms_retrying(prepared, latents, indices, scales, sizes, log, every_eigenvalue)
    raise OutOfMemoryError(f"out of memory on {where} even with batch size 1 and tangent chunk 1; "
                          "use a device with more memory, or --device cpu")
