"""Refusals: each a one-line message on stderr with exit status 2 and nothing on stdout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_cli import assert_one_line_error

from genentropy_cli.models.specs import build_from_spec, save_safetensors, save_weights, write_spec_file

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MLP = {"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [4]}, "latent": {"shape": [3]}}


@pytest.mark.parametrize("command", ["estimate", "inspect"])
def test_pickled_module_without_trust_pickle(run_cli, command):
    assert_one_line_error(run_cli(command, SAMPLES / "mlp_small_pickled.pth"),
                          "pickled genentropy_cli.architectures.MLPDecoder", "genentropy convert", "--trust-pickle")


def test_pickled_module_with_trust_pickle_is_loaded_with_a_warning(run_cli):
    result = run_cli("inspect", SAMPLES / "mlp_small_pickled.pth", "--trust-pickle", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("warning:") and "trust" in result.stderr
    assert result.json()["model"]["format"] == "pickle"


def test_corrupt_safetensors(run_cli, tmp_path):
    good = (SAMPLES / "mlp_small.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    assert_one_line_error(run_cli("estimate", truncated), "truncated.safetensors", "not a readable safetensors file")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    assert_one_line_error(run_cli("estimate", garbage), "garbage.safetensors", "not a readable safetensors file")


def test_unknown_file_type_names_the_supported_formats(run_cli, tmp_path):
    path = tmp_path / "model.h5"  # Keras: not a format genentropy reads
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    assert_one_line_error(run_cli("estimate", path), "TorchScript", ".pt2", "safetensors", "state dict", "ONNX",
                          "hf://")


def test_spec_naming_an_unknown_architecture(run_cli, tmp_path):
    module = build_from_spec(MLP)
    path = save_weights(module, tmp_path / "m.safetensors")
    write_spec_file({**MLP, "architecture": "stylegan9"}, tmp_path / "m.yaml")
    assert_one_line_error(run_cli("estimate", path), "unknown architecture 'stylegan9'", "dcgan-64", "import:")


def test_spec_with_unknown_keys_or_without_architecture(run_cli, tmp_path):
    path = save_weights(build_from_spec(MLP), tmp_path / "m.safetensors")
    assert_one_line_error(run_cli("estimate", path), "no spec", "--spec FILE")
    (tmp_path / "m.yaml").write_text("architecture: mlp\nkwarg: {latent_dim: 3}\n")
    assert_one_line_error(run_cli("estimate", path), "unknown key(s) kwarg")
    (tmp_path / "m.yaml").write_text("architecture: [mlp\n")
    assert_one_line_error(run_cli("estimate", path), "not valid YAML")
    write_spec_file({"import": "no_such_module_xyz:Generator"}, tmp_path / "m.yaml")
    assert_one_line_error(run_cli("estimate", path), "no_such_module_xyz", "--code-path")
    write_spec_file({"import": "os:path"}, tmp_path / "m.yaml")  # imported only from --code-path: never from sys.path
    assert_one_line_error(run_cli("estimate", path), "would run the Python module os", "--code-path DIR")
    assert_one_line_error(run_cli("estimate", path, "--code-path", tmp_path), "no module os in --code-path")
    write_spec_file({"import": "genentropy_cli.models.architectures:ARCHITECTURES"}, tmp_path / "m.yaml")
    assert_one_line_error(run_cli("estimate", path), "not a torch.nn.Module subclass")


def test_weights_that_do_not_match_the_architecture_name_the_tensors(run_cli, tmp_path):
    module = build_from_spec(MLP)
    wider = {**MLP, "kwargs": {**MLP["kwargs"], "hidden": [5]}}
    path = save_safetensors(module, tmp_path / "m.safetensors", wider)  # spec says 5 hidden units, weights 4
    assert_one_line_error(run_cli("estimate", path), "do not match the architecture", "net.0.weight (4, 3) vs (5, 3)")
    state = tmp_path / "state.pth"
    torch.save({"net.0.weight": torch.zeros(4, 3)}, state)
    write_spec_file(MLP, tmp_path / "state.yaml")
    assert_one_line_error(run_cli("estimate", state), "missing net.0.bias, net.2.bias, net.2.weight")


def test_unknown_latent_distribution(run_cli):
    assert_one_line_error(run_cli("estimate", SAMPLES / "mlp_small.safetensors", "--latent-distribution", "cauchy"),
                          "unknown latent distribution 'cauchy'")


def test_bad_config_keys_and_values(run_cli, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("num-samples: 100\nnum-sample: 5\nscales: [0.1]\n")
    assert_one_line_error(run_cli("estimate", SAMPLES / "half_sphere.pt", "--config", config),
                          "unknown option(s) num-sample, scales", "known:", "num-samples")
    config.write_text("num-samples: many\n")
    assert_one_line_error(run_cli("estimate", SAMPLES / "half_sphere.pt", "--config", config), "num-samples")
    config.write_text("- just\n- a list\n")
    assert_one_line_error(run_cli("estimate", SAMPLES / "half_sphere.pt", "--config", config), "mapping")
    assert_one_line_error(run_cli("estimate", SAMPLES / "half_sphere.pt", "--config", tmp_path / "absent.yaml"),
                          "config file not found")


def test_onnx_and_hub_inputs_without_their_extras_name_the_install(run_cli, tmp_path, monkeypatch):
    import sys

    from genentropy_cli.models import onnx_models

    monkeypatch.setattr(onnx_models, "_STATE", {})
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    path = tmp_path / "generator.onnx"
    path.write_bytes(b"\x08\x07\x12\x07pytorch")
    assert_one_line_error(run_cli("estimate", path), "is an ONNX graph", "pip install 'genentropy[onnx]'",
                          "pip install --no-deps onnx2torch")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert_one_line_error(run_cli("inspect", "hf://someone/generator"), "is on the Hugging Face Hub",
                          "pip install 'genentropy[hub]'")
