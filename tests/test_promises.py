"""What the README and docs promise of a result, each checked against an independent reference:
the 95% interval, clipped eigenvalues of a rank-deficient decoder, the fallback when the
stacked Jacobian disagrees with reverse mode, and the progress bar's running estimate."""

from __future__ import annotations

import io
import math

import pytest
import torch
from longrun_support import linear_decoder, save_small_mlp, small_mlp
from rich.console import Console
from scipy import stats

import genentropy_cli.cli.output as output
from genentropy_cli import compare_models, estimate_entropy
from genentropy_cli.core import stacked_rules_pointwise
from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.latents import LatentStream, make_latent_spec
from genentropy_cli.models.loading import save_torchscript

Z_975 = float(stats.norm.ppf(0.975))
"""The two-sided 95% quantile of the standard normal, from scipy (1.959963984540054)."""


def assert_ci95(entropy: float, stderr: float, ci95) -> None:
    """ci95 = entropy -/+ z_0.975 stderr, to float64 round-off of the two sums."""
    low, high = ci95
    assert (low + high) / 2 == pytest.approx(entropy, rel=1e-14, abs=1e-14)
    assert (high - low) / 2 == pytest.approx(Z_975 * stderr, rel=1e-12)


def test_ci95_is_the_estimate_plus_minus_1_96_standard_errors(run_cli, tmp_path):
    """README: ``ci95`` = entropy -/+ 1.96 stderr (the exact normal quantile, not 1.645 nor 2)."""
    model = save_small_mlp(tmp_path / "mlp.pt")
    document = run_cli("estimate", model, "-n", "500", "-s", "1e-1", "-s", "1e-3", "--dtype", "float64", "--json",
                       "--quiet").json()
    for item in document["estimates"]:
        assert item["stderr"] > 0
        assert_ci95(item["entropy"], item["stderr"], item["ci95"])
    compared = compare_models([small_mlp(), small_mlp(seed=1)], [4, 4], n_samples=300, dtype="float64", device="cpu")
    for model in compared.models:
        for estimate in model.estimates:
            assert_ci95(estimate.entropy, estimate.stderr, estimate.ci95)


class RankTwo(torch.nn.Module):
    """x = P tanh(M z), R^4 -> R^6 through R^2: J = P diag(sech^2(M z)) M has rank 2, so two
    eigenvalues of J^T J are 0, and round-off leaves about half of them slightly negative."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("inner", torch.randn(2, 4, generator=generator, dtype=torch.float64))
        self.register_buffer("outer", torch.randn(6, 2, generator=generator, dtype=torch.float64))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.tanh(latents @ self.inner.T) @ self.outer.T

    def jacobians(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 6, 4), written out: P diag(1 - tanh^2(M z)) M."""
        slope = 1 - torch.tanh(latents @ self.inner.T) ** 2
        return torch.einsum("oh,bh,hi->boi", self.outer, slope, self.inner)


def test_rank_deficient_jacobians_have_their_negative_eigenvalues_clipped_and_counted():
    """docs/json.md: ``clipped_eigenvalues`` counts round-off-negative eigenvalues of J^T J set
    to zero. At s = 1e-12 an unclipped -1e-16 makes log(lambda + s^2) NaN; at s = 1e-3 the
    estimate equals one from the written-out Jacobian's singular values (torch.linalg.svdvals)."""
    decoder, count, scales = RankTwo(), 1000, [1e-3, 1e-12]
    result = estimate_entropy(decoder, 4, scales=scales, n_samples=count, batch_size=100, dtype="float64")
    clipped = result.diagnostics["clipped_eigenvalues"]
    # 2 zero eigenvalues per sample, each negative after round-off about half of the time: every
    # batch's count is added (the last batch's alone would be about a tenth)
    assert 0.3 * 2 * count < clipped <= 2 * count
    assert all(math.isfinite(item.entropy) for item in result.estimates) and result.num_nonfinite == 0
    latents = LatentStream(make_latent_spec(4), seed=0).range(0, count)
    singular = torch.linalg.svdvals(decoder.jacobians(latents))  # (B, 4), two of them ~1e-17
    neg_log_density = 0.5 * (latents**2).sum(dim=1) + 2 * math.log(2 * math.pi)
    terms = neg_log_density + 0.5 * torch.log(singular**2 + scales[0] ** 2).sum(dim=1)
    assert result.estimates[0].entropy == pytest.approx(float(terms.mean()), rel=1e-10)


class TanhMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


def test_a_wrong_stacked_rule_is_caught_by_the_reference_and_torch_func_is_used(monkeypatch):
    """The safety net against silently wrong Jacobians (docs/extending.md): with tanh's stacked
    derivative broken (1 - y instead of 1 - y^2), the probe's comparison with reverse mode
    fails, the run uses torch.func, says why, and gets the estimate of correct Jacobians."""
    kwargs = dict(scales=[1e-3], n_samples=300, dtype="float64", seed=2)
    right = estimate_entropy(TanhMLP(), 4, **kwargs)
    assert right.diagnostics["jacobian_method"] == "stacked"
    monkeypatch.setitem(stacked_rules_pointwise._DERIVATIVES, "tanh", lambda x, y, *rest: 1 - y)
    prepared = prepare_decoder(TanhMLP(), make_latent_spec(4), torch.device("cpu"), torch.float64)
    assert prepared.jacobian_method == "vmap"
    assert prepared.method_note == "the stacked Jacobian differed from torch.func's on the probe latents"
    wrong_rule = estimate_entropy(TanhMLP(), 4, **kwargs)
    assert wrong_rule.diagnostics["jacobian_method"] == "vmap"
    assert "differed" in wrong_rule.diagnostics["jacobian_method_note"]
    assert wrong_rule.estimates[0].entropy == pytest.approx(right.estimates[0].entropy, rel=1e-11)


def test_the_progress_bar_shows_the_running_estimate_on_stderr(run_cli, tmp_path, monkeypatch):
    """docs/usage.md: progress (a bar with ETA, samples/s and the running estimate) goes to stderr.
    The bar is forced on (a terminal console standing in for stderr); its last frame shows every
    sample done and the running estimate at each scale, which by then is the result."""
    frames = io.StringIO()
    monkeypatch.setenv("TERM", "xterm")  # a terminal that can redraw (the fixture's "dumb" cannot)
    monkeypatch.setattr(output, "stderr_console", Console(file=frames, force_terminal=True, width=200,
                                                                 color_system=None))
    model = tmp_path / "linear.pt"
    save_torchscript(linear_decoder((2.0, 1.0, 0.5)), model, latent=make_latent_spec(3))
    result = run_cli("estimate", model, "-n", "3000", "--batch-size", "500", "-s", "1e-1", "-s", "1e-3",
                     "--dtype", "float64", "--json")
    assert result.exit_code == 0, result.stderr
    document = result.json()  # stdout still carries the result alone
    last_frame = frames.getvalue().split("\r")[-2]
    assert last_frame.split()[0].endswith("estimating") and "3,000/3,000" in last_frame and "samples/s" in last_frame
    running = ", ".join(f"H({item['scale']:.0e})={item['entropy']:.4f}" for item in document["estimates"])
    assert running in last_frame, last_frame
    quiet = io.StringIO()
    monkeypatch.setattr(output, "stderr_console", Console(file=quiet, force_terminal=True, width=200))
    assert run_cli("estimate", model, "-n", "300", "--dtype", "float64", "--json", "--quiet").exit_code == 0
    assert quiet.getvalue() == ""  # --quiet: no bar



def test_every_tested_claim_in_the_docs_names_tests_that_exist():
    """The habit: a claim in README.md or docs/ marked "(tested...)" names its test(s) as
    ``tests/FILE.py::test_name`` (or a whole ``tests/FILE.py``), and each of them exists."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    claims = 0
    for page in pages:
        text = " ".join(page.read_text().split())  # a claim may wrap over lines
        for match in re.finditer(r"\(tested\b([^()]*(?:\([^()]*\)[^()]*)*)\)", text):
            claims += 1
            named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", match.group(1))
            assert named, f"{page.name}: {match.group(0)!r} names no test"
            for path, name in named:
                source = root / path
                assert source.is_file(), f"{page.name}: {path} does not exist"
                if name:
                    assert re.search(rf"^def {name}\(", source.read_text(), re.MULTILINE), f"{page.name}: no {path}::{name}"
    assert claims >= 8
