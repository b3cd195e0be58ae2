"""One decoder in every format gives the same estimate; specs, sidecars, import paths, pickles."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genentropy_cli import estimate_entropy
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.errors import InputError
from genentropy_cli.models.exported import ExportedDecoder, save_exported
from genentropy_cli.models.loading import load_model, save_torchscript
from genentropy_cli.models.specs import build_from_spec, save_safetensors, save_weights, write_spec_file

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"

# a narrow infoGAN generator: BatchNorm (eval mode must be used in every format), deconvs, sigmoid
SPEC = {"architecture": "infogan-mnist", "kwargs": {"latent_dim": 5, "width": 0.05},
        "latent": {"shape": [5], "distribution": "uniform"}}


def trained_generator() -> torch.nn.Module:
    """Built from the spec, with BatchNorm running statistics moved away from (0, 1)."""
    torch.manual_seed(0)
    module = build_from_spec(SPEC).train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.rand(64, 5) * 2 - 1)
    return module.eval()


def save_every_format(module: torch.nn.Module, directory: Path) -> dict[str, Path]:
    latent = make_latent_spec(5, "uniform")
    (directory / "sidecar").mkdir()
    (directory / "state").mkdir()
    return {
        "torchscript": save_torchscript(module, directory / "g.pt", latent=latent),
        "torch.export": save_exported(module, directory / "g.pt2", latent=latent),
        "safetensors + sidecar": save_weights(module, directory / "sidecar" / "g.safetensors", SPEC),
        "safetensors embedded": save_safetensors(module, directory / "g.safetensors", SPEC),
        "state dict + spec": save_weights(module, directory / "state" / "g.pth", SPEC),
    }


def test_one_decoder_in_every_format_gives_the_same_estimate(run_cli, tmp_path):
    module = trained_generator()
    files = save_every_format(module, tmp_path)
    reference = estimate_entropy(module, make_latent_spec(5, "uniform"), scales=(1e-1, 1e-4), n_samples=300,
                                 batch_size=64, dtype="float64", seed=5)
    for name, path in files.items():
        result = run_cli("estimate", path, "-n", "300", "--batch-size", "64", "--dtype", "float64", "--seed", "5",
                         "-s", "0.1", "-s", "1e-4", "--json", "--quiet")
        assert result.exit_code == 0, (name, result.stderr)
        document = result.json()
        assert document["model"]["latent_distribution"] == "uniform", name  # recorded by every format
        assert document["model"]["latent_shape"] == [5]
        for got, expected in zip(document["estimates"], reference.estimates):
            assert got["entropy"] == pytest.approx(expected.entropy, rel=1e-9), name
            assert got["std"] == pytest.approx(expected.std, rel=1e-9), name
    # several batches, and eval mode used: train-mode BatchNorm (batch statistics) is refused, not estimated
    assert reference.settings["batch_size"] == 64
    with pytest.raises(InputError, match="fails on one .* batch-norm layer in training mode"):
        estimate_entropy(_TrainMode(module), make_latent_spec(5, "uniform"), scales=(1e-4,),
                         n_samples=300, batch_size=128, dtype="float64", seed=5)


class _TrainMode(torch.nn.Module):
    """The same generator with its BatchNorm layers normalising by batch statistics."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, z):
        for layer in self.inner.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.train()
                layer.track_running_stats = False
        return self.inner(z)


def test_sample_models_in_every_format_agree(run_cli):
    """The bundled mlp_small.* files are one decoder: identical estimates from each."""
    names = ["mlp_small.pt", "mlp_small.pt2", "mlp_small.safetensors", "mlp_small_weights.safetensors",
             "mlp_small_state.pth"]
    entropies = []
    for name in names:
        result = run_cli("estimate", SAMPLES / name, "-n", "500", "--batch-size", "200", "--dtype", "float64",
                         "--json", "--quiet")
        assert result.exit_code == 0, (name, result.stderr)
        entropies.append(result.json()["estimates"][0]["entropy"])
    trusted = run_cli("estimate", SAMPLES / "mlp_small_pickled.pth", "--trust-pickle", "-n", "500", "--batch-size",
                      "200", "--dtype", "float64", "--json", "--quiet")
    assert trusted.exit_code == 0, trusted.stderr
    assert "warning" in trusted.stderr and "trust" in trusted.stderr  # said even with --quiet
    entropies.append(trusted.json()["estimates"][0]["entropy"])
    assert max(entropies) - min(entropies) <= 1e-9 * abs(entropies[0])


