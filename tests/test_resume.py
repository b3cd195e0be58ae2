"""Checkpoint and resume: interrupts (SIGINT, SIGTERM, SIGKILL), refused settings, atomic writes."""

from __future__ import annotations

import csv
import signal

import numpy as np
import pytest
from interrupt_harness import signalling_after
from longrun_support import (
    assert_same_estimates,
    parse_json,
    run_interrupted,
    save_small_mlp,
    small_mlp,
)

import genentropy_cli.run.checkpoint as checkpoint_module
import genentropy_cli.run.compute as runner
from genentropy_cli import estimate_entropy
from genentropy_cli.errors import InputError
from genentropy_cli.run.checkpoint import load_checkpoint

SCALES = ("-s", "1e-1", "-s", "1e-3")
ROUND_OFF = 1e-12
"""Per-sample values of a resumed run against an uninterrupted one: computed in another process
(the interrupted part), perhaps with another thread count, so BLAS may sum in another order;
float64 terms then agree to a few ulps, never demanded bit for bit."""


def assert_same_rows(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    """The same columns; sample indices and collapsed counts equal, values equal to ``ROUND_OFF``."""
    assert set(ours) == set(theirs)
    for name in ours:
        if ours[name].dtype.kind in "iu":
            assert np.array_equal(ours[name], theirs[name]), name
        else:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=ROUND_OFF, atol=0, err_msg=name)


def read_csv(path) -> dict[str, np.ndarray]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return {key: np.array([int(row[key]) if key == "index" or key.startswith("collapsed") else float(row[key])
                           for row in rows]) for key in rows[0]}


def test_sigint_saves_prints_partial_exits_130_and_resume_equals_uninterrupted(tmp_path, run_cli):
    """Acceptance 2: Ctrl-C after batch 5 of 30; the rerun of the same command resumes."""
    model = save_small_mlp(tmp_path / "mlp.pt")
    arguments = ["estimate", model, "-n", "3000", "--batch-size", "100", *SCALES, "--json",
                 "--checkpoint", tmp_path / "run.ckpt", "--per-sample", tmp_path / "rows.npy"]
    interrupted = run_interrupted("SIGINT", 5, *arguments)
    assert interrupted.returncode == 130, interrupted.stderr
    partial = parse_json(interrupted.stdout)
    assert partial["partial"] is True and partial["stop_reason"] == "interrupted"
    assert partial["estimates"][0]["num_samples"] == 500  # batch 5 finished, nothing after it
    assert "SIGINT received" in interrupted.stderr and "PARTIAL" in interrupted.stderr
    assert "Traceback" not in interrupted.stderr

    resumed = run_cli(*arguments)
    assert resumed.exit_code == 0, resumed.stderr
    document = resumed.json()
    assert document["partial"] is False and document["stop_reason"] == "num_samples"
    assert document["diagnostics"]["resumed_from_samples"] == 500
    assert document["diagnostics"]["samples_computed"] == 2500

    reference = run_cli(*arguments[:-4], "--per-sample", tmp_path / "reference.npy")
    assert reference.exit_code == 0, reference.stderr
    assert_same_estimates(document, reference.json(), 1e-12)
    assert document["estimates"][0]["std"] == pytest.approx(reference.json()["estimates"][0]["std"], rel=1e-12)
    rows, expected = np.load(tmp_path / "rows.npy"), np.load(tmp_path / "reference.npy")
    assert rows.shape == expected.shape == (3000,)
    assert_same_rows({name: rows[name] for name in rows.dtype.names},
                     {name: expected[name] for name in expected.dtype.names})
    assert not (tmp_path / "rows.npy.rows").exists()


def test_sigterm_from_the_cli_prints_the_partial_result_and_exits_130(tmp_path):
    model = save_small_mlp(tmp_path / "mlp.pt")
    terminated = run_interrupted("SIGTERM", 3, "estimate", model, "-n", "2000", "--batch-size", "100", *SCALES,
                                 "--json", "--dtype", "float64")
    assert terminated.returncode == 130, terminated.stderr
    partial = parse_json(terminated.stdout)
    assert partial["partial"] is True and partial["stop_reason"] == "interrupted"
    assert [item["num_samples"] for item in partial["estimates"]] == [300, 300]  # batch 3 finished, no more
    assert "SIGTERM received" in terminated.stderr and "Traceback" not in terminated.stderr


def test_a_second_sigint_aborts_at_once_and_the_checkpoint_keeps_what_was_done(tmp_path, run_cli):
    """The first SIGINT comes after batch 4, which then hangs (a decoder that never returns); the
    second, 0.5 s later, must abort it: exit 130 within the timeout (the hang is 600 s), no result
    on stdout, and the checkpoint of the 3 batches merged before it resumes to the plain result."""
    model = save_small_mlp(tmp_path / "mlp.pt")
    arguments = ["estimate", model, "-n", "2000", "--batch-size", "100", *SCALES, "--json", "--dtype", "float64"]
    checkpoint = ["--checkpoint", tmp_path / "run.ckpt", "--checkpoint-every", "0"]
    aborted = run_interrupted("SIGINT*2", 4, *arguments, *checkpoint, timeout=150)
    assert aborted.returncode == 130, aborted.stderr
    assert aborted.stdout == ""  # aborted: no partial result
    assert "SIGINT received" in aborted.stderr and aborted.stderr.strip().splitlines()[-1].endswith("interrupted")
    assert "Traceback" not in aborted.stderr
    _, state, _ = load_checkpoint(tmp_path / "run.ckpt")
    assert not state["finished"] and state["samples_computed"] == 300
    resumed = run_cli(*arguments, *checkpoint)
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.json()["diagnostics"]["resumed_from_samples"] == 300
    assert_same_estimates(resumed.json(), run_cli(*arguments).json(), 1e-12)


