"""sweep-scale: scales and reference parsing, the convergence rule, one pass, CLI output, --plot."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest
import torch
from test_cli import HALF_SPHERE, assert_one_line_error

from genentropy_cli import estimate_entropy, sweep_scale
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.core.references import HALF_SPHERE_ENTROPY, HalfSphereRadial
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.sweep import (
    Comparison,
    assess_convergence,
    evaluate_constant_expression,
    parse_reference,
    parse_scales,
)
from genentropy_cli.models.loading import save_torchscript
from genentropy_cli.run.results import ScaleEstimate

# ----------------------------------------------------------------------------- parsing


def test_scales_are_sorted_largest_first():
    assert parse_scales("1e-4, 1e-1,1e-2") == (1e-1, 1e-2, 1e-4)
    assert parse_scales("0.5") == (0.5,)


@pytest.mark.parametrize("text, fragment", [
    ("1e-1,abc", "'abc' is not a number"),
    (",", "comma-separated"),
    ("1e-2,0.01", "given twice"),
    ("1e-2,-1", "positive"),
    ("1e-2,inf", "positive"),
    ("1e-2,0", "positive"),
])
def test_bad_scales_are_input_errors(text, fragment):
    with pytest.raises(InputError, match=fragment):
        parse_scales(text)


@pytest.mark.parametrize("text, value", [
    ("log(2*pi)", math.log(2 * math.pi)),
    ("1.8378770664093453", 1.8378770664093453),
    ("-98", -98.0),
    ("31*log(2*pi*e)", 31 * math.log(2 * math.pi * math.e)),
    ("0.5 * log(2*pi*e) * 62 - 2**-1", 0.5 * math.log(2 * math.pi * math.e) * 62 - 0.5),
    ("log(8, 2) + sqrt(4) + exp(0) + log10(100) + ln(e) + tau/pi", 3 + 2 + 1 + 2 + 1 + 2),
])
def test_reference_expressions(text, value):
    assert parse_reference(text).value == pytest.approx(value, rel=1e-15)
    assert parse_reference(text).label == text


def test_named_references():
    assert parse_reference("half-sphere").value == HALF_SPHERE_ENTROPY
    assert parse_reference("Half-Sphere").value == HALF_SPHERE_ENTROPY
    assert parse_reference("sphere").value == pytest.approx(math.log(4 * math.pi))
    assert parse_reference("model", {"true_entropy": 1.5}).value == 1.5
    with pytest.raises(InputError, match="records no true entropy"):
        parse_reference("model", {})


@pytest.mark.parametrize("text, fragment", [
    ("__import__('os').system('true')", "not allowed"),
    ("open('x')", "not allowed"),
    ("(1).__class__", "not allowed"),
    ("[1, 2]", "not allowed"),
    ("x + 1", "'x' is not allowed"),
    ("log(2*pi", "not a number or expression"),
    ("2^3", "write **"),
    ("9**9**9", "too large"),
    ("log(0)", "cannot be evaluated"),
    ("1/0", "cannot be evaluated"),
    ("sqrt(-1)", "cannot be evaluated"),
    ("(-8)**(1/3)", "not a finite real number"),
    ("1" * 300, "longer than"),
])
def test_reference_parser_never_evaluates_code(text, fragment):
    with pytest.raises(InputError, match=re.escape(fragment)):
        evaluate_constant_expression(text)


# ----------------------------------------------------------------------------- the rule


def estimate(scale: float, entropy: float, stderr: float) -> ScaleEstimate:
    return ScaleEstimate(scale, entropy, stderr, stderr * 100, (entropy - 2 * stderr, entropy + 2 * stderr), 10_000)


def test_converged_sweep_names_the_largest_agreeing_scale():
    # differences to s = 1e-4 in combined standard errors (sqrt(2) * 0.01): 50, 2.1, 0.71
    estimates = [estimate(1e-1, 2.0 + 0.01 * 50 * math.sqrt(2), 0.01), estimate(1e-2, 2.0 + 0.03, 0.01),
                 estimate(1e-3, 2.0 + 0.01, 0.01), estimate(1e-4, 2.0, 0.01)]
    convergence = assess_convergence(list(reversed(estimates)), tolerance_se=3.0)  # any order in
    assert convergence.converged is True
    assert convergence.largest_agreeing_scale == 1e-2
    assert [item.agrees(3.0) for item in convergence.to_smallest] == [False, True, True]
    assert [round(item.stderrs, 2) for item in convergence.to_smallest] == [50.0, 2.12, 0.71]
    assert [(item.scale, item.other_scale) for item in convergence.successive] == [(1e-1, 1e-2), (1e-2, 1e-3),
                                                                                   (1e-3, 1e-4)]
    assert "every s <= 1e-02 agrees with s = 1e-04" in convergence.verdict
    # a stricter tolerance moves the verdict
    assert assess_convergence(estimates, tolerance_se=1.0).largest_agreeing_scale == 1e-3


def test_agreement_must_hold_all_the_way_down():
    """1e-2 agrees with the smallest by chance, but 1e-3 between them does not: the verdict
    takes the largest s from which EVERY smaller scale agrees."""
    estimates = [estimate(1e-2, 1.0, 0.01), estimate(1e-3, 1.2, 0.01), estimate(1e-4, 1.0, 0.01)]
    convergence = assess_convergence(estimates)
    assert convergence.converged is False
    assert convergence.largest_agreeing_scale == 1e-4
    assert convergence.verdict.startswith("not converged")


def test_single_scale_and_degenerate_errors():
    assert assess_convergence([estimate(1e-4, 1.0, 0.01)]).converged is None
    assert Comparison(1.0, 0.1, 0.0, 0.0).stderrs == 0.0
    assert Comparison(1.0, 0.1, 1e-3, 0.0).stderrs == math.inf
    assert not Comparison(1.0, 0.1, 1e-3, math.nan).agrees(3.0)  # too few samples to tell
    with pytest.raises(InputError, match="tolerance"):
        assess_convergence([estimate(1e-4, 1.0, 0.01)], tolerance_se=0)


# ----------------------------------------------------------------------------- one pass


class CountingDecoder(torch.nn.Module):
    """Counts decoder calls in a class attribute (the engine works on a deep copy)."""

    calls = [0]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        CountingDecoder.calls[0] += 1
        return HalfSphereRadial()(latents)


def test_a_sweep_of_four_scales_costs_one_pass():
    def calls(run) -> int:
        CountingDecoder.calls[0] = 0
        run()
        return CountingDecoder.calls[0]

    options = dict(n_samples=600, batch_size=100, dtype="float64")
    single = calls(lambda: estimate_entropy(CountingDecoder(), 2, scales=[1e-4], **options))
    swept = calls(lambda: sweep_scale(CountingDecoder(), 2, scales=[1e-1, 1e-2, 1e-3, 1e-4], **options))
    assert single == swept > 6  # at least one call per batch, and no extra pass per scale


def test_sweep_api_returns_verdict_reference_and_collapse_counts():
    seen = []
    result = sweep_scale(HalfSphereRadial(), 2, scales=[1e-4, 1e-1], reference="half-sphere", n_samples=2000,
                         dtype="float64", on_batch=lambda indices, latents, terms: seen.append(len(indices)))
    assert sum(seen) == 2000  # a caller's on_batch still sees every batch
    assert [item.scale for item in result.estimates] == [1e-1, 1e-4]
    assert result.reference.value == HALF_SPHERE_ENTROPY
    # with 2000 samples some latents reach lambda < 1e-2 (prob. ~4%), about none lambda < 1e-8
    assert 20 < result.collapsed_samples[0] < 200 and result.collapsed_samples[1] <= 2
    document = result.to_dict(model={"path": "x"})
    assert document["command"] == "sweep-scale"
    assert document["convergence"]["converged"] is False  # s = 0.1 is far off at any N
    assert [item["scale"] for item in document["reference"]["differences"]] == [1e-1, 1e-4]


# ----------------------------------------------------------------------------- the CLI


def test_acceptance_3_sweep_equals_estimate_at_every_scale(run_cli, tmp_path):
    """Each scale of a sweep equals an `estimate` with that scale and seed (float64, 1e-10
    relative), even with another batch size: the sweep adds no numerics of its own."""
    torch.manual_seed(1)
    from genentropy_cli.models.architectures import MLPDecoder

    path = save_torchscript(MLPDecoder(4, 9, hidden=(16,), activation="tanh", output_activation="none"),
                            tmp_path / "mlp.pt", latent=make_latent_spec(4))
    scales = [1e-1, 1e-2, 1e-3, 1e-4]
    common = ["-n", "1500", "--seed", "7", "--dtype", "float64", "--json", "--quiet"]
    swept = run_cli("sweep-scale", path, "--scales", ",".join(map(str, scales)), "--batch-size", "256", *common)
    assert swept.exit_code == 0, swept.stderr
    by_scale = {item["scale"]: item for item in swept.json()["estimates"]}
    for scale in scales:
        single = run_cli("estimate", path, "--scale", str(scale), "--batch-size", "100", *common)
        assert single.exit_code == 0, single.stderr
        expected = single.json()["estimates"][0]
        for key in ("entropy", "stderr", "std"):
            assert by_scale[scale][key] == pytest.approx(expected[key], rel=1e-10, abs=0), (scale, key)
    entropies = [by_scale[scale]["entropy"] for scale in scales]
    assert len(set(entropies)) == 4  # the scales were not mixed up


def test_table_bars_and_verdict_on_stdout(run_cli):
    result = run_cli("sweep-scale", HALF_SPHERE, "-n", "3000", "--reference", "log(2*pi)", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    for fragment in ("Reference", "s = 1e-01", "s = 1e-04", "Entropy", "Std. error", "Std", "H - ref.",
                     "Next s agrees", "λ_min < s²", "Distance to the s = 1e-04 estimate", "█", "converged"):
        assert fragment in out, fragment
    assert "1.8379" in out  # the reference value in its column


def test_json_document(run_cli, tmp_path):
    output = tmp_path / "sweep.json"
    result = run_cli("sweep-scale", HALF_SPHERE, "-n", "2000", "--scales", "1e-4,1e-2", "--reference",
                     "half-sphere", "--tolerance-se", "2.5", "--json", "--quiet", "--output", output)
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert json.loads(output.read_text()) == document
    assert document["command"] == "sweep-scale"
    assert set(document) >= {"genentropy_version", "model", "settings", "estimates", "elapsed_seconds",
                             "reference", "convergence", "collapsed_samples"}
    assert [item["scale"] for item in document["estimates"]] == [1e-2, 1e-4]
    assert all(set(item) == {"scale", "entropy", "stderr", "std", "ci95", "num_samples"}
               for item in document["estimates"])
    assert document["settings"]["scales"] == [1e-2, 1e-4]
    assert document["reference"]["value"] == HALF_SPHERE_ENTROPY
    assert document["reference"]["label"] == "half-sphere"
    first = document["estimates"][0]
    difference = document["reference"]["differences"][0]
    assert difference["difference"] == pytest.approx(first["entropy"] - HALF_SPHERE_ENTROPY, rel=1e-12)
    assert difference["stderrs"] == pytest.approx(difference["difference"] / first["stderr"], rel=1e-12)
    convergence = document["convergence"]
    assert convergence["tolerance_se"] == 2.5
    assert convergence["smallest_scale"] == 1e-4
    assert isinstance(convergence["converged"], bool) and convergence["verdict"]
    step = convergence["successive"][0]
    assert step["difference"] == pytest.approx(first["entropy"] - document["estimates"][1]["entropy"], rel=1e-12)
    assert step["agrees"] == (step["stderrs"] <= 2.5)


def test_without_reference_json_has_null_reference(run_cli):
    result = run_cli("sweep-scale", HALF_SPHERE, "-n", "500", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["reference"] is None
    assert [item["scale"] for item in document["estimates"]] == [1e-1, 1e-2, 1e-3, 1e-4]  # Table 1's default


@pytest.mark.parametrize("args, fragment", [
    (["--scales", "1e-2,oops"], "'oops' is not a number"),
    (["--reference", "__import__('os')"], "not allowed"),
    (["--reference", "log(2*pi"], "not a number or expression"),
    (["--tolerance-se", "-1"], "--tolerance-se"),
    (["--plot", "/no/such/folder/sweep.png"], "does not exist"),
    (["--plot", "sweep.unknownformat"], "unknown image type"),
])
def test_bad_input_is_one_line_exit_2(run_cli, args, fragment):
    assert_one_line_error(run_cli("sweep-scale", HALF_SPHERE, "-n", "100", *args), fragment)


def test_plot_writes_an_image(run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "sweep.png"
    result = run_cli("sweep-scale", HALF_SPHERE, "-n", "2000", "--reference", "half-sphere", "--plot", target,
                     "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # two panels, not an empty canvas
    result.json()  # stdout still carries exactly one JSON document


def test_plot_without_matplotlib_fails_fast_with_install_hint(run_cli, tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = run_cli("sweep-scale", HALF_SPHERE, "-n", "100", "--plot", tmp_path / "sweep.png")
    assert_one_line_error(result, "needs matplotlib", "pip install 'genentropy[plot]'")
    assert not (tmp_path / "sweep.png").exists()