def test_exported_program_jacobian_matches_the_module_on_every_call(tmp_path):
    module = trained_generator()
    path = save_exported(module, tmp_path / "g.pt2", latent=make_latent_spec(5, "uniform"))
    loaded = load_model(path)
    assert isinstance(loaded.decoder, ExportedDecoder)
    assert loaded.metadata["latent_shape"] == [5]
    latent = make_latent_spec(5, "uniform")
    expected = estimate_entropy(module, latent, n_samples=300, batch_size=64, dtype="float64", seed=1)
    for _ in range(2):  # repeated use of the same loaded program stays exact
        got = estimate_entropy(loaded.decoder, latent, n_samples=300, batch_size=64, dtype="float64", seed=1)
        assert got.estimates[0].entropy == pytest.approx(expected.estimates[0].entropy, rel=1e-9)
        assert got.diagnostics["jacobian_method"] in ("stacked", "vmap")  # a batched method, not replicated


def test_exported_program_gives_its_latent_shape_from_its_signature(tmp_path):
    module = build_from_spec({"architecture": "mlp", "kwargs": {"latent_dim": 4, "output_dim": 9, "hidden": [8]}})
    program = torch.export.export(module.eval(), (torch.zeros(3, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "plain.pt2"
    torch.export.save(program, str(path))  # no genentropy.json
    loaded = load_model(path)
    assert loaded.metadata["latent_shape"] == [4] and loaded.origins["latent_shape"] == "program"


def test_exported_program_with_a_fixed_batch_or_in_training_mode_is_refused(run_cli, tmp_path):
    from test_cli import assert_one_line_error

    module = build_from_spec({"architecture": "mlp", "kwargs": {"latent_dim": 4, "output_dim": 9, "hidden": [8]}})
    fixed = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(module.eval(), (torch.zeros(3, 4),)), str(fixed))
    assert_one_line_error(run_cli("estimate", fixed), "fixed batch size of 3", "Dim('batch')")
    bn = build_from_spec({"architecture": "infogan-mnist", "kwargs": {"latent_dim": 3, "width": 0.03}}).train()
    training = tmp_path / "training.pt2"
    program = torch.export.export(bn, (torch.zeros(3, 3),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(training))
    assert_one_line_error(run_cli("estimate", training), "training mode", "model.eval()")


def test_spec_flag_wins_over_sidecar_and_flags_over_spec(run_cli, tmp_path):
    module = build_from_spec({"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [4]}})
    spec = {"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [4]},
            "latent": {"shape": [3], "distribution": "uniform"}}
    path = save_safetensors(module, tmp_path / "m.safetensors", {**spec, "latent": {"shape": [3]}})
    embedded = run_cli("estimate", path, "-n", "50", "--json", "--quiet").json()["model"]
    assert embedded["latent_distribution"] == "normal"
    assert embedded["latent_source"] == {"shape": "metadata", "distribution": "default"}
    write_spec_file(spec, tmp_path / "m.yaml")  # sidecar
    sidecar = run_cli("estimate", path, "-n", "50", "--json", "--quiet").json()["model"]
    assert sidecar["latent_distribution"] == "uniform" and sidecar["latent_source"]["distribution"] == "spec"
    assert sidecar["spec_source"] == str(tmp_path / "m.yaml")
    other = write_spec_file({"latent": {"distribution": "truncated-normal:0.5"}}, tmp_path / "other.yaml")
    chosen = run_cli("estimate", path, "--spec", other, "-n", "50", "--json", "--quiet").json()["model"]
    assert chosen["latent_distribution"] == "truncated-normal:0.5" and chosen["spec_source"] == str(other)
    flagged = run_cli("estimate", path, "--spec", other, "--latent-distribution", "uniform01", "-n", "50",
                      "--json", "--quiet").json()["model"]
    assert flagged["latent_distribution"] == "uniform01" and flagged["latent_source"]["distribution"] == "flag"


def test_import_path_architecture_with_code_path(run_cli, tmp_path):
    package = tmp_path / "code" / "mypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "import torch\n"
        "class Generator(torch.nn.Module):\n"
        "    def __init__(self, latent_dim=2, scale=1.0):\n"
        "        super().__init__()\n"
        "        self.linear = torch.nn.Linear(latent_dim, 5)\n"
        "        self.scale = scale\n"
        "    def forward(self, z):\n"
        "        return self.scale * self.linear(z)\n"
    )
    spec = {"import": "mypkg.models:Generator", "kwargs": {"latent_dim": 2, "scale": 2.0}, "latent": {"shape": [2]}}
    torch.manual_seed(0)
    weights = {"linear.weight": torch.randn(5, 2, dtype=torch.float64), "linear.bias": torch.zeros(5, dtype=torch.float64)}
    from safetensors.torch import save_file

    save_file(weights, str(tmp_path / "gen.safetensors"))
    write_spec_file(spec, tmp_path / "gen.yaml")
    result = run_cli("estimate", tmp_path / "gen.safetensors", "--code-path", tmp_path / "code", "-n", "200",
                     "--dtype", "float64", "-s", "1e-6", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    # closed form: x = 2 W z, z ~ N(0, I_2): H = log(2 pi e) + sum log(2 sigma_j)
    sigma = torch.linalg.svdvals(weights["linear.weight"]).tolist()
    exact = math.log(2 * math.pi * math.e) + sum(math.log(2 * value) for value in sigma)
    item = result.json()["estimates"][0]
    assert abs(item["entropy"] - exact) <= 4 * item["stderr"] + 1e-9


def test_state_dict_inside_a_checkpoint_with_key_and_prefix(run_cli, tmp_path):
    module = build_from_spec({"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [4]}})
    state = {f"module.{name}": tensor for name, tensor in module.state_dict().items()}
    torch.save({"netG": state, "epoch": 7}, tmp_path / "ckpt.pth")
    spec = {"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [4]},
            "latent": {"shape": [3]}}
    write_spec_file(spec, tmp_path / "ckpt.yaml")
    from test_cli import assert_one_line_error

    assert_one_line_error(run_cli("estimate", tmp_path / "ckpt.pth"), "weights are at netG; pass --select netG",
                          "weights: {key: netG}")
    write_spec_file({**spec, "weights": {"key": "netG", "strip_prefix": "module."}}, tmp_path / "ckpt.yaml")
    result = run_cli("estimate", tmp_path / "ckpt.pth", "-n", "100", "--dtype", "float64", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    direct = estimate_entropy(module, 3, n_samples=100, dtype="float64")
    assert result.json()["estimates"][0]["entropy"] == pytest.approx(direct.estimates[0].entropy, rel=1e-12)
    assert result.json()["model"]["format"] == "state-dict"


def test_legacy_torch_save_state_dict_loads(tmp_path):
    module = build_from_spec({"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [4]}})
    torch.save(module.state_dict(), tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    write_spec_file({"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [4]}},
                    tmp_path / "old.yaml")
    loaded = load_model(tmp_path / "old.pth")
    assert loaded.format == "state-dict"
    assert torch.equal(loaded.decoder.state_dict()["net.0.weight"], module.state_dict()["net.0.weight"])


def test_embedded_spec_may_carry_more_than_genentropy_reads(tmp_path):
    """Tools (e.g. a training script) may record training details in the embedded spec."""
    spec = {"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [4]},
            "latent": {"shape": [3], "distribution": "uniform"}, "training": {"epochs": 20, "dataset": "mnist"}}
    path = save_safetensors(build_from_spec(spec), tmp_path / "trained.safetensors", spec)
    loaded = load_model(path)
    assert loaded.spec["training"] == {"epochs": 20, "dataset": "mnist"}
    assert loaded.metadata["latent_distribution"] == "uniform"
