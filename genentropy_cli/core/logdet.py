"""Regularised log-determinants from the eigenvalues of J^T J, all in float64.

1/2 log det(J^T J + s^2 I) = 1/2 sum_j log(lambda_j + s^2), so one eigen-decomposition
per sample serves every scale s.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import torch

from genentropy_cli.defaults import (
    CPU_GRAM_SLAB_BYTES,
    EIGVALSH_THREAD_MIN_WORK,
    GRAM_SLAB_BYTES,
    TRANSPOSED_GRAM_MAX_DIM,
)

__all__ = [
    "GramSpectrum",
    "Workspace",
    "batched_eigvalsh",
    "collapsed_directions",
    "gram_eigenvalues",
    "gram_layout",
    "gram_matrices",
    "gram_product",
    "half_log_det_regularised",
]


@dataclass
class GramSpectrum:
    """Eigenvalues of J^T J per sample, and how many tiny negative ones were clipped to 0."""

    eigenvalues: torch.Tensor  # (B, d) float64, ascending, >= 0
    clipped_count: int


class Workspace:
    """A reusable float64 buffer for the Gram step. A fresh tensor of tens of MB is a fresh
    memory mapping whose pages the OS must fault in and zero on every batch (for a small
    decoder that costs as much as its last layer); one buffer kept across batches does not."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def take(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        size = math.prod(shape)
        if self._buffer is None or self._buffer.numel() < size or self._buffer.device != device:
            self._buffer = torch.empty(size, dtype=torch.float64, device=device)
        return self._buffer[:size].view(shape)


