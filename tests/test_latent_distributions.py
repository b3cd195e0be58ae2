"""Latent distributions: exact log-densities and entropies (checked against scipy and by
integration), and a linear decoder under each matches H(z) + 1/2 sum log(sigma^2 + s^2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from genentropy_cli.core.latents import (
    LATENT_DISTRIBUTIONS,
    DistributionKind,
    Uniform,
    distribution_label,
    distribution_names,
    parse_distribution,
    register_distribution,
)
from genentropy_cli.core.references import matrix_with_singular_values
from genentropy_cli.errors import InputError
from genentropy_cli.models.specs import build_from_spec, save_safetensors

SINGULAR_VALUES = [0.05, 0.3, 1.0, 4.0]
DIM, OUTPUT_DIM = len(SINGULAR_VALUES), 7

# each distribution's entropy per coordinate from scipy, independent of genentropy's formulas
REFERENCE = {
    "normal": stats.norm().entropy(),
    "uniform": stats.uniform(-1, 2).entropy(),
    "uniform01": stats.uniform(0, 1).entropy(),
    "truncated-normal:0.7": stats.truncnorm(-0.7, 0.7).entropy(),
    "truncated-normal:2": stats.truncnorm(-2, 2).entropy(),
}
SUPPORT = {"normal": (-np.inf, np.inf), "uniform": (-1, 1), "uniform01": (0, 1),
           "truncated-normal:0.7": (-0.7, 0.7), "truncated-normal:2": (-2, 2)}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_log_density_is_normalised_and_entropy_matches_scipy(name):
    distribution = parse_distribution(name)
    low, high = SUPPORT[name]

    def density(x: float) -> float:
        return math.exp(float(distribution.log_density(torch.tensor([[x]], dtype=torch.float64))[0]))

    mass, _ = integrate.quad(density, low, high)
    assert mass == pytest.approx(1.0, abs=1e-9)
    assert distribution.entropy(3) == pytest.approx(3 * float(REFERENCE[name]), rel=1e-12)
    samples = distribution.sample(torch.Generator().manual_seed(0), 20000, 1)
    assert float(samples.min()) >= low and float(samples.max()) <= high
    if math.isfinite(low):  # outside the support the density is zero
        outside = torch.tensor([[high + 0.1]], dtype=torch.float64)
        assert distribution.log_density(outside)[0] == -math.inf


SCIPY = {"normal": stats.norm(), "uniform": stats.uniform(-1, 2), "uniform01": stats.uniform(0, 1),
         "truncated-normal:0.7": stats.truncnorm(-0.7, 0.7), "truncated-normal:2": stats.truncnorm(-2, 2)}
"""Each distribution's one-coordinate law in scipy: the d-dimensional density is their product."""


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("name", list(REFERENCE))
def test_log_density_in_several_dimensions_is_the_sum_of_scipys(name, dim):
    """A normalising constant applied once instead of once per coordinate is invisible at d = 1."""
    distribution = parse_distribution(name)
    points = distribution.sample(torch.Generator().manual_seed(dim), 64, dim)
    expected = SCIPY[name].logpdf(points.numpy()).sum(axis=1)
    np.testing.assert_allclose(distribution.log_density(points).numpy(), expected, rtol=1e-12, atol=1e-12)
    assert distribution.entropy(dim) == pytest.approx(dim * float(SCIPY[name].entropy()), rel=1e-12)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_linear_decoder_matches_closed_form_under_each_distribution(run_cli, tmp_path, name):
    """The distribution comes from the spec here (the CLI flag path is tested in test_formats)."""
    matrix = matrix_with_singular_values(SINGULAR_VALUES, OUTPUT_DIM, seed=4)
    spec = {"architecture": "mlp",
            "kwargs": {"latent_dim": DIM, "output_dim": OUTPUT_DIM, "hidden": [], "output_activation": "none"},
            "latent": {"shape": [DIM], "distribution": name}}
    module = build_from_spec(spec).double()
    with torch.no_grad():
        module.net[0].weight.copy_(matrix)
        module.net[0].bias.fill_(0.3)
    path = save_safetensors(module, tmp_path / "linear.safetensors", spec)
    result = run_cli("estimate", path, "-n", "4000", "--dtype", "float64", "-s", "1e-1", "-s", "1e-4",
                     "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["model"]["latent_distribution"] == name
    assert document["model"]["latent_source"]["distribution"] == "metadata"  # the embedded spec
    latent_entropy = DIM * float(REFERENCE[name])
    for item in document["estimates"]:
        exact = latent_entropy + 0.5 * sum(math.log(sigma**2 + item["scale"] ** 2) for sigma in SINGULAR_VALUES)
        # uniform latents make every term equal (std 0): then the estimate is exact
        assert abs(item["entropy"] - exact) <= 4 * item["stderr"] + 1e-9, (name, item, exact)


def test_unknown_distribution_in_a_spec_is_a_one_line_error(run_cli, tmp_path):
    from test_cli import assert_one_line_error

    spec = {"architecture": "mlp", "kwargs": {"latent_dim": 2, "output_dim": 3, "hidden": []},
            "latent": {"shape": [2], "distribution": "cauchy"}}
    path = save_safetensors(build_from_spec(spec), tmp_path / "m.safetensors", spec)
    assert_one_line_error(run_cli("estimate", path), "unknown latent distribution 'cauchy'", "truncated-normal:PSI")
    assert_one_line_error(run_cli("estimate", path, "--latent-distribution", "laplace"), "'laplace'")


def test_every_registered_name_reads_back_from_its_label():
    assert set(REFERENCE) >= {kind.name for kind in LATENT_DISTRIBUTIONS.values() if not kind.parameter}
    for name in REFERENCE:
        assert distribution_label(parse_distribution(name)) == name
    assert parse_distribution("Gaussian") == parse_distribution("normal")
    with pytest.raises(InputError, match="truncated-normal needs a value for PSI"):
        parse_distribution("truncated-normal")
    with pytest.raises(InputError, match="unknown latent distribution 'normal:3'"):
        parse_distribution("normal:3")  # a kind without a parameter takes none


def test_a_registered_distribution_parses_labels_and_is_listed(monkeypatch):
    """Adding a distribution is one ``register_distribution`` call: parsing, labels and the
    listing in messages follow."""
    monkeypatch.setattr("genentropy_cli.core.latents.LATENT_DISTRIBUTIONS", dict(LATENT_DISTRIBUTIONS))
    register_distribution(DistributionKind(
        "box", lambda half: Uniform(-half, half, "box"), "uniform on [-W, W]", parameter="W", example=2,
        parameter_of=lambda distribution: distribution.high))
    box = parse_distribution("box:3")
    assert (box.low, box.high) == (-3.0, 3.0) and distribution_label(box) == "box:3"
    assert distribution_names()[-1] == "box:W"
    with pytest.raises(InputError, match="normal, uniform, uniform01, truncated-normal:PSI, box:W"):
        parse_distribution("cauchy")
    with pytest.raises(ValueError, match="already registered: gaussian"):
        register_distribution(DistributionKind("other", Uniform, "", aliases=("gaussian",)))
