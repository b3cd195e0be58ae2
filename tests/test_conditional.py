"""Conditional decoders g(z, y): per-class entropies on common latents, H(X|Y), H(Y), the mixture
bounds, every label format and way of passing it, every model format, every command.

Numbers are checked against closed forms (a conditional linear decoder with known per-class
singular values), against per-sample values recomputed here with numpy, or against the same
decoder run through another path (another file format, the Python API, one process)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from longrun_support import run_subprocess
from test_distributed import GLOO_UNAVAILABLE

from genentropy_cli import estimate_entropy
from genentropy_cli.core.jacobian import reverse_mode_columns
from genentropy_cli.core.labels import LabelSpec, bind_class
from genentropy_cli.core.latents import LatentStream, make_latent_spec
from genentropy_cli.core.references import ConditionalLinearDecoder, linear_decoder_entropy
from genentropy_cli.core.stacked import UnsupportedOperation, stacked_jacobian
from genentropy_cli.errors import InputError
from genentropy_cli.models.architectures import ConditionalInfoGANGenerator
from genentropy_cli.models.exported import save_exported
from genentropy_cli.models.loading import save_torchscript
from genentropy_cli.models.specs import save_safetensors, save_weights

SPECTRA = [[1.0, 0.5, 0.25], [2.0, 2.0, 0.1], [3.0, 1.0, 1.0]]
WEIGHTS = [1.0, 2.0, 1.0]
LATENT_ENTROPY = 1.5 * math.log(2 * math.pi * math.e)  # N(0, I_3)
FLOAT64 = ["--dtype", "float64", "--device", "cpu", "--json", "--quiet"]


def linear() -> ConditionalLinearDecoder:
    return ConditionalLinearDecoder.with_singular_values(SPECTRA, 9)  # D = 9: a 3 x 3 image for grids


class KeywordDecoder(torch.nn.Module):
    """forward(z, c) with c one-hot (StyleGAN's convention): tanh(W [z; c] + b)."""

    def __init__(self, latent_dim: int = 3, num_classes: int = 3, output_dim: int = 7):
        super().__init__()
        torch.manual_seed(5)
        self.fc = torch.nn.Linear(latent_dim + num_classes, output_dim)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(torch.cat([z, c], 1)))


def class_entropies(document: dict) -> list[float]:
    return [item["estimates"][0]["entropy"] for item in document["classes"]]


# ----------------------------------------------------------------------------- acceptance 1: closed forms


@pytest.mark.parametrize("label_format", ["index", "onehot"])
def test_every_class_and_the_conditional_entropy_match_the_closed_form(label_format):
    scale = 1e-3
    result = estimate_entropy(linear(), 3, labels=LabelSpec(3, label_format, weights=WEIGHTS), n_samples=4000,
                              scales=[scale], dtype="float64", device="cpu")
    exact = [linear_decoder_entropy(values, scale, LATENT_ENTROPY) for values in SPECTRA]
    probabilities = np.asarray(WEIGHTS) / sum(WEIGHTS)
    for item in result.classes:
        estimate = item.estimates[0]
        assert abs(estimate.entropy - exact[item.label]) <= 4 * estimate.stderr, (item.label, estimate, exact)
        assert item.probability == pytest.approx(probabilities[item.label], rel=1e-15)
    conditional = result.conditional[0]
    assert abs(conditional.entropy - float(probabilities @ exact)) <= 4 * conditional.stderr
    assert result.label_entropy == pytest.approx(-float(probabilities @ np.log(probabilities)), rel=1e-15)
    bounds = result.mixture[0]
    assert (bounds.lower, bounds.upper) == (conditional.entropy, conditional.entropy + result.label_entropy)
    assert result.diagnostics["jacobian_method"] == "stacked"
    # a linear decoder's classes differ by constants: paired differences are exact
    for pair in result.pairs:
        truth = exact[result.classes[pair.first].label] - exact[result.classes[pair.second].label]
        assert pair.difference == pytest.approx(truth, abs=1e-9) and pair.paired_stderr < 1e-12


