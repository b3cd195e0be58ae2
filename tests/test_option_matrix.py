"""The option matrix of the CLI: every command that loads a model takes every model option,
every command that runs the batch loop every run option, every command the output options,
and an option means the same (help text, default) wherever it appears. Then the behaviours
that hang on it: --debug after the command, --output beside --json, strict JSON, compare with
a spec and user code."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

from genentropy_cli.cli import app
from genentropy_cli.cli.options import RunFlags
from genentropy_cli.cli.output import Sink
from genentropy_cli.defaults import SAMPLES_DEFAULT_NUM_SAMPLES
from genentropy_cli.errors import InputError
from genentropy_cli.run.options import OPTION_NAMES, option_defaults

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
TINY = SAMPLES / "tiny_decoder.safetensors"
USER_CODE = SAMPLES / "user_code"

MODEL_OPTIONS = ("--spec", "--code-path", "--trust-pickle", "--select", "--class-map", "--output-range",
                 "--output-select", "--latent-dim", "--latent-shape", "--latent-distribution", "--num-classes",
                 "--label-format", "--label-arg", "--class-weights", "--classes", "--config")
RUN_OPTIONS = ("--num-samples", "-n", "--batch-size", "--tangent-chunk", "--max-memory", "--device", "--dtype",
               "--seed", "--skip-nonfinite", "--target-stderr", "--min-samples", "--checkpoint", "--checkpoint-every",
               "--per-sample", "--save-latents", "--probe-samples")
OUTPUT_OPTIONS = ("--json", "--output", "-o", "--quiet", "-q", "--debug")
MODEL_COMMANDS = ("estimate", "sweep-scale", "compare", "track", "samples", "inspect", "convert")
LOOP_COMMANDS = ("estimate", "sweep-scale", "compare", "track", "samples")
SCALE_FLAGS = {"estimate": "--scale", "compare": "--scale", "track": "--scale", "sweep-scale": "--scales",
               "samples": "--scale"}
PER_COMMAND = {"--scale"}
"""Flags whose meaning is each command's own: ``--scale`` is repeatable for estimate and
compare, one scale of the terms for samples, the scale of the rank for inspect."""
OWN_DEFAULTS = {("samples", "--num-samples"): SAMPLES_DEFAULT_NUM_SAMPLES}
"""Deliberately different defaults: samples scans for extremes, it does not estimate."""


def commands() -> dict:
    return typer.main.get_command(app).commands


def options_of(command) -> dict:
    """Every flag (long and short) of a click command -> its parameter."""
    return {name: param for param in command.params if param.param_type_name == "option" for name in param.opts}


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_every_model_loading_command_has_every_model_option(name):
    missing = [flag for flag in MODEL_OPTIONS if flag not in options_of(commands()[name])]
    assert not missing, f"{name} lacks {missing}"


@pytest.mark.parametrize("name", LOOP_COMMANDS)
def test_every_loop_command_has_every_run_option_and_its_scale_flag(name):
    flags = options_of(commands()[name])
    missing = [flag for flag in RUN_OPTIONS if flag not in flags]
    assert not missing, f"{name} lacks {missing}"
    scale = flags[SCALE_FLAGS[name]]
    assert scale.multiple == (name in ("estimate", "compare", "track")) and ("-s" in scale.opts) == (name != "sweep-scale")


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_every_command_has_the_output_options(name):
    missing = [flag for flag in OUTPUT_OPTIONS if flag not in options_of(commands()[name])]
    assert not missing, f"{name} lacks {missing}"


def test_the_run_options_are_every_setting_of_the_loop_and_default_as_the_api_does():
    assert {item.name for item in dataclasses.fields(RunFlags)} == set(OPTION_NAMES) - {
        "scales", "distributed", "handle_signals"}
    defaults = option_defaults()
    for name in LOOP_COMMANDS:
        for param in commands()[name].params:
            if param.name in defaults and param.name != "scales":
                expected = OWN_DEFAULTS.get((name, param.opts[0]), defaults[param.name])
                assert param.default == expected, (name, param.name, param.default)


def test_an_option_has_the_same_help_and_default_in_every_command():
    meanings: dict[str, dict[str, tuple]] = {}
    defaults: dict[str, dict[str, object]] = {}
    for name, command in commands().items():
        for param in command.params:
            long_names = [flag for flag in param.opts if flag.startswith("--")]
            if param.param_type_name != "option" or not long_names or long_names[0] in PER_COMMAND:
                continue
            flag = long_names[0]
            meanings.setdefault(flag, {})[name] = (tuple(param.opts), param.help, param.multiple, param.is_flag)
            if (name, flag) in OWN_DEFAULTS:
                assert param.default == OWN_DEFAULTS[name, flag]
            else:
                defaults.setdefault(flag, {})[name] = param.default
    for flag, by_command in meanings.items():
        assert len(set(by_command.values())) == 1, (flag, by_command)
        assert all(item[1] for item in by_command.values()), f"{flag} has no help text"
    for flag, by_command in defaults.items():
        assert len({repr(value) for value in by_command.values()}) == 1, (flag, by_command)


def test_shell_completion_is_on_and_the_old_grid_flag_is_hidden():
    group = typer.main.get_command(app)
    assert "--install-completion" in options_of(group) and "--debug" in options_of(group)
    samples = options_of(commands()["samples"])
    assert samples["--out"].hidden and not samples["--grid"].hidden


def test_debug_after_the_command_shows_the_error_itself(run_cli, tmp_path):
    missing = tmp_path / "absent.pt"
    for arguments in (("estimate", missing, "--debug"), ("--debug", "estimate", missing),
                      ("compare", missing, missing, "--debug")):
        result = run_cli(*arguments)
        assert isinstance(result.exception, InputError), (arguments, result.exception)
    plain = run_cli("estimate", missing)
    assert plain.exit_code == 2 and plain.exception is not None and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("error:") and len(plain.stderr.strip().splitlines()) == 1


def test_debug_after_the_command_prints_the_traceback():
    completed = subprocess.run([sys.executable, "-m", "genentropy_cli", "inspect", "absent.pt", "--debug"],
                               capture_output=True, text=True, cwd=ROOT)
    assert completed.returncode != 0 and "Traceback" in completed.stderr and "InputError" in completed.stderr


@pytest.fixture
def tiny_pair(tmp_path) -> list[Path]:
    """Two copies of the user-code sample model (needs --code-path): identical decoders."""
    copy = tmp_path / "tiny_copy.safetensors"
    shutil.copyfile(TINY, copy)
    return [TINY, copy]


def test_compare_takes_spec_and_code_path_and_writes_strict_json(run_cli, tiny_pair, tmp_path, monkeypatch):
    from tests.test_cli import assert_one_line_error

    monkeypatch.delitem(sys.modules, "tiny_decoder", raising=False)  # imported by an earlier test: not cached
    spec = ("--spec", SAMPLES / "tiny_decoder.yaml")
    assert_one_line_error(run_cli("compare", *tiny_pair, *spec, "-n", "50"), "--code-path")
    output = tmp_path / "compare.json"
    result = run_cli("compare", *tiny_pair, "--code-path", USER_CODE, *spec, "-n", "200", "--device", "cpu",
                     "--json", "-o", output, "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    document = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))
    assert json.loads(output.read_text()) == document
    assert [model["spec_source"] for model in document["models"]] == [str(SAMPLES / "tiny_decoder.yaml")] * 2
    pair = document["pairs"][0]  # identical decoders: difference 0 with zero error, z undefined
    assert pair["difference"] == 0 and pair["z"] is None and "NaN" not in result.stdout


def test_compare_reads_the_model_options_from_a_config(run_cli, tiny_pair, tmp_path):
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump({"models": [str(path) for path in tiny_pair], "code-path": [str(USER_CODE)], "spec": str(SAMPLES / "tiny_decoder.yaml"),
                                      "num-samples": 100, "latent-distribution": "uniform", "json": True,
                                      "quiet": True}))
    result = run_cli("compare", "--config", config)
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert {model["latent_distribution"] for model in document["models"]} == {"uniform"}
    assert document["configuration"]["sources"]["code-path"] == "config"


def test_samples_output_file_equals_its_json_and_needs_no_grid(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    model = SAMPLES / "mlp_small.pt"
    output = tmp_path / "samples.json"
    result = run_cli("samples", model, "-n", "200", "--lowest", "2", "--highest", "2", "--json", "--output", output)
    assert result.exit_code == 0, result.stderr
    assert json.loads(output.read_text()) == result.json() and result.json()["command"] == "samples"
    table_only = run_cli("samples", model, "-n", "200", "--lowest", "2", "--highest", "1", "-o", output, "-q")
    assert table_only.exit_code == 0, table_only.stderr
    assert "lowest" in table_only.stdout and len(json.loads(output.read_text())["highest"]) == 1


def test_samples_old_out_flag_still_writes_the_grid_with_a_warning(run_cli, tmp_path):
    grid = tmp_path / "old.png"
    result = run_cli("samples", SAMPLES / "vae.safetensors", "-n", "20", "--lowest", "1", "--highest", "1",
                     "--out", grid, "--json")
    assert result.exit_code == 0, result.stderr
    assert grid.is_file() and result.json()["grid"] == str(grid)
    assert "--out is deprecated" in result.stderr


def test_inspect_output_file(run_cli, tmp_path):
    output = tmp_path / "inspect.json"
    result = run_cli("inspect", SAMPLES / "mlp_small.pt", "--json", "-o", output, "-q")
    assert result.exit_code == 0, result.stderr
    assert json.loads(output.read_text()) == result.json() and result.json()["command"] == "inspect"


def test_the_sink_writes_strict_json_and_only_on_rank_zero(capsys, tmp_path, monkeypatch):
    document = {"command": "test", "value": float("nan"), "nested": [float("inf"), 1.0]}
    output = tmp_path / "strict.json"
    Sink(json_output=True, output=str(output)).emit(document, lambda: pytest.fail("no table with --json"))
    printed = capsys.readouterr()
    assert json.loads(printed.out) == {"command": "test", "value": None, "nested": [None, 1.0]}
    assert "NaN" not in printed.out and "Infinity" not in printed.out and printed.err == ""
    assert json.loads(output.read_text()) == json.loads(printed.out)
    monkeypatch.setenv("RANK", "1")
    quiet_rank = Sink(json_output=True, output=str(tmp_path / "rank1.json"))
    quiet_rank.emit(document, lambda: None)
    quiet_rank.warn("not from rank 1")
    assert capsys.readouterr() == ("", "") and not (tmp_path / "rank1.json").exists()
