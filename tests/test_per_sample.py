"""--per-sample output (.npy, .csv, .jsonl) and the diagnostics, against closed forms."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from longrun_support import linear_decoder, linear_terms, normal_neg_log_density

from genentropy_cli import estimate_entropy
from genentropy_cli.core.latents import LatentStream, make_latent_spec
from genentropy_cli.core.stats import LogHistogram
from genentropy_cli.models.loading import save_torchscript

SIGMAS = (1e-3, 1.0, 2.0)  # one direction collapsed at s = 1e-2, none at s = 1e-4
SCALES = (1e-2, 1e-4)
N = 300


def read_rows(path) -> dict[str, np.ndarray]:
    """index, neg_log_density, h (N, S), collapsed (N, S), latent (N, d) from any of the formats."""
    if path.suffix == ".npy":
        array = np.load(path)
        return {name: array[name] for name in array.dtype.names}
    if path.suffix == ".csv":
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
        pick = lambda prefix: np.array([[float(row[key]) for key in row if key.startswith(prefix)] for row in rows])  # noqa: E731
        return {"index": np.array([int(row["index"]) for row in rows]),
                "neg_log_density": np.array([float(row["neg_log_density"]) for row in rows]),
                "h": pick("h["), "collapsed": pick("collapsed["), "latent": pick("z")}
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {name: np.array([row[name] for row in rows]) for name in rows[0]}


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".jsonl"])
def test_per_sample_rows_match_closed_forms_and_regenerate_the_latents(run_cli, tmp_path, suffix):
    model = tmp_path / "linear.pt"
    save_torchscript(linear_decoder(SIGMAS), model, latent=make_latent_spec(3))
    path = tmp_path / f"rows{suffix}"
    result = run_cli("estimate", model, "-n", str(N), "--batch-size", "64", "--dtype", "float64", "-s", "1e-2",
                     "-s", "1e-4", "--per-sample", path, "--save-latents", "--seed", "7", "--quiet")
    assert result.exit_code == 0, result.stderr
    rows = read_rows(path)
    assert np.array_equal(rows["index"], np.arange(N))
    latents = LatentStream(make_latent_spec(3), seed=7).range(0, N).numpy()
    assert np.array_equal(rows["latent"], latents)  # exactly: any sample can be regenerated
    expected = linear_terms(SIGMAS, SCALES, N, seed=7)
    # float64 eigenvalues of J^T J are good to ~1e-16 of the largest (4): 1e-6 is known to ~1e-10
    np.testing.assert_allclose(rows["h"], expected, rtol=0, atol=1e-8)
    np.testing.assert_allclose(rows["neg_log_density"], normal_neg_log_density(torch.from_numpy(latents)), rtol=1e-14)
    assert np.array_equal(rows["collapsed"], np.tile([1, 0], (N, 1)))
    assert not list(tmp_path.glob("*.rows"))


def test_diagnostics_in_json_and_under_the_table(run_cli, tmp_path):
    model = tmp_path / "linear.pt"
    save_torchscript(linear_decoder(SIGMAS), model, latent=make_latent_spec(3))
    arguments = ["estimate", model, "-n", str(N), "--batch-size", "64", "-s", "1e-2", "-s", "1e-4", "--quiet",
                 "--device", "cpu"]
    document = run_cli(*arguments, "--json", "--dtype", "float64").json()
    diagnostics = document["diagnostics"]
    for name in ("min", "q01", "median", "q99", "max"):  # the same J for every sample
        assert diagnostics["smallest_singular_value_quantiles"][name] == pytest.approx(1e-3, rel=1e-6)
        assert diagnostics["largest_singular_value_quantiles"][name] == pytest.approx(2.0, rel=1e-12)
    assert diagnostics["smallest_singular_value"] == pytest.approx(1e-3, rel=1e-6)
    assert diagnostics["mean_collapsed_directions"] == {"0.01": 1.0, "0.0001": 0.0}
    assert diagnostics["num_nonfinite"] == 0 and document["num_nonfinite"] == 0
    assert diagnostics["device_name"].startswith("CPU") and diagnostics["decoder_dtype"] == "float64"
    assert diagnostics["batch_size"] == diagnostics["batch_size_final"] == 64
    assert diagnostics["tangent_chunk"] == diagnostics["tangent_chunk_final"] == 3
    assert diagnostics["peak_memory_bytes"] > 0 and diagnostics["peak_memory_kind"]
    assert document["stop_reason"] == "num_samples" and document["partial"] is False
    table = run_cli(*arguments).stdout
    for fragment in ("Diagnostics", "smallest singular value", "mean directions with lambda < s^2",
                     "s=0.01: 1.00", "non-finite samples", "batch / tangent chunk", "peak memory", "precision probe"):
        assert fragment in table, fragment


def test_nonfinite_rows_are_written_and_counted(tmp_path):
    """About 16% of 2000 samples are NaN (z_1 > 1): more than the 100 indices listed, over two
    latent blocks, so the cap (the first 100, in sample order) is reached and kept across merges."""
    class NanBeyond(torch.nn.Module):
        def forward(self, z):
            out = torch.cat([z, torch.sin(z)], dim=1)
            return torch.where(z[:, :1] > 1.0, torch.full_like(out, torch.nan), out)

    path = tmp_path / "rows.jsonl"
    result = estimate_entropy(NanBeyond(), 2, n_samples=2000, batch_size=300, dtype="float64", skip_nonfinite=True,
                              per_sample=path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    bad = [row["index"] for row in rows if row["h"][0] is None]  # strict JSON: a non-finite term is null
    assert all(row["h"][0] is None or np.isfinite(row["h"][0]) for row in rows)
    latents = LatentStream(make_latent_spec(2), seed=0).range(0, 2000)
    assert bad == torch.nonzero(latents[:, 0] > 1.0).flatten().tolist()  # the decoder's NaNs, no others
    assert len(rows) == 2000 and len(bad) > 150 and result.num_nonfinite == len(bad)
    assert result.nonfinite_indices == bad[:100] and result.estimates[0].num_samples == 2000 - len(bad)


def test_per_sample_option_errors(run_cli, tmp_path):
    model = tmp_path / "linear.pt"
    save_torchscript(linear_decoder(SIGMAS), model, latent=make_latent_spec(3))
    wrong = run_cli("estimate", model, "-n", "10", "--per-sample", tmp_path / "rows.txt")
    assert wrong.exit_code == 2 and ".npy, .csv, .jsonl" in wrong.stderr
    alone = run_cli("estimate", model, "-n", "10", "--save-latents")
    assert alone.exit_code == 2 and "--save-latents needs --per-sample" in alone.stderr


def test_singular_value_quantiles_are_within_the_histogram_resolution():
    """The diagnostics' quantiles come from a log histogram (constant memory): exact extremes,
    interior quantiles within a factor 10^(1/100) of numpy's."""
    values = np.exp(np.random.default_rng(0).normal(0.0, 5.0, 20_000))
    histogram = LogHistogram()
    for piece in np.array_split(values, 7):
        histogram.add(piece)
    assert histogram.quantile(0.0) == values.min() and histogram.quantile(1.0) == values.max()
    for level in (0.01, 0.5, 0.99):
        assert abs(np.log10(histogram.quantile(level) / np.quantile(values, level))) <= 0.01
