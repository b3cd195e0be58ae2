"""The estimator against closed forms (docs/method.md), through the CLI with --json."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.core.references import (
    HALF_SPHERE_ENTROPY,
    ElementwiseExp,
    LinearDecoder,
    linear_decoder_entropy,
    matrix_with_singular_values,
)
from genentropy_cli.models.loading import save_torchscript

GAUSSIAN_ENTROPY_PER_DIM = 0.5 * math.log(2 * math.pi * math.e)
SCALES = (1e-1, 1e-2, 1e-3, 1e-4)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_linear_decoder_matches_closed_form_at_every_scale(run_cli, model_dir, dtype):
    singular_values = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 3e-3]
    dim, output_dim = len(singular_values), 11
    matrix = matrix_with_singular_values(singular_values, output_dim, seed=3)
    bias = torch.linspace(-1, 1, output_dim, dtype=torch.float64)
    path = model_dir / "linear.pt"
    save_torchscript(LinearDecoder(matrix, bias), path, latent=make_latent_spec(dim))
    args = ["estimate", path, "-n", "20000", "--dtype", dtype, "--json", "--quiet"]
    for scale in SCALES:
        args += ["--scale", str(scale)]
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert [item["scale"] for item in document["estimates"]] == list(SCALES)
    for item in document["estimates"]:
        exact = linear_decoder_entropy(singular_values, item["scale"], dim * GAUSSIAN_ENTROPY_PER_DIM)
        assert abs(item["entropy"] - exact) <= 4 * item["stderr"], (item, exact)
        # the spread comes from -log p(z) alone: std sqrt(d/2)
        assert item["std"] == pytest.approx(math.sqrt(dim / 2), rel=0.05)
        assert item["num_samples"] == 20000
        assert item["ci95"][0] < item["entropy"] < item["ci95"][1]
    # the regularised term is a different number at each scale: the scales were not mixed up
    entropies = [item["entropy"] for item in document["estimates"]]
    assert entropies == sorted(entropies, reverse=True)


class ScaledExp(torch.nn.Module):
    """x = exp(a z) elementwise: J = diag(a exp(a z)), 1/2 log det(J^T J + s^2 I) = sum_j 1/2 log(a^2 e^{2 a z_j} + s^2)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.factor * latents.flatten(1))


def elementwise_exp_entropy(factor: float, scale: float, distribution: str, dim: int) -> float:
    """H_s of x = exp(a z) with z ~ the latent distribution, coordinate by coordinate:
    H(z) + d E[1/2 log(a^2 e^{2 a z} + s^2)] (the expectation by quadrature, from scipy's density)."""
    from scipy import integrate, stats

    latent = {"normal": stats.norm(), "uniform01": stats.uniform(0, 1)}[distribution]
    low, high = latent.support()

    def integrand(z: float) -> float:
        return 0.5 * np.logaddexp(2 * math.log(factor) + 2 * factor * z, 2 * math.log(scale)) * latent.pdf(z)

    expectation, _ = integrate.quad(integrand, max(low, -40), min(high, 40))
    return dim * (float(latent.entropy()) + expectation)


@pytest.mark.parametrize("distribution, factor", [("uniform01", 1.0), ("normal", 3.0)])
def test_elementwise_exp_matches_its_closed_form(run_cli, model_dir, distribution, factor):
    """E[sum_j a z_j] is d/2 for uniform [0, 1] latents and d log a is not 0 for a = 3: the 1/2 and
    the sign of the log-determinant both move these (with a = 1 and z ~ N(0, I) both terms are
    0 in expectation and a missing 1/2 would pass unseen)."""
    dim, scale = 4, 1e-4
    path = model_dir / "exp.pt"
    module = ElementwiseExp() if factor == 1.0 else ScaledExp(factor)
    save_torchscript(module, path, latent=make_latent_spec(dim, distribution))
    result = run_cli("estimate", path, "-n", "20000", "--dtype", "float64", "--scale", str(scale), "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    item = result.json()["estimates"][0]
    exact = elementwise_exp_entropy(factor, scale, distribution, dim)
    assert abs(item["entropy"] - exact) <= 4 * item["stderr"], (item, exact)
    # the bar is far narrower than what a lost 1/2 or sign moves (d/2 = 2, d log a = 4.4 nats)
    assert item["stderr"] < 0.05


def test_scaling_output_adds_d_log_a(run_cli, model_dir):
    """x -> a x adds d log a (d, not D) as s -> 0."""
    from genentropy_cli import estimate_entropy
    from genentropy_cli.core.references import HalfSphereRadial

    class Scaled(torch.nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.inner, self.factor = HalfSphereRadial(), factor

        def forward(self, z):
            return self.factor * self.inner(z)

    base = estimate_entropy(Scaled(1.0), 2, scales=[1e-6], n_samples=3000, dtype="float64").estimates[0]
    scaled = estimate_entropy(Scaled(5.0), 2, scales=[1e-6], n_samples=3000, dtype="float64").estimates[0]
    # same latents: the difference is exact up to the regularisation, not sampling noise
    assert scaled.entropy - base.entropy == pytest.approx(2 * math.log(5.0), abs=1e-6)


def test_half_sphere_sign_is_right(run_cli):
    """Equation (3) printed without its minus would give -log(2 pi); we must give +log(2 pi)."""
    result = run_cli("estimate", Path(__file__).resolve().parent.parent / "sample_models" / "half_sphere.pt", "-n", "4000", "--dtype", "float64",
                     "--scale", "1e-4", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    item = result.json()["estimates"][0]
    assert item["entropy"] == pytest.approx(HALF_SPHERE_ENTROPY, abs=2e-4)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_plain_callable_around_a_trainable_module_matches_the_closed_form(dtype):
    """``estimate_entropy(lambda z: g(z, y), ...)``: a plain callable is not copied or put in eval
    mode, so ``g``'s parameters still require grad; the Jacobian must not build an autograd graph
    (the Gram step's bmm(out=...) refused it). The label y only shifts the output."""
    from genentropy_cli import estimate_entropy

    singular_values = [0.05, 0.5, 2.0, 7.0]
    dim, labels, output_dim = len(singular_values), 3, 9
    generator = torch.nn.Linear(dim + labels, output_dim).to(getattr(torch, dtype))
    with torch.no_grad():
        generator.weight[:, :dim] = matrix_with_singular_values(singular_values, output_dim, seed=5)
    assert all(parameter.requires_grad for parameter in generator.parameters())
    label = torch.randn(1, labels, dtype=getattr(torch, dtype), generator=torch.Generator().manual_seed(1))

    def decoder(z):
        return generator(torch.cat([z, label.expand(z.shape[0], -1)], dim=1))

    # probe_samples=0: the float32 precision probe would call the callable in float64, which a plain
    # callable is not cast to (run/precision.py, left to the run layer)
    result = estimate_entropy(lambda z: decoder(z), dim, scales=[1e-3], n_samples=4000, dtype=dtype, seed=2,
                              probe_samples=0)
    item = result.estimates[0]
    exact = linear_decoder_entropy(singular_values, 1e-3, dim * GAUSSIAN_ENTROPY_PER_DIM)
    assert abs(item.entropy - exact) <= 4 * item.stderr, (item, exact)
    assert all(parameter.requires_grad for parameter in generator.parameters())  # the callable is left as it was