def test_index_and_onehot_labels_give_identical_results():
    kwargs = dict(n_samples=600, scales=[1e-1, 1e-4], dtype="float64", device="cpu")
    torch.manual_seed(0)
    generator = ConditionalInfoGANGenerator(latent_dim=5, num_classes=3, width=0.03)
    for decoder in (linear(), generator):
        index = estimate_entropy(decoder, decoder_latent(decoder), labels=LabelSpec(3, "index"), **kwargs)
        onehot = estimate_entropy(decoder, decoder_latent(decoder), labels=LabelSpec(3, "onehot"), **kwargs)
        for ours, theirs in zip(index.classes, onehot.classes):
            for a, b in zip(ours.estimates, theirs.estimates):
                assert (a.entropy, a.stderr) == pytest.approx((b.entropy, b.stderr), rel=1e-13)
        assert [e.entropy for e in index.conditional] == pytest.approx([e.entropy for e in onehot.conditional], rel=1e-13)


def decoder_latent(decoder) -> int:
    return 3 if isinstance(decoder, ConditionalLinearDecoder) else 5


def test_a_decoder_that_ignores_its_label_gives_equal_classes_with_zero_paired_error():
    torch.manual_seed(1)
    network = torch.nn.Sequential(torch.nn.Linear(3, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5)).double()
    result = estimate_entropy(lambda z, y: network(z), 3, labels=4, n_samples=500, scales=[1e-2],
                              dtype="float64", device="cpu")
    plain = estimate_entropy(network, 3, n_samples=500, scales=[1e-2], dtype="float64", device="cpu")
    values = {(item.estimates[0].entropy, item.estimates[0].stderr) for item in result.classes}
    assert len(values) == 1  # identical, not merely close
    assert result.classes[0].estimates[0].entropy == pytest.approx(plain.estimates[0].entropy, rel=1e-12)
    assert len(result.pairs) == 6
    for pair in result.pairs:
        assert pair.difference == 0 and pair.paired_stderr == 0 and pair.correlation == pytest.approx(1.0)
    # the mixture IS every class's distribution: H(X) is the lower end, H(X|Y)
    assert result.conditional[0].entropy == pytest.approx(plain.estimates[0].entropy, rel=1e-12)
    assert result.label_entropy == pytest.approx(math.log(4), rel=1e-15)


def test_conditional_entropy_and_its_error_equal_numpy_on_the_per_sample_terms():
    """H(X|Y) and its standard error against the per-sample terms (on_rows) recomputed here, and
    against the covariance route cov(a, b) = (var a + var b - var(a - b)) / 2 from the pair columns."""
    torch.manual_seed(2)
    network = torch.nn.Sequential(torch.nn.Linear(3 + 3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6)).double()
    terms: list[np.ndarray] = []

    def decoder(z, y):
        return network(torch.cat([z, y], 1)) * (1 + y[:, :1])  # class 0 is stretched: classes correlate partly

    result = estimate_entropy(decoder, 3, labels=LabelSpec(3, "onehot", weights=WEIGHTS), n_samples=1500,
                              scales=[1e-3], dtype="float64", device="cpu",
                              on_rows=lambda first, rows: terms.append(np.stack([m.terms[:, 0] for m in rows.models], 1)))
    values = np.concatenate(terms)  # (N, K)
    p = np.asarray(WEIGHTS) / sum(WEIGHTS)
    weighted = values @ p
    count = len(weighted)
    assert result.conditional[0].entropy == pytest.approx(weighted.mean(), rel=1e-12)
    assert result.conditional[0].stderr == pytest.approx(weighted.std(ddof=1) / math.sqrt(count), rel=1e-9)
    for item in result.classes:
        assert item.estimates[0].entropy == pytest.approx(values[:, item.label].mean(), rel=1e-12)
    std = {item.label: item.estimates[0].std for item in result.classes}
    covariance = np.diag([std[k] ** 2 for k in range(3)])
    for pair in result.pairs:
        a, b = result.classes[pair.first].label, result.classes[pair.second].label
        difference_var = (pair.paired_stderr * math.sqrt(count)) ** 2
        covariance[a, b] = covariance[b, a] = 0.5 * (std[a] ** 2 + std[b] ** 2 - difference_var)
        assert pair.paired_stderr == pytest.approx((values[:, a] - values[:, b]).std(ddof=1) / math.sqrt(count), rel=1e-9)
    assert 0.05 < abs(result.pairs[0].correlation) < 0.999
    assert math.sqrt(p @ covariance @ p / count) == pytest.approx(result.conditional[0].stderr, rel=1e-9)


