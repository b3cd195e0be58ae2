"""Hostile and careless input, and faults half-way: nothing lost, nothing run, nothing silently wrong.

Every class of issue 13, each case asserting its exit status, one line on stderr and no
traceback; refusals print nothing on stdout and compute nothing; results that could not be
written are on stdout or in a named file; the canary module (whose top-level code creates a
file) is never imported without consent (checked after every test); cases that could grow
memory or hang run in a subprocess under ``RLIMIT_AS`` and a timeout. docs/safety.md states the
rules these cases check.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_cli import assert_one_line_error

from genentropy_cli.cli.reporting import entropy_digits, format_number
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.errors import InputError
from genentropy_cli.models.loading import save_torchscript
from genentropy_cli.models.specs import build_from_spec, save_safetensors, save_weights, write_spec_file

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
MLP = SAMPLES / "mlp_small.safetensors"
SPEC = {"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [4]}, "latent": {"shape": [3]}}
MEMORY_LIMIT = 3 * 1024**3
"""RLIMIT_AS of the subprocess cases: far above what a good run needs (~1.5 GB of address space,
mostly torch's), far below what an unbounded allocation reaches."""

CANARY_SOURCE = (
    "import os, torch\n"
    "open(os.environ.get('GENENTROPY_CANARY', {canary!r}), 'w').write('ran')\n"
    "class Gen(torch.nn.Module):\n"
    "    def __init__(self, latent_dim=3, output_dim=6, hidden=(4,)):\n"
    "        super().__init__()\n"
    "        self.net = torch.nn.Sequential(torch.nn.Linear(latent_dim, 4), torch.nn.ReLU(), torch.nn.Linear(4, 6))\n"
    "    def forward(self, z):\n"
    "        return self.net(z)\n"
)


# --------------------------------------------------------------------------- shared fixtures and helpers


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """Files shared by the cases: models, the canary module, specs (made once per module)."""
    folder = tmp_path_factory.mktemp("hostile")
    paths = {"folder": folder, "canary": folder / "CANARY"}
    (folder / "code").mkdir()
    (folder / "code" / "canary_mod.py").write_text(CANARY_SOURCE.format(canary=str(paths["canary"])))
    module = build_from_spec(SPEC)
    paths["weights"] = save_weights(module, folder / "weights.safetensors")  # no spec: --spec supplies one
    paths["model"] = save_safetensors(module, folder / "model.safetensors", SPEC)
    paths["canary_model"] = save_safetensors(module, folder / "code" / "canary_model.safetensors",
                                             {"import": "canary_mod:Gen", "latent": {"shape": [3]}})
    paths["this_model"] = save_safetensors(module, folder / "this_model.safetensors",
                                           {"import": "this:X", "latent": {"shape": [3]}})
    for name, decoder in DECODERS.items():
        paths[name] = save_torchscript(torch.jit.script(decoder()), folder / f"{name}.pt", latent=make_latent_spec(3))
    return paths


@pytest.fixture(autouse=True)
def no_canary(hostile):
    """Nothing ran the canary module's top-level code (a test that gives consent removes it)."""
    yield
    assert not hostile["canary"].exists(), "the canary module's code ran without --code-path"
    assert "canary_mod" not in sys.modules


def refused(result, *fragments: str) -> None:
    """Exit 2, one line `error: ...` holding ``fragments``, no traceback, nothing on stdout."""
    assert_one_line_error(result, *fragments, exit_code=2)


def limited_run(*args: str, cwd: Path | None = None, memory: int = MEMORY_LIMIT, file_size: int | None = None,
                timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m genentropy_cli ARGS`` in a subprocess under RLIMIT_AS (and RLIMIT_FSIZE)."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    environment = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="120", NO_COLOR="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "genentropy_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=environment, preexec_fn=limits, timeout=timeout)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def strict_json(text: str):
    """JSON that `jq` reads: no NaN / Infinity literals."""
    def refuse(name):
        raise ValueError(f"non-strict JSON literal {name}")

    return json.loads(text, parse_constant=refuse)


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in: a read-only directory, or /sys where root ignores modes."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if _cannot_create_in(folder):
        return folder
    if Path("/sys").is_dir() and _cannot_create_in(Path("/sys")):
        return Path("/sys")
    pytest.skip("no read-only folder here (root ignores permissions and /sys is writable)")


def _cannot_create_in(folder: Path) -> bool:
    probe = folder / "genentropy-probe"
    try:
        probe.write_text("")
    except OSError:
        return True
    probe.unlink()
    return False


def unreadable_file(tmp_path: Path) -> Path:
    """A regular file that cannot be read: mode 000, or /proc/self/mem where root ignores modes."""
    file = tmp_path / "secret.safetensors"
    file.write_bytes(MLP.read_bytes())
    file.chmod(0)
    try:
        file.read_bytes()
    except OSError:
        return file
    return Path("/proc/self/mem")  # a regular file whose read fails (EIO) for every user


# --------------------------------------------------------------------------- decoders that break the estimator's assumptions


class Mixer(torch.nn.Module):
    """Mixes the rows of a batch: x - x.mean(0)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 6)

    def forward(self, z):
        x = self.linear(z)
        return x - x.mean(0)


class Noisy(torch.nn.Module):
    """Noise inside forward: a random Jacobian."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 6)

    def forward(self, z):
        x = self.linear(z)
        return x + 0.01 * torch.randn_like(x)


class Squeezer(torch.nn.Module):
    """Output shape depends on the batch: (B, 6), but (6,) for one latent."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 6)

    def forward(self, z):
        return self.linear(z).squeeze()


class Float32Only(torch.nn.Module):
    """Runs in float32 only: a float32 constant made inside forward."""

    def forward(self, z):
        return z @ torch.eye(3, 6, dtype=torch.float32) + torch.sin(z).sum(1, keepdim=True)


DECODERS = {"mixer": Mixer, "noisy": Noisy, "squeezer": Squeezer, "float32_only": Float32Only}


# --------------------------------------------------------------------------- code run without consent


def test_embedded_import_runs_nothing_from_the_working_directory(hostile):
    """`python -m genentropy_cli` run in the folder holding the spec's module: refused, not imported."""
    result = limited_run("estimate", hostile["canary_model"], "-n", "10", cwd=hostile["folder"] / "code")
    assert result.returncode == 2 and "--code-path" in one_line(result.stderr) and result.stdout == ""


def test_embedded_import_runs_nothing_from_sys_path(run_cli, hostile, monkeypatch):
    monkeypatch.syspath_prepend(str(hostile["folder"] / "code"))
    refused(run_cli("estimate", hostile["canary_model"], "-n", "10"), "would run the Python module canary_mod")


def test_embedded_import_of_an_installed_module_is_refused(run_cli, hostile):
    refused(run_cli("estimate", hostile["this_model"], "-n", "10", "--json"), "would run the Python module this")
    refused(run_cli("estimate", hostile["this_model"], "-n", "10", "--code-path", hostile["folder"]),
            "no module this in --code-path")


@pytest.mark.parametrize("target", ["os:system", "subprocess:Popen", "builtins:object", "torch.nn:Linear"])
def test_import_of_any_module_outside_code_path_is_refused(run_cli, hostile, tmp_path, target):
    spec = write_spec_file({"import": target, "latent": {"shape": [3]}}, tmp_path / "spec.yaml")
    refused(run_cli("estimate", hostile["weights"], "--spec", spec, "-n", "5"), "--code-path")


def test_import_with_code_path_is_consent_and_runs(run_cli, hostile, tmp_path, monkeypatch):
    """The control: with --code-path the module is imported (so the canary assertions can fail)."""
    canary = tmp_path / "CONSENTED"
    monkeypatch.setenv("GENENTROPY_CANARY", str(canary))
    result = run_cli("estimate", hostile["canary_model"], "--code-path", hostile["folder"] / "code", "-n", "20",
                     "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert canary.read_text() == "ran"
    del sys.modules["canary_mod"]


@pytest.mark.parametrize("target", [".canary_mod:Gen", "canary_mod", "canary_mod:Gen extra", "canary_mod:", ":Gen"])
def test_malformed_import_targets(run_cli, hostile, tmp_path, target):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"import": target, "latent": {"shape": [3]}}))
    refused(run_cli("estimate", hostile["weights"], "--spec", spec, "--code-path", hostile["folder"] / "code"),
            "import takes an absolute 'package.module:ClassName'")


