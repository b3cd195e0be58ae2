"""Decoders whose output entropy is known in closed form (docs/method.md), for tests and checks."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "HALF_SPHERE_ENTROPY",
    "NAMED_REFERENCES",
    "ConditionalLinearDecoder",
    "ElementwiseExp",
    "HalfSphereGaussianCDF",
    "HalfSphereRadial",
    "LinearDecoder",
    "half_sphere_gaussian_cdf_log_spectrum",
    "half_sphere_radial_entropy",
    "half_sphere_radial_spectrum",
    "linear_decoder_entropy",
    "matrix_with_singular_values",
    "regularisation_bias_terms",
]

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


def half_sphere_radial_spectrum(half_squared_radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of J^T J of HalfSphereRadial at t = |z|^2 / 2 (float64, t > 0):
    radial lambda_r = 2t / (e^{2t} - 1), tangential lambda_t = (1 - e^{-2t}) / (2t);
    their product is e^{-2t} = (2 pi p(z))^2, so every sample's h_i is log(2 pi) at s = 0."""
    t = np.asarray(half_squared_radius, dtype=np.float64)
    return 2.0 * t / np.expm1(2.0 * t), -np.expm1(-2.0 * t) / (2.0 * t)


def half_sphere_radial_entropy(scale: float, num_points: int = 2**14, upper: float = 80.0) -> float:
    """The exact regularised entropy H_s of HalfSphereRadial with z ~ N(0, I), by quadrature:

        H_s = log(2 pi) + E_t[ 1/2 log(1 + s^2/lambda_r(t)) + 1/2 log(1 + s^2/lambda_t(t)) ],  t ~ Exp(1)

    (t = |z|^2/2 is exponential for a 2-d standard normal). Composite Simpson on [0, upper];
    the integrand is smooth and the tail beyond ``upper`` is below e^{-upper} * upper. This is
    what the Monte-Carlo estimate converges to as N grows, at any s: an independent check.
    """
    t = np.linspace(0.0, upper, num_points + 1)[1:]  # drop t = 0, where both lambdas are 1
    radial, tangential = half_sphere_radial_spectrum(t)
    log_squared_scale = 2.0 * math.log(scale)
    bias = 0.5 * (np.logaddexp(0.0, log_squared_scale - np.log(radial))
                  + np.logaddexp(0.0, log_squared_scale - np.log(tangential)))
    at_zero = 0.5 * 2.0 * math.log1p(scale**2)  # lambda_r = lambda_t = 1 at t = 0
    values = np.concatenate([[at_zero], bias]) * np.exp(-np.concatenate([[0.0], t]))
    step = upper / num_points
    weights = np.ones(num_points + 1)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return HALF_SPHERE_ENTROPY + float(step / 3.0 * (weights * values).sum())


class HalfSphereGaussianCDF(nn.Module):
    """A second map R^2 -> lower half-sphere, by Archimedes: the area element is dh dphi, so
    h ~ U(-1, 0) and phi ~ U(0, 2 pi) independent give the uniform distribution:

        u = Phi(z1), v = Phi(z2), h = -u, phi = 2 pi v, x = (sqrt(1-h^2) cos phi, sqrt(1-h^2) sin phi, h)

    With z ~ N(0, I) its entropy is log(2 pi), like HalfSphereRadial's, but J differs everywhere
    (eigenvalues Phi'(z1)^2 / (1-h^2) and (2 pi Phi'(z2))^2 (1-h^2)), and so does the bias at s > 0.
    1 - h^2 is formed as Phi(-z1) (1 + u), accurate where u -> 1.
    """

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        first, second = latents[:, 0], latents[:, 1]
        lower = torch.special.ndtr(first)
        ring_radius = torch.sqrt(torch.special.ndtr(-first) * (1.0 + lower))
        angle = (2.0 * math.pi) * torch.special.ndtr(second)
        return torch.stack([ring_radius * torch.cos(angle), ring_radius * torch.sin(angle), -lower], dim=1)