def mixture_entropy_by_quadrature(means, stds, probabilities) -> float:
    """H of a 1-d Gaussian mixture, by the trapezoid rule on a fine grid (independent of the package)."""
    grid = np.linspace(min(means) - 12 * max(stds), max(means) + 12 * max(stds), 400_001)
    density = sum(p * np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
                  for m, s, p in zip(means, stds, probabilities))
    integrand = np.where(density > 0, -density * np.log(np.maximum(density, 1e-300)), 0.0)
    return float(np.trapezoid(integrand, grid))


def test_the_mixture_entropy_is_the_upper_bound_for_separated_classes_and_the_lower_for_equal_ones():
    """x = a_y z + b_y in one dimension: the true H(X) of the mixture by quadrature against the bounds."""
    probabilities = [0.2, 0.5, 0.3]
    stds = [0.5, 1.0, 2.0]
    for offsets, expected_end in (([0.0, 100.0, 200.0], "upper"), ([0.0, 0.0, 0.0], None)):
        def decoder(z, y, offsets=offsets):
            return z * torch.tensor(stds, dtype=z.dtype)[y, None] + torch.tensor(offsets, dtype=z.dtype)[y, None]

        result = estimate_entropy(decoder, 1, labels=LabelSpec(3, weights=probabilities), n_samples=20000,
                                  scales=[1e-8], dtype="float64", device="cpu")
        truth = mixture_entropy_by_quadrature(offsets, stds, probabilities)
        bounds = result.mixture[0]
        assert bounds.lower - 4 * bounds.stderr <= truth <= bounds.upper + 4 * bounds.stderr
        if expected_end == "upper":
            assert abs(truth - bounds.upper) <= 4 * bounds.stderr
        else:  # overlapping classes: strictly inside the bounds
            assert bounds.lower + 0.05 < truth < bounds.upper - 0.05


# ----------------------------------------------------------------------------- the stacked rules for labels


def embedding_decoder(kind: str):
    torch.manual_seed(3)
    table, weight = torch.randn(4, 5, dtype=torch.float64), torch.randn(7, 3 + 5, dtype=torch.float64)
    scale = torch.randn(4, 7, dtype=torch.float64)

    def decoder(z):
        labels = torch.full((z.shape[0],), 2, dtype=torch.int64)
        if kind == "cat embedding":
            return torch.cat([z, table[labels]], 1) @ weight.T
        if kind == "cat one-hot, expanded":
            code = torch.nn.functional.one_hot(labels[:1], 5).to(z.dtype).expand(z.shape[0], 5)
            return torch.sin(torch.cat([code, z], 1) @ weight.T)
        if kind == "product and sum with an embedding":
            return torch.tanh(z @ weight[:, :3].T) * scale[labels] + scale[labels] ** 2
        raise KeyError(kind)

    return decoder


@pytest.mark.parametrize("kind", ["cat embedding", "cat one-hot, expanded", "product and sum with an embedding"])
def test_stacked_rules_for_constants_equal_in_every_row_match_reverse_mode(kind):
    decoder = embedding_decoder(kind)
    latents = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for chunk in (1, 3):
        stacked = stacked_jacobian(decoder, latents, chunk)
        torch.testing.assert_close(stacked, reverse_mode_columns(decoder, latents, 3), rtol=1e-12, atol=1e-14)


def test_a_constant_that_differs_per_row_is_still_refused():
    latents = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(UnsupportedOperation):
        stacked_jacobian(lambda z: torch.cat([z, torch.arange(z.shape[0], dtype=z.dtype)[:, None]], 1), latents, 2)
    with pytest.raises(UnsupportedOperation):
        stacked_jacobian(lambda z: z * torch.arange(z.shape[0], dtype=z.dtype)[:, None], latents, 2)


# ----------------------------------------------------------------------------- acceptance 2: formats


