"""GPU paths of long runs (skipped without CUDA): memory budget, peak memory, precision probe."""

from __future__ import annotations

import pytest
import torch
from longrun_support import assert_same_estimates, linear_decoder, small_mlp

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


def test_cuda_resume_and_probe(tmp_path):
    kwargs = dict(scales=[1e-4], n_samples=2000, device="cuda", dtype="float32", log=lambda message: None)
    quiet = estimate_entropy(linear_decoder((2.0, 1.0, 0.5)), 3, **kwargs)
    assert not quiet.precision_probe["flagged"]
    flagged = estimate_entropy(linear_decoder((1e4, 1.0, 1e-4)), 3, **kwargs)
    assert flagged.precision_probe["flagged"] and flagged.precision_probe["suggested_dtype"] == "float64"
    checkpointed = estimate_entropy(small_mlp(), 4, checkpoint=tmp_path / "c.npz", batch_size=128, **kwargs)
    again = estimate_entropy(small_mlp(), 4, checkpoint=tmp_path / "c.npz", batch_size=128, **kwargs)
    assert again.diagnostics["samples_computed"] == 0
    assert_same_estimates(again, checkpointed, 0.0)