def test_sigkill_leaves_a_checkpoint_that_resumes(tmp_path, run_cli):
    """Killed with no chance to clean up (after batch 7, saving after every batch): the last
    checkpoint resumes, the per-sample rows written after it are cut back, nothing is lost."""
    model = save_small_mlp(tmp_path / "mlp.pt")
    arguments = ["estimate", model, "-n", "2500", "--batch-size", "128", *SCALES, "--json", "--dtype", "float64",
                 "--checkpoint", tmp_path / "run.ckpt", "--checkpoint-every", "0", "--per-sample", tmp_path / "rows.csv"]
    killed = run_interrupted("SIGKILL", 7, *arguments)
    assert killed.returncode == -signal.SIGKILL
    _, state, _ = load_checkpoint(tmp_path / "run.ckpt")
    assert not state["finished"]
    assert 0 < state["samples_computed"] <= 7 * 128

    resumed = run_cli(*arguments)
    assert resumed.exit_code == 0, resumed.stderr
    reference = run_cli(*arguments[:-6], "--per-sample", tmp_path / "reference.csv")
    assert_same_estimates(resumed.json(), reference.json(), 1e-12)
    assert_same_rows(read_csv(tmp_path / "rows.csv"), read_csv(tmp_path / "reference.csv"))


def test_sigterm_in_the_api_returns_a_partial_result_and_float32_resume_is_exact(tmp_path, monkeypatch):
    decoder = small_mlp()
    kwargs = dict(scales=[1e-2], n_samples=1500, batch_size=64, seed=3, checkpoint=tmp_path / "c.npz",
                  handle_signals=True, log=lambda message: None)
    monkeypatch.setattr(runner, "compute_sample_terms", signalling_after(runner.compute_sample_terms, "SIGTERM", 4))
    partial = estimate_entropy(decoder, 4, **kwargs)
    assert partial.partial and partial.stop_reason == "interrupted"
    assert partial.estimates[0].num_samples == 256
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.undo()
    resumed = estimate_entropy(decoder, 4, **kwargs)
    reference = estimate_entropy(decoder, 4, scales=[1e-2], n_samples=1500, batch_size=64, seed=3,
                                 log=lambda message: None)
    assert not resumed.partial and resumed.diagnostics["resumed_from_samples"] == 256
    assert_same_estimates(resumed, reference, 1e-12)
    assert resumed.precision_probe == reference.precision_probe  # restored from the checkpoint


def test_checkpoint_with_other_settings_is_refused_naming_them(tmp_path, run_cli):
    model = save_small_mlp(tmp_path / "mlp.pt")
    checkpoint = tmp_path / "run.ckpt"
    first = run_cli("estimate", model, "-n", "300", "--checkpoint", checkpoint, "--quiet")
    assert first.exit_code == 0, first.stderr
    other = run_cli("estimate", model, "-n", "300", "--checkpoint", checkpoint, "--seed", "4", "-s", "0.01", "--quiet")
    assert other.exit_code == 2
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "seed 4 (checkpoint: 0)" in lines[0] and "scales [0.01] (checkpoint: [0.0001])" in lines[0]
    assert "num_samples" not in lines[0] and "Traceback" not in other.stderr

    save_small_mlp(tmp_path / "other.pt", latent_dim=4)  # same architecture, same weights: same model
    again = run_cli("estimate", tmp_path / "other.pt", "-n", "300", "--checkpoint", checkpoint, "--quiet", "--json")
    assert again.exit_code == 0 and again.json()["diagnostics"]["samples_computed"] == 0  # complete: nothing to do
    retrained = small_mlp(seed=1)
    with pytest.raises(InputError, match="model"):
        estimate_entropy(retrained, 4, n_samples=300, checkpoint=checkpoint)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous checkpoint intact and no temporary file."""
    path = tmp_path / "run.ckpt"
    estimate_entropy(small_mlp(), 4, n_samples=200, dtype="float64", checkpoint=path)
    before = path.read_bytes()

    def failing_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        checkpoint_module.save_checkpoint(path, {"a": 1}, {"b": 2}, {})
    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["run.ckpt"]
    assert load_checkpoint(path) is not None


def test_a_file_that_is_not_a_checkpoint_is_an_input_error(tmp_path, run_cli):
    model = save_small_mlp(tmp_path / "mlp.pt")
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_text("not a checkpoint")
    result = run_cli("estimate", model, "-n", "100", "--checkpoint", bogus)
    assert result.exit_code == 2 and "not a readable genentropy checkpoint" in result.stderr