def api_reference(decoder, label: LabelSpec, latent=3, n: int = 400) -> list[float]:
    result = estimate_entropy(decoder, latent, labels=label, n_samples=n, scales=[1e-4], dtype="float64",
                              device="cpu")
    return [item.estimates[0].entropy for item in result.classes]


def run_json(run_cli, *arguments) -> dict:
    result = run_cli(*arguments)
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_torchscript_and_pt2_decoders_with_a_label_input(run_cli, tmp_path):
    spec = make_latent_spec(3)
    expected = api_reference(linear(), LabelSpec(3))
    scripted = save_torchscript(linear(), tmp_path / "linear.pt", latent=spec, label=LabelSpec(3))
    exported = save_exported(linear(), tmp_path / "linear.pt2", spec, label=LabelSpec(3),
                             example=torch.zeros(2, 3, dtype=torch.float64))
    for path in (scripted, exported):
        document = run_json(run_cli, "estimate", path, "-n", "400", *FLOAT64)
        assert class_entropies(document) == pytest.approx(expected, rel=1e-11), path
        assert document["model"]["label"]["source"]["num_classes"] == "metadata"
    keyword = save_exported(KeywordDecoder().double(), tmp_path / "keyword.pt2", spec,
                            label=LabelSpec(3, "onehot", "c"), example=torch.zeros(2, 3, dtype=torch.float64))
    document = run_json(run_cli, "estimate", keyword, "-n", "400", *FLOAT64)
    assert class_entropies(document) == pytest.approx(
        api_reference(KeywordDecoder().double(), LabelSpec(3, "onehot", "c")), rel=1e-11)
    # a program without genentropy.json: its signature says how the label is passed and what it is
    bare = tmp_path / "bare.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(KeywordDecoder().double().eval(), (torch.zeros(2, 3, dtype=torch.float64),),
                                  kwargs={"c": torch.zeros(2, 3, dtype=torch.float64)},
                                  dynamic_shapes={"z": {0: batch}, "c": {0: batch}})
    torch.export.save(program, str(bare))
    inspected = run_json(run_cli, "inspect", bare, "--json", "-q")["model"]["label"]
    assert (inspected["num_classes"], inspected["format"], inspected["argument"]) == (3, "onehot", "c")
    assert inspected["source"]["argument"] == "program"


def test_a_plain_torchscript_decoder_of_two_inputs_needs_num_classes(run_cli, tmp_path):
    path = torch.jit.save(torch.jit.script(linear()), str(tmp_path / "bare.pt")) or tmp_path / "bare.pt"
    refused = run_cli("estimate", path, "--latent-dim", "3", "-n", "50")
    assert refused.exit_code == 2 and "--num-classes" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    document = run_json(run_cli, "estimate", path, "--latent-dim", "3", "--num-classes", "3", "-n", "400", *FLOAT64)
    assert class_entropies(document) == pytest.approx(api_reference(linear(), LabelSpec(3)), rel=1e-11)
    assert document["model"]["label"]["source"]["num_classes"] == "flag"