@pytest.mark.parametrize("where", ["spec", "config"])
def test_yaml_python_tags_run_nothing(run_cli, hostile, tmp_path, where):
    payload = f"!!python/object/apply:builtins.open [{str(hostile['canary'])!r}, 'w']"
    file = tmp_path / f"{where}.yaml"
    file.write_text(f"architecture: mlp\nkwargs: {payload}\n" if where == "spec" else f"seed: {payload}\n")
    flag = "--spec" if where == "spec" else "--config"
    refused(run_cli("estimate", hostile["weights"], flag, file), "not valid YAML")


def test_pickled_module_is_refused_without_running_it(run_cli, hostile, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(hostile["folder"] / "code"))
    monkeypatch.setenv("GENENTROPY_CANARY", str(tmp_path / "PICKLE_CANARY"))
    import canary_mod  # noqa: F401 (imported here, by the test, to pickle an instance)

    path = tmp_path / "whole.pth"
    torch.save(sys.modules["canary_mod"].Gen(), path)
    (tmp_path / "PICKLE_CANARY").unlink()
    del sys.modules["canary_mod"]
    refused(run_cli("estimate", path), "pickled canary_mod.Gen", "--trust-pickle")
    assert not (tmp_path / "PICKLE_CANARY").exists()


def test_reference_expressions_are_not_evaluated_as_python(run_cli, hostile):
    refused(run_cli("sweep-scale", hostile["model"], "--reference", f"__import__('os').system('touch {hostile['canary']}')"),
            "--reference")


