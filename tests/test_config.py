"""--config run.yaml: values used where no flag is given, flags win, the JSON embeds the
resolved configuration, and a run repeats from its own JSON."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def test_config_values_flags_override_and_the_json_embeds_the_configuration(run_cli, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(SAMPLES / "mlp_small.safetensors"), "num_samples": 300, "scale": [0.1, 1e-4],
        "latent-distribution": "normal", "seed": 4, "dtype": "float64", "json": True, "quiet": True,
    }))
    result = run_cli("estimate", "--config", config, "--seed", "9")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["settings"]["num_samples"] == 300 and document["settings"]["seed"] == 9
    assert [item["scale"] for item in document["estimates"]] == [0.1, 1e-4]
    assert document["model"]["latent_distribution"] == "normal"  # config (a flag) over the embedded uniform
    assert document["model"]["latent_source"]["distribution"] == "flag"
    configuration = document["configuration"]
    assert configuration["file"] == str(config) and configuration["command"] == "estimate"
    assert configuration["options"]["seed"] == 9 and configuration["sources"]["seed"] == "flag"
    assert configuration["options"]["num-samples"] == 300 and configuration["sources"]["num-samples"] == "config"
    assert configuration["sources"]["batch-size"] == "default"

    # the embedded options are themselves a config file: the run repeats exactly
    rerun_config = tmp_path / "rerun.yaml"
    rerun_config.write_text(yaml.safe_dump(configuration["options"]))
    rerun = run_cli("estimate", "--config", rerun_config)
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.json()["estimates"] == document["estimates"]
    # ... and so is the JSON result itself
    saved = tmp_path / "result.json"
    saved.write_text(result.stdout)
    again = run_cli("estimate", "--config", saved)
    assert again.exit_code == 0, again.stderr
    assert again.json()["estimates"] == document["estimates"]


def test_config_for_another_command_is_refused_and_configuration_is_embedded_without_config(run_cli, tmp_path):
    inspected = run_cli("inspect", SAMPLES / "mlp_small.pt", "--json")
    assert inspected.exit_code == 0, inspected.stderr
    configuration = inspected.json()["configuration"]
    assert configuration["file"] is None and configuration["sources"]["model"] == "flag"
    saved = tmp_path / "inspect.json"
    saved.write_text(inspected.stdout)
    from test_cli import assert_one_line_error

    assert_one_line_error(run_cli("estimate", "--config", saved), "records a run of `inspect`, not `estimate`")


def test_python_api_documents_carry_no_configuration():
    from genentropy_cli import estimate_entropy
    from genentropy_cli.cli.config import with_configuration
    from genentropy_cli.core.references import HalfSphereRadial

    document = estimate_entropy(HalfSphereRadial(), 2, n_samples=50, dtype="float64").to_dict()
    assert "configuration" not in with_configuration(document)


def test_sweep_scale_takes_a_config_and_the_loading_options(run_cli, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"model": str(SAMPLES / "half_sphere.pt"), "num-samples": 300,
                                      "scales": "1e-1,1e-4", "output-range": "0,2", "dtype": "float64",
                                      "json": True, "quiet": True}))
    result = run_cli("sweep-scale", "--config", config)
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["configuration"]["sources"]["output-range"] == "config"
    assert document["model"]["output_transform"]["range"] == [0.0, 2.0]
    # log(2 pi) + 2 log(1/2) at s = 1e-4 (the radial map's H_s is within 1e-4 of its limit there)
    assert document["estimates"][1]["entropy"] == pytest.approx(1.837877 + 2 * math.log(0.5), abs=2e-3)