def test_spec_built_decoders_builtin_and_keyword_user_code(run_cli, tmp_path, monkeypatch):
    torch.manual_seed(6)
    generator = ConditionalInfoGANGenerator(latent_dim=4, num_classes=3, width=0.03).double().eval()
    spec = {"architecture": "infogan-mnist-conditional", "kwargs": {"latent_dim": 4, "num_classes": 3, "width": 0.03},
            "latent": {"shape": [4]}, "label": {"num_classes": 3}}
    path = save_safetensors(generator, tmp_path / "cgen.safetensors", spec)
    document = run_json(run_cli, "estimate", path, "-n", "300", *FLOAT64)
    assert class_entropies(document) == pytest.approx(api_reference(generator, LabelSpec(3), 4, 300), rel=1e-11)
    onehot = run_json(run_cli, "estimate", path, "-n", "300", "--label-format", "onehot", *FLOAT64)
    assert class_entropies(onehot) == pytest.approx(class_entropies(document), rel=1e-13)
    assert onehot["model"]["label"]["source"]["format"] == "flag"

    code = tmp_path / "code"
    code.mkdir()
    (code / "keyword_user_decoder.py").write_text(
        "import torch\n\n\nclass KeywordDecoder(torch.nn.Module):\n"
        "    def __init__(self, latent_dim=3, num_classes=3, output_dim=7):\n"
        "        super().__init__()\n        self.fc = torch.nn.Linear(latent_dim + num_classes, output_dim)\n\n"
        "    def forward(self, z, c):\n        return torch.tanh(self.fc(torch.cat([z, c], 1)))\n")
    monkeypatch.delitem(sys.modules, "keyword_user_decoder", raising=False)
    user_spec = {"import": "keyword_user_decoder:KeywordDecoder", "kwargs": {"latent_dim": 3, "num_classes": 3},
                 "latent": {"shape": [3]}, "label": {"num_classes": 3, "format": "onehot", "argument": "c"}}
    weights = save_weights(KeywordDecoder().double(), tmp_path / "keyword.safetensors", user_spec)
    document = run_json(run_cli, "estimate", weights, "--code-path", code, "-n", "400", *FLOAT64)
    assert document["model"]["label"]["source"] == {"num_classes": "spec", "format": "spec", "argument": "spec",
                                                    "weights": "default", "classes": "default"}
    assert class_entropies(document) == pytest.approx(
        api_reference(KeywordDecoder().double(), LabelSpec(3, "onehot", "c")), rel=1e-11)


def test_plain_callables_of_z_and_a_label(tmp_path):
    module = linear()
    expected = api_reference(module, LabelSpec(3))
    assert api_reference(lambda z, y: module(z, y), LabelSpec(3)) == pytest.approx(expected, rel=1e-13)
    keyword = api_reference(lambda z, label: module(z, label), LabelSpec(3, "onehot", "label"))
    assert keyword == pytest.approx(expected, rel=1e-13)
    with pytest.raises(InputError, match="on_rows"):
        estimate_entropy(module, 3, labels=3, n_samples=10, on_batch=lambda *args: None)


