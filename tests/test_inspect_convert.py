"""`inspect` and `convert` on every sample model; convert round-trips exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_cli import assert_one_line_error

from genentropy_cli import estimate_entropy
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.core.references import LinearDecoder, matrix_with_singular_values
from genentropy_cli.models.loading import load_model, save_torchscript
from genentropy_cli.models.specs import read_safetensors, write_spec_file

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
CODE = ["--code-path", str(SAMPLES / "user_code")]
SAMPLE_MODELS = {  # file: (format, extra flags)
    "half_sphere.pt": ("torchscript", []),
    "mlp_small.pt": ("torchscript", []),
    "mlp_small.pt2": ("torch.export", []),
    "mlp_small.safetensors": ("safetensors", []),
    "mlp_small_weights.safetensors": ("safetensors", []),
    "mlp_small_state.pth": ("state-dict", []),
    "mlp_small_pickled.pth": ("pickle", ["--trust-pickle"]),
    "tiny_decoder.safetensors": ("safetensors", CODE),
    "dcgan_tiny.safetensors": ("safetensors", []),
}


@pytest.mark.parametrize("name", list(SAMPLE_MODELS))
def test_inspect_every_sample_model(run_cli, name):
    expected_format, flags = SAMPLE_MODELS[name]
    result = run_cli("inspect", SAMPLES / name, *flags, "--probe-latents", "2", "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["command"] == "inspect" and report["model"]["format"] == expected_format
    probe = report["jacobian_probe"]
    assert 0 < probe["smallest_singular_value"] <= probe["largest_singular_value"]
    assert len(probe["rank_at_scale"]) == 2 and report["forward_seconds_per_sample"] > 0
    assert report["model"]["latent_source"]["shape"] in ("metadata", "spec", "program")
    table = run_cli("inspect", SAMPLES / name, *flags, "--probe-latents", "2")
    assert table.exit_code == 0 and "rank at s" in table.stdout


def test_inspect_reports_the_singular_values_and_rank_of_a_linear_decoder(run_cli, tmp_path):
    singular_values = [5e-5, 1e-3, 0.5, 2.0]
    matrix = matrix_with_singular_values(singular_values, 9, seed=2)
    path = save_torchscript(LinearDecoder(matrix), tmp_path / "linear.pt", latent=make_latent_spec(4, "uniform"))
    report = run_cli("inspect", path, "--dtype", "float64", "--scale", "1e-4", "--json").json()
    probe = report["jacobian_probe"]
    assert probe["smallest_singular_value"] == pytest.approx(5e-5, rel=1e-5)  # via J^T J: float64 error ~ eps * 4 / sigma
    assert probe["largest_singular_value"] == pytest.approx(2.0, rel=1e-12)
    assert probe["rank_at_scale"] == [3] * 4  # sigma = 5e-5 is below s = 1e-4
    assert report["parameters"] == {"count": 0, "buffers": 9 * 4 + 9, "dtypes": ["float64"]}
    assert report["model"]["latent_source"] == {"shape": "metadata", "distribution": "metadata"}
    assert report["model"]["output_shape"] == [9]


def test_inspect_plans_within_max_memory_as_a_run_does(run_cli, monkeypatch):
    """--max-memory (CLI and API) plans the probes, and the speed behind the prediction, as a run
    under that cap: a tight cap gives a smaller tangent chunk than d."""
    from genentropy_cli import inspect_file
    from genentropy_cli.jobs.inspect import PREDICTION_BASES
    from genentropy_cli.run import compute

    path = SAMPLES / "dcgan_tiny.safetensors"  # d = 100; one sample at chunk 1 needs about 14 MiB
    roomy = run_cli("inspect", path, "--probe-latents", "1", "--max-memory", "64GB", "--json").json()
    assert roomy["plan"] == {"batch_size": roomy["plan"]["batch_size"], "tangent_chunk": 100, "max_memory": 64 * 10**9}
    monkeypatch.setattr(compute, "memory_in_use", lambda device: 0)  # the cap, not this process's size
    tight = inspect_file(path, probe_latents=3, max_memory="16MiB")
    assert tight["plan"]["max_memory"] == 16 * 2**20 and tight["plan"]["batch_size"] == 1
    assert 1 <= tight["plan"]["tangent_chunk"] < 100
    # three probes at the run's batch (1) and chunk: the prediction is their time, the first call a warm-up
    assert tight["predicted_run_time"]["seconds_per_sample"] > 0
    assert tight["predicted_run_time"]["basis"] == PREDICTION_BASES["probes"]
    assert roomy["predicted_run_time"]["basis"] == PREDICTION_BASES["forward"]  # one probe call: no timing
    monkeypatch.undo()
    table = run_cli("inspect", path, "--probe-latents", "1")
    assert "default memory budget" in table.stdout


CONVERTIBLE = {name: flags for name, (fmt, flags) in SAMPLE_MODELS.items() if name != "half_sphere.pt"}


@pytest.mark.parametrize("name", list(CONVERTIBLE))
def test_convert_round_trips_every_sample_model(run_cli, tmp_path, name):
    flags = CONVERTIBLE[name]
    target = tmp_path / "converted.safetensors"
    result = run_cli("convert", SAMPLES / name, target, *flags, "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["weights_identical"] is True and report["max_relative_output_difference"] == 0.0
    # the converted file describes itself: it loads from its path alone (plus the code path for import:)
    source = load_model(SAMPLES / name, code_path=flags[1:] if flags == CODE else (),
                        trust_pickle="--trust-pickle" in flags)
    converted = load_model(target, code_path=flags[1:] if flags == CODE else ())
    assert converted.spec_source == "embedded" and converted.format == "safetensors"
    source_state = (source.decoder.program if hasattr(source.decoder, "program") else source.decoder).state_dict()
    converted_state = converted.decoder.state_dict()
    assert set(source_state) == set(converted_state)
    for key, tensor in source_state.items():
        assert torch.equal(tensor, converted_state[key]) and tensor.dtype == converted_state[key].dtype
    # same estimate, same latent spec and output transform
    args = ["-n", "2" if name.startswith("dcgan") else "64", "--dtype", "float64", "--json", "--quiet"]
    before = run_cli("estimate", SAMPLES / name, *flags, *args).json()
    after = run_cli("estimate", target, *(CODE if flags == CODE else []), *args).json()
    assert after["estimates"][0]["entropy"] == pytest.approx(before["estimates"][0]["entropy"], rel=1e-12)
    for key in ("latent_shape", "latent_distribution", "output_shape"):
        assert after["model"][key] == before["model"][key]
    assert after["model"]["output_transform"]["range"] == before["model"]["output_transform"]["range"]
    # converting the converted file changes nothing, to the byte
    again = tmp_path / "again.safetensors"
    assert run_cli("convert", target, again, *(CODE if flags == CODE else [])).exit_code == 0
    assert again.read_bytes() == target.read_bytes()


def test_convert_records_flag_overrides_and_refuses_what_it_cannot_do(run_cli, tmp_path):
    target = tmp_path / "m.safetensors"
    result = run_cli("convert", SAMPLES / "mlp_small.safetensors", target, "--latent-distribution",
                     "truncated-normal:1.5", "--output-range", "0,2")
    assert result.exit_code == 0, result.stderr
    _, spec = read_safetensors(target)
    assert spec["latent"] == {"shape": [3], "distribution": "truncated-normal:1.5"}
    assert spec["output"] == {"range": [0.0, 2.0]}
    assert_one_line_error(run_cli("convert", SAMPLES / "mlp_small.safetensors", target), "exists", "--force")
    assert_one_line_error(run_cli("convert", SAMPLES / "mlp_small.safetensors", tmp_path / "m.pt"), ".safetensors")
    assert_one_line_error(run_cli("convert", SAMPLES / "half_sphere.pt", tmp_path / "h.safetensors"),
                          "does not say which Python class", "--spec FILE")
    assert_one_line_error(run_cli("convert", SAMPLES / "mlp_small_pickled.pth", tmp_path / "p.safetensors"),
                          "--trust-pickle")
    # a spec whose architecture has the same tensor names but computes something else is caught
    wrong = write_spec_file({"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 8, "hidden": [16],
                                                                "activation": "relu", "output_activation": "sigmoid"}},
                            tmp_path / "wrong.yaml")
    bad = run_cli("convert", SAMPLES / "mlp_small.pt", tmp_path / "w.safetensors", "--spec", wrong)
    assert bad.exit_code == 1 and "does not reproduce" in bad.stderr
    assert not (tmp_path / "w.safetensors").exists()


def test_convert_python_api(tmp_path):
    from genentropy_cli.models.convert import convert_to_safetensors
    from genentropy_cli.models.resolve import ModelOptions

    report = convert_to_safetensors(ModelOptions(SAMPLES / "mlp_small.pt2"), tmp_path / "x.safetensors")
    assert report["spec"]["architecture"] == "mlp" and report["tensors"] == 4
    latent = make_latent_spec(3, "uniform")
    first = estimate_entropy(load_model(SAMPLES / "mlp_small.pt2").decoder, latent, n_samples=100, dtype="float64")
    second = estimate_entropy(load_model(tmp_path / "x.safetensors").decoder, latent, n_samples=100, dtype="float64")
    assert math.isclose(first.estimates[0].entropy, second.estimates[0].entropy, rel_tol=1e-12)
