"""samples: streaming choice of the lowest / highest per-sample terms, and the image grid.

Closed form: for a linear decoder x = A z with z ~ N(0, I), h(z) = |z|^2/2 + const, so the
lowest terms are the latents with the smallest norm and the highest those with the largest.
"""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch

from genentropy_cli.cli.imagegrid import as_images
from genentropy_cli.core.latents import LatentStream, make_latent_spec
from genentropy_cli.core.references import LinearDecoder, matrix_with_singular_values
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.samples import find_extreme_samples, keep_extremes
from genentropy_cli.models.loading import save_torchscript

DIM = 4
N = 3000


def image_decoder() -> LinearDecoder:
    """R^4 -> R^64 (an 8x8 'image'), linear with known singular values."""
    return LinearDecoder(matrix_with_singular_values([0.5, 1.0, 1.5, 2.0], 64, seed=3))


def test_extremes_are_the_smallest_and_largest_latent_norms():
    result = find_extreme_samples(image_decoder(), DIM, lowest=5, highest=3, n_samples=N, seed=2, device="cpu",
                                  dtype="float64", batch_size=256)
    norms = (LatentStream(make_latent_spec(DIM), 2).range(0, N) ** 2).sum(dim=1).numpy()
    order = np.argsort(norms, kind="stable")
    assert list(result.lowest["indices"]) == list(order[:5])
    assert list(result.highest["indices"]) == list(order[::-1][:3])
    constant = 0.5 * DIM * math.log(2 * math.pi) + 0.5 * sum(math.log(s**2 + 1e-8) for s in (0.5, 1.0, 1.5, 2.0))
    assert result.lowest["terms"] == pytest.approx(0.5 * norms[order[:5]] + constant, abs=1e-9)
    # the decoded outputs are the decoder applied to the regenerated latents
    latents = LatentStream(make_latent_spec(DIM), 2).range(0, N)[torch.as_tensor(result.highest["indices"])]
    expected = image_decoder()(latents)
    assert torch.allclose(result.highest["outputs"].double(), expected, atol=1e-6)


def test_the_choice_does_not_depend_on_the_batch_size():
    def chosen(batch_size):
        result = find_extreme_samples(image_decoder(), DIM, lowest=4, highest=4, n_samples=1000, device="cpu",
                                      dtype="float64", batch_size=batch_size)
        return list(result.lowest["indices"]), list(result.highest["indices"])

    assert chosen(1000) == chosen(37) == chosen(1)


def test_keep_extremes_breaks_ties_by_index():
    values, indices = np.array([1.0, 0.0, 1.0, 0.0]), np.array([7, 9, 3, 2])
    assert list(keep_extremes(values, indices, 3, lowest=True)[1]) == [2, 9, 3]
    assert list(keep_extremes(values, indices, 2, lowest=False)[1]) == [3, 7]
    assert keep_extremes(values, indices, 0, lowest=True)[1].size == 0


def test_as_images_handles_the_common_layouts():
    assert as_images(torch.rand(2, 1, 5, 5), (1, 5, 5))[0].shape == (2, 5, 5)
    rgb, note = as_images(torch.rand(2, 3, 4, 4) * 2 - 1, (3, 4, 4))
    assert rgb.shape == (2, 4, 4, 3) and "[-1, 1]" in note and rgb.min() >= 0 and rgb.max() <= 1
    assert as_images(torch.rand(2, 49), (49,))[0].shape == (2, 7, 7)
    scaled, note = as_images(torch.randn(2, 36) * 10, (36,))
    assert "min-max" in note and scaled.min() == 0 and scaled.max() == 1
    with pytest.raises(InputError, match="not an image"):
        as_images(torch.rand(2, 50), (50,))


@pytest.fixture
def decoder_file(tmp_path):
    path = tmp_path / "linear64.pt"
    save_torchscript(image_decoder(), path, latent=make_latent_spec(DIM))
    return path


def test_cli_samples_writes_a_grid_and_lists_the_samples(run_cli, decoder_file, tmp_path):
    grid = tmp_path / "grid.png"
    result = run_cli("samples", decoder_file, "--lowest", "3", "--highest", "2", "-n", "500", "--grid", grid, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert grid.stat().st_size > 1000 and grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.count("lowest │") == 3 and result.stdout.count("highest │") == 2
    result = run_cli("samples", decoder_file, "--lowest", "2", "--highest", "0", "-n", "500", "--json")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert len(document["lowest"]) == 2 and document["highest"] == []
    assert set(document["lowest"][0]) == {"index", "entropy_term", "neg_log_density", "half_log_det"}


def test_cli_samples_bad_input(run_cli, decoder_file, tmp_path, monkeypatch):
    from tests.test_cli import assert_one_line_error

    assert_one_line_error(run_cli("samples", decoder_file, "-n", "100"), "--grid")
    assert_one_line_error(run_cli("samples", decoder_file, "--lowest", "0", "--highest", "0", "--json"), "at least one")
    assert_one_line_error(run_cli("samples", decoder_file, "--lowest", "50", "-n", "10", "--json"), "--num-samples")
    not_image = tmp_path / "flat.pt"
    save_torchscript(LinearDecoder(matrix_with_singular_values([1.0, 1.0], 5)), not_image, latent=make_latent_spec(2))
    assert_one_line_error(run_cli("samples", not_image, "-n", "50", "--grid", tmp_path / "x.png"), "not an image")

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert_one_line_error(run_cli("samples", decoder_file, "-n", "50", "--grid", tmp_path / "y.png"),
                          "genentropy[plot]")