# --------------------------------------------------------------------------- memory before work


def test_a_trillion_samples_start_at_once_in_bounded_memory(hostile):
    started = time.monotonic()
    result = limited_run("estimate", hostile["model"], "-n", "1000000000000", "--target-stderr", "10",
                         "--min-samples", "2", "--json", "--quiet", timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    document = strict_json(result.stdout)
    assert document["stop_reason"] == "target_stderr" and document["settings"]["num_samples"] == 10**12
    assert time.monotonic() - started < 45


def test_a_trillion_samples_stop_on_ctrl_c(hostile):
    """The Ctrl-C is sent by the run itself after its third batch (``interrupt_harness``): no
    fixed sleep, so the test holds on a loaded machine."""
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "interrupt_harness.py"), "SIGINT", "3", "--",
                             "estimate", str(hostile["model"]), "-n", "1000000000000", "--json"],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT)))
    assert result.returncode == 130, result.stderr[-2000:]
    assert strict_json(result.stdout)["partial"] is True and "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--num-samples", str(2**60)], "must be at most"),
    (["--batch-size", str(10**9)], "must be at most"),
    (["--latent-shape", "100000,100000"], "more than 1048576 coordinates"),
])
def test_sizes_that_would_exhaust_memory_are_refused(run_cli, hostile, flags, message):
    refused(run_cli("estimate", hostile["model"], *flags), message)


def test_inspect_probe_latents_are_bounded(run_cli, hostile):
    refused(run_cli("inspect", hostile["model"], "--probe-latents", "1000000000"), "--probe-latents must be from 1 to")


def test_an_embedded_spec_with_huge_layers_is_refused_before_allocating(hostile, tmp_path):
    huge = {**SPEC, "kwargs": {**SPEC["kwargs"], "hidden": [40000, 40000]}}
    path = save_safetensors(build_from_spec(SPEC), tmp_path / "huge.safetensors", huge)
    result = limited_run("estimate", path, "-n", "10")
    assert result.returncode == 2 and "do not match the architecture" in one_line(result.stderr)


@pytest.mark.parametrize("flag", ["--config", "--spec"])
def test_yaml_alias_bombs_are_refused_in_bounded_memory(hostile, tmp_path, flag):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 10)}]" for level in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    result = limited_run("convert" if flag == "--spec" else "estimate", hostile["weights"],
                         *([tmp_path / "out.safetensors"] if flag == "--spec" else []), flag, bomb, timeout=60)
    assert result.returncode == 2 and "aliases" in one_line(result.stderr)


# --------------------------------------------------------------------------- finished work never lost


@pytest.mark.parametrize("flag", ["--output", "--checkpoint", "--per-sample"])
def test_outputs_in_a_missing_folder_are_refused_before_work(run_cli, hostile, tmp_path, flag):
    name = "out.jsonl" if flag == "--per-sample" else "out.json"
    refused(run_cli("estimate", hostile["model"], "-n", "50", flag, tmp_path / "missing" / name),
            "does not exist", flag)


@pytest.mark.parametrize("command, flag, name", [
    ("estimate", "--output", "out.json"), ("estimate", "--checkpoint", "run.ckpt"),
    ("estimate", "--per-sample", "rows.csv"), ("samples", "--grid", "grid.png"), ("sweep-scale", "--plot", "s.png"),
])
def test_outputs_in_a_read_only_folder_are_refused_before_work(run_cli, hostile, tmp_path, command, flag, name):
    folder = unwritable_folder(tmp_path)
    refused(run_cli(command, hostile["model"], "-n", "50", flag, folder / name), "cannot write in", flag)


def test_an_output_name_too_long_or_under_a_file_is_refused(run_cli, hostile, tmp_path):
    refused(run_cli("estimate", hostile["model"], "-n", "10", "-o", tmp_path / ("a" * 300 + ".json")),
            "cannot use this path", "File name too long")
    refused(run_cli("estimate", hostile["model"], "-n", "10", "-o", hostile["model"] / "out.json"),
            "cannot use this path")


def test_an_output_that_is_a_directory_is_refused(run_cli, hostile, tmp_path):
    refused(run_cli("estimate", hostile["model"], "-n", "50", "-o", tmp_path), "is a directory")
    refused(run_cli("estimate", hostile["model"], "-n", "50", "--checkpoint", tmp_path), "is a directory")


