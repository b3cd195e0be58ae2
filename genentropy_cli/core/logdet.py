"""Regularised log-determinants of J^T J + s^2 I, all in float64, by one of two paths
(``LOG_DET_PATHS``, chosen by ``log_det_path``):

* ``eigenvalues``: 1/2 log det(J^T J + s^2 I) = 1/2 sum_j log(lambda_j + s^2), so one
  eigen-decomposition per sample serves every scale s;
* ``cholesky``: J^T J + s^2 I = L L^T, 1/2 log det = sum_j log L_jj, one factorisation per scale
  (d^3/3 multiply-adds against syevd's ~4/3 d^3 memory-bound reduction and more): for large d and
  a few scales. The eigenvalues are still taken where they are needed: on a subsample for the
  diagnostics (``eigenvalue_subsample``), where that sample's two log-determinants are compared
  (``LogDetTally.max_difference``), and for any sample whose factorisation fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from numpy import linalg as numpy_linalg  # numpy 2 imports linalg on first use: here, not mid-run (Ctrl-C, threads)

from genentropy_cli.core.cholesky import cholesky_half_log_det, cholesky_in_place
from genentropy_cli.core.threads import run_parts, split_parts
from genentropy_cli.defaults import (
    CHOLESKY_MAX_SCALES,
    CHOLESKY_MIN_DIM,
    CPU_GRAM_SLAB_BYTES,
    EIGENVALUE_SUBSAMPLE_STRIDE,
    EIGVALSH_THREAD_MIN_WORK,
    GRAM_SLAB_BYTES,
    GRAM_THREAD_MIN_WORK,
    NUMPY_EIGVALSH_MAX_DIM,
    NUMPY_GRAM_MAX_DIM,
    NUMPY_GRAM_MAX_WORK,
    NUMPY_GRAM_SLAB_BYTES,
    SYMMETRIC_GRAM_LEAF_DIM,
    SYMMETRIC_GRAM_MIN_DIM,
    TRANSPOSED_GRAM_MAX_DIM,
)

__all__ = [
    "GRAM_ARRANGEMENTS",
    "LOG_DET_PATHS",
    "GramLogDet",
    "GramSpectrum",
    "LogDetTally",
    "Workspace",
    "batched_eigvalsh",
    "cholesky_half_log_det",
    "cholesky_in_place",
    "eigenvalue_subsample",
    "collapsed_directions",
    "eigen_solver",
    "gram_arrangement",
    "gram_eigenvalues",
    "gram_layout",
    "gram_log_determinants",
    "gram_matrices",
    "gram_product",
    "half_log_det_regularised",
    "log_det_path",
    "symmetric_gram_into",
]

GRAM_ARRANGEMENTS = ("numpy", "torch")
"""How the Gram step runs: ``numpy``, on a CPU, each thread takes a share of the samples through
a float64 copy, numpy's X X^T (BLAS syrk) and numpy's eigvalsh; ``torch``, J^T J by ``torch.bmm``
on the decoder's device (``gram_matrices``), then ``batched_eigvalsh`` on the CPU."""


@dataclass
class GramSpectrum:
    """Eigenvalues of J^T J per sample, and how many tiny negative ones were clipped to 0."""

    eigenvalues: torch.Tensor  # (B, d) float64, ascending, >= 0
    clipped_count: int


class Workspace:
    """Reusable float64 buffers for the Gram step, one per part of a split batch. A fresh tensor
    of tens of MB is a fresh memory mapping whose pages the OS must fault in and zero on every
    batch (for a small decoder that costs as much as its last layer); buffers kept across batches
    do not."""

    def __init__(self) -> None:
        self._buffers: dict[int, torch.Tensor] = {}

    def take(self, shape: tuple[int, ...], device: torch.device, part: int = 0) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self._buffers.get(part)
        if buffer is None or buffer.numel() < size or buffer.device != device:
            buffer = self._buffers[part] = torch.empty(size, dtype=torch.float64, device=device)
        return buffer[:size].view(shape)


