"""Messages that say what happened (issue 24): a flag that contradicts the file, the per-sample
std of a near-constant decoder, one thread, where a plot went, a run repeated from its result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genentropy_cli.cli.reporting import format_std
from genentropy_cli.run.memory import device_name

MODELS = Path(__file__).resolve().parents[1] / "sample_models"
QUICK = ("-n", "40", "--probe-samples", "0", "--json")


def test_a_flag_that_contradicts_the_file_is_used_and_both_values_are_named(run_cli):
    recorded = run_cli("estimate", MODELS / "mlp_small.pt", *QUICK).json()
    flagged = run_cli("estimate", MODELS / "mlp_small.pt", *QUICK, "--latent-distribution", "normal")
    assert flagged.exit_code == 0
    assert "--latent-distribution normal: the file records uniform; using the flag's value" in flagged.stderr
    assert flagged.json()["model"]["latent_distribution"] == "normal"
    assert flagged.json()["estimates"][0]["entropy"] != recorded["estimates"][0]["entropy"]
    spec = run_cli("estimate", MODELS / "mlp_small_weights.safetensors", *QUICK, "--latent-distribution", "normal")
    assert "the spec file records uniform" in spec.stderr
    agreeing = run_cli("estimate", MODELS / "mlp_small.pt", *QUICK, "--latent-distribution", "uniform",
                       "--latent-dim", "3")
    assert agreeing.exit_code == 0 and "warning" not in agreeing.stderr


def test_a_wrong_latent_dim_says_what_the_file_records(run_cli):
    result = run_cli("estimate", MODELS / "mlp_small.pt", *QUICK, "--latent-dim", "5")
    assert result.exit_code == 2
    assert "--latent-dim 5: the file records 3" in result.stderr and "does not fit" in result.stderr


def test_the_std_keeps_two_significant_figures():
    assert format_std(2.6e-07 * 50) == "1.3e-05"  # was 0.0000 beside a standard error of 2.6e-07
    assert format_std(0.26884) == "0.2688" and format_std(0.0) == "0.0000" and format_std(0.0012, 2) == "0.0012"
    assert format_std(float("nan")) == "-"


def test_one_thread_is_singular():
    torch.set_num_threads(1)  # conftest restores the session's count
    assert device_name(torch.device("cpu")).endswith("(1 thread)")
    torch.set_num_threads(2)
    assert device_name(torch.device("cpu")).endswith("(2 threads)")


def test_plot_says_where_it_wrote(run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "sweep.png"
    result = run_cli("sweep-scale", MODELS / "mlp_small.pt", "-n", "40", "--scales", "0.1,0.01", "--plot", plot)
    assert result.exit_code == 0 and plot.stat().st_size > 0
    assert f"wrote plot to {plot}" in result.stderr
    assert "wrote plot" not in result.stdout


def test_a_result_written_with_output_repeats_from_its_config(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = run_cli("estimate", MODELS / "mlp_small.pt", "-n", "60", "--seed", "4", "-o", "result.json", "-q")
    assert first.exit_code == 0, first.stderr
    again = run_cli("estimate", "--config", "result.json", "--json", "-q")
    assert again.exit_code == 0, again.stderr
    recorded = json.loads((tmp_path / "result.json").read_text())
    assert again.json()["estimates"] == recorded["estimates"]
    assert again.json()["configuration"]["options"]["output"] is None  # not taken from the result
