"""Per-sample terms of one batch:

    h_i = -log p(z_i) + 1/2 log det(J(z_i)^T J(z_i) + s^2 I)

(the paper's equation (3) with the sign of the log-determinant fixed, docs/method.md), for
every requested s from one float64 eigen-decomposition of J^T J per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from genentropy_cli.core.decoder import PreparedDecoder
from genentropy_cli.core.logdet import gram_eigenvalues, half_log_det_regularised

__all__ = ["SampleTerms", "compute_sample_terms"]


@dataclass
class SampleTerms:
    """Per-sample quantities of one batch, all float64 on the CPU."""

    neg_log_density: torch.Tensor  # (B,)   -log p(z_i)
    half_log_det: torch.Tensor  # (B, S) 1/2 log det(J^T J + s^2 I)
    eigenvalues: torch.Tensor  # (B, d) eigenvalues of J^T J, ascending
    clipped_eigenvalues: int

    @property
    def entropy_terms(self) -> torch.Tensor:
        """h_i per scale: (B, S)."""
        return self.neg_log_density.unsqueeze(1) + self.half_log_det

    @classmethod
    def concat(cls, parts: Sequence["SampleTerms"]) -> "SampleTerms":
        """One batch's terms from those of its consecutive pieces."""
        return cls(
            torch.cat([part.neg_log_density for part in parts]),
            torch.cat([part.half_log_det for part in parts]),
            torch.cat([part.eigenvalues for part in parts]),
            sum(part.clipped_eigenvalues for part in parts),
        )


def compute_sample_terms(
    prepared: PreparedDecoder,
    flat_latents: torch.Tensor,
    scales: Sequence[float],
    tangent_chunk: int | None = None,
) -> SampleTerms:
    """h_i's pieces for a batch of float64 CPU latents (B, d)."""
    neg_log_density = -prepared.latent.distribution.log_density(flat_latents)
    columns, outputs = prepared.jacobian(flat_latents, tangent_chunk)
    output_finite = torch.isfinite(outputs).all(dim=1).cpu()
    spectrum = gram_eigenvalues(columns, workspace=prepared.workspace)
    del columns, outputs
    half_log_det = half_log_det_regularised(spectrum.eigenvalues, scales)
    if not bool(output_finite.all()):  # a NaN/inf output makes the sample non-finite, reported
        half_log_det[~output_finite.to(half_log_det.device)] = torch.nan
    return SampleTerms(
        neg_log_density.cpu(),
        half_log_det.cpu(),
        spectrum.eigenvalues.cpu(),
        spectrum.clipped_count,
    )
