"""Out-of-memory errors: the batch is halved (then the tangent chunk) and retried, losing nothing."""

from __future__ import annotations

import pytest
import torch
from longrun_support import assert_same_estimates, save_small_mlp, small_mlp

import genentropy_cli.run.compute as runner
from genentropy_cli import estimate_entropy
from genentropy_cli.errors import EstimationError

INJECTED: list[int] = []  # module level: the engine runs a deep copy of the decoder


class OutOfMemoryOnce(torch.nn.Module):
    """Wraps a decoder; raises CUDA's out-of-memory error the first time it sees a batch of
    ``batch`` latents (what a real CUDA OOM raises, through vmap and jvp); the stacked method
    pushes a batch's primal and tangent rows together, (k + 1) x ``batch`` rows."""

    def __init__(self, inner: torch.nn.Module, batch: int):
        super().__init__()
        self.inner, self.batch = inner, batch

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.shape[0] % self.batch == 0 and not INJECTED:
            INJECTED.append(self.batch)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.inner(latents)


def test_injected_oom_halves_the_batch_and_the_estimate_is_unchanged():
    """Acceptance 5: one failing batch of 64, retried as 32 + 32; the estimate is the plain one."""
    messages: list[str] = []
    kwargs = dict(scales=[1e-1, 1e-3], n_samples=500, batch_size=64, dtype="float64", seed=2)
    INJECTED.clear()
    result = estimate_entropy(OutOfMemoryOnce(small_mlp(), 64), 4, log=messages.append, **kwargs)
    reference = estimate_entropy(small_mlp(), 4, **kwargs)
    assert INJECTED == [64]
    assert_same_estimates(result, reference, 1e-12)
    assert result.estimates[0].num_samples == 500
    assert result.diagnostics["oom_retries"] == 1
    assert result.diagnostics["batch_size"] == 64 and result.diagnostics["batch_size_final"] == 32
    assert messages == ["out of memory on samples 0..63 (batch 64, tangent chunk 4); retrying them in batches of 32"]


def test_at_batch_one_the_tangent_chunk_halves(monkeypatch):
    original = runner.compute_sample_terms

    def needs_small_chunk(prepared, latents, scales, tangent_chunk=None, **options):
        if tangent_chunk > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(prepared, latents, scales, tangent_chunk, **options)

    monkeypatch.setattr(runner, "compute_sample_terms", needs_small_chunk)
    messages: list[str] = []
    kwargs = dict(scales=[1e-2], n_samples=40, batch_size=4, dtype="float64", tangent_chunk=4)
    result = estimate_entropy(small_mlp(), 4, log=messages.append, **kwargs)
    monkeypatch.undo()
    assert_same_estimates(result, estimate_entropy(small_mlp(), 4, **kwargs), 1e-12)
    assert result.diagnostics["batch_size_final"] == 1 and result.diagnostics["tangent_chunk_final"] == 1
    assert any("retrying with tangent chunk 2" in message for message in messages)
    assert any("retrying with tangent chunk 1" in message for message in messages)


def test_oom_at_batch_one_and_chunk_one_is_a_clear_error(monkeypatch):
    def always(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(runner, "compute_sample_terms", always)
    with pytest.raises(EstimationError, match="even with batch size 1 and tangent chunk 1"):
        estimate_entropy(small_mlp(), 4, n_samples=10, batch_size=2, tangent_chunk=2, dtype="float64",
                         log=lambda message: None)


def test_the_cli_reports_the_retry_on_stderr(monkeypatch, run_cli, tmp_path):
    original = runner.compute_sample_terms
    seen = []

    def fail_first(prepared, latents, scales, tangent_chunk=None, **options):
        if not seen:
            seen.append(latents.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(prepared, latents, scales, tangent_chunk, **options)

    monkeypatch.setattr(runner, "compute_sample_terms", fail_first)
    model = save_small_mlp(tmp_path / "mlp.pt")
    result = run_cli("estimate", model, "-n", "200", "--batch-size", "50", "--dtype", "float64", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "warning: out of memory on samples 0..49 (batch 50" in result.stderr
    assert "retrying them in batches of 25" in result.stderr
    assert result.json()["estimates"][0]["num_samples"] == 200
