"""Hostile input, round 3 (issue 23, part B): the guarantees every command gives, ``track`` and
conditional runs included.

    streaming track    one checkpoint in memory at a time, results as the all-at-once run gave
    outputs first      every output checked before any work (--plot too), none lost after it
    signals            Ctrl-C / SIGTERM from the first sample on: partial result, status 130;
                       no traceback at any moment of start-up
    messages           label mistakes named as label mistakes; one line, exit 2, what to do

Each CLI case asserts its exit status, its stderr (one line where it is a refusal), no traceback
and nothing lost (the result on stdout, an input left as it was). Signals are sent by the
program itself on an event it reaches (``interrupt_harness``: after a batch, while the decoder
is prepared, while a model file opens; an import hook): no fixed sleeps. The adversarial cases
at the end are this round's own (docs/safety.md, "Guarantees every command gives").
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from test_cli import assert_one_line_error
from test_hostile_input import unwritable_folder

from genentropy_cli import estimate_entropy
from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.core.references import ConditionalLinearDecoder
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.track import Checkpoint, track_stream
from genentropy_cli.models.loading import save_torchscript
from genentropy_cli.models.specs import build_from_spec, save_safetensors
from genentropy_cli.run.options import EstimateOptions

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "interrupt_harness.py"
SPEC = {"architecture": "mlp", "kwargs": {"latent_dim": 3, "output_dim": 6, "hidden": [4]}, "latent": {"shape": [3]}}
SPECTRA = [[1.0, 0.5, 0.25], [2.0, 2.0, 0.1], [3.0, 1.0, 1.0]]
FAST = ("-n", "120", "--dtype", "float64", "--device", "cpu", "--seed", "3", "-q")
MEMORY_LIMIT = 3 * 1024**3


# --------------------------------------------------------------------------- helpers and files


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_from_spec(SPEC)


def conditional(scale: float = 1.0) -> ConditionalLinearDecoder:
    return ConditionalLinearDecoder.with_singular_values([[scale * value for value in row] for row in SPECTRA], 9)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Plain checkpoints (steps in their names), conditional ones, and decoders whose label is wrong."""
    folder = tmp_path_factory.mktemp("round3")
    paths: dict[str, Path] = {"folder": folder}
    for step in (1, 2, 3):
        paths[f"step{step}"] = save_safetensors(mlp(step), folder / f"gen-step{step}.safetensors", SPEC)
    for step, scale in ((1, 1.0), (2, 1.5)):
        paths[f"cond{step}"] = save_torchscript(conditional(scale), folder / f"cgen-step{step}.pt",
                                                latent=make_latent_spec(3), label=LabelSpec(3))
    paths["onehot_as_index"] = save_torchscript(OneHotDecoder(), folder / "onehot.pt", latent=make_latent_spec(3),
                                                label=LabelSpec(3))
    paths["three_rows_five_classes"] = save_torchscript(EmbeddingDecoder(), folder / "embedding.pt",
                                                        latent=make_latent_spec(3), label=LabelSpec(5))
    paths["nan_class"] = save_torchscript(NanForClassOne(), folder / "nan_class.pt", latent=make_latent_spec(3),
                                          label=LabelSpec(3))
    return paths


class OneHotDecoder(torch.nn.Module):
    """Takes one-hot labels (B, 3): index labels (B,) do not fit its concatenation."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.fc = torch.nn.Linear(6, 7)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(torch.cat([z, c], 1)))


class EmbeddingDecoder(torch.nn.Module):
    """Embeds 3 classes: classes 3 and 4 of a 5-class label are out of its range."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(8)
        self.embedding = torch.nn.Embedding(3, 3)
        self.fc = torch.nn.Linear(3, 7)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(z + self.embedding(y).to(z.dtype)))


