"""Decoders whose output entropy is known in closed form (NOTES.md), for tests and checks."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

HALF_SPHERE_ENTROPY = math.log(2.0 * math.pi)
"""Uniform distribution on the unit half-sphere: log(area) = log(2 pi)."""


class HalfSphereRadial(nn.Module):
    """Table 1's decoder R^2 -> R^3: r2 = |z|^2, h = -exp(-r2/2),
    x = (sqrt(1 - h^2) z/|z|, h); with z ~ N(0, I) it is uniform on the lower half-sphere."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        squared_radius = (latents * latents).sum(dim=1, keepdim=True)
        height = -torch.exp(-0.5 * squared_radius)
        ring_radius = torch.sqrt(-torch.expm1(-squared_radius))  # sqrt(1 - h^2), accurate near 0
        direction = latents / torch.sqrt(squared_radius)
        return torch.cat([ring_radius * direction, height], dim=1)


class LinearDecoder(nn.Module):
    """x = A z + b; with z ~ N(0, I_d): H_s = d/2 log(2 pi e) + 1/2 sum_j log(sigma_j^2 + s^2)."""

    def __init__(self, matrix: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("matrix", matrix.clone())
        self.register_buffer("bias", torch.zeros(matrix.shape[0], dtype=matrix.dtype) if bias is None else bias.clone())

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.flatten(1) @ self.matrix.T + self.bias


def matrix_with_singular_values(singular_values: Sequence[float], output_dim: int, seed: int = 0) -> torch.Tensor:
    """A random (output_dim x d) float64 matrix with exactly the given singular values."""
    generator = torch.Generator().manual_seed(seed)
    dim = len(singular_values)
    left, _ = torch.linalg.qr(torch.randn(output_dim, dim, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return left @ torch.diag(torch.tensor(list(singular_values), dtype=torch.float64)) @ right.T


def linear_decoder_entropy(singular_values: Sequence[float], scale: float, latent_entropy: float) -> float:
    """Entropy of x = A z + b at scale s: H(z) + 1/2 sum_j log(sigma_j^2 + s^2)."""
    return latent_entropy + 0.5 * sum(math.log(sigma**2 + scale**2) for sigma in singular_values)


class ElementwiseExp(nn.Module):
    """x = exp(z), D = d; with z ~ N(0, I): H = d/2 log(2 pi e) as s -> 0 (log-normal)."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.exp(latents.flatten(1))