@pytest.mark.parametrize("flag", ["--output", "--checkpoint", "--per-sample"])
def test_no_output_may_overwrite_the_model(run_cli, hostile, tmp_path, flag):
    model = tmp_path / ("m.csv" if flag == "--per-sample" else "m.safetensors")
    model.write_bytes(hostile["model"].read_bytes())
    before = model.read_bytes()
    refused(run_cli("estimate", model, "-n", "50", flag, model), "is the model file", "would destroy it")
    assert model.read_bytes() == before


def test_outputs_may_not_overwrite_the_spec_the_sidecar_or_each_other(run_cli, hostile, tmp_path):
    spec = write_spec_file(SPEC, tmp_path / "spec.yaml")
    refused(run_cli("estimate", hostile["weights"], "--spec", spec, "-o", spec), "is the --spec file")
    sidecar_model = save_weights(build_from_spec(SPEC), tmp_path / "side.safetensors", SPEC)
    refused(run_cli("estimate", sidecar_model, "-o", tmp_path / "side.yaml"), "is the spec beside")
    refused(run_cli("estimate", hostile["model"], "-o", tmp_path / "r.json", "--checkpoint", tmp_path / "r.json"),
            "--checkpoint and --output are both")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["side.safetensors", "side.yaml", "spec.yaml"]


def test_an_output_through_a_symbolic_link_is_refused(run_cli, hostile, tmp_path):
    """An atomic write replaces the link itself: `-o /dev/stdout` as root replaced /dev/stdout with a file."""
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    refused(run_cli("estimate", hostile["model"], "-n", "10", "-o", tmp_path / "link.json"), "is a symbolic link")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "{}"


def test_the_npy_rows_side_file_is_an_output_too(run_cli, hostile, tmp_path):
    refused(run_cli("estimate", hostile["model"], "-n", "10", "--per-sample", tmp_path / "x.npy",
                    "--checkpoint", tmp_path / "x.npy.rows"), "rows file and --checkpoint are both")


def test_convert_refuses_to_overwrite_its_source(run_cli, hostile, tmp_path):
    source = tmp_path / "m.safetensors"
    source.write_bytes(hostile["model"].read_bytes())
    refused(run_cli("convert", source, source, "--force"), "TARGET", "is the model file")


def test_an_unwritable_output_at_the_end_goes_to_stdout_and_a_fallback_file(run_cli, hostile, tmp_path, monkeypatch):
    """--output fails after the work (the folder became unwritable): the result is on stdout and in a
    named fallback file, stderr says where, the exit status is 0 (the result is saved)."""
    from genentropy_cli.cli import output

    target = tmp_path / "result.json"
    original = output.write_text_atomically

    def failing(text, path):
        if Path(path) == target:
            raise OSError(28, "No space left on device")
        original(text, path)

    monkeypatch.setattr(output, "write_text_atomically", failing)
    monkeypatch.chdir(tmp_path)
    result = run_cli("estimate", hostile["model"], "-n", "100", "-o", target, "--json")
    assert result.exit_code == 0, result.stderr
    line = one_line(result.stderr)
    fallback = Path(line.split("it is in ")[1].split(" and on stdout")[0])
    assert "No space left on device" in line and fallback.parent == tmp_path
    assert json.loads(fallback.read_text()) == result.json() and not target.exists()


