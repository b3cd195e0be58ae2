"""The precision policy: --dtype, and the float64 probe that flags a dtype that moves the estimate."""

from __future__ import annotations

import math

import pytest
import torch
from longrun_support import linear_decoder

from genentropy_cli import estimate_entropy
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.core.references import linear_decoder_entropy
from genentropy_cli.models.loading import save_torchscript

ILL_CONDITIONED = (1e4, 1.0, 1e-4)  # singular values at s and 1e8 times s: float32's J loses the small one
WELL_CONDITIONED = (2.0, 1.0, 0.5)


def run(singular_values, dtype: str, messages: list | None = None, **kwargs):
    log = (lambda message: None) if messages is None else messages.append
    return estimate_entropy(linear_decoder(singular_values), 3, scales=[1e-4], n_samples=2000, dtype=dtype, log=log,
                            **kwargs)


def test_probe_flags_a_decoder_where_float32_moves_the_estimate():
    """Acceptance 4: the flag is checked against what float32 really does to the whole run."""
    messages: list[str] = []
    low, high = run(ILL_CONDITIONED, "float32", messages), run(ILL_CONDITIONED, "float64")
    stderr = high.estimates[0].stderr
    actual_shift = (low.estimates[0].entropy - high.estimates[0].entropy) / stderr
    assert abs(actual_shift) > 0.1  # the construction does what it is meant to
    exact = linear_decoder_entropy(ILL_CONDITIONED, 1e-4, 1.5 * math.log(2 * math.pi * math.e))
    assert abs(high.estimates[0].entropy - exact) < 4 * stderr  # float64 is right (closed form)
    probe = low.precision_probe
    assert probe["flagged"] and probe["suggested_dtype"] == "float64"
    assert probe["num_samples"] == 128 and probe["dtype"] == "float32"
    assert probe["difference_in_stderr"][0] == pytest.approx(actual_shift, rel=1e-3)
    assert any("rerun with --dtype float64" in message and "standard errors" in message for message in messages)


def test_probe_stays_quiet_for_a_well_conditioned_decoder():
    messages: list[str] = []
    result = run(WELL_CONDITIONED, "float32", messages)
    probe = result.precision_probe
    assert not probe["flagged"] and probe["suggested_dtype"] is None
    assert abs(probe["difference_in_stderr"][0]) < 0.01
    assert messages == []


def test_16_bit_dtypes_run_and_the_probe_suggests_the_least_precise_dtype_that_suffices():
    """bfloat16 moves this estimate by several standard errors, float32 does not: float32 is
    suggested (the probe also measures float32 against float64 for the 16-bit dtypes)."""
    result = estimate_entropy(linear_decoder((30.0, 1.0, 1e-2)), 3, scales=[1e-4], n_samples=2000, dtype="bfloat16",
                              log=lambda message: None)
    probe = result.precision_probe
    assert result.settings["dtype"] == "bfloat16" and result.diagnostics["decoder_dtype"] == "bfloat16"
    assert probe["flagged"] and probe["suggested_dtype"] == "float32"
    assert [item["dtype"] for item in probe["other_references"]] == ["float32"]
    half = run(WELL_CONDITIONED, "float16")
    reference = run(WELL_CONDITIONED, "float64")
    assert half.estimates[0].entropy == pytest.approx(reference.estimates[0].entropy, abs=0.01)


def test_no_probe_in_float64_or_when_switched_off():
    assert run(WELL_CONDITIONED, "float64").precision_probe is None
    assert run(WELL_CONDITIONED, "float32", probe_samples=0).precision_probe is None


def test_cli_reports_the_probe_in_json_table_and_a_warning(run_cli, tmp_path):
    model = tmp_path / "ill.pt"
    save_torchscript(linear_decoder(ILL_CONDITIONED), model, latent=make_latent_spec(3))
    result = run_cli("estimate", model, "-n", "2000", "--json")
    assert result.exit_code == 0, result.stderr
    probe = result.json()["precision_probe"]
    assert probe["flagged"] and abs(probe["difference_in_stderr"][0]) > 0.1  # its sign is the device's round-off
    assert "warning:" in result.stderr and "rerun with --dtype float64" in result.stderr
    table = run_cli("estimate", model, "-n", "2000", "--quiet")
    assert "dtype shift" in table.stdout and "precision probe" in table.stdout and "use --dtype float64" in table.stdout


def test_unsupported_dtype_lists_the_choices(run_cli, tmp_path):
    model = tmp_path / "ok.pt"
    save_torchscript(linear_decoder(WELL_CONDITIONED), model, latent=make_latent_spec(3))
    result = run_cli("estimate", model, "--dtype", "int8")
    assert result.exit_code == 2
    assert "float64, float32, bfloat16, float16" in result.stderr


class Float32Only(torch.nn.Module):
    """A decoder whose code asserts float32 (as NVlabs' StyleGAN does of its resampling filter)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        assert z.dtype == torch.float32, "float32 only"
        return self.linear(z)


def test_a_float32_only_decoder_skips_the_probe_before_computing_its_samples(monkeypatch):
    """No float64 copy runs, so nothing could be compared: the probe samples are not computed for
    nothing (each of them is computed once, by the run), and the report says why."""
    from genentropy_cli.run import precision

    calls: list[int] = []
    original = precision.compute_sample_terms
    monkeypatch.setattr(precision, "compute_sample_terms",
                        lambda prepared, latents, *args: (calls.append(len(latents)), original(prepared, latents, *args))[1])
    result = estimate_entropy(Float32Only(), 3, scales=[1e-2], n_samples=200, dtype="float32")
    assert calls == []
    assert result.precision_probe["skipped"].startswith("the decoder runs only in float32, not in float64")
    assert "(float32 only)" in result.precision_probe["skipped"] and math.isfinite(result.estimates[0].entropy)
