"""compare: common random numbers, paired standard errors, ranks and tests, against closed forms.

Closed forms used (z ~ N(0, I_d), s -> 0):
- linear x = A z: h(z) = |z|^2/2 + c_A, so two linear decoders differ by a constant per sample:
  the paired standard error is 0 and the difference is 1/2 sum log sigma_A^2 - 1/2 sum log sigma_B^2.
- elementwise x = exp(z): h(z) = |z|^2/2 + sum_j z_j + c. Against a linear decoder the per-sample
  difference is -sum_j z_j + c, variance d, while var h_lin = d/2 and var h_exp = 3d/2: the paired
  variance is d, the unpaired 2d, so paired SE / unpaired SE = 1/sqrt(2) on shared latents and 1 on
  independent ones.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genentropy_cli.cli.reporting import format_error
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.core.references import ElementwiseExp, LinearDecoder, matrix_with_singular_values
from genentropy_cli.core.significance import (
    correlation_from_moments,
    holm_adjust,
    rank_descending,
    significance_mark,
    two_sided_p_value,
    unpaired_stderr,
)
from genentropy_cli.jobs.compare import compare_models
from genentropy_cli.jobs.estimate import estimate_entropy
from genentropy_cli.models.loading import save_torchscript

DIM = 3
SIGMAS_A = (1.0, 2.0, 3.0)
SIGMAS_B = (0.5, 1.0, 4.0)


def linear(sigmas, seed=0) -> LinearDecoder:
    return LinearDecoder(matrix_with_singular_values(sigmas, 5, seed=seed))


def half_log_det(sigmas, scale) -> float:
    return 0.5 * sum(math.log(sigma**2 + scale**2) for sigma in sigmas)


def test_two_linear_decoders_differ_by_the_closed_form_with_zero_paired_error():
    scales = (1e-4, 1e-1)
    result = compare_models([linear(SIGMAS_A), linear(SIGMAS_B, seed=1)], [DIM, DIM], names=["a", "b"],
                            scales=scales, n_samples=2000, device="cpu", dtype="float64", batch_size=300)
    for scale in scales:
        pair = result.pair("a", "b", scale)
        assert pair.shared_latents
        assert pair.difference == pytest.approx(half_log_det(SIGMAS_A, scale) - half_log_det(SIGMAS_B, scale), abs=1e-9)
        assert pair.paired_stderr < 1e-12
        assert pair.stderr == pair.paired_stderr
        # unpaired: each model's per-sample std is sqrt(d/2), so sqrt(2) * sqrt(d/2) / sqrt(N)
        assert pair.unpaired_stderr == pytest.approx(math.sqrt(DIM / 2000), rel=0.1)
        assert pair.correlation == pytest.approx(1.0, abs=1e-9)
        assert pair.significant and pair.mark == "***"
    assert [model.ranks for model in result.models] == [[1, 1], [2, 2]]
    assert result.warnings == []


def _exp_vs_linear(shared: bool, seed: int, n_samples: int = 3000):
    return compare_models([linear((1.0, 1.0, 1.0)), ElementwiseExp()], [DIM, DIM], names=["lin", "exp"],
                          n_samples=n_samples, seed=seed, device="cpu", dtype="float64", shared_latents=shared)


def test_paired_error_is_smaller_on_shared_latents_by_the_closed_form_ratio():
    ratios = [(pair.paired_stderr / pair.unpaired_stderr) for pair in
              (_exp_vs_linear(True, seed).pair("lin", "exp") for seed in range(4))]
    assert np.mean(ratios) == pytest.approx(1 / math.sqrt(2), abs=0.02)
    pair = _exp_vs_linear(True, 0).pair("lin", "exp")
    assert pair.stderr == pair.paired_stderr < pair.unpaired_stderr
    assert pair.correlation == pytest.approx(1 / math.sqrt(3), abs=0.05)  # cov d/2 over sqrt(d/2 * 3d/2)
    # H_lin - H_exp = 0 at s -> 0 (both d/2 log(2 pi e) for sigma = 1)
    assert abs(pair.difference) < 4 * pair.stderr


def test_paired_error_equals_unpaired_in_expectation_on_independent_latents():
    pairs = [_exp_vs_linear(False, seed).pair("lin", "exp") for seed in range(6)]
    ratios = [pair.paired_stderr / pair.unpaired_stderr for pair in pairs]
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.02)
    assert abs(np.mean([pair.correlation for pair in pairs])) < 0.03
    for pair in pairs:
        assert not pair.shared_latents and pair.stderr == pair.unpaired_stderr
        # the expected unpaired SE: sqrt((d/2 + 3d/2) / N)
        assert pair.unpaired_stderr == pytest.approx(math.sqrt(2 * DIM / 3000), rel=0.08)


def test_each_model_matches_estimate_with_its_latent_seed():
    decoders = [linear(SIGMAS_A), ElementwiseExp(), ElementwiseExp()]
    specs = [make_latent_spec(DIM), make_latent_spec(DIM), make_latent_spec(DIM, "uniform")]
    result = compare_models(decoders, specs, n_samples=1500, seed=5, device="cpu", dtype="float64", batch_size=128)
    for decoder, spec, model in zip(decoders, specs, result.models):
        alone = estimate_entropy(decoder, spec, n_samples=1500, seed=model.latent_seed, device="cpu",
                                 dtype="float64", batch_size=500)
        assert model.estimates[0].entropy == pytest.approx(alone.estimates[0].entropy, rel=1e-12)
        assert model.estimates[0].stderr == pytest.approx(alone.estimates[0].stderr, rel=1e-9)


def test_batch_size_does_not_change_the_comparison():
    def run(batch_size):
        return compare_models([linear(SIGMAS_A), ElementwiseExp()], [DIM, DIM], n_samples=2100, device="cpu",
                              dtype="float64", batch_size=batch_size).pairs[0]

    first, second = run(1000), run(77)
    assert first.difference == pytest.approx(second.difference, rel=1e-12)
    assert first.paired_stderr == pytest.approx(second.paired_stderr, rel=1e-10)


def test_different_latent_specs_are_compared_unpaired_with_a_warning():
    uniform = make_latent_spec(DIM, "uniform")
    result = compare_models([linear(SIGMAS_A), linear(SIGMAS_A), linear(SIGMAS_B)], [DIM, DIM, uniform],
                            names=["n1", "n2", "u"], n_samples=800, seed=4, device="cpu", dtype="float64")
    assert len(result.warnings) == 1 and "latent specs differ" in result.warnings[0]
    assert "u: 3 uniform" in result.warnings[0]
    assert result.pair("n1", "n2").shared_latents
    cross = result.pair("n1", "u")
    assert not cross.shared_latents and cross.stderr == cross.unpaired_stderr
    # the first spec keeps the seed; the other spec gets its own, recorded
    assert [model.latent_seed for model in result.models][:2] == [4, 4] and result.models[2].latent_seed != 4
    # uniform latents: H = d log 2 + 1/2 sum log sigma^2 exactly (per-sample constant)
    uniform_model = result.models[2].estimates[0]
    assert uniform_model.entropy == pytest.approx(DIM * math.log(2) + half_log_det(SIGMAS_B, 1e-4), abs=1e-9)
    assert uniform_model.stderr < 1e-12


def test_latents_of_different_specs_are_independent():
    """Uniform and normal latents drawn from one seed are strongly dependent (same generator
    bits): the per-sample terms of |z|^2 (linear, normal) and sum_j w_j (exp, uniform) would
    correlate. With a derived seed per spec they must not (correlation SE ~ 1/sqrt(N))."""
    result = compare_models([linear((1.0, 1.0, 1.0)), ElementwiseExp()], [DIM, make_latent_spec(DIM, "uniform")],
                            names=["normal", "uniform"], n_samples=4000, device="cpu", dtype="float64")
    pair = result.pair("normal", "uniform")
    assert abs(pair.correlation) < 0.05
    assert pair.paired_stderr == pytest.approx(pair.unpaired_stderr, rel=0.06)


def test_a_sample_that_is_nonfinite_for_one_model_is_dropped_for_all_or_fails():
    class NanForLargeFirstCoordinate(torch.nn.Module):
        def forward(self, latents):
            out = torch.cat([latents, latents], dim=1)
            return torch.where(latents[:, :1] > 2.0, torch.full_like(out, math.nan), out)

    from genentropy_cli.errors import EstimationError

    decoders, latents = [linear(SIGMAS_A), NanForLargeFirstCoordinate()], [DIM, DIM]
    with pytest.raises(EstimationError, match="model 2: sample .* non-finite"):
        compare_models(decoders, latents, n_samples=400, device="cpu")
    result = compare_models(decoders, latents, n_samples=400, device="cpu", skip_nonfinite=True)
    assert result.models[0].num_nonfinite == 0 and result.models[1].num_nonfinite > 0
    assert result.settings["num_used"] == 400 - result.models[1].num_nonfinite
    assert all(model.estimates[0].num_samples == result.settings["num_used"] for model in result.models)
    assert any("dropped" in warning for warning in result.warnings)


# --------------------------------------------------------------------------- pure pieces


def test_holm_adjustment_matches_the_textbook_example():
    # sorted p: 0.01, 0.03, 0.04 -> 3*0.01 = 0.03, 2*0.03 = 0.06, max(0.06, 1*0.04) = 0.06
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_small_statistics_helpers():
    assert two_sided_p_value(1.959963984540054) == pytest.approx(0.05)
    assert two_sided_p_value(0.0) == pytest.approx(1.0)
    assert unpaired_stderr(3.0, 4.0) == pytest.approx(5.0)
    # a = b: var(a - b) = 0 -> correlation 1; var(a - b) = 2 var a -> correlation 0
    assert correlation_from_moments(2.0, 2.0, 0.0) == pytest.approx(1.0)
    assert correlation_from_moments(2.0, 2.0, math.sqrt(8.0)) == pytest.approx(0.0)
    assert rank_descending([-98.0, -82.1, -75.1, -41.4]) == [4, 3, 2, 1]
    assert rank_descending([1.0, 1.0, 0.0]) == [1, 1, 3]
    assert [significance_mark(p) for p in (0.0005, 0.005, 0.04, 0.06, math.nan)] == ["***", "**", "*", "", ""]


def test_bad_calls_are_input_errors():
    from genentropy_cli.errors import InputError

    with pytest.raises(InputError, match="at least two"):
        compare_models([linear(SIGMAS_A)], [DIM], n_samples=10, device="cpu")
    with pytest.raises(InputError, match="distinct"):
        compare_models([linear(SIGMAS_A)] * 2, [DIM, DIM], names=["x", "x"], n_samples=10, device="cpu")
    with pytest.raises(InputError, match="at least 2 samples"):
        compare_models([linear(SIGMAS_A)] * 2, [DIM, DIM], n_samples=1, device="cpu")


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def linear_files(tmp_path):
    paths = []
    for name, sigmas, seed in (("wide", SIGMAS_A, 0), ("narrow", SIGMAS_B, 1)):
        path = tmp_path / f"{name}.pt"
        save_torchscript(linear(sigmas, seed), path, latent=make_latent_spec(DIM))
        paths.append(path)
    return paths


def test_cli_compare_table_and_json(run_cli, linear_files, tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # piped: the tables are laid out 200 wide, no row wraps
    result = run_cli("compare", *linear_files, "-n", "600", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "wide - narrow" in result.stdout and "Rank" in result.stdout and "***" in result.stdout
    assert result.stderr == ""
    output = tmp_path / "compare.json"
    result = run_cli("compare", *linear_files, "-n", "600", "--json", "-o", output, "--dtype", "float64")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document == __import__("json").loads(output.read_text())
    assert document["command"] == "compare"
    assert [model["name"] for model in document["models"]] == ["wide", "narrow"]
    assert set(document["models"][0]["estimates"][0]) == {"scale", "entropy", "stderr", "std", "ci95", "num_samples",
                                                         "rank"}
    assert document["models"][0]["path"] == str(linear_files[0])
    pair = document["pairs"][0]
    assert pair["difference"] == pytest.approx(half_log_det(SIGMAS_A, 1e-4) - half_log_det(SIGMAS_B, 1e-4), abs=1e-9)
    assert pair["shared_latents"] and pair["significant"]


def test_cli_compare_warns_on_different_latents(run_cli, linear_files, tmp_path):
    result = run_cli("compare", *linear_files, "-n", "300", "--latent-distribution", "uniform", "--json")
    assert result.exit_code == 0, result.stderr  # the flag applies to both: they still share latents
    assert result.json()["warnings"] == [] and result.json()["pairs"][0]["shared_latents"]
    uniform = tmp_path / "uniform.pt"
    save_torchscript(linear(SIGMAS_B, 1), uniform, latent=make_latent_spec(DIM, "uniform"))
    result = run_cli("compare", linear_files[0], uniform, "-n", "300")
    assert result.exit_code == 0, result.stderr
    assert "warning:" in result.stderr and "latent specs differ" in result.stderr
    # the index-paired SE is shown in brackets (not used), the unpaired one is the tested one
    pair = run_cli("compare", linear_files[0], uniform, "-n", "300", "--json", "--quiet").json()["pairs"][0]
    assert not pair["shared_latents"] and pair["stderr"] == pair["unpaired_stderr"]
    row = next(line.split() for line in result.stdout.splitlines() if line.split()[:3] == ["wide", "-", "uniform"])
    # Pair, Diff., Paired SE, Unpaired SE: the paired one in brackets, the unpaired one bare
    assert row[4:6] == [f"({format_error(pair['paired_stderr'])})", format_error(pair["unpaired_stderr"])], row


def test_cli_compare_bad_input(run_cli, linear_files, tmp_path):
    from tests.test_cli import assert_one_line_error

    assert_one_line_error(run_cli("compare", linear_files[0]), "at least two")
    assert_one_line_error(run_cli("compare", linear_files[0], tmp_path / "missing.pt"), "not found")
    assert_one_line_error(run_cli("compare", *linear_files, "-n", "0"), "must be positive")
    assert_one_line_error(run_cli("compare", *linear_files, "-n", "1"), "at least 2 samples")


def test_tables_print_a_small_difference_to_the_precision_of_its_error():
    """Closed form: x = 1.002 A z against x = A z differs by 3 log 1.002 = 0.00599 exactly (paired
    SE 0); two decimals would print it as 0.01. The shown digits follow the standard error."""
    from rich.console import Console

    from genentropy_cli.cli.reporting import entropy_digits
    from genentropy_cli.cli.tables import models_table, pairs_table

    matrix = matrix_with_singular_values(SIGMAS_A, 5, seed=0)
    result = compare_models([LinearDecoder(1.002 * matrix), LinearDecoder(matrix)], [DIM, DIM],
                            names=["wider", "base"], n_samples=400, device="cpu", dtype="float64")
    expected = DIM * math.log(1.002)
    assert result.pair("wider", "base").difference == pytest.approx(expected, abs=1e-9)
    console = Console(width=200, record=True, file=__import__("io").StringIO())
    console.print(pairs_table(result))
    console.print(models_table(result))
    text = console.export_text()
    assert f"{expected:.4f}" in text and "0.0060" in text
    assert entropy_digits(0.0012) == 4 and entropy_digits(0.012, 2) == 3 and entropy_digits(0.5, 2) == 2
    assert entropy_digits(3e-7) == 8 and entropy_digits(0.0) == 4 and entropy_digits(float("nan"), 2) == 2
    assert entropy_digits(2e-17) == 4 and entropy_digits(2e-10) == 11 and entropy_digits(1e-9, 2) == 10


def test_columns_sets_the_table_width_when_given(run_cli, linear_files, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    narrow = run_cli("compare", *linear_files, "-n", "300", "--quiet")
    assert narrow.exit_code == 0 and max(len(line) for line in narrow.stdout.splitlines()) <= 60
    monkeypatch.delenv("COLUMNS")
    wide = run_cli("compare", *linear_files, "-n", "300", "--quiet")
    assert "wide - narrow" in wide.stdout and max(len(line) for line in wide.stdout.splitlines()) > 60


# --------------------------------------------------------------------------- track and conditional bookkeeping


class NanWhere(torch.nn.Module):
    """tanh(W z + b), NaN where z[coordinate] > 1 (with a label: for class 1 only, of (z, y))."""

    def __init__(self, seed: int, coordinate: int):
        super().__init__()
        torch.manual_seed(seed)
        self.coordinate = coordinate
        self.fc = torch.nn.Linear(3, 6)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = torch.tanh(self.fc(z))
        return torch.where((z[:, self.coordinate] > 1.0).unsqueeze(1), out * float("nan"), out)


class NanWhereForClassOne(NanWhere):
    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = torch.tanh(self.fc(z) + y.unsqueeze(1).to(z.dtype))
        return torch.where(((z[:, self.coordinate] > 1.0) & (y == 1)).unsqueeze(1), out * float("nan"), out)


class Tanh(torch.nn.Module):
    """tanh(W z + b) of seed ``seed``; with ``label``: of (z, y), y shifting the pre-activation."""

    def __init__(self, seed: int, label: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.label = label
        self.fc = torch.nn.Linear(3, 6)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.label:
            return torch.tanh(self.fc(z) + 0.3 * y.unsqueeze(1).to(z.dtype))
        return torch.tanh(self.fc(z))


def track_options(**changes):
    from genentropy_cli.run.options import EstimateOptions

    return EstimateOptions(**{"scales": [1e-2], "num_samples": 300, "dtype": "float64", "device": "cpu", "seed": 5,
                              **changes})


@pytest.mark.parametrize("scales", [[1e-2], [1e-1, 1e-4]])
def test_streamed_track_equals_the_all_at_once_comparison(scales):
    """track streams its checkpoints; compare over the consecutive pairs (every model in one run,
    what track was) is the reference: entropies, changes, paired errors, Holm's p."""
    from genentropy_cli.jobs.track import track_checkpoints

    decoders = [Tanh(seed) for seed in (1, 2, 3, 4)]
    options = track_options(scales=scales)
    streamed = track_checkpoints(decoders, [3] * 4, [10, 20, 30, 40], names=list("abcd"), options=options)
    together = compare_models(decoders, [3] * 4, list("abcd"), options=options, pairs=[(1, 0), (2, 1), (3, 2)])
    for ours, theirs in zip(streamed.comparison.models, together.models):
        for mine, reference in zip(ours.estimates, theirs.estimates):
            assert mine.entropy == pytest.approx(reference.entropy, rel=1e-12, abs=1e-12)
            assert mine.stderr == pytest.approx(reference.stderr, rel=1e-10)
        assert ours.ranks == theirs.ranks
    assert len(streamed.comparison.pairs) == len(together.pairs) == 3 * len(scales)
    for ours, theirs in zip(streamed.comparison.pairs, together.pairs):
        assert (ours.first, ours.second, ours.scale) == (theirs.first, theirs.second, theirs.scale)
        assert ours.difference == pytest.approx(theirs.difference, abs=1e-11)
        assert ours.paired_stderr == pytest.approx(theirs.paired_stderr, rel=1e-9)
        assert ours.p_holm == pytest.approx(theirs.p_holm, rel=1e-9, abs=1e-300)