def test_a_full_disk_still_shows_the_result(hostile, tmp_path):
    """ulimit -f: neither --output nor a fallback file can be written; the result is on stdout,
    the exit status 1, and no temporary file is left."""
    result = limited_run("estimate", hostile["model"], "-n", "200", "--json", "-o", tmp_path / "out.json",
                         cwd=tmp_path, file_size=200)
    assert result.returncode == 1
    assert strict_json(result.stdout)["estimates"][0]["num_samples"] == 200
    assert "could not write the result" in one_line(result.stderr)
    assert list(tmp_path.iterdir()) == []  # no half-written file, no temporary one


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_stdout_sends_the_result_to_a_fallback_file(hostile, tmp_path):
    """stdout redirected to a full disk (/dev/full): the result goes to a named file, exit status 0."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "genentropy_cli", "estimate", str(hostile["model"]), "-n", "100",
                                 "--json"], stdout=full, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert result.returncode == 0, result.stderr
    (fallback,) = tmp_path.glob("genentropy-estimate-*.json")
    assert str(fallback) in one_line(result.stderr) and strict_json(fallback.read_text())["command"] == "estimate"


def test_a_full_disk_under_per_sample_rows_keeps_the_estimate(hostile, tmp_path):
    rows = tmp_path / "rows.jsonl"
    result = limited_run("estimate", hostile["model"], "-n", "300", "--json", "--per-sample", rows, cwd=tmp_path,
                         file_size=4096)
    assert result.returncode == 1, result.stderr
    assert strict_json(result.stdout)["diagnostics"]["per_sample_error"].startswith(f"could not write {rows}")
    assert "per-sample file is incomplete" in one_line(result.stderr)


def test_a_full_disk_under_the_checkpoint_keeps_the_run(hostile, tmp_path):
    result = limited_run("estimate", hostile["model"], "-n", "300", "--json", "--checkpoint", tmp_path / "c.ckpt",
                         cwd=tmp_path, file_size=512)
    assert result.returncode == 0, result.stderr
    assert strict_json(result.stdout)["estimates"][0]["num_samples"] == 300
    assert "could not write the checkpoint" in one_line(result.stderr)
    assert not any(".tmp" in path.name for path in tmp_path.iterdir())


# --------------------------------------------------------------------------- silently wrong numbers


@pytest.mark.parametrize("command", ["estimate", "sweep-scale", "samples", "inspect"])
def test_a_decoder_that_mixes_batch_rows_is_refused_by_every_command(run_cli, hostile, command):
    result = run_cli(command, hostile["mixer"], "-n", "50", "--json") if command != "inspect" else \
        run_cli(command, hostile["mixer"], "--json")
    refused(result, "mixes the rows of a batch", "x - x.mean(0)")
    assert "float64" not in result.stderr  # the cause, not a precision hint


def test_compare_refuses_a_row_mixing_decoder(run_cli, hostile):
    refused(run_cli("compare", hostile["model"], hostile["mixer"], "-n", "50"), "mixes the rows")


def test_a_nondeterministic_decoder_is_refused(run_cli, hostile):
    refused(run_cli("estimate", hostile["noisy"], "-n", "50"), "not deterministic", "noise or dropout")


def test_an_output_shape_that_depends_on_the_batch_is_refused(run_cli, hostile):
    refused(run_cli("estimate", hostile["squeezer"], "-n", "50"), "output shape depends on the batch size")


def test_a_batch_norm_decoder_in_training_mode_is_refused():
    from genentropy_cli import estimate_entropy

    decoder = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8)).train()

    class StaysInTraining(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = decoder

        def forward(self, z):
            self.inner.train()
            return self.inner(z)

    with pytest.raises(InputError, match="batch-norm layer in training mode"):
        estimate_entropy(StaysInTraining(), 3, n_samples=20)


def test_a_decoder_with_non_finite_outputs_names_the_sample(run_cli, tmp_path):
    """NaN outputs (or an overflowing J^T J) give a non-finite term by sample index, not a LAPACK failure."""

    class Overflowing(torch.nn.Module):
        def forward(self, z):
            return torch.cat([z, z], 1) * 1e200

    path = save_torchscript(torch.jit.script(Overflowing()), tmp_path / "big.pt", latent=make_latent_spec(3))
    assert_one_line_error(run_cli("estimate", path, "-n", "20", "--dtype", "float64"),
                          "sample 0 gave a non-finite entropy term", "--skip-nonfinite", exit_code=1)


def test_the_row_checks_change_no_number_of_a_good_decoder(run_cli, hostile):
    """The same run twice at different batch sizes: equal to round-off (golden: tests/test_golden_pipeline.py)."""
    first = run_cli("estimate", hostile["model"], "-n", "300", "--dtype", "float64", "--batch-size", "300",
                    "--json", "--quiet").json()
    second = run_cli("estimate", hostile["model"], "-n", "300", "--dtype", "float64", "--batch-size", "7",
                     "--json", "--quiet").json()
    assert first["estimates"][0]["entropy"] == pytest.approx(second["estimates"][0]["entropy"], rel=1e-12)


@pytest.fixture(scope="module")
def finished_checkpoint(hostile, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from genentropy_cli.cli.app import app

    path = tmp_path_factory.mktemp("checkpoint") / "run.ckpt"
    result = CliRunner().invoke(app, ["estimate", str(hostile["model"]), "-n", "2100", "--checkpoint", str(path),
                                      "--quiet", "--json"])
    assert result.exit_code == 0, result.stderr
    return path


def _rewrite_checkpoint(source: Path, target: Path, change, checksum: bool = False) -> Path:
    from genentropy_cli.run.checkpoint import document_checksum

    with np.load(source) as archive:
        document = json.loads(str(archive["meta"]))
        arrays = {name: archive[name].copy() for name in archive.files if name != "meta"}
    change(document, arrays)
    if checksum:  # the tamperer recomputes the checksum too: the state itself must still be refused
        document["checksum"] = document_checksum(document["settings"], document["state"], arrays)
    with open(target, "wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(document)), **arrays)
    return target


def _nan_mean(document, arrays):
    arrays["prefix_mean"][0] = np.nan


@pytest.mark.parametrize("change, checksum, message", [
    (_nan_mean, False, "does not match its checksum"),
    (_nan_mean, True, "merged moments are not finite"),
    (lambda document, arrays: arrays.update(prefix_m2=-1 - arrays["prefix_m2"]), True, "a negative sum of squares"),
    (lambda document, arrays: document["state"]["ledger"].update(prefix_count=10**9), True, "sample counts"),
    (lambda document, arrays: document.update(version=1), False, "version 1 checkpoint"),
    (lambda document, arrays: document.pop("checksum"), False, "does not match its checksum"),
])
def test_a_tampered_checkpoint_is_refused(run_cli, hostile, finished_checkpoint, tmp_path, change, checksum, message):
    target = _rewrite_checkpoint(finished_checkpoint, tmp_path / "run.ckpt", change, checksum)
    refused(run_cli("estimate", hostile["model"], "-n", "2100", "--checkpoint", target), message,
            "delete it to start over")


def test_an_untouched_checkpoint_still_resumes(run_cli, hostile, finished_checkpoint, tmp_path):
    target = _rewrite_checkpoint(finished_checkpoint, tmp_path / "run.ckpt", lambda document, arrays: None)
    result = run_cli("estimate", hostile["model"], "-n", "2100", "--checkpoint", target, "--json", "--quiet")
    assert result.exit_code == 0 and result.json()["diagnostics"]["samples_computed"] == 0


# --------------------------------------------------------------------------- strict JSON


def test_one_sample_gives_a_null_standard_error(run_cli, hostile):
    document = strict_json(run_cli("estimate", hostile["model"], "-n", "1", "--json", "--quiet").stdout)
    assert document["estimates"][0]["stderr"] is None and math.isfinite(document["estimates"][0]["entropy"])


def test_per_sample_jsonl_is_strict(tmp_path):
    from genentropy_cli import estimate_entropy

    class NanBeyond(torch.nn.Module):
        def forward(self, z):
            out = torch.cat([z, torch.sin(z)], dim=1)
            return torch.where(z[:, :1] > 1.0, torch.full_like(out, torch.nan), out)

    rows = tmp_path / "rows.jsonl"
    estimate_entropy(NanBeyond(), 2, n_samples=200, dtype="float64", skip_nonfinite=True, per_sample=rows)
    parsed = [strict_json(line) for line in rows.read_text().splitlines()]
    assert len(parsed) == 200 and any(row["h"][0] is None for row in parsed)


# --------------------------------------------------------------------------- bad input: exit 2, one line


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "--seed takes an integer from 0 to 2**64-1"),
    (["--seed", str(2**64)], "--seed takes an integer from 0 to 2**64-1"),
    (["--scale", "1e300"], "outside 1e-150 to 1e+150"),
    (["--scale", "1e-300"], "outside 1e-150 to 1e+150"),
    (["--scale", "nan"], "scale must be a positive number"),
    (["--target-stderr", "inf"], "--target-stderr must be a positive number"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
])
def test_bad_run_values_are_one_line_errors(run_cli, hostile, flags, message):
    refused(run_cli("estimate", hostile["model"], "-n", "10", *flags), message)


def test_sweep_scales_out_of_range(run_cli, hostile):
    refused(run_cli("sweep-scale", hostile["model"], "--scales", "1e-1,1e300"), "outside 1e-150 to 1e+150")


@pytest.mark.parametrize("spec, message", [
    ({"architecture": ["mlp"]}, "architecture takes one name"),
    ({"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [-5]}}, "kwargs do not fit"),
    ({"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "activation": "swish"}}, "kwargs do not fit"),
    ({**SPEC, "latent": {"shape": [3.7]}}, "latent shape must be a positive integer"),
    ({**SPEC, "latent": {"shape": [True]}}, "latent shape must be a positive integer"),
    ({**SPEC, "latent": {"shape": "3"}}, "latent shape must be a positive integer"),
    ({"architecture": "mlp", "kwargs": [1, 2]}, "kwargs must be a mapping"),
])
def test_bad_specs_are_one_line_errors(run_cli, hostile, tmp_path, spec, message):
    file = tmp_path / "spec.yaml"
    file.write_text(yaml.safe_dump(spec))
    refused(run_cli("estimate", hostile["weights"], "--spec", file, "-n", "10"), message)


@pytest.mark.parametrize("text, message", [
    ("genentropy_version: x\nconfiguration: {command: estimate, options: [1, 2]}\n", "options must be a mapping"),
    ("genentropy_version: x\nconfiguration: {command: estimate, options: text}\n", "options must be a mapping"),
    ("num-samples: true\n", "expected an integer, not True"),
    ("num-samples: 3.7\n", "expected an integer, got 3.7"),
    ("json: 1\n", "expected true or false"),
    ("scale: [[0.1]]\n", "a list of plain values"),
    ("seed: {a: 1}\n", "expected one value"),
    ("[" * 5000 + "\n", "not valid YAML"),
    ("- 1\n- 2\n", "must hold a mapping"),
])
def test_bad_config_files_are_one_line_errors(run_cli, hostile, tmp_path, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    refused(run_cli("estimate", hostile["model"], "--config", config), message)


@pytest.mark.parametrize("args, message", [
    (["estimate", "MODEL", "-n", "abc"], "Invalid value for '--num-samples'"),
    (["estimate", "MODEL", "--no-such-option"], "No such option: --no-such-option"),
    (["estimate"], "Missing argument"),
    (["estimat", "MODEL"], "No such command"),
    (["samples", "MODEL", "--lowest", "100000000", "-n", "100000000", "--json"], "at most 10000"),
    (["estimate", "MODEL", "--code-path", "MODEL"], "is not a directory"),
])
def test_usage_errors_are_one_line(run_cli, hostile, args, message):
    refused(run_cli(*[hostile["model"] if arg == "MODEL" else arg for arg in args]), message)


def test_a_line_break_in_a_file_name_stays_on_one_line(run_cli, tmp_path):
    path = tmp_path / "two\nlines.pt"
    path.write_bytes(b"not a model")
    refused(run_cli("estimate", path), "two\\nlines.pt")


def test_an_unreadable_model_file(run_cli, tmp_path):
    path = unreadable_file(tmp_path)
    refused(run_cli("estimate", path, "-n", "10"), "cannot read model file")


@pytest.mark.parametrize("content, message", [
    (b"", "an empty file"),
    (b"PK\x03\x04 truncated", "not a readable genentropy checkpoint"),
    (bytes(range(256)) * 3, "not a readable genentropy checkpoint"),
])
def test_an_empty_or_short_checkpoint(run_cli, hostile, tmp_path, content, message):
    checkpoint = tmp_path / "c.ckpt"
    checkpoint.write_bytes(content)
    refused(run_cli("estimate", hostile["model"], "-n", "10", "--checkpoint", checkpoint), message,
            "delete it to start over")


def test_an_empty_model_file(run_cli, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    refused(run_cli("estimate", tmp_path / "empty.pt", "-n", "10"), "not a model genentropy can load")


def test_deeply_nested_embedded_spec(run_cli, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "deep.safetensors"
    save_file(build_from_spec(SPEC).state_dict(), str(path), metadata={"genentropy_spec": "[" * 100_000 + "]" * 100_000})
    refused(run_cli("estimate", path, "-n", "10"), "unreadable embedded spec")


# --------------------------------------------------------------------------- loose parsing


@pytest.mark.parametrize("shape", ["3,,2", "2_0", "3.0", "1e3", "-3", "3,", " ", "３", "3;2", "99999999999999"])
def test_latent_shapes_are_read_strictly(run_cli, hostile, shape):
    refused(run_cli("estimate", hostile["model"], "--latent-shape", shape), "--latent-shape")


# --------------------------------------------------------------------------- hangs


@pytest.mark.parametrize("role", ["model", "checkpoint", "spec", "config", "output"])
def test_a_fifo_is_refused_without_waiting(hostile, tmp_path, role):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    args = {"model": [fifo], "checkpoint": [hostile["model"], "--checkpoint", fifo],
            "spec": [hostile["weights"], "--spec", fifo], "config": [hostile["model"], "--config", fifo],
            "output": [hostile["model"], "-o", fifo]}[role]
    result = limited_run("estimate", *args, "-n", "10", timeout=60)
    assert result.returncode == 2 and "not a regular file" in one_line(result.stderr)


# --------------------------------------------------------------------------- display


def _numbers_in_table(document: dict) -> list[str]:
    return [format_number(item["entropy"], entropy_digits(item["stderr"])) for item in document["estimates"]]


@pytest.mark.parametrize("columns", ["40", "24"])
def test_a_narrow_terminal_never_cuts_a_number(run_cli, hostile, monkeypatch, columns):
    document = run_cli("estimate", hostile["model"], "-n", "300", "-s", "0.1", "-s", "1e-4", "--json", "--quiet").json()
    monkeypatch.setenv("COLUMNS", columns)
    table = run_cli("estimate", hostile["model"], "-n", "300", "-s", "0.1", "-s", "1e-4", "--quiet")
    assert table.exit_code == 0 and "…" not in table.stdout
    words = table.stdout.split()
    for number in _numbers_in_table(document):
        assert number in words, (number, table.stdout)


def test_an_80_column_six_scale_sweep_shows_every_scale(run_cli, hostile, monkeypatch):
    scales = "1,1e-1,1e-2,1e-3,1e-4,1e-5"
    document = run_cli("sweep-scale", hostile["model"], "-n", "300", "--scales", scales, "--json", "--quiet").json()
    monkeypatch.setenv("COLUMNS", "80")
    table = run_cli("sweep-scale", hostile["model"], "-n", "300", "--scales", scales, "--quiet")
    assert "…" not in table.stdout and max(len(line) for line in table.stdout.splitlines()) <= 80
    for number in _numbers_in_table(document):
        assert number in table.stdout.split(), number


SIGINT_WHEN_IMPORTED = """
import os, signal, sys

