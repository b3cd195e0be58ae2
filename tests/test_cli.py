"""The CLI: output channels, JSON schema, exit codes, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.models.loading import save_torchscript

ROOT = Path(__file__).resolve().parent.parent
HALF_SPHERE = ROOT / "sample_models" / "half_sphere.pt"


def assert_one_line_error(result, *fragments: str, exit_code: int = 2) -> None:
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_json_schema_keys_are_stable(run_cli, tmp_path):
    output = tmp_path / "result.json"
    result = run_cli("estimate", HALF_SPHERE, "-n", "500", "--batch-size", "100", "--seed", "3",
                     "--json", "--output", output, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    document = result.json()  # exactly one JSON document on stdout
    assert json.loads(output.read_text()) == document
    assert document["command"] == "estimate"
    assert set(document) >= {"genentropy_version", "command", "model", "settings", "estimates", "elapsed_seconds"}
    assert document["model"]["path"] == str(HALF_SPHERE)
    timing = document["diagnostics"]
    assert 0 < timing["setup_seconds"] and 0 < timing["elapsed_seconds_total"] <= document["elapsed_seconds"] + 1e-9
    assert document["model"]["format"] == "torchscript"
    assert document["model"]["latent_shape"] == [2]
    assert document["model"]["latent_distribution"] == "normal"
    assert document["model"]["output_dim"] == 3
    assert document["settings"] == {**document["settings"], "num_samples": 500, "batch_size": 100, "seed": 3,
                                    "device": "cpu", "dtype": "float32"}
    estimate = document["estimates"][0]
    assert set(estimate) == {"scale", "entropy", "stderr", "std", "ci95", "num_samples"}
    assert estimate["scale"] == 1e-4


def test_table_goes_to_stdout_and_nothing_else(run_cli):
    # float64: at N = 300 float32 moves this decoder's s = 1e-4 estimate by > 0.1 standard error,
    # and the precision probe would rightly warn on stderr
    result = run_cli("estimate", HALF_SPHERE, "-n", "300", "--quiet", "-s", "0.1", "-s", "1e-4", "--dtype", "float64")
    assert result.exit_code == 0, result.stderr
    assert "Entropy" in result.stdout and "1e-01" in result.stdout and "1e-04" in result.stdout
    assert result.stderr == ""


def test_version(run_cli):
    from genentropy_cli import __version__

    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"genentropy {__version__}"


def test_module_entry_point_and_exit_status():
    completed = subprocess.run([sys.executable, "-m", "genentropy_cli", "estimate", str(HALF_SPHERE), "-n", "200",
                                "--json", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["estimates"][0]["num_samples"] == 200
    missing = subprocess.run([sys.executable, "-m", "genentropy_cli", "estimate", "nope.pt"],
                             capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr


class TupleDecoder(torch.nn.Module):
    def forward(self, z: torch.Tensor):
        return z, z


class ShrinkingDecoder(torch.nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :2]


class NeedsFive(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(5, 8)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)


def test_missing_file(run_cli, tmp_path):
    assert_one_line_error(run_cli("estimate", tmp_path / "absent.pt", "--latent-dim", "2"), "not found")


def test_directory(run_cli, tmp_path):
    assert_one_line_error(run_cli("estimate", tmp_path, "--latent-dim", "2"), "is a folder genentropy cannot load")


def test_text_file(run_cli, tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, I am not a model\n")
    assert_one_line_error(run_cli("estimate", path, "--latent-dim", "2"), "not a model")


def test_corrupt_archive(run_cli, tmp_path):
    good = tmp_path / "good.pt"
    save_torchscript(NeedsFive(), good, latent=make_latent_spec(5))
    data = good.read_bytes()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(data[: len(data) // 2])  # truncated download
    assert_one_line_error(run_cli("estimate", corrupt, "--latent-dim", "5"), "corrupt.pt")
    bogus_zip = tmp_path / "bogus.pt"
    with zipfile.ZipFile(bogus_zip, "w") as archive:
        archive.writestr("hello.txt", "not torchscript")
    assert_one_line_error(run_cli("estimate", bogus_zip, "--latent-dim", "5"), "bogus.pt")


def test_latent_size_that_does_not_fit(run_cli, tmp_path):
    path = tmp_path / "five.pt"
    save_torchscript(NeedsFive(), path)
    assert_one_line_error(run_cli("estimate", path, "--latent-dim", "3"), "does not fit the decoder")
    assert_one_line_error(run_cli("estimate", path), "--latent-dim")  # nothing records the size


def test_output_not_a_tensor(run_cli, tmp_path):
    path = tmp_path / "tuple.pt"
    save_torchscript(TupleDecoder(), path)
    assert_one_line_error(run_cli("estimate", path, "--latent-dim", "3"), "not a tensor")


def test_output_dimension_smaller_than_latent(run_cli, tmp_path):
    path = tmp_path / "shrink.pt"
    save_torchscript(ShrinkingDecoder(), path)
    assert_one_line_error(run_cli("estimate", path, "--latent-dim", "4"), "D = 2", "d = 4")


@pytest.mark.parametrize("option,value,fragment", [
    ("-n", "0", "number of samples must be positive"),
    ("-n", "-5", "number of samples must be positive"),
    ("--scale", "0", "scale must be a positive number"),
    ("--scale", "-1e-4", "scale must be a positive number"),
    ("--batch-size", "0", "batch size must be positive"),
    ("--dtype", "int8", "unsupported dtype"),
    ("--latent-distribution", "cauchy", "unknown latent distribution"),
    ("--latent-shape", "a,b", "--latent-shape"),
])
def test_bad_option_values(run_cli, option, value, fragment):
    assert_one_line_error(run_cli("estimate", HALF_SPHERE, option, value), fragment)


def test_cuda_absent(run_cli):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    assert_one_line_error(run_cli("estimate", HALF_SPHERE, "--device", "cuda"), "CUDA is not available")
    assert_one_line_error(run_cli("estimate", HALF_SPHERE, "--device", "tpu"), "device")


def test_nonfinite_sample_fails_with_status_1_and_skip_reports_count(run_cli, tmp_path):
    class NanForLargeZ(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            out = torch.cat([z, z * z], dim=1)
            return torch.where(z[:, :1] > 2.0, torch.full_like(out, float("nan")), out)

    path = tmp_path / "nan.pt"
    save_torchscript(NanForLargeZ(), path, latent=make_latent_spec(2))
    assert_one_line_error(run_cli("estimate", path, "-n", "1000"), "non-finite", "--skip-nonfinite", exit_code=1)
    skipped = run_cli("estimate", path, "-n", "1000", "--skip-nonfinite", "--json")
    assert skipped.exit_code == 0
    document = skipped.json()
    assert document["num_nonfinite"] > 0
    assert document["estimates"][0]["num_samples"] == 1000 - document["num_nonfinite"]
    assert "skipped" in skipped.stderr


def test_ctrl_c_after_the_result_is_shown_prints_no_traceback():
    """A Ctrl-C during the interpreter's shutdown (an exit handler), once the result is out: ignored."""
    script = ("import atexit, os, signal, sys\natexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
              "import genentropy_cli.__main__ as entry\n"
              f"sys.argv = ['genentropy', 'estimate', {str(HALF_SPHERE)!r}, '-n', '20', '--json', '-q', '--dtype', 'float64']\n"
              "entry.main()\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert completed.returncode == 0 and completed.stderr == "", completed.stderr
    assert json.loads(completed.stdout)["command"] == "estimate"