def test_track_with_skip_nonfinite_pairs_the_samples_finite_in_both():
    """Checkpoint 1 is NaN where z0 > 1, checkpoint 2 where z1 > 1: the change uses the samples
    finite in both, as the all-at-once comparison (which drops a sample non-finite for either) does;
    each checkpoint's own estimate drops only its own."""
    from genentropy_cli.jobs.track import track_checkpoints

    decoders = [NanWhere(1, 0), NanWhere(2, 1)]
    options = track_options(num_samples=600, skip_nonfinite=True)
    streamed = track_checkpoints(decoders, [3, 3], [1, 2], names=["a", "b"], options=options)
    together = compare_models(decoders, [3, 3], ["a", "b"], options=options, pairs=[(1, 0)])
    ours, theirs = streamed.changes()[0], together.pairs[0]
    assert ours.difference == pytest.approx(theirs.difference, abs=1e-11)
    assert ours.paired_stderr == pytest.approx(theirs.paired_stderr, rel=1e-9)
    assert streamed.comparison.diagnostics["change_samples"] == [together.settings["num_used"]]
    for model, decoder in zip(streamed.comparison.models, decoders):
        alone = estimate_entropy(decoder, 3, options=options)
        assert model.estimates[0].entropy == pytest.approx(alone.estimates[0].entropy, rel=1e-12)
        assert model.num_nonfinite == alone.num_nonfinite > 0


