"""Regularised log-determinants from the eigenvalues of J^T J, all in float64.

1/2 log det(J^T J + s^2 I) = 1/2 sum_j log(lambda_j + s^2), so one eigen-decomposition
per sample serves every scale s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .defaults import GRAM_SLAB_BYTES


@dataclass
class GramSpectrum:
    """Eigenvalues of J^T J per sample, and how many tiny negative ones were clipped to 0."""

    eigenvalues: torch.Tensor  # (B, d) float64, ascending, >= 0
    clipped_count: int


def gram_matrices(jacobian_columns: torch.Tensor, slab_bytes: int = GRAM_SLAB_BYTES) -> torch.Tensor:
    """J^T J per sample in float64, (B, d, d), from Jacobian columns shaped (d, B, D).

    The float64 copy of the columns is made a slab of samples at a time (at most about
    ``slab_bytes``), not for the whole batch at once. A float32 (or narrower) entry is exact
    in float64, and so is each product; only the sums round, in float64.
    """
    dim, batch, output_dim = jacobian_columns.shape
    gram = torch.empty((batch, dim, dim), dtype=torch.float64, device=jacobian_columns.device)
    step = max(1, slab_bytes // max(1, dim * output_dim * 8))
    for first in range(0, batch, step):
        per_sample = jacobian_columns[:, first : first + step].to(torch.float64).permute(1, 0, 2)  # (b, d, D)
        torch.bmm(per_sample, per_sample.transpose(1, 2), out=gram[first : first + step])
    return gram


def gram_eigenvalues(jacobian_columns: torch.Tensor, slab_bytes: int = GRAM_SLAB_BYTES) -> GramSpectrum:
    """Eigenvalues of J^T J for each sample from Jacobian columns shaped (d, B, D).

    The Gram matrix is formed and decomposed in float64 whatever the decoder's dtype:
    float32 log-determinants of near-singular matrices come out NaN or with a wrong sign.
    Round-off can leave eigenvalues of a PSD matrix slightly negative; they are clipped
    to zero and counted.
    """
    eigenvalues = torch.linalg.eigvalsh(gram_matrices(jacobian_columns, slab_bytes))
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
