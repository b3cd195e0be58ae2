"""Start-up (issue 18): the package, the command line's app, its help and ``--version`` load no
torch (nor numpy or safetensors), so they take a fraction of ``import torch``; the public API
still resolves every name; the constants help texts read agree with the registries they
describe; the first-batch trace that benchmarks/startup.py reads.

The no-torch checks are structural (which modules a fresh process holds), not timed: the
times are benchmarks/startup.py's."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import genentropy_cli
from genentropy_cli.core.latents import LATENT_DISTRIBUTIONS
from genentropy_cli.defaults import LATENT_DISTRIBUTION_HELP, PER_SAMPLE_FORMATS, RUN_OPTION_DEFAULTS
from genentropy_cli.errors import caused_by_interrupt
from genentropy_cli.run import per_sample
from genentropy_cli.run.options import EstimateOptions, option_defaults

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "safetensors")
"""Modules help and --version must not import (torch alone takes seconds)."""

CHILD = r"""
import contextlib, io, json, sys

HEAVY = {heavy!r}
loaded = {{}}
import genentropy_cli
genentropy_cli.__version__
loaded["import genentropy_cli"] = [name for name in HEAVY if name in sys.modules]
from genentropy_cli.cli.app import app
import typer
commands = sorted(typer.main.get_command(app).commands)
loaded["the app"] = [name for name in HEAVY if name in sys.modules]
from genentropy_cli.__main__ import main
for arguments in [["--help"], ["--version"], *[[name, "--help"] for name in commands]]:
    sys.argv = ["genentropy", *arguments]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main()
        except SystemExit as stop:
            assert stop.code in (0, None), (arguments, stop.code)
    assert out.getvalue().strip(), arguments
    loaded["genentropy " + " ".join(arguments)] = [name for name in HEAVY if name in sys.modules]