def gram_layout(columns: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Columns (d, b, D) viewed (b, D, d) for d <= ``TRANSPOSED_GRAM_MAX_DIM`` (the CPU's batched
    GEMM is about twice as fast there) or (b, d, D) above; True for the first."""
    transposed = columns.shape[0] <= TRANSPOSED_GRAM_MAX_DIM
    return (columns.permute(1, 2, 0) if transposed else columns.permute(1, 0, 2)), transposed


def gram_product(slab: torch.Tensor, transposed: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """J^T J per sample of a slab laid out by ``gram_layout``."""
    return torch.bmm(slab.transpose(1, 2), slab, out=out) if transposed else torch.bmm(slab, slab.transpose(1, 2), out=out)


def gram_matrices(jacobian_columns: torch.Tensor, slab_bytes: int | None = None,
                  workspace: Workspace | None = None) -> torch.Tensor:
    """J^T J per sample in float64, (B, d, d), from Jacobian columns shaped (d, B, D).

    The float64 copy of the columns is made a slab of samples at a time (at most about
    ``slab_bytes``; default ``CPU_GRAM_SLAB_BYTES`` on a CPU, ``GRAM_SLAB_BYTES`` elsewhere),
    into ``workspace`` where one is given, laid out (b, D, d) for d <= ``TRANSPOSED_GRAM_MAX_DIM``
    (faster there) and (b, d, D) above. A float32 (or narrower) entry is exact in float64, and
    so is each product; only the sums round, in float64.
    """
    dim, batch, output_dim = jacobian_columns.shape
    device = jacobian_columns.device
    if slab_bytes is None:
        slab_bytes = CPU_GRAM_SLAB_BYTES if device.type == "cpu" else GRAM_SLAB_BYTES
    gram = torch.empty((batch, dim, dim), dtype=torch.float64, device=device)
    step = max(1, slab_bytes // max(1, dim * output_dim * 8))
    for first in range(0, batch, step):
        slab, transposed = gram_layout(jacobian_columns[:, first : first + step])
        if slab.dtype != torch.float64 or transposed:
            target = workspace.take(tuple(slab.shape), device) if workspace is not None else None
            slab = target.copy_(slab) if target is not None else slab.to(torch.float64, memory_format=torch.contiguous_format)
        gram_product(slab, transposed, out=gram[first : first + step])
    return gram


_EIGVALSH_POOL: tuple[int, int, ThreadPoolExecutor] | None = None
"""(process id, workers, pool): a forked child has none of its parent's threads, so it makes its own."""


def batched_eigvalsh(gram: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.eigvalsh`` of (B, d, d); on a CPU, a batch with enough work
    (``EIGVALSH_THREAD_MIN_WORK``) is split over the intra-op threads (each matrix is decomposed
    by the same LAPACK call either way, so the eigenvalues are identical to one call's)."""
    global _EIGVALSH_POOL
    threads = torch.get_num_threads()
    batch = gram.shape[0]
    parts = min(threads, batch)
    if gram.device.type != "cpu" or parts < 2 or batch * gram.shape[-1] ** 3 < EIGVALSH_THREAD_MIN_WORK:
        return torch.linalg.eigvalsh(gram)
    if _EIGVALSH_POOL is None or _EIGVALSH_POOL[:2] != (os.getpid(), threads):
        _EIGVALSH_POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="genentropy-eigvalsh"))
    pool = _EIGVALSH_POOL[2]
    eigenvalues = gram.new_empty(gram.shape[:-1])
    bounds = [batch * part // parts for part in range(parts + 1)]

    def decompose(first: int, last: int) -> None:
        torch.linalg.eigvalsh(gram[first:last], out=eigenvalues[first:last])

    for future in [pool.submit(decompose, first, last) for first, last in zip(bounds, bounds[1:])]:
        future.result()
    return eigenvalues


def gram_eigenvalues(jacobian_columns: torch.Tensor, slab_bytes: int | None = None,
                     workspace: Workspace | None = None) -> GramSpectrum:
    """Eigenvalues of J^T J for each sample from Jacobian columns shaped (d, B, D).

    The Gram matrix is formed (on the decoder's device) and decomposed (on the CPU) in float64
    whatever the decoder's dtype:
    float32 log-determinants of near-singular matrices come out NaN or with a wrong sign.
    Round-off can leave eigenvalues of a PSD matrix slightly negative; they are clipped
    to zero and counted. A sample whose J^T J is not finite gets NaN eigenvalues (a non-finite
    term, reported by its index), not a LAPACK failure of its whole batch.
    """
    # LAPACK on the CPU whatever the device: the same routine everywhere (same answer on any
    # device), and on an H100 CUDA's batched float64 eigvalsh was 12x slower for d = 62 and lost
    # the closed form's tiny eigenvalues at s = 1e-6 (benchmarks/RESULTS.md, GPU section)
    gram = gram_matrices(jacobian_columns, slab_bytes, workspace).cpu()
    finite = torch.isfinite(gram).flatten(1).all(dim=1)
    broken = None if bool(finite.all()) else ~finite
    if broken is not None:  # NaN/inf outputs or an overflowing J^T J: LAPACK would fail on the whole batch
        gram[broken] = torch.eye(gram.shape[-1], dtype=gram.dtype)
    eigenvalues = batched_eigvalsh(gram)
    if broken is not None:  # those samples' terms are NaN: the run names them, or skips them if asked
        eigenvalues[broken] = math.nan
    negative = eigenvalues < 0
    clipped = int(negative.sum().item())
    if clipped:
        eigenvalues = eigenvalues.clamp_min(0.0)
    return GramSpectrum(eigenvalues, clipped)


def half_log_det_regularised(eigenvalues: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """1/2 sum_j log(lambda_j + s^2) for every scale: (B, d) -> (B, len(scales)), float64."""
    squared = torch.tensor([float(s) ** 2 for s in scales], dtype=torch.float64, device=eigenvalues.device)
    shifted = eigenvalues.unsqueeze(-1) + squared  # (B, d, S)
    return 0.5 * torch.log(shifted).sum(dim=1)


def collapsed_directions(eigenvalues: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Per sample and scale, the number of directions with lambda < s^2: (B, S) int64."""
    squared = torch.tensor([float(s) ** 2 for s in scales], dtype=torch.float64, device=eigenvalues.device)
    return (eigenvalues.unsqueeze(-1) < squared).sum(dim=1)
