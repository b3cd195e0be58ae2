"""Every command's output at 60, 80, 100 and 200 columns: no number cut ("…") or split across
lines, no line wider than the terminal, ``track`` and the main estimate table one line per row
at 80, help readable at 60 (flag names whole)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from genentropy_cli.cli.reporting import entropy_digits, format_error, format_number, format_std
from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.models.loading import save_torchscript

MODELS = Path(__file__).resolve().parents[1] / "sample_models"
WIDTHS = (60, 80, 100, 200)
SMALL = [str(MODELS / name) for name in ("mlp_small.pt", "mlp_small.pt2", "mlp_small_weights.safetensors")]
SEPARATORS = r"[\s│┃|()\[\]]+"


class TinyConditional(torch.nn.Module):
    """g(z, y) = tanh(W [z; onehot(y)]): three classes, a 3-d latent, 6 outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc = torch.nn.Linear(6, 6)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(torch.cat([z, torch.nn.functional.one_hot(y, 3).to(z.dtype)], 1)))


@pytest.fixture(scope="module")
def conditional(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("conditional")
    return str(save_torchscript(TinyConditional(), folder / "tiny_conditional.pt", latent=make_latent_spec(3),
                                label=LabelSpec(3)))


def commands(conditional: str, folder: Path) -> dict[str, list[str]]:
    return {
        "estimate": ["estimate", str(MODELS / "half_sphere.pt"), "-n", "300", "-s", "1e-1", "-s", "1e-4"],
        "conditional": ["estimate", conditional, "-n", "60", "--probe-samples", "0"],
        "sweep-scale": ["sweep-scale", str(MODELS / "half_sphere.pt"), "-n", "300", "--reference", "half-sphere",
                        "--dtype", "float64"],
        "compare": ["compare", *SMALL, "-n", "40"],
        "samples": ["samples", SMALL[0], "-n", "40", "--lowest", "2", "--highest", "2"],
        "inspect": ["inspect", SMALL[0], "--probe-latents", "2"],
        "convert": ["convert", SMALL[0], str(folder / "converted.safetensors"), "--force"],
        "track": ["track", *SMALL, "--keep-order", "-n", "40"],
    }


def expected_numbers(name: str, document: dict) -> list[str]:
    """Numbers as the command's table formats them (reporting.py, tables.py, track.py)."""
    if name == "estimate":
        return [text for item in document["estimates"] for text in (
            format_number(item["entropy"], entropy_digits(item["stderr"])), format_error(item["stderr"]),
            format_std(item["std"]), str(item["num_samples"]),
            *(format_number(bound, entropy_digits(item["stderr"])) for bound in item["ci95"]))]
    if name == "conditional":
        return [text for item in document["classes"] for estimate in item["estimates"] for text in (
            format_number(estimate["entropy"], entropy_digits(estimate["stderr"])), format_error(estimate["stderr"]),
            format_std(estimate["std"], 2))] + [
            format_number(item["entropy"], entropy_digits(item["stderr"])) for item in document["conditional_entropy"]]
    if name == "sweep-scale":
        return [text for item in document["estimates"] for text in (
            format_number(item["entropy"], entropy_digits(item["stderr"])), format_error(item["stderr"]),
            format_error(item["std"]))]
    if name in ("compare", "track"):
        models = document["models"] if name == "compare" else document["checkpoints"]
        return [text for model in models for estimate in model["estimates"] for text in (
            format_number(estimate["entropy"], entropy_digits(estimate["stderr"], 2)), format_error(estimate["stderr"]))]
    if name == "samples":
        return [format_number(term, 2) for end in ("lowest", "highest") for row in document[end]
                for term in (row["entropy_term"], row["neg_log_density"], row["half_log_det"])]
    if name == "inspect":
        probe = document["jacobian_probe"]
        return [f"{probe['smallest_singular_value']:.3g}", f"{probe['largest_singular_value']:.3g}",
                f"{document['parameters']['count']:,}"]
    return [f"{document['bytes']:,}", str(document["tensors"])]  # convert


@pytest.mark.parametrize("name", ["estimate", "conditional", "sweep-scale", "compare", "samples", "inspect",
                                  "convert", "track"])
def test_no_number_is_cut_or_split_at_any_width(name, run_cli, conditional, tmp_path, monkeypatch):
    arguments = commands(conditional, tmp_path)[name]
    for width in WIDTHS:
        monkeypatch.setenv("COLUMNS", str(width))
        output = tmp_path / f"{name}-{width}.json"
        result = run_cli(*arguments, "-q", "-o", output)
        assert result.exit_code == 0, result.stderr
        text = result.stdout
        document = json.loads(output.read_text())
        assert "…" not in text, (width, text)
        assert max(len(line) for line in text.splitlines()) <= width, (width, text)
        tokens = {token.strip(",;:") for token in re.split(SEPARATORS, text)}
        for number in expected_numbers(name, document):
            assert number in tokens, (name, width, number, text)
        if name == "estimate" and width >= 80:  # the README's main table: every 95% CI on one line
            for item in document["estimates"]:
                digits = entropy_digits(item["stderr"])
                interval = f"{format_number(item['ci95'][0], digits)} to {format_number(item['ci95'][1], digits)}"
                assert any(interval in line for line in text.splitlines()), (width, text)
        if name == "track" and width >= 80:  # one line per checkpoint, not a record of lines
            for checkpoint in document["checkpoints"]:
                entropy = checkpoint["estimates"][0]
                shown = format_number(entropy["entropy"], entropy_digits(entropy["stderr"], 2))
                assert any(checkpoint["name"] in line and shown in line for line in text.splitlines()), text


def test_sweep_bars_never_wrap(run_cli, conditional, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    result = run_cli(*commands(conditional, tmp_path)["sweep-scale"], "-q")
    bars = [line for line in result.stdout.splitlines() if line.startswith("   s = ")]
    assert len(bars) == 4 and all(line.rstrip().endswith(("agrees", "differs", "(the smallest scale)"))
                                  for line in bars), result.stdout


@pytest.mark.parametrize("command", ["", "estimate", "sweep-scale", "compare", "track", "samples", "inspect",
                                     "convert"])
def test_help_is_readable_at_60_columns(command, run_cli, monkeypatch):
    from typer.main import get_command

    from genentropy_cli.cli.app import app

    monkeypatch.setenv("COLUMNS", "60")
    result = run_cli(*([command] if command else []), "--help")
    assert result.exit_code == 0
    assert "…" not in result.stdout and max(len(line) for line in result.stdout.splitlines()) <= 60
    group = get_command(app)
    flags = [option for parameter in (group.commands[command].params if command else group.params)
             for option in parameter.opts if option.startswith("--") and not getattr(parameter, "hidden", False)]
    for flag in flags:
        assert re.search(rf"(^|[\s│,]){re.escape(flag)}($|[\s│,])", result.stdout, re.MULTILINE), (flag, result.stdout)
    if command == "estimate":  # a paragraph wraps where the terminal ends, not where the source's line did
        assert any("Ctrl-C saves the checkpoint, prints" in line for line in result.stdout.splitlines()), result.stdout


@pytest.mark.parametrize("width", WIDTHS)
def test_the_progress_line_keeps_its_count_and_eta_whole(width):
    import io

    from rich.console import Console

    from genentropy_cli.cli.output import make_progress, progress_layout

    console = Console(width=width, file=io.StringIO(), record=True)
    progress, bar = make_progress(console)
    running = ["H(1e-01)=1.9067", "H(1e-04)=1.8379"]
    bar.bar_width, shown = progress_layout(width, "estimating", 12000, 20000, "3,123 samples/s", running)
    task = progress.add_task("estimating", total=20000, rate="3,123 samples/s", running=shown, count="12,000/20,000")
    progress.update(task, completed=12000)
    console.print(progress.make_tasks_table(progress.tasks))
    line = console.export_text().rstrip("\n")
    assert "\n" not in line and len(line) <= width and "…" not in line, line
    for part in ("estimating", "12,000/20,000", "60%", "3,123 samples/s", "-:--:--"):
        assert part in line, (width, line)
    if width >= 80:  # at 60 the running estimate gives way to the count and ETA
        assert running[-1] in line, line
    if width >= 100:
        assert ", ".join(running) in line
