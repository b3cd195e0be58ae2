"""Latent directions a decoder always collapses, found on a few probe latents.

Some architectures make the output independent of a direction of z by construction: StyleGAN's
mapping network first scales z to unit second moment, z -> z / sqrt(mean(z^2)), so g(c z) = g(z)
for every c > 0 and the radial direction z / |z| is in the null space of J(z) at every z. Then
one eigenvalue of J^T J is always 0 and 1/2 log(lambda + s^2) contributes exactly log s to every
h_i: H_s falls by log 10 = 2.303 nats per decade of s and has no finite limit as s -> 0. Estimates
of such decoders compare with each other at one s (the log s cancels). For z ~ N(0, I) and any
decoder g(z) = F(z / |z|), the entropy of the images on their (d - 1)-dimensional surface is

    H_images = lim_{s -> 0} (H_s - log s) - H(chi_d),

H(chi_d) the entropy of |z| (``chi_entropy``): z = r u with u uniform on the sphere, the log r
terms of -log p(z) and of the singular values cancel, and what is left of r is its entropy
(docs/method.md, "Directions a decoder always collapses"; tests/test_families.py checks it on
g(z) = z / |z|, whose images are uniform on the unit sphere: H_images = log(area)).

``radial_collapse`` compares how far the output moves along z with how far it moves along a
random direction v, by central differences of one size (a twentieth of |z|) in the decoder's
dtype: four forward passes per probe latent, no AD (forward-mode AD would import torch._dynamo,
seconds of start-up). For a decoder that ignores |z| the first is round-off, whatever the step;
for any other it is of the order of the second.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["RADIAL_COLLAPSE_RATIO", "RADIAL_STEP", "chi_entropy", "directional_differences", "radial_collapse"]

RADIAL_COLLAPSE_RATIO = 1e-3
"""The radial difference counts as zero below this fraction of a random direction's: float32
round-off leaves ~1e-6 of it for StyleGAN's normalisation; a direction a trained decoder merely
compresses is far above it at some of the probes."""
RADIAL_STEP = 0.05
"""Central-difference step, as a fraction of |z|."""


def chi_entropy(dimension: int) -> float:
    """Entropy of r = |z|, z ~ N(0, I_d) (the chi distribution with d degrees of freedom):
    log Gamma(d/2) + (d - log 2 - (d - 1) psi(d/2)) / 2."""
    half = dimension / 2
    return math.lgamma(half) + 0.5 * (dimension - math.log(2) - (dimension - 1) * float(torch.special.digamma(
        torch.tensor(half, dtype=torch.float64))))


def directional_differences(function: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                            directions: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """|f(z_i + h_i u_i) - f(z_i - h_i u_i)| / (2 h_i) for unit directions u_i (rows), flat latents (B, d)."""
    with torch.no_grad():
        shift = directions * steps.unsqueeze(1)
        outputs = function(torch.cat([latents + shift, latents - shift]))
        ahead, behind = outputs.reshape(2, latents.shape[0], -1).double().unbind(0)
    return (ahead - behind).norm(dim=1) / (2 * steps.double())


def radial_collapse(function: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                    seed: int = 0) -> dict | None:
    """``{"radial": bool, "ratio": max_i (difference along z_i) / (difference along v_i)}`` on flat
    ``latents`` (``directional_differences``); None where the decoder cannot be probed."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    random = torch.randn(latents.shape, generator=generator, dtype=torch.float64)
    radial_unit = latents.double() / latents.double().norm(dim=1, keepdim=True)
    random_unit = random / random.norm(dim=1, keepdim=True)
    steps = RADIAL_STEP * latents.double().norm(dim=1)
    try:
        radial = directional_differences(function, latents, radial_unit.to(latents), steps.to(latents))
        other = directional_differences(function, latents, random_unit.to(latents), steps.to(latents))
    except Exception:  # a decoder that cannot take the probe batch: not checked
        return None
    moving = other > 0  # where the output does not move at all, no direction is singled out
    ratios = radial[moving] / other[moving]
    finite = torch.isfinite(ratios)
    if not bool(finite.any()):
        return None
    ratio = float(ratios[finite].max())
    radial = ratio < RADIAL_COLLAPSE_RATIO
    return {"radial": radial, "ratio": ratio, "num_latents": int(latents.shape[0]),
            "chi_entropy": chi_entropy(latents.shape[1]) if radial else None}
