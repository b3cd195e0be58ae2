"""The paper's Table 1 through `sweep-scale`, against the exact H_s of the half-sphere decoder.

Exact values come from ``half_sphere_radial_entropy`` (1-d quadrature of the closed-form
eigenvalues of J^T J, checked here against autograd), never from the estimator's own output.

A note on the tolerances at small s (docs/reproducing-table-1.md): every sample's term is
h_i = log(2 pi) + b_i with b_i = 1/2 sum_j log(1 + s^2/lambda_j) >= 0, and 1/lambda has a
power-law tail (index 1/2). The bias at scale s comes mostly from latents with lambda < s^2,
which have probability about s/4. Where N * s/4 is small, the sample rarely contains them and
its standard error understates the error; the checks below compare in standard errors only
where such latents are well sampled, and use the issue's absolute criteria elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_cli import HALF_SPHERE, ROOT

from genentropy_cli import sweep_scale
from genentropy_cli.core.references import (
    HALF_SPHERE_ENTROPY,
    HalfSphereGaussianCDF,
    HalfSphereRadial,
    half_sphere_gaussian_cdf_log_spectrum,
    half_sphere_radial_entropy,
    half_sphere_radial_spectrum,
    regularisation_bias_terms,
)

HALF_SPHERE_CDF = ROOT / "sample_models" / "half_sphere_cdf.pt"
PAPER_TABLE_1 = {1e-1: 1.9160, 1e-2: 1.8428, 1e-3: 1.8388, 1e-4: 1.8379}
"""Struminsky et al., Table 1 (N = 500,000)."""


# ----------------------------------------------------------------------------- the exact reference


def test_closed_form_spectrum_matches_autograd():
    """The eigenvalues the quadrature integrates are those of the decoder's J^T J (reverse-mode
    autograd here, independent of the engine's forward mode)."""
    latents = torch.tensor([[0.3, -0.1], [1.0, 2.0], [-2.5, 0.7], [3.0, -3.5]], dtype=torch.float64)
    for latent in latents:
        jacobian = torch.autograd.functional.jacobian(lambda z: HalfSphereRadial()(z.unsqueeze(0))[0], latent)
        eigenvalues = torch.linalg.eigvalsh(jacobian.T @ jacobian).numpy()
        radial, tangential = half_sphere_radial_spectrum(0.5 * float(latent @ latent))
        np.testing.assert_allclose(sorted(eigenvalues), sorted([radial, tangential]), rtol=1e-9)


@pytest.mark.parametrize("scale", [1e-1, 1e-2])
def test_quadrature_matches_plain_monte_carlo_of_the_formula(scale):
    """An independent check of the quadrature: t = |z|^2/2 ~ Exp(1), 10^6 numpy draws."""
    t = np.random.default_rng(0).exponential(size=1_000_000)
    radial, tangential = half_sphere_radial_spectrum(t)
    bias = 0.5 * (np.log1p(scale**2 / radial) + np.log1p(scale**2 / tangential))
    stderr = bias.std(ddof=1) / math.sqrt(bias.size)
    assert abs(HALF_SPHERE_ENTROPY + bias.mean() - half_sphere_radial_entropy(scale)) <= 4 * stderr


def test_quadrature_limits():
    assert half_sphere_radial_entropy(1e-9) == pytest.approx(HALF_SPHERE_ENTROPY, abs=1e-8)
    values = [half_sphere_radial_entropy(scale) for scale in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)]
    assert values == sorted(values, reverse=True)  # converges from above


def test_paper_values_are_within_0_002_of_the_exact_entropy():
    """So acceptance 1 (within 0.002 of the paper) is a test of the estimate, not of luck."""
    for scale, paper in PAPER_TABLE_1.items():
        assert abs(paper - half_sphere_radial_entropy(scale)) < 0.001, scale


# ----------------------------------------------------------------------------- acceptance 1


