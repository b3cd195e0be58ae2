"""Time you can plan by (issue 24): the long-run note after a run's first batches, and the
prediction ``inspect`` makes from the measured forward time (``run/planning.py``)."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch

import genentropy_cli.run.loop as loop_module
from genentropy_cli import estimate_entropy, make_latent_spec
from genentropy_cli.defaults import JACOBIAN_COST_FACTORS, LONG_RUN_SECONDS
from genentropy_cli.run.planning import format_duration, predicted_seconds_per_sample, run_time_note

NOTE = re.compile(r"expected run time about (.+) \(([\d,]+) samples at ([\d.,]+)/s\); -n (\d+) would finish in about "
                  r"(.+?)(?: with standard error about ([\d.e-]+) \(or stop there: --target-stderr ([\d.e-]+)\))?$")


def test_a_short_run_gets_no_note():
    assert run_time_note(1000, LONG_RUN_SECONDS / 1000 * 0.99, std=1.0) is None
    assert run_time_note(0, 10.0, std=1.0) is None


def test_the_note_gives_the_samples_for_a_minute_and_their_standard_error():
    note = run_time_note(50_000, 0.02, std=1.5)  # 1000 s; a minute is 3000 samples
    found = NOTE.match(note)
    assert found, note
    assert found[1] == "16.7 min" and found[2] == "50,000" and found[3] == "50.0" and found[4] == "3000"
    assert found[5] == "60 s"
    assert found[6] == found[7] == f"{1.5 / math.sqrt(3000):.2g}" == "0.027"  # std / sqrt(n), 2 digits


def test_passes_multiply_the_time_and_no_std_no_stderr():
    note = run_time_note(2000, 0.01, std=None, passes=10)  # a conditional decoder's ten classes: 200 s
    found = NOTE.match(note)
    assert found[1] == "3.3 min" and found[4] == "600" and found[6] is None


def test_durations_read_naturally():
    assert [format_duration(value) for value in (5, 89, 150, 5399, 7200)] == ["5 s", "89 s", "2.5 min", "90.0 min",
                                                                            "2.0 h"]


def test_the_prediction_is_forward_rows_times_the_method_factor():
    assert predicted_seconds_per_sample(0.001, 9, "stacked") == pytest.approx(0.010 * JACOBIAN_COST_FACTORS["stacked"])
    assert predicted_seconds_per_sample(0.001, 9, "vmap", 0.004) == pytest.approx(
        0.010 * JACOBIAN_COST_FACTORS["vmap"] + 0.004)
    assert JACOBIAN_COST_FACTORS["stacked"] < JACOBIAN_COST_FACTORS["vmap"] < JACOBIAN_COST_FACTORS["replicated"]


def _run(monkeypatch, **options) -> list[str]:
    """An estimate whose every run counts as long (threshold 0) and whose rate is read at once."""
    monkeypatch.setattr(loop_module, "run_time_note", functools.partial(run_time_note, long_seconds=0.0))
    monkeypatch.setattr(loop_module, "FORESIGHT_SECONDS", 0.0)
    notes: list[str] = []
    estimate_entropy(torch.nn.Linear(3, 5).double(), make_latent_spec(3), n_samples=64, batch_size=8,
                     dtype="float64", log=notes.append, **options)
    return [note for note in notes if note.startswith("expected run time")]


def test_a_run_notes_its_expected_time_once(monkeypatch):
    notes = _run(monkeypatch)
    assert len(notes) == 1
    found = NOTE.match(notes[0])
    assert found and int(found[2].replace(",", "")) == 64 - 8  # after the first batch of 8
    assert found[6] is not None  # the std of 8 samples gives the standard error


def test_no_note_when_the_run_stops_at_a_target_stderr(monkeypatch):
    assert _run(monkeypatch, target_stderr=1e-9) == []


def test_no_note_with_the_real_threshold():
    notes: list[str] = []
    estimate_entropy(torch.nn.Linear(3, 5).double(), make_latent_spec(3), n_samples=64, batch_size=8,
                     dtype="float64", log=notes.append)
    assert not [note for note in notes if note.startswith("expected run time")]


@pytest.mark.parametrize("name, passes", [("mlp_small.safetensors", 1), ("cvae.safetensors", 10)])
def test_inspect_predicts_the_default_run_from_the_forward_time(run_cli, name, passes):
    report = run_cli("inspect", f"sample_models/{name}", "--probe-latents", "2", "--json").json()
    predicted, dim = report["predicted_run_time"], report["model"]["latent_dim"]
    method = report["jacobian_probe"]["jacobian_method"]
    assert predicted["num_samples"] == 50_000 and predicted["passes"] == passes  # a conditional decoder: per class
    floor = predicted_seconds_per_sample(report["forward_seconds_per_sample"], dim, method)
    assert floor < predicted["seconds_per_sample"]  # plus the Gram step, measured apart
    assert predicted["seconds"] == pytest.approx(predicted["seconds_per_sample"] * passes * 50_000)
    assert (predicted["note"] is None) == (predicted["seconds"] <= LONG_RUN_SECONDS)
    table = run_cli("inspect", f"sample_models/{name}", "--probe-latents", "2")
    assert "predicted time for 50,000 samples" in table.stdout
    assert ("estimate with the default -n: expected run time" in table.stderr) == (predicted["note"] is not None)


def test_the_run_names_its_stages_before_the_first_count():
    """The progress bar shows what the run does from the first second: its stages, then the count
    with its total (no "0/?" while the decoder is checked)."""
    events: list[tuple] = []

    def progress(done: int, total: int, running) -> None:
        events.append(("count", done, total))

    progress.stage = lambda text: events.append(("stage", text))
    estimate_entropy(torch.nn.Linear(3, 5).double(), make_latent_spec(3), n_samples=32, batch_size=8,
                     dtype="float64", log=lambda message: None, progress=progress)
    stages = [event[1] for event in events if event[0] == "stage"]
    assert stages == ["checking the decoder", "float64 precision probe", "first batch"]
    assert all(event[0] == "stage" for event in events[:3])
    counts = events[3:]
    assert [event[1] for event in counts] == [8, 16, 24, 32] and {event[2] for event in counts} == {32}


def test_a_plain_progress_callback_still_works():
    counts: list[int] = []
    estimate_entropy(torch.nn.Linear(3, 5).double(), make_latent_spec(3), n_samples=16, batch_size=8,
                     dtype="float64", log=lambda message: None, progress=lambda done, total, running: counts.append(done))
    assert counts == [8, 16]
