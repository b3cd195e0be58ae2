"""docs/usage.md, checkpoint and resume: a checkpoint is refused when any setting that defines
the estimate differs (each one tried), and resumes with another batch size, tangent chunk,
device or process count to the uninterrupted result.

Device: only the CPU here ("auto" resolves to it); tests/test_gpu_longrun.py resumes a CUDA
checkpoint on the CPU where CUDA exists."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from longrun_support import (
    interrupt_then_resume,
    parse_json,
    run_interrupted,
    run_torchrun,
    save_small_mlp,
    skip_without_gloo,
    small_mlp,
)
from test_distributed import ROUND_OFF

from genentropy_cli import estimate_entropy
from genentropy_cli.errors import InputError
from genentropy_cli.run.checkpoint import load_checkpoint
from genentropy_cli.run.options import DEFINES_CHECKPOINT, EstimateOptions

SCALES = [1e-1, 1e-3]


def assert_same_result(ours, theirs, tolerance: float = ROUND_OFF) -> None:
    """Entropy, standard error and std at every scale, and the sample count."""
    for a, b in zip(ours.estimates, theirs.estimates, strict=True):
        assert a.num_samples == b.num_samples
        for key in ("entropy", "stderr", "std"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=tolerance), key


def test_a_run_resumes_with_another_batch_size_tangent_chunk_and_device(tmp_path, monkeypatch):
    """Stopped after 18 batches of 64 (1152 samples: block 0 merged, block 1 begun) with tangent
    chunk 4 on device "auto", resumed in batches of 100 with chunk 1 on "cpu": the uninterrupted
    run's numbers (batches of 250, chunk 2) to float64 round-off."""
    common = dict(scales=SCALES, n_samples=2500, dtype="float64", seed=3, log=lambda message: None)
    partial, resumed = interrupt_then_resume(
        monkeypatch, small_mlp(), 4, tmp_path / "run.ckpt", 18,
        first=dict(batch_size=64, tangent_chunk=4, device="auto"),
        second=dict(batch_size=100, tangent_chunk=1, device="cpu"), **common)
    assert partial.partial and partial.estimates[0].num_samples == 18 * 64
    assert not resumed.partial and resumed.diagnostics["resumed_from_samples"] == 18 * 64
    assert resumed.diagnostics["samples_computed"] == 2500 - 18 * 64
    assert (resumed.settings["batch_size"], resumed.settings["tangent_chunk"]) == (100, 1)
    reference = estimate_entropy(small_mlp(), 4, batch_size=250, tangent_chunk=2, **common)
    assert_same_result(resumed, reference)


def test_a_one_process_checkpoint_resumes_under_torchrun(tmp_path, run_cli):
    """Ctrl-C after 5 batches of one process; two torchrun processes (batches of 64) finish it."""
    model = save_small_mlp(tmp_path / "mlp.pt")
    arguments = ["estimate", model, "-n", "3000", "-s", "1e-1", "-s", "1e-3", "--dtype", "float64", "--json",
                 "--quiet", "--device", "cpu"]
    checkpoint = ["--checkpoint", tmp_path / "run.ckpt"]
    interrupted = run_interrupted("SIGINT", 5, *arguments, *checkpoint, "--batch-size", "100")
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    launched = run_torchrun("-m", "genentropy_cli", *arguments, *checkpoint, "--batch-size", "64")
    skip_without_gloo(launched)
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = parse_json(launched.stdout)
    assert two["settings"]["world_size"] == 2 and two["diagnostics"]["resumed_from_samples"] == 500
    one = run_cli(*arguments).json()
    for a, b in zip(two["estimates"], one["estimates"], strict=True):
        assert a["num_samples"] == b["num_samples"] == 3000
        assert a["entropy"] == pytest.approx(b["entropy"], rel=ROUND_OFF)
        assert a["stderr"] == pytest.approx(b["stderr"], rel=ROUND_OFF)