def sweep_json(run_cli, *args: str) -> dict:
    result = run_cli("sweep-scale", *args, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    return result.json()


def check_table_1(document: dict, in_stderrs: tuple[float, ...]) -> None:
    """Every scale within 4 standard errors of the exact H_s (for the scales listed), within
    0.002 of the paper, and s = 1e-4 within 1e-4 of log(2 pi)."""
    estimates = {item["scale"]: item for item in document["estimates"]}
    assert sorted(estimates) == sorted(PAPER_TABLE_1)
    assert document["reference"]["value"] == HALF_SPHERE_ENTROPY
    for scale in in_stderrs:
        item = estimates[scale]
        exact = half_sphere_radial_entropy(scale)
        assert abs(item["entropy"] - exact) <= 4 * item["stderr"], (scale, item, exact)
    for scale, paper in PAPER_TABLE_1.items():
        assert abs(estimates[scale]["entropy"] - paper) <= 0.002, (scale, estimates[scale])
    assert abs(estimates[1e-4]["entropy"] - HALF_SPHERE_ENTROPY) <= 1e-4


def check_small_scales_float64(document: dict) -> None:
    """s = 1e-6 within 3 standard errors of log(2 pi); the per-sample std shrinks towards 0."""
    estimates = sorted(document["estimates"], key=lambda item: -item["scale"])
    smallest = estimates[-1]
    assert smallest["scale"] == 1e-6
    assert abs(smallest["entropy"] - HALF_SPHERE_ENTROPY) <= 3 * smallest["stderr"], smallest
    stds = [item["std"] for item in estimates]
    assert stds == sorted(stds, reverse=True) and stds[-1] < 1e-4 * 0.27  # 0.27 at s = 0.1


def test_table_1_at_100k_samples(run_cli):
    """Acceptance 1 at a fifth of the paper's N. At s = 1e-4 only about 2 of 100,000 latents
    have lambda < s^2, so that scale is checked against log(2 pi) (1e-4), not in std. errors."""
    document = sweep_json(run_cli, HALF_SPHERE, "-n", "100000", "--reference", "half-sphere")
    check_table_1(document, in_stderrs=(1e-1, 1e-2, 1e-3))


def test_small_scales_float64_at_100k_samples(run_cli):
    document = sweep_json(run_cli, HALF_SPHERE, "-n", "100000", "--dtype", "float64", "--scales", "1e-4,1e-5,1e-6")
    check_small_scales_float64(document)


@pytest.mark.slow
def test_table_1_reproduction_500k(run_cli):
    """The issue's command: genentropy sweep-scale sample_models/half_sphere.pt -n 500000 --reference half-sphere
    (and the float64 run at 1e-4, 1e-5, 1e-6). About 12 of 500,000 latents reach lambda < (1e-4)^2."""
    document = sweep_json(run_cli, HALF_SPHERE, "-n", "500000", "--reference", "half-sphere")
    check_table_1(document, in_stderrs=(1e-1, 1e-2, 1e-3, 1e-4))
    document = sweep_json(run_cli, HALF_SPHERE, "-n", "500000", "--dtype", "float64",
                          "--scales", "1e-4,1e-5,1e-6", "--reference", "half-sphere")
    check_small_scales_float64(document)


# ----------------------------------------------------------------------------- acceptance 2


def test_gaussian_cdf_half_sphere_converges_to_log_2pi(run_cli):
    """A different map onto the same half-sphere (its bias at s > 0 differs: 5.5e-5 at
    s = 1e-4 by quadrature, vs 3.4e-5 for the radial map) converges to the same log(2 pi)."""
    document = sweep_json(run_cli, HALF_SPHERE_CDF, "-n", "100000", "--dtype", "float64",
                          "--scales", "1e-4,1e-6", "--reference", "model")
    assert document["reference"]["value"] == pytest.approx(HALF_SPHERE_ENTROPY, abs=1e-15)
    at_1e4, at_1e6 = document["estimates"]
    assert abs(at_1e4["entropy"] - HALF_SPHERE_ENTROPY) <= 1e-4, at_1e4
    assert abs(at_1e6["entropy"] - HALF_SPHERE_ENTROPY) <= 3 * at_1e6["stderr"], at_1e6
    assert at_1e4["entropy"] > at_1e6["entropy"]  # from above


@pytest.mark.parametrize("decoder", [HalfSphereRadial(), HalfSphereGaussianCDF()], ids=["radial", "gaussian-cdf"])
def test_every_sample_term_matches_the_closed_form(decoder):
    """Seed-independent and sharper than any mean: each sample's h_i (float64) equals
    log(2 pi) + 1/2 sum_j log(1 + s^2/lambda_j) with lambda_j from the closed-form spectrum, to
    1e-10, at every scale. So the estimator is exact sample by sample, and what remains at
    small s (the heavy tail of the b_i) is sampling, not numerics."""
    scales = [1e-2, 1e-4, 1e-6]
    latents, terms = [], []

    def keep(indices, batch_latents, batch_terms) -> None:
        latents.append(batch_latents)
        terms.append(batch_terms.entropy_terms)

    sweep_scale(decoder, 2, scales=scales, n_samples=20_000, dtype="float64", seed=5, on_batch=keep)
    z, values = torch.cat(latents), torch.cat(terms)
    if isinstance(decoder, HalfSphereRadial):
        radial, tangential = half_sphere_radial_spectrum(0.5 * (z * z).sum(dim=1).numpy())
        log_spectrum = [torch.from_numpy(np.log(radial)), torch.from_numpy(np.log(tangential))]
    else:
        log_spectrum = list(half_sphere_gaussian_cdf_log_spectrum(z))
    for column, scale in enumerate(scales):
        expected = HALF_SPHERE_ENTROPY + regularisation_bias_terms(log_spectrum, scale)
        assert torch.allclose(values[:, column], expected, rtol=0, atol=1e-10), scale