print(json.dumps({{"commands": commands, "loaded": loaded}}))
"""


def run_child(code: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **environment})


def test_help_version_and_the_package_load_no_torch():
    finished = run_child(CHILD.format(heavy=HEAVY))
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    assert {"estimate", "sweep-scale", "compare", "track", "samples", "inspect", "convert"} <= set(report["commands"])
    assert len(report["loaded"]) == 4 + len(report["commands"])  # package, app, --help, --version, each command
    heavy = {step: modules for step, modules in report["loaded"].items() if modules}
    assert not heavy, f"imported at start-up: {heavy}"


def test_a_public_name_loads_its_module_on_first_use():
    code = ("import sys, genentropy_cli; before = 'torch' in sys.modules; "
            "from genentropy_cli import estimate_entropy; "
            "print(before, 'torch' in sys.modules, estimate_entropy.__module__, sys.excepthook is sys.__excepthook__)")
    finished = run_child(code)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["False", "True", "genentropy_cli.jobs.estimate", "True"]


def test_every_public_name_resolves_to_its_module():
    assert genentropy_cli.__all__[0] == "__version__" and len(set(genentropy_cli.__all__)) == len(genentropy_cli.__all__)
    for name in genentropy_cli.__all__[1:]:
        if name == "EntropyCallback":  # imports Lightning (seconds); tests/test_training_metric.py uses it
            continue
        value = getattr(genentropy_cli, name)
        module = importlib.import_module(f"genentropy_cli.{genentropy_cli._PUBLIC[name]}")
        assert getattr(module, name) is value, name
    assert set(genentropy_cli.__all__) <= set(dir(genentropy_cli))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        genentropy_cli.nothing_here  # noqa: B018


def test_help_constants_agree_with_the_registries():
    """Help texts read ``defaults``; the registries they describe must say the same."""
    assert {kind.usage: kind.summary for kind in LATENT_DISTRIBUTIONS.values()} == LATENT_DISTRIBUTION_HELP
    assert tuple(per_sample.FORMATS) == PER_SAMPLE_FORMATS
    assert dict(option_defaults()) == RUN_OPTION_DEFAULTS
    assert list(option_defaults()) == list(RUN_OPTION_DEFAULTS)  # one entry per field, in field order
    assert EstimateOptions().num_samples == RUN_OPTION_DEFAULTS["num_samples"]


def test_an_interrupt_wrapped_by_an_import_is_recognised():
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise ImportError("partially initialised module") from interrupt
    except ImportError as error:
        wrapped = error
    assert caused_by_interrupt(wrapped) and caused_by_interrupt(KeyboardInterrupt())
    assert not caused_by_interrupt(ImportError("plain")) and not caused_by_interrupt(None)


def test_a_command_interrupted_while_it_imports_says_interrupted(run_cli, monkeypatch):
    """A Ctrl-C while a command body imports torch (now inside the command) may arrive wrapped
    in the import's own error: still "interrupted", exit 130, no traceback."""
    import genentropy_cli.jobs.estimate as estimate_module

    def interrupted_import(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise ImportError("cannot import name (most likely due to a circular import)") from interrupt

    monkeypatch.setattr(estimate_module, "estimate_entropy", interrupted_import)
    result = run_cli("estimate", str(ROOT / "sample_models" / "mlp_small.safetensors"), "-n", "8", "--quiet")
    assert result.exit_code == 130, (result.stdout, result.stderr)
    assert result.stderr.strip() == "interrupted" and result.stdout == ""


@pytest.mark.parametrize("value, traced", [("1", True), ("", False), ("0", False)])
def test_the_first_batch_trace(value, traced):
    """``GENENTROPY_TRACE_STARTUP=1``: one stderr line as the first batch starts, with its unix
    time (benchmarks/startup.py reads it); unset, empty or 0: nothing."""
    code = ("import time; from genentropy_cli import estimate_entropy, make_latent_spec; import torch; "
            "before = time.time(); "
            "estimate_entropy(torch.nn.Linear(2, 3).double(), make_latent_spec(2), n_samples=16, batch_size=4, "
            "dtype='float64', log=lambda message: None); "
            "print(before, time.time())")
    finished = run_child(code, GENENTROPY_TRACE_STARTUP=value)
    assert finished.returncode == 0, finished.stderr
    lines = [line for line in finished.stderr.splitlines() if line.startswith("genentropy: first batch")]
    assert len(lines) == (1 if traced else 0), finished.stderr  # once, though the run has 4 batches
    if traced:
        before, after = map(float, finished.stdout.split())
        stamp = float(lines[0].split("unix time ")[1].split(",")[0])
        assert before <= stamp <= after
        if sys.platform.startswith("linux"):
            assert "s after the process started" in lines[0]


NO_DYNAMO_CHILD = r"""
import contextlib, io, json, sys
from genentropy_cli.__main__ import main
report = []
for arguments in {runs!r}:
    sys.argv = ["genentropy", "estimate", *arguments, "-n", "8", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code
    report.append([arguments[0], code, [name for name in ("torch._dynamo", "sympy") if name in sys.modules]])
print(json.dumps(report))
"""

MODEL_OPTIONS = {"mlp_small_pickled.pth": ["--trust-pickle"],
                 "tiny_decoder.safetensors": ["--code-path", "sample_models/user_code"],
                 "cvae.safetensors": ["--classes", "0"]}  # one class of ten: the same code path, 1/10 the time


def _bundled_model_runs(every_file: bool) -> list[list[str]]:
    """``estimate`` arguments for the bundled models; without ``every_file``, one file per loader
    and architecture (the Table 3 VAEs ``vae-le-*`` are ``vae.safetensors``'s architecture and
    loader). The .pt2 file last: torch's own loader of that format (``torch._export.serde``)
    imports torch._dynamo."""
    files = sorted(path.name for path in (ROOT / "sample_models").iterdir()
                   if path.suffix in {".pt", ".pt2", ".pth", ".safetensors"})
    if not every_file:
        files = [name for name in files if not name.startswith("vae-le-")]
    files.sort(key=lambda name: name.endswith(".pt2"))
    return [[f"sample_models/{name}", *MODEL_OPTIONS.get(name, [])] for name in files]


def _check_no_dynamo(runs: list[list[str]]) -> None:
    finished = run_child(NO_DYNAMO_CHILD.format(runs=runs))
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    assert [model for model, _, _ in report] == [arguments[0] for arguments in runs]
    assert all(code == 0 for _, code, _ in report), report
    importing = [(model, heavy) for model, _, heavy in report if heavy and not model.endswith(".pt2")]
    assert not importing, f"imported: {importing[:1]}"


def test_no_bundled_model_imports_torch_dynamo():
    """``torch._dynamo`` (forward-mode AD of ``a * b``) and sympy (``torch.broadcast_shapes``, and
    torch._dynamo) cost seconds of start-up on 2 cores; an estimate on each bundled model
    (architecture and loader) runs without them, in one process, model after model: the first to
    import one is named."""
    runs = _bundled_model_runs(every_file=False)
    assert len(runs) >= 12
    _check_no_dynamo(runs)


@pytest.mark.slow
def test_no_bundled_file_imports_torch_dynamo():
    """The same over every file of sample_models/ (the 19 Table 3 VAEs too)."""
    _check_no_dynamo(_bundled_model_runs(every_file=True))