class NanForClassOne(torch.nn.Module):
    """Finite for classes 0 and 2, NaN for every sample of class 1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.fc = torch.nn.Linear(3, 7)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.fc(z)
        return torch.where((y == 1).unsqueeze(1), out * float("nan"), out)


class UnlabelledConditional(torch.nn.Module):
    """forward(z, y) that records its class count but declares no label anywhere."""

    def __init__(self):
        super().__init__()
        self.num_classes = 10
        self.fc = torch.nn.Linear(13, 7)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([z, torch.nn.functional.one_hot(y, 10).to(z.dtype)], 1))


class MetaBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 6)
        self.register_buffer("gain", torch.ones(6, device="meta"), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z) * self.gain


def harness(signal_name: str, when: str, *arguments, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a subprocess under RLIMIT_AS that signals itself at ``when`` (interrupt_harness)."""
    return subprocess.run([sys.executable, str(HARNESS), signal_name, when, "--", *map(str, arguments)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="120", NO_COLOR="1"),
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT)))


def strict_json(text: str) -> dict:
    def refuse(name):
        raise ValueError(f"non-strict JSON literal {name}")

    return json.loads(text, parse_constant=refuse)


def partial_result(completed: subprocess.CompletedProcess) -> dict:
    """Status 130, no traceback, and a strict JSON result marked partial on stdout."""
    assert completed.returncode == 130, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    document = strict_json(completed.stdout)
    assert document["partial"] is True and document["stop_reason"] == "interrupted"
    return document


# --------------------------------------------------------------------------- streaming track


def test_at_most_one_checkpoint_is_alive_at_a_time():
    """Every opened decoder is watched by a weak reference: when the next one is opened, the
    previous one must be gone (40 checkpoints, the old track held all 40)."""
    alive: list[weakref.ref] = []
    most = [0]

    def open_checkpoint(index: int) -> Checkpoint:
        gc.collect()
        alive[:] = [ref for ref in alive if ref() is not None]
        most[0] = max(most[0], len(alive))
        decoder = mlp(index)
        alive.append(weakref.ref(decoder))
        return Checkpoint(decoder, 3)

    result = track_stream(open_checkpoint, 40, list(range(40)), [f"c{index}" for index in range(40)],
                          options=EstimateOptions(scales=[1e-2], num_samples=20, dtype="float64", device="cpu",
                                                  probe_samples=0))
    assert len(result.comparison.models) == 40 and len(result.changes()) == 39
    assert most[0] == 0, f"{most[0]} earlier checkpoint(s) still alive when the next one opened"


def test_the_cli_opens_each_checkpoint_once_and_lets_it_go(run_cli, files, monkeypatch):
    import genentropy_cli.cli.track as track_module

    opened, alive = [], []
    real = track_module.open_model

    def watched(source, path, warn, note=None):
        gc.collect()
        alive.append(sum(ref() is not None for ref in opened))
        item = real(source, path, warn, note)
        opened.append(weakref.ref(item.decoder))
        return item

    monkeypatch.setattr(track_module, "open_model", watched)
    result = run_cli("track", files["step3"], files["step1"], files["step2"], *FAST, "--json")
    assert result.exit_code == 0, result.stderr
    assert [item["step"] for item in result.json()["checkpoints"]] == [1, 2, 3]
    assert len(opened) == 3 and alive == [0, 0, 0]


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_checkpoints(tmp_path):
    """Peak resident memory of track over 300 tiny checkpoints against 30: the same within 40 MB
    (the old track grew by about 0.4 MB per checkpoint, 110 MB more here), under RLIMIT_AS."""
    many = tmp_path / "many"
    many.mkdir()
    for step in range(300):
        save_safetensors(mlp(step), many / f"gen-step{step}.safetensors", SPEC)
    few = tmp_path / "few"
    few.mkdir()
    for step in range(30):
        (few / f"gen-step{step}.safetensors").symlink_to(many / f"gen-step{step}.safetensors")
    script = ("import atexit, resource, runpy, sys; atexit.register(lambda: sys.stderr.write("
              "'PEAK %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); sys.argv = sys.argv[1:]; "
              "runpy.run_module('genentropy_cli', run_name='__main__')")
    peaks = {}
    for name, folder in (("few", few), ("many", many)):
        completed = subprocess.run(
            [sys.executable, "-c", script, "genentropy", "track", f"{folder}/*.safetensors", "-n", "20",
             "--probe-samples", "0", "--dtype", "float64", "--json", "-q"], capture_output=True, text=True,
            timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT)))
        assert completed.returncode == 0, completed.stderr[-2000:]
        assert len(strict_json(completed.stdout)["checkpoints"]) == (30 if name == "few" else 300)
        peaks[name] = int(completed.stderr.split("PEAK")[-1].split()[0])  # KiB
    assert peaks["many"] - peaks["few"] < 40 * 1024, peaks


