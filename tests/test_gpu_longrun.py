"""GPU paths of long runs (skipped without CUDA): memory budget, peak memory, precision probe."""

from __future__ import annotations

import pytest
import torch
from longrun_support import assert_same_estimates, interrupt_then_resume, linear_decoder, small_mlp
from test_distributed import ROUND_OFF

from genentropy_cli import estimate_entropy
from genentropy_cli.run.memory import device_memory_budget

pytestmark = pytest.mark.gpu


def test_automatic_batch_size_plans_into_free_device_memory():
    device = torch.device("cuda")
    free, _ = torch.cuda.mem_get_info(device)
    budget = device_memory_budget(device)
    assert 0 < budget <= free
    result = estimate_entropy(small_mlp(), 4, n_samples=2000, device="cuda", dtype="float64")
    assert result.diagnostics["peak_memory_kind"] == "cuda max_memory_allocated"
    assert result.diagnostics["peak_memory_bytes"] > 0
    assert result.diagnostics["device_name"] == torch.cuda.get_device_name(device)


def test_cuda_probe():
    kwargs = dict(scales=[1e-4], n_samples=2000, device="cuda", dtype="float32", log=lambda message: None)
    quiet = estimate_entropy(linear_decoder((2.0, 1.0, 0.5)), 3, **kwargs)
    assert not quiet.precision_probe["flagged"]
    flagged = estimate_entropy(linear_decoder((1e4, 1.0, 1e-4)), 3, **kwargs)
    assert flagged.precision_probe["flagged"] and flagged.precision_probe["suggested_dtype"] == "float64"


DEVICE_ROUND_OFF = 1e-9
"""float64 on a GPU and on the CPU: other kernels sum in other orders (test_engine's
test_cuda_matches_cpu_in_float64 holds the two to 1e-9 relative)."""


@pytest.mark.parametrize("resume_on", ["cuda", "cpu"])
def test_a_cuda_run_interrupted_mid_run_resumes_on_either_device(tmp_path, monkeypatch, resume_on):
    """SIGTERM after 18 batches of 64 on CUDA (block 0 merged, block 1 begun), resumed in batches
    of 100 on ``resume_on``: the uninterrupted CUDA run's numbers; a rerun of the finished
    checkpoint computes nothing and reprints them."""
    common = dict(scales=[1e-1, 1e-3], n_samples=2500, dtype="float64", seed=3, log=lambda message: None)
    checkpoint = tmp_path / "run.ckpt"
    partial, resumed = interrupt_then_resume(monkeypatch, small_mlp(), 4, checkpoint, 18,
                                             first=dict(batch_size=64, device="cuda"),
                                             second=dict(batch_size=100, device=resume_on), **common)
    assert partial.partial and partial.estimates[0].num_samples == 18 * 64
    assert resumed.diagnostics["resumed_from_samples"] == 18 * 64 and resumed.settings["device"].startswith(resume_on)
    reference = estimate_entropy(small_mlp(), 4, batch_size=250, device="cuda", **common)
    tolerance = ROUND_OFF if resume_on == "cuda" else DEVICE_ROUND_OFF
    assert_same_estimates(resumed, reference, tolerance)
    again = estimate_entropy(small_mlp(), 4, checkpoint=checkpoint, batch_size=100, device=resume_on, **common)
    assert again.diagnostics["samples_computed"] == 0
    assert_same_estimates(again, resumed, 0.0)  # the checkpoint's moments reprinted
