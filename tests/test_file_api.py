"""The commands as Python functions of a path (``genentropy_cli.estimate_file`` and its siblings):
the same options as the command line, the same JSON document, a clean public namespace."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import genentropy_cli
from genentropy_cli import compare_files, estimate_file, inspect_file, samples_file, sweep_file, track_files

MODELS = Path(__file__).resolve().parents[1] / "sample_models"
TIMING_KEYS = ("elapsed_seconds", "samples_per_second", "forward_seconds_per_sample", "peak_memory_bytes",
               "peak_memory_kind", "seconds", "timings", "probe_seconds")
"""Keys whose values are measured times or memory: they differ between any two runs."""
FLAGS = ("-n", "40", "--dtype", "float64", "--seed", "3", "-s", "0.1", "-s", "1e-4", "--device", "cpu", "--json",
         "-q")
OPTIONS = {"num_samples": 40, "dtype": "float64", "seed": 3, "scales": (0.1, 1e-4), "device": "cpu"}


def comparable(document: object) -> object:
    """The document without measured times and memory, and without the CLI's ``configuration``."""
    if isinstance(document, dict):
        return {key: comparable(value) for key, value in document.items()
                if key not in TIMING_KEYS and key != "configuration" and "seconds" not in key}
    if isinstance(document, list):
        return [comparable(item) for item in document]
    return document


def as_json(document: dict) -> dict:
    import json

    from genentropy_cli.envelope import to_json

    return json.loads(to_json(document))


def cli_document(run_cli, *args) -> dict:
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    return result.json()


def onnx_model(tmp_path: Path) -> tuple[Path, dict, tuple]:
    pytest.importorskip("onnx")
    pytest.importorskip("onnx2torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8)).eval()
    path = tmp_path / "decoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(2, 3),), str(path), input_names=["z"], output_names=["x"],
                          dynamic_axes={"z": {0: "batch"}, "x": {0: "batch"}}, dynamo=False, opset_version=13)
    return path, {"latent_distribution": "uniform"}, ("--latent-distribution", "uniform")


FORMATS = {
    "torchscript": lambda tmp: (MODELS / "mlp_small.pt", {}, ()),
    "safetensors+spec": lambda tmp: (MODELS / "mlp_small_weights.safetensors", {}, ()),
    "state-dict+spec": lambda tmp: (MODELS / "mlp_small_state.pth", {"spec": str(MODELS / "mlp_small_state.yaml")},
                                    ("--spec", str(MODELS / "mlp_small_state.yaml"))),
    "torch.export": lambda tmp: (MODELS / "mlp_small.pt2", {}, ()),
    "onnx": onnx_model,
}


@pytest.mark.parametrize("kind", list(FORMATS))
def test_estimate_file_equals_the_cli_json_for_every_format(kind, run_cli, tmp_path):
    path, model_options, model_flags = FORMATS[kind](tmp_path)
    result = estimate_file(str(path), **OPTIONS, **model_options)
    expected = cli_document(run_cli, "estimate", path, *FLAGS, *model_flags)
    assert expected["model"]["format"] == result.to_dict()["model"]["format"]
    assert comparable(as_json(result.to_dict())) == comparable(expected)


def test_every_command_function_equals_its_commands_json(run_cli, tmp_path):
    path = str(MODELS / "mlp_small.pt")
    sweep = sweep_file(path, reference="1.0", **OPTIONS)
    assert comparable(as_json(sweep.to_dict())) == comparable(cli_document(run_cli, "sweep-scale", path, *FLAGS[:6],
                                                                            "--scales", "0.1,1e-4", "--reference",
                                                                            "1.0", *FLAGS[10:]))
    other = str(MODELS / "mlp_small.pt2")
    compared = compare_files([path, other], **OPTIONS)
    assert comparable(as_json(compared.to_dict())) == comparable(cli_document(run_cli, "compare", path, other,
                                                                               *FLAGS))
    tracked = track_files([path, other], keep_order=True, **OPTIONS)
    assert comparable(as_json(tracked.to_dict())) == comparable(cli_document(run_cli, "track", path, other,
                                                                              "--keep-order", *FLAGS))
    extremes = samples_file(path, lowest=2, highest=3, scale=0.01, num_samples=40, seed=3, dtype="float64")
    assert comparable(as_json(extremes.to_dict())) == comparable(cli_document(
        run_cli, "samples", path, "--lowest", "2", "--highest", "3", "--scale", "0.01", "-n", "40", "--seed", "3",
        "--dtype", "float64", "--json", "-q"))
    report = inspect_file(path, probe_latents=3, scale=0.01, dtype="float64", seed=2)
    assert comparable(as_json(report)) == comparable(cli_document(
        run_cli, "inspect", path, "--probe-latents", "3", "--scale", "0.01", "--dtype", "float64", "--seed", "2",
        "--json", "-q"))


def test_a_conditional_decoder_from_a_file_gives_the_cli_document(run_cli):
    path = str(MODELS / "cvae.safetensors")
    result = estimate_file(path, num_samples=30, seed=1, classes="0,3", probe_samples=0)
    expected = cli_document(run_cli, "estimate", path, "-n", "30", "--seed", "1", "--classes", "0,3",
                            "--probe-samples", "0", "--json", "-q")
    assert comparable(as_json(result.to_dict())) == comparable(expected)


def test_unknown_keywords_are_a_type_error_naming_the_valid_ones():
    with pytest.raises(TypeError, match="'n_sample'.*latent_distribution.*num_samples"):
        estimate_file(str(MODELS / "mlp_small.pt"), n_sample=10)
    with pytest.raises(TypeError, match="'scales'.*the valid ones are"):
        samples_file(str(MODELS / "mlp_small.pt"), scales=(0.1,))  # samples has one scale: scale=
    with pytest.raises(TypeError, match="'num_samples'"):
        inspect_file(str(MODELS / "mlp_small.pt"), num_samples=10)  # inspect runs no batch loop


def test_a_flag_that_contradicts_the_file_is_warned_about_from_python_too():
    with pytest.warns(UserWarning, match="--latent-distribution normal: the spec file records uniform"):
        estimate_file(str(MODELS / "mlp_small_weights.safetensors"), latent_distribution="normal", num_samples=20,
                      probe_samples=0)
    messages: list[str] = []
    estimate_file(str(MODELS / "mlp_small_weights.safetensors"), latent_distribution="normal", num_samples=20,
                  probe_samples=0, log=messages.append)
    assert any("records uniform" in message for message in messages)


def test_the_public_namespace_is_the_api_and_importing_it_loads_no_torch():
    names = dir(genentropy_cli)
    assert names == sorted(genentropy_cli.__all__)
    for private in ("Any", "annotations", "importlib", "version"):
        assert private not in names
    for name in genentropy_cli.__all__:
        if name not in ("EntropyCallback", "EntropyTorchMetric"):  # optional extras (Lightning, torchmetrics)
            assert getattr(genentropy_cli, name) is not None
    fresh = subprocess.run([sys.executable, "-c", "import sys, genentropy_cli; genentropy_cli.__all__; "
                            "print('torch' in sys.modules)"], capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == "False"