def test_track_with_a_target_stderr_pairs_the_samples_both_checkpoints_used():
    """Checkpoints stop at different N (each as ``estimate`` alone): the change pairs the first
    min(N) samples, equal to the comparison of those samples."""
    from genentropy_cli.jobs.track import track_checkpoints

    decoders = [Tanh(1), ElementwiseExp()]
    options = track_options(num_samples=4000, target_stderr=0.04, min_samples=50)
    streamed = track_checkpoints(decoders, [3, 3], [1, 2], options=options)
    used = [estimate_entropy(decoder, 3, options=options).estimates[0].num_samples for decoder in decoders]
    assert [model.estimates[0].num_samples for model in streamed.comparison.models] == used and used[0] != used[1]
    reference = compare_models(decoders, [3, 3], options=track_options(num_samples=min(used)), pairs=[(1, 0)])
    assert streamed.comparison.diagnostics["change_samples"] == [min(used)]
    assert streamed.changes()[0].paired_stderr == pytest.approx(reference.pairs[0].paired_stderr, rel=1e-9)
    assert streamed.changes()[0].difference == pytest.approx(reference.pairs[0].difference, abs=1e-11)


def test_track_tracks_conditional_decoders_by_their_conditional_entropy():
    from genentropy_cli.core.labels import LabelSpec
    from genentropy_cli.jobs.track import track_checkpoints

    decoders = [Tanh(1, label=True), Tanh(2, label=True)]
    options = track_options()
    result = track_checkpoints(decoders, [3, 3], [1, 2], options=options, labels=LabelSpec(3, weights=(1, 2, 1)))
    for model, decoder in zip(result.comparison.models, decoders):
        alone = estimate_entropy(decoder, 3, labels=LabelSpec(3, weights=(1, 2, 1)), options=options)
        assert model.estimates[0].entropy == pytest.approx(alone.conditional[0].entropy, rel=1e-12)
        assert [item["label"] for item in model.info["classes"]] == [0, 1, 2]
    change = result.changes()[0]
    assert change.difference == pytest.approx(
        result.comparison.models[1].estimates[0].entropy - result.comparison.models[0].estimates[0].entropy, abs=1e-10)