class _SigintOnImport:
    fired = False

    def find_spec(self, name, path=None, target=None):
        if name == {module!r} and not _SigintOnImport.fired:
            _SigintOnImport.fired = True
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, _SigintOnImport())
"""


@pytest.mark.parametrize("module", ["torch", "numpy", "torch.nn", "safetensors"])
def test_ctrl_c_while_a_library_loads_ends_at_once(hostile, tmp_path, module):
    """A Ctrl-C that lands while ``module`` starts to load (sent by an import hook at that moment,
    so the test does not hang on timing): "interrupted", status 130, no traceback, no result.
    torch swallows a KeyboardInterrupt raised inside its import of numpy; before the CLI's own
    handler, that run went on with a half-imported numpy and failed later ("module 'numpy' has
    no attribute 'nonzero'", exit 1) or ignored the Ctrl-C and printed a result."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SIGINT_WHEN_IMPORTED.format(module=module))
    completed = subprocess.run([sys.executable, "-m", "genentropy_cli", "estimate", str(hostile["model"]), "-n", "20"],
                               capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), str(ROOT)])))
    assert completed.returncode == 130, completed.stderr
    assert completed.stdout == "" and completed.stderr.strip() == "interrupted"


@pytest.mark.parametrize("command", ["", "estimate", "sweep-scale", "compare", "samples", "inspect", "convert"])
def test_help_shows_no_python_type_metavars(run_cli, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "200")
    result = run_cli(*([command] if command else []), "--help")
    assert result.exit_code == 0
    for metavar in ("<bool>", "<list[", "<str>", "<int>", "<float>"):
        assert metavar not in result.stdout, metavar


