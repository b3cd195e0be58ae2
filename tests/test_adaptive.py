"""--target-stderr: stop at the first sample count where the standard error meets the target."""

from __future__ import annotations

import math

import numpy as np
import pytest
from interrupt_harness import signalling_after
from longrun_support import linear_decoder, linear_terms, save_small_mlp

import genentropy_cli.run.compute as runner
from genentropy_cli import estimate_entropy
from genentropy_cli.core.stats import RunningMoments
from genentropy_cli.run.stopping import first_index_meeting_target

SIGMAS = (2.0, 1.0, 0.5)
SCALES = (1e-1, 1e-3)


def first_count_meeting(values: np.ndarray, target: float, min_samples: int) -> int:
    """Brute force: the smallest n >= min_samples with std(values[:n], ddof=1)/sqrt(n) <= target
    at every scale (column)."""
    for count in range(max(min_samples, 2), values.shape[0] + 1):
        head = values[:count]
        if np.all(head.std(axis=0, ddof=1) / math.sqrt(count) <= target):
            return count
    raise AssertionError("target never met")


@pytest.mark.parametrize("batch_size", [7, 64])
def test_target_stderr_stops_within_one_batch_of_the_first_point_it_holds(batch_size):
    """Acceptance 3, on a linear decoder whose h_i are known in closed form."""
    target, cap, min_samples = 0.025, 6000, 1000
    values = linear_terms(SIGMAS, SCALES, cap)
    expected = first_count_meeting(values, target, min_samples)
    assert min_samples < expected < cap - 1000  # the target, not the cap or the floor, decides
    result = estimate_entropy(linear_decoder(SIGMAS), 3, scales=SCALES, n_samples=cap, batch_size=batch_size,
                              dtype="float64", target_stderr=target, min_samples=min_samples)
    assert result.stop_reason == "target_stderr" and not result.partial
    assert all(item.num_samples == expected for item in result.estimates)
    assert expected <= result.samples_computed < expected + batch_size  # within one batch
    assert all(item.stderr <= target for item in result.estimates)
    for index, item in enumerate(result.estimates):
        assert item.entropy == pytest.approx(values[:expected, index].mean(), rel=1e-12)
        assert item.std == pytest.approx(values[:expected, index].std(ddof=1), rel=1e-10)


def test_an_interrupted_adaptive_run_resumes_to_the_same_stopping_point(tmp_path, monkeypatch):
    kwargs = dict(scales=SCALES, n_samples=6000, batch_size=100, dtype="float64", target_stderr=0.025,
                  min_samples=1000, log=lambda message: None)
    reference = estimate_entropy(linear_decoder(SIGMAS), 3, **kwargs)
    monkeypatch.setattr(runner, "compute_sample_terms", signalling_after(runner.compute_sample_terms, "SIGTERM", 12))
    partial = estimate_entropy(linear_decoder(SIGMAS), 3, checkpoint=tmp_path / "c.npz", handle_signals=True, **kwargs)
    monkeypatch.undo()
    assert partial.partial and partial.estimates[0].num_samples == 1200
    resumed = estimate_entropy(linear_decoder(SIGMAS), 3, checkpoint=tmp_path / "c.npz", **kwargs)
    assert resumed.stop_reason == "target_stderr"
    assert [item.num_samples for item in resumed.estimates] == [item.num_samples for item in reference.estimates]
    # the same batches as the reference after the checkpoint, but a resumed run is another code
    # path (rows restored from the checkpoint): equal to float64 round-off, not demanded bit for bit
    assert [item.entropy for item in resumed.estimates] == pytest.approx(
        [item.entropy for item in reference.estimates], rel=1e-12)


def test_the_cap_ends_the_run_when_the_target_is_out_of_reach(run_cli, tmp_path):
    model = save_small_mlp(tmp_path / "mlp.pt")
    result = run_cli("estimate", model, "-n", "300", "--target-stderr", "1e-9", "--dtype", "float64", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["stop_reason"] == "num_samples" and document["estimates"][0]["num_samples"] == 300
    assert document["settings"]["target_stderr"] == 1e-9
    table = run_cli("estimate", model, "-n", "3000", "--target-stderr", "0.5", "--min-samples", "50",
                    "--dtype", "float64", "-q")
    assert "target standard error reached" in table.stdout


def test_the_stopping_rule_matches_brute_force_from_any_starting_moments():
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, size=(400, 2)) * np.array([1.0, 3.0])
    for split in (0, 1, 37, 200):
        base = RunningMoments.from_values(values[:split])
        target = 0.16
        hit = first_index_meeting_target(base, values[split:], target, min_samples=10)
        expected = first_count_meeting(values, target, 10)
        if expected <= split:
            continue
        assert hit is not None and split + hit + 1 == expected
    assert first_index_meeting_target(RunningMoments.empty(2), values, 1e-6, 10) is None
    # a target met from the start: the run stops at exactly min_samples (the 10th row), not after it
    assert first_index_meeting_target(RunningMoments.empty(2), values, 10.0, 10) == 9
    assert first_count_meeting(values, 10.0, 10) == 10


def test_bad_target_is_an_input_error(run_cli, tmp_path):
    model = save_small_mlp(tmp_path / "mlp.pt")
    result = run_cli("estimate", model, "--target-stderr", "-1")
    assert result.exit_code == 2 and "--target-stderr must be a positive number" in result.stderr