def test_torchrun_with_two_processes_equals_one(run_cli, tmp_path):
    model = save_torchscript(linear(), tmp_path / "linear.pt", latent=make_latent_spec(3), label=LabelSpec(3))
    arguments = ["estimate", model, "-n", "3500", "--batch-size", "96", "-s", "1e-1", "-s", "1e-4",
                 "--class-weights", "1,2,1", *FLOAT64]
    launched = run_subprocess("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "genentropy_cli", *arguments, timeout=300)
    if launched.returncode != 0 and GLOO_UNAVAILABLE.search(launched.stderr):
        pytest.skip(f"the gloo backend cannot start here: {GLOO_UNAVAILABLE.search(launched.stderr).group(0)}")
    assert launched.returncode == 0, launched.stderr[-3000:]
    two, one = json.loads(launched.stdout), run_json(run_cli, *arguments)
    assert (two["settings"]["world_size"], one["settings"]["world_size"]) == (2, 1)
    for key in ("conditional_entropy", "mixture_entropy"):
        for ours, theirs in zip(two[key], one[key]):
            numbers = [name for name, value in theirs.items() if isinstance(value, float)]
            assert [ours[name] for name in numbers] == pytest.approx([theirs[name] for name in numbers], rel=1e-12)
            if "ci95" in theirs:
                assert ours["ci95"] == pytest.approx(theirs["ci95"], rel=1e-12)
    for ours, theirs in zip(two["classes"], one["classes"]):
        assert [e["entropy"] for e in ours["estimates"]] == pytest.approx([e["entropy"] for e in theirs["estimates"]],
                                                                          rel=1e-12)


# ----------------------------------------------------------------------------- the label input and the commands


@pytest.fixture
def conditional_file(tmp_path) -> Path:
    return save_torchscript(linear(), tmp_path / "linear.pt", latent=make_latent_spec(3), label=LabelSpec(3))


def test_label_flags_are_checked_with_one_line_errors(run_cli, conditional_file, tmp_path):
    from tests.test_cli import assert_one_line_error

    plain = save_torchscript(torch.nn.Linear(3, 5), tmp_path / "plain.pt", latent=make_latent_spec(3))
    assert_one_line_error(run_cli("estimate", plain, "--label-format", "onehot"), "--num-classes")
    assert_one_line_error(run_cli("estimate", conditional_file, "--classes", "0,7"), "outside 0..2")
    assert_one_line_error(run_cli("estimate", conditional_file, "--class-weights", "1,2"), "2 weights")
    assert_one_line_error(run_cli("estimate", conditional_file, "--class-weights", "a,b"), "--class-weights")
    assert_one_line_error(run_cli("estimate", conditional_file, "--label-format", "bits"), "index, onehot")
    assert_one_line_error(run_cli("estimate", conditional_file, "-n", "1"), "at least 2 samples")


def test_classes_and_weights_from_flags_a_file_and_a_config(run_cli, conditional_file, tmp_path):
    weights = tmp_path / "weights.txt"
    weights.write_text("3\n1\n")
    document = run_json(run_cli, "estimate", conditional_file, "--classes", "2,0", "--class-weights", weights,
                        "-n", "300", *FLOAT64)
    assert [item["label"] for item in document["classes"]] == [2, 0]
    assert [item["probability"] for item in document["classes"]] == [0.75, 0.25]
    assert document["label_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-15)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"classes": [2, 0], "class-weights": "3,1", "num-samples": 300}))
    configured = run_json(run_cli, "estimate", conditional_file, "--config", config, *FLOAT64)
    assert class_entropies(configured) == class_entropies(document)


def test_estimate_table_shows_classes_and_the_summary(run_cli, conditional_file, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = run_cli("estimate", conditional_file, "-n", "300", "--dtype", "float64", "-q")
    assert result.exit_code == 0, result.stderr
    for text in ("Per-class entropy", "H(X|y)", "Classes next in rank", "H(X|Y)", "H(X) upper", "Diagnostics"):
        assert text in result.stdout, text


def test_sweep_compare_samples_inspect_and_convert(run_cli, conditional_file, tmp_path):
    sweep = run_json(run_cli, "sweep-scale", conditional_file, "--scales", "1e-1,1e-3", "-n", "300", *FLOAT64)
    assert [item["label"] for item in sweep["class_convergence"]] == [0, 1, 2]
    assert sweep["convergence"]["smallest_scale"] == 1e-3 and len(sweep["conditional_entropy"]) == 2

    copy = save_torchscript(linear(), tmp_path / "copy.pt", latent=make_latent_spec(3), label=LabelSpec(3))
    compared = run_json(run_cli, "compare", conditional_file, copy, "-n", "300", *FLOAT64)
    assert compared["conditional"] and len(compared["class_pairs"]) == 3 and len(compared["conditional_pairs"]) == 1
    alone = run_json(run_cli, "estimate", conditional_file, "-n", "300", *FLOAT64)
    assert class_entropies(compared["models"][0]) == pytest.approx(class_entropies(alone), rel=1e-13)
    assert compared["models"][1]["conditional_entropy"][0]["entropy"] == pytest.approx(
        alone["conditional_entropy"][0]["entropy"], rel=1e-13)
    for pair in compared["class_pairs"] + compared["conditional_pairs"]:
        assert pair["difference"] == 0 and pair["paired_stderr"] == 0
    plain = save_torchscript(torch.nn.Linear(3, 5), tmp_path / "plain.pt", latent=make_latent_spec(3))
    mixed = run_cli("compare", conditional_file, plain, "-n", "50")
    assert mixed.exit_code == 2 and "every model conditional or none" in mixed.stderr

    grid = tmp_path / "grid.png"
    samples = run_json(run_cli, "samples", conditional_file, "-n", "200", "--lowest", "2", "--highest", "2",
                       "--grid", grid, *FLOAT64)
    assert grid.is_file() and [item["label"] for item in samples["classes"]] == [0, 1, 2]
    # h_y(z) = -log p(z) + c_y: every class has the same extremes, those of |z|
    latents = LatentStream(make_latent_spec(3), 0).range(0, 200)
    order = np.argsort((latents**2).sum(1).numpy(), kind="stable")
    for item in samples["classes"]:
        assert [row["index"] for row in item["lowest"]] == order[:2].tolist()
        assert [row["index"] for row in item["highest"]] == order[::-1][:2].tolist()

    inspected = run_json(run_cli, "inspect", conditional_file, "--classes", "1,2", "--json", "-q")
    assert inspected["model"]["label"]["classes"] == [1, 2] and inspected["jacobian_probe"]["label"] == 1


def test_convert_keeps_the_label(run_cli, tmp_path):
    generator = ConditionalInfoGANGenerator(latent_dim=4, num_classes=3, width=0.03).double().eval()
    spec = {"architecture": "infogan-mnist-conditional", "kwargs": {"latent_dim": 4, "num_classes": 3, "width": 0.03},
            "latent": {"shape": [4]}, "label": {"num_classes": 3}}
    source = save_safetensors(generator, tmp_path / "cgen.safetensors", spec)
    target = tmp_path / "converted.safetensors"
    converted = run_json(run_cli, "convert", source, target, "--label-format", "onehot", "--json", "-q")
    assert converted["spec"]["label"] == {"num_classes": 3, "format": "onehot", "argument": "position"}
    ours = run_json(run_cli, "estimate", target, "-n", "200", *FLOAT64)
    theirs = run_json(run_cli, "estimate", source, "-n", "200", *FLOAT64)
    assert class_entropies(ours) == pytest.approx(class_entropies(theirs), rel=1e-13)


def test_checkpoint_resume_and_per_sample_rows(run_cli, conditional_file, tmp_path):
    checkpoint, rows = tmp_path / "run.ckpt", tmp_path / "rows.jsonl"
    arguments = ["estimate", conditional_file, "-n", "1200", "--batch-size", "100", "--checkpoint", checkpoint,
                 *FLOAT64]
    first = run_json(run_cli, *arguments, "--per-sample", rows)
    lines = rows.read_text().splitlines()
    again = run_json(run_cli, *arguments, "--per-sample", rows)
    assert again["diagnostics"]["resumed_from_samples"] == 1200
    assert again["conditional_entropy"] == first["conditional_entropy"]
    refused = run_cli(*arguments, "--per-sample", rows, "--classes", "0,1")
    assert refused.exit_code == 2 and "checkpoint" in refused.stderr
    assert len(lines) == 1200
    record = json.loads(lines[0])
    assert {f"y={label}.neg_log_density" for label in range(3)} <= set(record), sorted(record)


def test_every_class_runs_one_shared_copy_of_the_weights():
    from genentropy_cli.jobs.conditional import conditional_workload
    from genentropy_cli.run.options import EstimateOptions

    decoder = ConditionalInfoGANGenerator(latent_dim=4, num_classes=3, width=0.03)
    workload = conditional_workload(decoder, make_latent_spec(4), LabelSpec(3), EstimateOptions(num_samples=10),
                                    torch.device("cpu"))
    copies = {id(member.prepared.function.decoder) for member in workload.members}
    assert len(copies) == 1 and workload.members[0].prepared.function.decoder is not decoder
    assert [member.name for member in workload.members] == ["y=0", "y=1", "y=2"]


def test_bind_class_and_label_spec_refuse_nonsense():
    with pytest.raises(InputError):
        bind_class(linear(), LabelSpec(3), 3)
    with pytest.raises(InputError):
        LabelSpec(3, classes=[1, 1])
    with pytest.raises(InputError):
        LabelSpec(3, weights=[0, 0, 1], classes=[0, 1])
    assert LabelSpec(3, weights=[0, 1, 1]).probabilities == (0.0, 0.5, 0.5)


def test_labels_in_the_wrong_format_or_a_failing_class_are_named_as_such():
    """Not "latent size does not fit": the label format that runs, or the class that fails."""
    with pytest.raises(InputError, match="fails with index labels .* pass --label-format onehot"):
        estimate_entropy(KeywordDecoder(), 3, labels=LabelSpec(3, "index", "c"), n_samples=20)

    class ThreeClasses(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(3, 3)

        def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.cat([z + self.embedding(y), z], 1)

    with pytest.raises(InputError, match=r"fails for class 3 .* runs for class 0: check --num-classes \(4 given\)"):
        estimate_entropy(ThreeClasses(), 3, labels=4, n_samples=20)