def test_a_two_process_checkpoint_resumes_in_one(tmp_path, run_cli):
    """Both torchrun ranks get SIGINT after their 6th batch (of 100): rank 0 saves 1200 samples of
    blocks 0 and 1, unfinished; one process resumes them to the uninterrupted result."""
    from longrun_support import HARNESS

    model = save_small_mlp(tmp_path / "mlp.pt")
    arguments = ["estimate", model, "-n", "3000", "-s", "1e-1", "-s", "1e-3", "--dtype", "float64", "--json",
                 "--quiet", "--device", "cpu"]
    checkpoint = tmp_path / "run.ckpt"
    launched = run_torchrun(HARNESS, "SIGINT", "6", "--", *arguments, "--checkpoint", checkpoint,
                            "--batch-size", "100")
    skip_without_gloo(launched)
    assert launched.returncode != 0 and "exitcode  : 130" in launched.stderr, launched.stderr[-3000:]
    _, state, _ = load_checkpoint(checkpoint)
    assert not state["finished"] and state["samples_computed"] == 1200
    resumed = run_cli(*arguments, "--checkpoint", checkpoint, "--batch-size", "128")
    assert resumed.exit_code == 0, resumed.stderr
    document = resumed.json()
    assert document["settings"]["world_size"] == 1 and document["diagnostics"]["resumed_from_samples"] == 1200
    one = run_cli(*arguments).json()
    for a, b in zip(document["estimates"], one["estimates"], strict=True):
        assert a["num_samples"] == b["num_samples"] == 3000
        assert a["entropy"] == pytest.approx(b["entropy"], rel=ROUND_OFF)
        assert a["stderr"] == pytest.approx(b["stderr"], rel=ROUND_OFF)


# ----------------------------------------------------------------------------- refusals

BASE = dict(scales=[1e-3], n_samples=300, seed=0, dtype="float64", probe_samples=128)
CHANGED_SETTINGS = {
    # setting: (the first run's settings beyond BASE, the second run's changes)
    "scales": ({}, dict(scales=[1e-2])),
    "num_samples": ({}, dict(n_samples=400)),
    "seed": ({}, dict(seed=1)),
    "dtype": ({}, dict(dtype="float32")),
    "skip_nonfinite": ({}, dict(skip_nonfinite=True)),
    "target_stderr": ({}, dict(target_stderr=1e-9)),
    "min_samples": (dict(target_stderr=1e-9, min_samples=100), dict(min_samples=200)),
    "probe_samples": ({}, dict(probe_samples=64)),
    "per_sample": ({}, dict(per_sample="{tmp}/rows.npy")),
    "save_latents": (dict(per_sample="{tmp}/rows.npy"), dict(save_latents=True)),
}
"""One change per setting that defines a checkpoint (``EstimateOptions`` fields marked
``defines_checkpoint``): the test below fails when a new one has no case here."""


def test_every_setting_that_defines_a_checkpoint_has_a_refusal_case():
    defining = {item.name for item in dataclasses.fields(EstimateOptions) if item.metadata.get(DEFINES_CHECKPOINT)}
    assert defining == set(CHANGED_SETTINGS)


def in_tmp(settings: dict, tmp_path) -> dict:
    return {key: value.format(tmp=tmp_path) if isinstance(value, str) else value for key, value in settings.items()}


@pytest.mark.parametrize("setting", list(CHANGED_SETTINGS))
def test_a_checkpoint_is_refused_when_a_defining_setting_differs(setting, tmp_path):
    first, change = (in_tmp(settings, tmp_path) for settings in CHANGED_SETTINGS[setting])
    checkpoint = tmp_path / "run.ckpt"
    estimate_entropy(small_mlp(), 4, checkpoint=checkpoint, log=lambda message: None, **{**BASE, **first})
    with pytest.raises(InputError, match="was made with other settings") as refused:
        estimate_entropy(small_mlp(), 4, checkpoint=checkpoint, log=lambda message: None,
                         **{**BASE, **first, **change})
    message = str(refused.value)
    named = {key for key in CHANGED_SETTINGS if f" {key} " in f" {message.split(': ', 1)[1]}"}
    assert setting in named, message
    assert named <= {setting, "min_samples"}, message  # a target also shows its min_samples (None without)


class FlatInput(torch.nn.Module):
    """small_mlp on the flattened latent: the same weights for a latent of shape (4,) or (4, 1, 1)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.inner = small_mlp(seed=seed)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.inner(latents.flatten(1))


@pytest.mark.parametrize("other, key", [
    ((FlatInput(seed=1), 4, "normal"), "model"),  # other weights: another fingerprint
    ((FlatInput(), (4, 1, 1), "normal"), "latent_shape"),
    ((FlatInput(), 4, "uniform"), "latent_distribution"),
])
def test_a_checkpoint_of_another_model_or_latent_spec_is_refused(tmp_path, other, key):
    checkpoint = tmp_path / "run.ckpt"
    estimate_entropy(FlatInput(), 4, checkpoint=checkpoint, **BASE)
    decoder, latent, distribution = other
    with pytest.raises(InputError, match=f"other settings: {key} ") as refused:
        estimate_entropy(decoder, latent, latent_distribution=distribution, checkpoint=checkpoint, **BASE)
    assert refused.value.args[0].count("(checkpoint:") == 1
    again = estimate_entropy(FlatInput(), 4, checkpoint=checkpoint, **BASE)  # the same model: accepted
    assert again.diagnostics["samples_computed"] == 0