def test_the_precision_warning_goes_through_the_cli(run_cli, tmp_path):
    from longrun_support import linear_decoder
    from test_precision import ILL_CONDITIONED

    model = save_torchscript(linear_decoder(ILL_CONDITIONED), tmp_path / "ill.pt", latent=make_latent_spec(3))
    result = run_cli("sweep-scale", model, "-n", "2000", "--scales", "1e-1,1e-4", "-q")
    assert result.exit_code == 0
    assert one_line(result.stderr).startswith("warning: --dtype float32 moves the estimate")


# --------------------------------------------------------------------------- misleading errors


def test_a_dtype_failure_is_not_called_a_latent_size_mismatch(run_cli, hostile):
    result = run_cli("estimate", hostile["float32_only"], "-n", "10", "--dtype", "float64")
    refused(result, "fails in float64", "runs in float32: pass --dtype float32")
    assert "does not fit" not in result.stderr


def test_a_float32_only_decoder_skips_the_probe_with_its_reason(run_cli, hostile):
    result = run_cli("estimate", hostile["float32_only"], "-n", "200", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "float64" in result.json()["precision_probe"]["skipped"]


def test_a_latent_size_mismatch_is_still_named(run_cli, hostile):
    """The error names the size that does not fit; the warning before it, what the file records."""
    result = run_cli("estimate", hostile["model"], "--latent-dim", "5", "-n", "10")
    warning, error = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert warning == "warning: --latent-dim 5: the file records 3; using the flag's value"
    assert error.startswith("error: latent size 5 does not fit")


def test_a_pickled_class_from_main_says_how_to_map_it(run_cli, tmp_path, monkeypatch):
    main = sys.modules["__main__"]

    class HostileScriptNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 6)

    HostileScriptNet.__module__, HostileScriptNet.__qualname__ = "__main__", "HostileScriptNet"
    monkeypatch.setattr(main, "HostileScriptNet", HostileScriptNet, raising=False)
    path = tmp_path / "script.pth"
    torch.save(HostileScriptNet(), path)
    monkeypatch.delattr(main, "HostileScriptNet")
    for flags in ([], ["--trust-pickle"]):
        result = run_cli("estimate", path, *flags)
        refused(result, "__main__.HostileScriptNet", "--code-path DIR", "--class-map __main__.HostileScriptNet=mymodels:HostileScriptNet")
