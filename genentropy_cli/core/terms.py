"""Per-sample terms of one batch:

    h_i = -log p(z_i) + 1/2 log det(J(z_i)^T J(z_i) + s^2 I)

(the paper's equation (3) with the sign of the log-determinant fixed, docs/method.md), for
every requested s, in float64: from one eigen-decomposition of J^T J per sample, or for large d
and a few scales from Cholesky factorisations, the eigenvalues then taken on a subsample
(``logdet.gram_log_determinants``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from genentropy_cli.core.decoder import PreparedDecoder
from genentropy_cli.core.logdet import LogDetTally, gram_log_determinants

__all__ = ["SampleTerms", "compute_sample_terms"]


@dataclass
class SampleTerms:
    """Per-sample quantities of one batch, all float64 on the CPU."""

    neg_log_density: torch.Tensor  # (B,)   -log p(z_i)
    half_log_det: torch.Tensor  # (B, S) 1/2 log det(J^T J + s^2 I)
    eigenvalues: torch.Tensor  # (B, d) eigenvalues of J^T J, ascending; NaN rows where not taken
    clipped_eigenvalues: int
    has_eigenvalues: torch.Tensor | None = None  # (B,) bool; None: every sample's were taken
    log_det: LogDetTally | None = None  # which path gave the log-determinants

    @property
    def eigenvalues_taken(self) -> torch.Tensor:
        """(B,) bool: the samples whose eigenvalues were taken."""
        if self.has_eigenvalues is None:
            return torch.ones(len(self.neg_log_density), dtype=torch.bool)
        return self.has_eigenvalues

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
            torch.cat([part.eigenvalues_taken for part in parts]),
            _summed([part.log_det for part in parts]),
        )


def _summed(tallies: Sequence[LogDetTally | None]) -> LogDetTally:
    total = LogDetTally()
    for tally in tallies:
        if tally is not None:
            total.add(tally)
    return total


def compute_sample_terms(
    prepared: PreparedDecoder,
    flat_latents: torch.Tensor,
    scales: Sequence[float],
    tangent_chunk: int | None = None,
    eigenvalues_for: torch.Tensor | None = None,
    path: str | None = None,
) -> SampleTerms:
    """h_i's pieces for a batch of float64 CPU latents (B, d). ``eigenvalues_for`` (B,) bool: the
    samples whose eigenvalues are wanted (``logdet.eigenvalue_subsample`` of their indices); the
    log-determinant path then follows ``logdet.log_det_path``. None: every sample's eigenvalues,
    and the log-determinants from them."""
    neg_log_density = -prepared.latent.distribution.log_density(flat_latents)
    columns, outputs = prepared.jacobian(flat_latents, tangent_chunk)
    output_finite = torch.isfinite(outputs).all(dim=1).cpu()
    spectrum = gram_log_determinants(columns, scales, eigenvalues_for, workspace=prepared.workspace, path=path)
    del columns, outputs
    half_log_det = spectrum.half_log_det
    if not bool(output_finite.all()):  # a NaN/inf output makes the sample non-finite, reported
        half_log_det[~output_finite.to(half_log_det.device)] = torch.nan
    return SampleTerms(
        neg_log_density.cpu(),
        half_log_det.cpu(),
        spectrum.eigenvalues.cpu(),
        spectrum.clipped_count,
        spectrum.has_eigenvalues,
        spectrum.tally,
    )