def test_a_resumed_track_estimates_only_the_checkpoints_not_finished(tmp_path):
    from genentropy_cli.jobs.track import Checkpoint, track_stream

    opened: list[int] = []
    decoders = [Tanh(seed) for seed in (1, 2, 3)]

    def open_checkpoint(index: int) -> Checkpoint:
        opened.append(index)
        return Checkpoint(decoders[index], 3)

    options = track_options(checkpoint=str(tmp_path / "track.ckpt"))
    first = track_stream(open_checkpoint, 3, [1, 2, 3], ["a", "b", "c"], options=options)
    again = track_stream(open_checkpoint, 3, [1, 2, 3], ["a", "b", "c"], options=options)
    assert opened == [0, 1, 2] and again.comparison.diagnostics["resumed_checkpoints"] == 3
    assert [pair.to_dict(again.comparison.names) for pair in again.comparison.pairs] == \
        [pair.to_dict(first.comparison.names) for pair in first.comparison.pairs]


def test_per_class_bookkeeping_in_a_conditional_comparison_is_each_models_own():
    """Non-finite counts and precision probes of the second model's classes are its own, not the
    first model's (a per-class index off by the model's offset survived the whole suite)."""
    from genentropy_cli.core.labels import LabelSpec
    from genentropy_cli.core.latents import LatentStream

    decoders = [Tanh(4, label=True), NanWhereForClassOne(11, 0)]
    options = track_options(num_samples=400, dtype="float32", probe_samples=64, skip_nonfinite=True)
    compared = compare_models(decoders, [3, 3], ["a", "b"], options=options, labels=LabelSpec(3))
    expected = int((LatentStream(make_latent_spec(3), 5).range(0, 400)[:, 0] > 1.0).sum())
    assert 0 < expected < 400  # class 1 of the second model is NaN exactly there
    first, second = compared.models
    assert [item.num_nonfinite for item in first.classes] == [0, 0, 0]
    assert [item.num_nonfinite for item in second.classes] == [0, expected, 0]
    for model, decoder in zip(compared.models, decoders):
        alone = estimate_entropy(decoder, 3, labels=LabelSpec(3), options=options)
        for ours, theirs in zip(model.classes, alone.classes):
            assert ours.precision_probe["difference"] == pytest.approx(theirs.precision_probe["difference"],
                                                                      rel=1e-6, abs=1e-12)
    assert first.classes[0].precision_probe["difference"] != pytest.approx(
        second.classes[0].precision_probe["difference"], rel=1e-3)


def test_a_conditional_run_stopped_before_its_first_sample_is_a_partial_result():
    """A stop asked before any sample (Ctrl-C during the set-up) gives the partial result, NaN
    where no sample was used, not an error."""
    from genentropy_cli.core.labels import LabelSpec
    from genentropy_cli.jobs.estimate import run_estimate
    from genentropy_cli.run.hooks import RunHooks
    from genentropy_cli.run.interrupts import InterruptFlag

    stopped = InterruptFlag(requested=True)
    result = run_estimate(Tanh(1, label=True), make_latent_spec(3), LabelSpec(3), track_options(),
                          RunHooks(interrupt=stopped))
    assert result.partial and result.stop_reason == "interrupted"
    assert math.isnan(result.conditional[0].entropy) and result.conditional[0].num_samples == 0