def half_sphere_gaussian_cdf_log_spectrum(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log eigenvalues of J^T J of HalfSphereGaussianCDF at latents (B, 2), in closed form:
    lambda_1 = Phi'(z1)^2 / (1 - h^2), lambda_2 = (2 pi Phi'(z2))^2 (1 - h^2), with
    1 - h^2 = Phi(-z1) (1 + Phi(z1)); their product is (2 pi p(z))^2 (float64, log-space)."""
    z = latents.to(torch.float64)
    log_pdf = -0.5 * z * z - 0.5 * math.log(2.0 * math.pi)
    log_ring_squared = torch.special.log_ndtr(-z[:, 0]) + torch.log1p(torch.special.ndtr(z[:, 0]))
    return (2.0 * log_pdf[:, 0] - log_ring_squared,
            2.0 * math.log(2.0 * math.pi) + 2.0 * log_pdf[:, 1] + log_ring_squared)


def regularisation_bias_terms(log_eigenvalues: Sequence[torch.Tensor], scale: float) -> torch.Tensor:
    """Per sample, b = 1/2 sum_j log(1 + s^2 / lambda_j) >= 0: what the scale s adds to a term
    whose unregularised value is exact (computed in log-space, safe for tiny lambda)."""
    log_squared_scale = 2.0 * math.log(scale)
    zero = torch.zeros(())
    return 0.5 * sum(torch.logaddexp(zero.to(values), log_squared_scale - values) for values in log_eigenvalues)


NAMED_REFERENCES: dict[str, tuple[float, str]] = {
    "half-sphere": (HALF_SPHERE_ENTROPY, "uniform on the unit half-sphere, log(2 pi)"),
    "sphere": (math.log(4.0 * math.pi), "uniform on the unit sphere, log(4 pi)"),
}
"""Known true entropies a ``--reference`` may name (nats)."""


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


class ConditionalLinearDecoder(nn.Module):
    """x = A_y z + b_y for class y, a conditional decoder with a known entropy per class: with
    z ~ N(0, I_d), H_s(X|y) = d/2 log(2 pi e) + 1/2 sum_j log(sigma_{y,j}^2 + s^2).

    ``forward(z, y)`` takes class numbers (int64 (B,)) or one-hot rows (float (B, K)); every
    class's output is formed, x = sum_k onehot_k (A_k z + b_k), so both formats give the same
    outputs and the label enters only as a constant that weights them."""

    def __init__(self, matrices: torch.Tensor, biases: torch.Tensor):
        super().__init__()
        self.register_buffer("matrices", matrices.clone())  # (K, D, d)
        self.register_buffer("biases", biases.clone())  # (K, D)

    @classmethod
    def with_singular_values(cls, spectra: Sequence[Sequence[float]], output_dim: int,
                             seed: int = 0) -> "ConditionalLinearDecoder":
        """Class k's A_k has exactly the singular values ``spectra[k]``; biases are random."""
        matrices = torch.stack([matrix_with_singular_values(values, output_dim, seed + index)
                                for index, values in enumerate(spectra)])
        biases = torch.randn(len(spectra), output_dim, generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)
        return cls(matrices, biases)

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        count, output_dim, dim = self.matrices.shape
        weights = labels.to(latents.dtype) if labels.is_floating_point() else (
            nn.functional.one_hot(labels, count).to(latents.dtype))
        every_class = (latents.flatten(1) @ self.matrices.reshape(count * output_dim, dim).T).view(-1, count, output_dim)
        return (every_class * weights[:, :, None]).sum(dim=1) + weights @ self.biases


class ElementwiseExp(nn.Module):
    """x = exp(z), D = d; with z ~ N(0, I): H = d/2 log(2 pi e) as s -> 0 (log-normal)."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.exp(latents.flatten(1))