def test_track_honours_a_conditional_checkpoints_label(run_cli, files):
    result = run_cli("track", files["cond2"], files["cond1"], *FAST, "--json")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    first, second = document["checkpoints"]
    assert first["label"]["num_classes"] == 3 and [item["label"] for item in first["classes"]] == [0, 1, 2]
    for checkpoint, path in ((first, files["cond1"]), (second, files["cond2"])):
        alone = run_cli("estimate", path, *FAST, "--json").json()
        assert checkpoint["estimates"][0]["entropy"] == pytest.approx(
            alone["conditional_entropy"][0]["entropy"], rel=1e-12)  # H(X|Y), not one class
        assert [item["estimates"][0]["entropy"] for item in checkpoint["classes"]] == pytest.approx(
            [item["estimates"][0]["entropy"] for item in alone["classes"]], rel=1e-12)
    change = document["changes"][0]
    # the classes' singular values scale by 1.5: every h_y moves by 3 log 1.5 (s small), exactly per sample
    assert change["difference"] == pytest.approx(second["estimates"][0]["entropy"] - first["estimates"][0]["entropy"],
                                                 abs=1e-10)
    assert change["paired_stderr"] < 1e-3 * change["unpaired_stderr"]


def test_track_resumes_at_the_first_checkpoint_not_finished(files, tmp_path):
    saved = tmp_path / "track.ckpt"
    arguments = ("track", files["step1"], files["step2"], files["step3"], "-n", "3000", "--batch-size", "500",
                 "--dtype", "float64", "--probe-samples", "0", "--checkpoint", saved, "--json")
    stopped = partial_result(harness("SIGINT", "9", *arguments))  # batch 9: the second checkpoint's third
    assert [item["estimates"][0]["num_samples"] for item in stopped["checkpoints"]] == [3000, 1500]
    assert len(stopped["changes"]) == 1
    resumed = subprocess.run([sys.executable, "-m", "genentropy_cli", *map(str, arguments)], capture_output=True,
                             text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    document = strict_json(resumed.stdout)
    assert document["diagnostics"]["resumed_checkpoints"] == 1 and document["diagnostics"]["checkpoints_estimated"] == 2
    fresh = subprocess.run([sys.executable, "-m", "genentropy_cli", *map(str, arguments[:-3]), "--json"],
                           capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                           timeout=300)
    reference = strict_json(fresh.stdout)
    for ours, theirs in zip(document["changes"], reference["changes"]):
        assert ours["difference"] == pytest.approx(theirs["difference"], abs=1e-12)
        assert ours["paired_stderr"] == pytest.approx(theirs["paired_stderr"], rel=1e-10)


def test_track_with_a_target_stderr_gives_each_checkpoint_its_own_estimate(run_cli, files):
    arguments = ("-n", "4000", "--target-stderr", "0.05", "--min-samples", "50", "--dtype", "float64", "-q", "--json")
    document = run_cli("track", files["step1"], files["step2"], *arguments).json()
    used = []
    for checkpoint, path in zip(document["checkpoints"], (files["step1"], files["step2"])):
        alone = run_cli("estimate", path, *arguments).json()["estimates"][0]
        assert checkpoint["estimates"][0]["entropy"] == pytest.approx(alone["entropy"], rel=1e-12)
        assert checkpoint["estimates"][0]["num_samples"] == alone["num_samples"]
        used.append(alone["num_samples"])
    assert document["diagnostics"]["change_samples"] == [min(used)]  # the change pairs the samples both have


def test_track_refuses_a_per_sample_file(run_cli, files, tmp_path):
    assert_one_line_error(run_cli("track", files["step1"], files["step2"], *FAST, "--per-sample", tmp_path / "r.csv"),
                          "estimate --per-sample")


@pytest.mark.parametrize("first, second", [("track", "compare"), ("compare", "track")])
def test_a_track_checkpoint_and_a_compare_checkpoint_do_not_mix(run_cli, files, tmp_path, first, second):
    saved = tmp_path / "run.ckpt"
    assert run_cli(first, files["step1"], files["step2"], *FAST, "--checkpoint", saved).exit_code == 0
    assert_one_line_error(run_cli(second, files["step1"], files["step2"], *FAST, "--checkpoint", saved), str(saved))


# --------------------------------------------------------------------------- outputs checked before work


def test_track_plot_in_an_unwritable_folder_is_refused_before_work(run_cli, files, tmp_path):
    folder = unwritable_folder(tmp_path)
    assert_one_line_error(run_cli("track", files["step1"], files["step2"], *FAST, "--plot", folder / "t.png"),
                          "--plot", "cannot write")


@pytest.mark.parametrize("command", ["track", "sweep-scale"])
def test_plot_equal_to_output_is_refused(run_cli, files, tmp_path, command):
    target = tmp_path / "same.png"
    models = [files["step1"], files["step2"]] if command == "track" else [files["step1"]]
    assert_one_line_error(run_cli(command, *models, *FAST, "-o", target, "--plot", target), "its own file")
    assert not target.exists()


@pytest.mark.parametrize("flag", ["--plot", "-o", "--checkpoint"])
def test_track_outputs_onto_a_checkpoint_are_refused_and_it_is_untouched(run_cli, files, tmp_path, flag):
    victim = tmp_path / "gen-step9.png"
    victim.write_bytes(Path(files["step1"]).read_bytes())  # a checkpoint whose name a plot could take
    before = victim.read_bytes()
    assert_one_line_error(run_cli("track", files["step1"], victim, *FAST, flag, victim), "would destroy it")
    assert victim.read_bytes() == before


def test_track_plot_of_an_unknown_type_is_refused_before_work(run_cli, files, tmp_path):
    assert_one_line_error(run_cli("track", files["step1"], files["step2"], *FAST, "--plot", tmp_path / "t.xyz"),
                          "unknown image type")


def test_a_plot_that_fails_after_the_run_loses_nothing(run_cli, files, tmp_path, monkeypatch):
    import genentropy_cli.cli.track as track_module

    def full_disk(result, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(track_module, "plot_track", full_disk)
    result = run_cli("track", files["step1"], files["step2"], *FAST, "--json", "--plot", tmp_path / "t.png")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "could not write the plot" in result.stderr and len(result.json()["checkpoints"]) == 2


# --------------------------------------------------------------------------- signals from the first sample


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", ["estimate", "compare", "track"])
def test_a_signal_before_the_first_sample_of_a_conditional_run_gives_a_partial_result(files, signal_name, command):
    models = [files["cond1"]] if command == "estimate" else [files["cond1"], files["cond2"]]
    document = partial_result(harness(signal_name, "prepare", command, *models, "-n", "500", "--json"))
    if command == "track":
        assert len(document["checkpoints"]) == 1 and document["changes"] == []


def test_a_signal_before_the_first_sample_of_a_plain_comparison_gives_a_partial_result(files):
    partial_result(harness("SIGTERM", "prepare", "compare", files["step1"], files["step2"], "-n", "500", "--json"))


def test_a_signal_in_the_second_checkpoint_keeps_the_first(files):
    document = partial_result(harness("SIGINT", "6", "track", files["step1"], files["step2"], files["step3"], "-n",
                                      "2000", "--batch-size", "500", "--probe-samples", "0", "--json"))
    assert [item["step"] for item in document["checkpoints"]] == [1, 2]
    assert [item["estimates"][0]["num_samples"] for item in document["checkpoints"]] == [2000, 1000]
    assert len(document["changes"]) == 1


def test_ctrl_c_while_the_command_line_is_built_ends_quietly(files):
    """The window after the imports and before a command runs (Typer building the commands)."""
    script = ("import os, signal, sys, typer.main; real = typer.main.get_command\n"
              "def hooked(*a, **k):\n    os.kill(os.getpid(), signal.SIGINT)\n    return real(*a, **k)\n"
              "typer.main.get_command = hooked\nimport genentropy_cli.__main__ as entry\n"
              f"sys.argv = ['genentropy', 'estimate', {str(files['step1'])!r}, '-n', '20']\nentry.main()\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert completed.returncode == 130 and completed.stderr.strip() == "interrupted", completed.stderr
    assert completed.stdout == ""


# --------------------------------------------------------------------------- messages


def test_labels_in_the_wrong_format_are_named(run_cli, files):
    result = run_cli("estimate", files["onehot_as_index"], "-n", "20")
    assert_one_line_error(result, "fails with index labels", "pass --label-format onehot")
    assert "does not fit" not in result.stderr
    assert run_cli("estimate", files["onehot_as_index"], "-n", "20", "--label-format", "onehot", "-q").exit_code == 0


def test_a_class_the_decoder_fails_for_is_named(run_cli, files):
    result = run_cli("estimate", files["three_rows_five_classes"], "-n", "20")
    assert_one_line_error(result, "fails for class 3", "runs for class 0", "--num-classes (5 given)")
    assert "does not fit" not in result.stderr
    assert run_cli("estimate", files["three_rows_five_classes"], "-n", "20", "--classes", "0,1,2", "-q").exit_code == 0


def test_an_undeclared_label_suggests_the_recorded_class_count():
    with pytest.raises(InputError, match=r"more inputs than the latent .*--num-classes 10") as caught:
        estimate_entropy(UnlabelledConditional(), 3, n_samples=20)
    assert "\n" not in str(caught.value) and "does not fit" not in str(caught.value)


def test_an_undeclared_label_from_a_spec_with_user_code(run_cli, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "unlabelled.py").write_text(
        "import torch\nclass Gen(torch.nn.Module):\n"
        "    def __init__(self, num_classes=4):\n        super().__init__()\n        self.num_classes = num_classes\n"
        "        self.fc = torch.nn.Linear(3 + num_classes, 5)\n"
        "    def forward(self, z, y):\n"
        "        return self.fc(torch.cat([z, torch.nn.functional.one_hot(y, self.num_classes).to(z.dtype)], 1))\n")
    sys.path.insert(0, str(code))
    try:
        import unlabelled

        path = save_safetensors(unlabelled.Gen(num_classes=10), tmp_path / "gen.safetensors",
                                {"import": "unlabelled:Gen", "kwargs": {"num_classes": 10}, "latent": {"shape": [3]}})
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("unlabelled", None)
    result = run_cli("estimate", path, "--code-path", code, "-n", "20")
    assert_one_line_error(result, "--num-classes 10")
    assert "does not fit" not in result.stderr


@pytest.mark.parametrize("flags", [["--classes", "0"], ["--class-weights", "1,2"], ["--classes", "0,1"]])
def test_class_choices_for_an_unconditional_model_say_it_is_unconditional(run_cli, files, flags):
    assert_one_line_error(run_cli("estimate", files["step1"], *flags, "-n", "20"), "is unconditional", flags[0])


def test_a_label_given_to_an_unconditional_decoder_says_it_takes_none(run_cli, files):
    assert_one_line_error(run_cli("estimate", files["step1"], "--num-classes", "3", "-n", "20"),
                          "takes no class label", "unconditional")


def test_skip_nonfinite_with_one_class_all_nan_names_the_class(run_cli, files):
    result = run_cli("estimate", files["nan_class"], "-n", "40", "--skip-nonfinite", "--dtype", "float64")
    assert_one_line_error(result, "y=1", "--classes", exit_code=1)
    assert "y=0" not in result.stderr and "y=2" not in result.stderr
    fine = run_cli("estimate", files["nan_class"], "-n", "40", "--skip-nonfinite", "--classes", "0,2", "-q", "--json")
    assert fine.exit_code == 0 and fine.json()["num_nonfinite"] == 0


def test_skip_nonfinite_in_a_conditional_comparison_names_the_model_and_class(run_cli, files, tmp_path):
    copy = tmp_path / "copy.pt"
    copy.write_bytes(Path(files["nan_class"]).read_bytes())
    result = run_cli("compare", files["nan_class"], copy, "-n", "40", "--skip-nonfinite", "--dtype", "float64")
    assert_one_line_error(result, "nan_class/y=1", "copy/y=1", exit_code=1)


@pytest.mark.parametrize("where", ["buffer", "parameter"])
def test_a_meta_tensor_is_one_line_saying_what_to_do(where):
    module = MetaBuffer()
    if where == "parameter":
        module.fc = torch.nn.Linear(3, 6, device="meta")
        module.gain = torch.ones(6)
    with pytest.raises(InputError, match=r"on the meta device.*load its weights") as caught:
        estimate_entropy(module, 3, n_samples=20)
    assert "\n" not in str(caught.value)


def test_class_weights_near_the_largest_float_normalise(run_cli, files):
    result = run_cli("estimate", files["cond1"], "--class-weights", "1e308,1e308,1e308", "-n", "20", "-q", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["model"]["label"]["probabilities"] == pytest.approx([1 / 3] * 3, rel=1e-15)


# --------------------------------------------------------------------------- adversarial (this round's own)


def test_adv_mixed_conditional_and_plain_checkpoints_are_refused(run_cli, files):
    assert_one_line_error(run_cli("track", files["step1"], files["cond2"], *FAST), "every checkpoint conditional")


def test_adv_one_file_under_two_names_is_refused(run_cli, files, tmp_path):
    link = tmp_path / "gen-step7.safetensors"
    link.symlink_to(files["step1"])
    assert_one_line_error(run_cli("track", files["step1"], link, *FAST), "the same file")


def test_adv_a_glob_that_matches_the_output_file_is_refused(run_cli, files, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for step in (1, 2):
        (folder / f"gen-step{step}.safetensors").write_bytes(Path(files[f"step{step}"]).read_bytes())
    output = folder / "gen-step3.safetensors"  # last run's result, named like a checkpoint
    output.write_text("{}")
    assert_one_line_error(run_cli("track", f"{folder}/gen-step*.safetensors", *FAST, "-o", output),
                          "would destroy it")
    assert output.read_text() == "{}"


def test_adv_a_checkpoint_of_other_files_is_refused(run_cli, files, tmp_path):
    saved = tmp_path / "t.ckpt"
    assert run_cli("track", files["step1"], files["step2"], *FAST, "--checkpoint", saved).exit_code == 0
    assert_one_line_error(run_cli("track", files["step1"], files["step3"], *FAST, "--checkpoint", saved),
                          "other settings")


def test_adv_the_order_given_does_not_matter_to_a_resume(run_cli, files, tmp_path):
    saved = tmp_path / "t.ckpt"
    first = run_cli("track", files["step2"], files["step1"], *FAST, "--json", "--checkpoint", saved)
    again = run_cli("track", files["step1"], files["step2"], *FAST, "--json", "--checkpoint", saved)
    assert again.exit_code == 0 and again.json()["changes"] == first.json()["changes"]
    assert again.json()["diagnostics"]["resumed_checkpoints"] == 2


def test_adv_one_sample_is_refused(run_cli, files):
    assert_one_line_error(run_cli("track", files["step1"], files["step2"], "-n", "1"), "at least 2 samples")


def test_adv_a_fifo_checkpoint_is_refused_without_waiting(files, tmp_path):
    fifo = tmp_path / "gen-step5.pt"
    os.mkfifo(fifo)
    completed = subprocess.run([sys.executable, "-m", "genentropy_cli", "track", str(files["step1"]), str(fifo), "-n",
                                "20"], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert completed.returncode == 2 and "not a regular file" in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1


def test_adv_a_truncated_later_checkpoint_is_one_line(run_cli, files, tmp_path):
    broken = tmp_path / "gen-step9.safetensors"
    broken.write_bytes(Path(files["step2"]).read_bytes()[:100])
    result = run_cli("track", files["step1"], broken, *FAST)
    assert_one_line_error(result, "gen-step9.safetensors")


def test_adv_ctrl_c_while_the_second_checkpoint_opens_keeps_the_first(files):
    document = partial_result(harness("SIGINT", "load:2", "track", files["step1"], files["step2"], "-n", "300",
                                      "--json"))
    assert [item["step"] for item in document["checkpoints"]] == [1] and document["changes"] == []
    assert document["checkpoints"][0]["estimates"][0]["num_samples"] == 300


def test_adv_sigterm_twice_aborts_track_at_once(files):
    completed = harness("SIGTERM*2", "2", "track", files["step1"], files["step2"], "-n", "2000", "--batch-size", "500",
                        "--probe-samples", "0", timeout=150)
    assert completed.returncode == 130 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == "interrupted"


def test_adv_a_conditional_sweep_interrupted_before_its_first_sample(files):
    document = partial_result(harness("SIGINT", "prepare", "sweep-scale", files["cond1"], "--scales", "1e-1,1e-3",
                                      "-n", "300", "--json"))
    assert document["command"] == "sweep-scale"


def test_adv_latent_sizes_that_differ_between_checkpoints_fall_back_to_unpaired(run_cli, tmp_path):
    other = {**SPEC, "kwargs": {**SPEC["kwargs"], "latent_dim": 4}, "latent": {"shape": [4]}}
    torch.manual_seed(3)
    first = save_safetensors(mlp(1), tmp_path / "gen-step1.safetensors", SPEC)
    second = save_safetensors(build_from_spec(other), tmp_path / "gen-step2.safetensors", other)
    result = run_cli("track", first, second, "-n", "200", "--dtype", "float64", "--json")
    assert result.exit_code == 0
    change = result.json()["changes"][0]
    assert change["shared_latents"] is False and change["stderr"] == change["unpaired_stderr"]
    assert "latent specs differ" in result.stderr and "Traceback" not in result.stderr


def test_adv_a_file_name_with_a_line_break_stays_one_line(run_cli, files, tmp_path):
    odd = tmp_path / "gen-step4\nerror: fake.safetensors"
    odd.write_bytes(b"not a model")
    result = run_cli("track", files["step1"], odd, *FAST)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "\\n" in result.stderr


def test_adv_class_weights_that_sum_past_the_largest_float_in_a_track(run_cli, files):
    result = run_cli("track", files["cond1"], files["cond2"], "--class-weights", "1e308,1e308,1", *FAST, "--json")
    assert result.exit_code == 0, result.stderr
    probabilities = result.json()["checkpoints"][0]["label"]["probabilities"]
    assert probabilities == pytest.approx([0.5, 0.5, 0.0], abs=1e-300) and sum(probabilities) == pytest.approx(1.0)


def test_adv_a_partial_track_is_strict_json_with_nan_free_numbers(files):
    """Interrupted before any sample: the one checkpoint's entropy is null (no NaN literal)."""
    document = partial_result(harness("SIGINT", "prepare", "track", files["step1"], files["step2"], "-n", "200",
                                      "--json"))
    assert document["checkpoints"][0]["estimates"][0]["entropy"] is None