def gram_layout(columns: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Columns (d, b, D) viewed (b, D, d) for d <= ``TRANSPOSED_GRAM_MAX_DIM`` (the CPU's batched
    GEMM is about twice as fast there) or (b, d, D) above; True for the first."""
    transposed = columns.shape[0] <= TRANSPOSED_GRAM_MAX_DIM
    return (columns.permute(1, 2, 0) if transposed else columns.permute(1, 0, 2)), transposed


def gram_product(slab: torch.Tensor, transposed: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """J^T J per sample of a slab laid out by ``gram_layout``; on a CPU from d =
    ``SYMMETRIC_GRAM_MIN_DIM`` on by ``symmetric_gram_into`` (about 2/3 of one product's time)."""
    if transposed:
        return torch.bmm(slab.transpose(1, 2), slab, out=out)
    if slab.device.type == "cpu" and slab.shape[1] >= SYMMETRIC_GRAM_MIN_DIM:
        out = out if out is not None else slab.new_empty((slab.shape[0], slab.shape[1], slab.shape[1]))
        symmetric_gram_into(slab, out)
        return out
    return torch.bmm(slab, slab.transpose(1, 2), out=out)


def symmetric_gram_into(rows: torch.Tensor, out: torch.Tensor) -> None:
    """out = X X^T for a stack X (b, n, D), each block above the diagonal computed once and its
    transpose copied below: two halves take 3/4 of one product's multiply-adds, and halving each
    diagonal block again down to ``SYMMETRIC_GRAM_LEAF_DIM`` rows nears the 1/2 of BLAS's syrk
    (which torch does not expose for a batch). Exactly symmetric; every entry is one float64 dot
    product over D, as in ``torch.bmm``."""
    size = rows.shape[1]
    if size <= SYMMETRIC_GRAM_LEAF_DIM:
        if out.is_contiguous():
            torch.bmm(rows, rows.transpose(1, 2), out=out)
        else:
            out.copy_(torch.bmm(rows, rows.transpose(1, 2)))
        return
    half = size // 2
    symmetric_gram_into(rows[:, :half], out[:, :half, :half])
    symmetric_gram_into(rows[:, half:], out[:, half:, half:])
    corner = torch.bmm(rows[:, :half], rows[:, half:].transpose(1, 2))
    out[:, :half, half:] = corner
    out[:, half:, :half] = corner.transpose(1, 2)


def gram_matrices(jacobian_columns: torch.Tensor, slab_bytes: int | None = None,
                  workspace: Workspace | None = None) -> torch.Tensor:
    """J^T J per sample in float64, (B, d, d), from Jacobian columns shaped (d, B, D), by ``torch.bmm``
    on the columns' device (the ``torch`` arrangement).

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


# ----------------------------------------------------------------------------- eigenvalues


def eigen_solver(dim: int) -> str:
    """``numpy`` (``np.linalg.eigvalsh``) up to ``NUMPY_EIGVALSH_MAX_DIM``, ``torch`` above: the
    faster one measured for that size (defaults.py). Both run LAPACK's syevd on each matrix."""
    return "numpy" if dim <= NUMPY_EIGVALSH_MAX_DIM else "torch"


def _eigvalsh_into(gram: torch.Tensor, out: torch.Tensor, solver: str) -> None:
    """Eigenvalues of a CPU float64 stack (b, d, d) into ``out`` (b, d), one LAPACK call per
    matrix whatever the stack; a matrix with a NaN or inf entry gets NaN eigenvalues (LAPACK would
    fail the whole call), reported by the caller."""
    matrices = gram.numpy()
    finite = np.isfinite(matrices).all(axis=(1, 2))  # numpy: no torch intra-op threads inside a pool thread
    broken = None if finite.all() else ~finite
    if broken is not None:
        matrices = matrices.copy()
        matrices[broken] = np.eye(matrices.shape[-1])
    if solver == "numpy":
        out.numpy()[...] = numpy_linalg.eigvalsh(matrices)  # the lower triangle, as torch's default
    else:
        torch.linalg.eigvalsh(torch.from_numpy(matrices), out=out)
    if broken is not None:
        out.numpy()[broken] = math.nan


def batched_eigvalsh(gram: torch.Tensor, solver: str | None = None) -> torch.Tensor:
    """Eigenvalues of CPU float64 (B, d, d), ascending, by ``solver`` (default ``eigen_solver(d)``);
    a batch with enough work (``EIGVALSH_THREAD_MIN_WORK``) is split over the intra-op threads.
    Each matrix is decomposed by the same LAPACK call either way; a non-finite matrix gets NaN."""
    batch, dim = gram.shape[0], gram.shape[-1]
    solver = solver or eigen_solver(dim)
    eigenvalues = gram.new_empty(gram.shape[:-1])

    def decompose(first: int, last: int, part: int) -> None:
        _eigvalsh_into(gram[first:last], eigenvalues[first:last], solver)

    run_parts(decompose, batch, split_parts(batch, batch * dim**3, EIGVALSH_THREAD_MIN_WORK), torch_kernels=solver == "torch")
    return eigenvalues


# ----------------------------------------------------------------------------- the Gram step


def gram_arrangement(jacobian_columns: torch.Tensor) -> str:
    """``numpy`` for CPU columns with d <= ``NUMPY_GRAM_MAX_DIM`` and d^2 D <= ``NUMPY_GRAM_MAX_WORK``
    (faster there, as measured: defaults.py), else ``torch``."""
    dim, _, output_dim = jacobian_columns.shape
    small = dim <= NUMPY_GRAM_MAX_DIM and dim * dim * output_dim <= NUMPY_GRAM_MAX_WORK
    return "numpy" if jacobian_columns.device.type == "cpu" and small else "torch"


def _numpy_gram_into(columns: torch.Tensor, gram: torch.Tensor, first: int, last: int, buffer: torch.Tensor) -> None:
    """J^T J of samples [first, last) into ``gram``: slabs of the columns copied to float64
    (b, d, D) in ``buffer``, each sample's X X^T by numpy (one BLAS syrk per matrix: the upper
    triangle, mirrored; exact products, float64 sums)."""
    step = buffer.shape[0]
    numpy_columns = columns.numpy() if columns.dtype in (torch.float32, torch.float64) else None
    target = gram.numpy()
    for start in range(first, last, step):
        stop = min(last, start + step)
        slab = buffer[: stop - start]
        if numpy_columns is not None:
            np.copyto(slab.numpy(), numpy_columns[:, start:stop].transpose(1, 0, 2))
        else:  # half precisions: numpy has no bfloat16
            slab.copy_(columns[:, start:stop].permute(1, 0, 2))
        matrices = slab.numpy()
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is an inf, reported per sample
            np.matmul(matrices, matrices.transpose(0, 2, 1), out=target[start:stop])


def gram_eigenvalues(jacobian_columns: torch.Tensor, slab_bytes: int | None = None,
                     workspace: Workspace | None = None, arrangement: str | None = None) -> GramSpectrum:
    """Eigenvalues of J^T J for each sample from Jacobian columns shaped (d, B, D).

    The Gram matrix is formed and decomposed in float64 whatever the decoder's dtype:
    float32 log-determinants of near-singular matrices come out NaN or with a wrong sign.
    ``arrangement`` (default ``gram_arrangement``): see ``GRAM_ARRANGEMENTS``; ``slab_bytes``
    is the float64 copy's slab (default ``NUMPY_GRAM_SLAB_BYTES`` per thread for ``numpy``).
    Round-off can leave eigenvalues of a PSD matrix slightly negative; they are clipped
    to zero and counted. A sample whose J^T J is not finite gets NaN eigenvalues (a non-finite
    term, reported by its index), not a LAPACK failure of its whole batch.
    """
    arrangement = arrangement or gram_arrangement(jacobian_columns)
    if arrangement == "numpy":
        eigenvalues = _numpy_spectrum(jacobian_columns.detach().cpu(), slab_bytes, workspace or Workspace())
    else:
        # LAPACK on the CPU whatever the device: the same routine everywhere (same answer on any
        # device), and on an H100 CUDA's batched float64 eigvalsh was 12x slower for d = 62 and lost
        # the closed form's tiny eigenvalues at s = 1e-6 (benchmarks/RESULTS.md, GPU section)
        eigenvalues = batched_eigvalsh(gram_matrices(jacobian_columns, slab_bytes, workspace).cpu())
    negative = eigenvalues < 0
    clipped = int(negative.sum().item())
    if clipped:
        eigenvalues = eigenvalues.clamp_min(0.0)
    return GramSpectrum(eigenvalues, clipped)


def _numpy_spectrum(columns: torch.Tensor, slab_bytes: int | None, workspace: Workspace) -> torch.Tensor:
    """The ``numpy`` arrangement: each part of the batch, on its own thread, through its own slab
    buffer, its Gram matrices and their eigenvalues."""
    dim, batch, output_dim = columns.shape
    step = max(1, min(batch, (slab_bytes or NUMPY_GRAM_SLAB_BYTES) // max(1, dim * output_dim * 8)))
    parts = split_parts(batch, batch * dim * dim * (output_dim + dim), GRAM_THREAD_MIN_WORK)
    buffers = [workspace.take((step, dim, output_dim), columns.device, part) for part in range(parts)]
    gram = torch.empty((batch, dim, dim), dtype=torch.float64)
    eigenvalues = torch.empty((batch, dim), dtype=torch.float64)
    solver = eigen_solver(dim)

    def compute(first: int, last: int, part: int) -> None:
        _numpy_gram_into(columns, gram, first, last, buffers[part])
        _eigvalsh_into(gram[first:last], eigenvalues[first:last], solver)

    run_parts(compute, batch, parts, torch_kernels=columns.dtype not in (torch.float32, torch.float64))
    return eigenvalues


def half_log_det_regularised(eigenvalues: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """1/2 sum_j log(lambda_j + s^2) for every scale: (B, d) -> (B, len(scales)), float64."""
    squared = torch.tensor([float(s) ** 2 for s in scales], dtype=torch.float64, device=eigenvalues.device)
    shifted = eigenvalues.unsqueeze(-1) + squared  # (B, d, S)
    return 0.5 * torch.log(shifted).sum(dim=1)


def collapsed_directions(eigenvalues: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Per sample and scale, the number of directions with lambda < s^2: (B, S) int64."""
    squared = torch.tensor([float(s) ** 2 for s in scales], dtype=torch.float64, device=eigenvalues.device)
    return (eigenvalues.unsqueeze(-1) < squared).sum(dim=1)


# ----------------------------------------------------------------------------- the Cholesky path

LOG_DET_PATHS = ("eigenvalues", "cholesky")
"""How the log-determinants of a run are taken (module doc); recorded as ``log_det.path``."""


def log_det_path(dim: int, scales: Sequence[float]) -> str:
    """``cholesky`` for d >= ``CHOLESKY_MIN_DIM`` and 1 to ``CHOLESKY_MAX_SCALES`` scales, all > 0
    (J^T J + 0 I may be singular), else ``eigenvalues`` (defaults.py gives the measurements)."""
    values = [float(scale) for scale in scales]
    fits = dim >= CHOLESKY_MIN_DIM and 0 < len(values) <= CHOLESKY_MAX_SCALES and min(values) > 0
    return "cholesky" if fits else "eigenvalues"


def eigenvalue_subsample(indices: np.ndarray | Sequence[int]) -> torch.Tensor:
    """(B,) bool: the samples (by their index in the run) whose eigenvalues the Cholesky path also
    takes, every ``EIGENVALUE_SUBSAMPLE_STRIDE``-th from sample 0: the same samples whatever the
    batch size, the rank or a resumption."""
    return torch.from_numpy(np.asarray(indices, dtype=np.int64) % EIGENVALUE_SUBSAMPLE_STRIDE == 0)


@dataclass
class LogDetTally:
    """Which path gave how many samples' log-determinants, summed over batches (``log_det`` in
    the run's JSON). ``max_difference``: the largest |1/2 log det by Cholesky - by eigenvalues|
    (nats, any scale) over the ``checked`` samples that had both."""

    cholesky: int = 0
    eigenvalues: int = 0
    fallbacks: int = 0
    checked: int = 0
    max_difference: float = 0.0

    def add(self, other: "LogDetTally") -> None:
        self.cholesky += other.cholesky
        self.eigenvalues += other.eigenvalues
        self.fallbacks += other.fallbacks
        self.checked += other.checked
        self.max_difference = max(self.max_difference, other.max_difference)

    def to_dict(self) -> dict:
        return {"cholesky_samples": self.cholesky, "eigenvalue_samples": self.eigenvalues,
                "cholesky_fallbacks": self.fallbacks, "checked_samples": self.checked,
                "max_check_difference": self.max_difference}

    @classmethod
    def from_dict(cls, data: dict | None) -> "LogDetTally":
        data = data or {}
        return cls(int(data.get("cholesky_samples", 0)), int(data.get("eigenvalue_samples", 0)),
                   int(data.get("cholesky_fallbacks", 0)), int(data.get("checked_samples", 0)),
                   float(data.get("max_check_difference", 0.0)))


@dataclass
class GramLogDet:
    """One batch's 1/2 log det(J^T J + s^2 I) per scale, and the eigenvalues where taken."""

    half_log_det: torch.Tensor  # (B, S) float64
    eigenvalues: torch.Tensor  # (B, d) float64, ascending, >= 0; NaN rows where not taken
    has_eigenvalues: torch.Tensor  # (B,) bool
    clipped_count: int
    tally: LogDetTally


def gram_log_determinants(jacobian_columns: torch.Tensor, scales: Sequence[float],
                          eigenvalues_for: torch.Tensor | None = None, workspace: Workspace | None = None,
                          path: str | None = None) -> GramLogDet:
    """1/2 log det(J^T J + s^2 I) per sample and scale from Jacobian columns (d, B, D), float64.

    ``path`` (default ``log_det_path(d, scales)``): ``eigenvalues`` takes every sample's
    eigenvalues (``gram_eigenvalues``), as does ``eigenvalues_for=None``. ``cholesky`` factorises
    J^T J + s^2 I for every sample (``cholesky_half_log_det``) and takes the eigenvalues of the
    samples marked in ``eigenvalues_for`` (B,) and of those whose factorisation failed or whose
    J^T J is not finite; a failed sample's log-determinant is its eigenvalues' (a non-finite one
    is NaN, reported as on the other path). So which path gives a sample's value depends only on
    the sample, never on the batch it was computed in.
    """
    dim, batch = jacobian_columns.shape[0], jacobian_columns.shape[1]
    path = path or log_det_path(dim, scales)
    if path == "eigenvalues" or eigenvalues_for is None:
        spectrum = gram_eigenvalues(jacobian_columns, workspace=workspace)
        return GramLogDet(half_log_det_regularised(spectrum.eigenvalues, scales), spectrum.eigenvalues,
                          torch.ones(batch, dtype=torch.bool), spectrum.clipped_count,
                          LogDetTally(eigenvalues=batch))
    gram = gram_matrices(jacobian_columns, workspace=workspace).cpu()
    finite = torch.from_numpy(np.isfinite(gram.numpy()).all(axis=(1, 2)))
    half_log_det, factorised = cholesky_half_log_det(gram, scales)
    factorised &= finite
    needed = eigenvalues_for.to(torch.bool).cpu() | ~factorised
    eigenvalues = gram.new_full((batch, dim), math.nan)
    chosen = needed.nonzero().squeeze(1)
    clipped, checked, difference = 0, 0, 0.0
    if chosen.numel():
        values = batched_eigvalsh(gram[chosen])
        negative = values < 0
        clipped = int(negative.sum().item())
        values = values.clamp_min(0.0) if clipped else values
        eigenvalues[chosen] = values
        by_eigenvalues = half_log_det_regularised(values, scales)
        both = factorised[chosen]
        checked = int(both.sum().item())
        if checked:
            gap = (half_log_det[chosen[both]] - by_eigenvalues[both]).abs()
            difference = float(gap.max().item())
        half_log_det[chosen[~both]] = by_eigenvalues[~both]
    fallbacks = int((finite & ~factorised).sum().item())
    tally = LogDetTally(cholesky=int(factorised.sum().item()), eigenvalues=batch - int(factorised.sum().item()),
                        fallbacks=fallbacks, checked=checked, max_difference=difference)
    return GramLogDet(half_log_det, eigenvalues, needed, clipped, tally)
