"""compare, samples and sweep-scale run through the one batch loop, so each gets what estimate
has: out-of-memory retry, torchrun, checkpoints and resume, --target-stderr, per-sample rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from longrun_support import linear_decoder, parse_json, run_interrupted, run_torchrun, skip_without_gloo, small_mlp

import genentropy_cli.run.compute as compute_module
from genentropy_cli import compare_models, find_extreme_samples
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.models.loading import save_torchscript

SCALES = ("-s", "1e-1", "-s", "1e-3")


@pytest.fixture
def two_models(tmp_path):
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"mlp{seed}.pt"
        save_torchscript(small_mlp(seed=seed), path, latent=make_latent_spec(4))
        paths.append(str(path))
    return paths


def compare_numbers(document: dict) -> list[float]:
    """Every model's entropies and standard errors and every pair's difference and paired SE."""
    numbers = [value for model in document["models"] for estimate in model["estimates"]
               for value in (estimate["entropy"], estimate["stderr"])]
    return numbers + [value for pair in document["pairs"] for value in (pair["difference"], pair["paired_stderr"])]


def test_compare_survives_an_injected_out_of_memory_error(monkeypatch):
    """Every batch of 64 fails once per model: retried as 32 + 32, the comparison is unchanged."""
    original, failed = compute_module.compute_sample_terms, []

    def fail_on_64(prepared, latents, scales, tangent_chunk=None, **options):
        if latents.shape[0] == 64 and len(failed) < 2:
            failed.append(latents.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(prepared, latents, scales, tangent_chunk, **options)

    kwargs = dict(scales=[1e-1, 1e-3], n_samples=300, batch_size=64, dtype="float64", device="cpu")
    decoders = [linear_decoder((3.0, 1.0, 0.5)), linear_decoder((2.0, 1.0, 0.1), seed=1)]
    reference = compare_models(decoders, [3, 3], **kwargs)
    monkeypatch.setattr(compute_module, "compute_sample_terms", fail_on_64)
    notes: list[str] = []
    retried = compare_models(decoders, [3, 3], log=notes.append, **kwargs)
    assert failed == [64, 64]
    assert retried.diagnostics["oom_retries"] == 2 and retried.diagnostics["batch_size_final"] == 32
    assert any("retrying them in batches of 32" in note for note in notes)
    for ours, theirs in zip(retried.models, reference.models):
        assert [e.entropy for e in ours.estimates] == pytest.approx([e.entropy for e in theirs.estimates], rel=1e-12)
    assert retried.pairs[0].paired_stderr == pytest.approx(reference.pairs[0].paired_stderr, rel=1e-12)


def torchrun_document(*arguments: str) -> dict:
    launched = run_torchrun("-m", "genentropy_cli", *arguments)
    skip_without_gloo(launched)
    assert launched.returncode == 0, launched.stderr[-3000:]
    return parse_json(launched.stdout)  # rank 0 alone printed: exactly one JSON document


def test_compare_sweep_and_samples_under_torchrun_equal_one_process(run_cli, two_models, tmp_path):
    """2 gloo processes (latent blocks dealt 0, 2 / 1, 3) give the one-process numbers: compare's
    estimates and paired differences, sweep-scale's collapse counts (counted over every rank's
    samples), samples' extremes."""
    common = ["-n", "3500", "--batch-size", "96", "--dtype", "float64", "--device", "cpu", "--json", "--quiet"]
    runs = {
        "compare": ["compare", *two_models, *SCALES, *common],
        "sweep-scale": ["sweep-scale", two_models[0], "--scales", "1,1e-1,1e-3", *common],
        "samples": ["samples", two_models[0], "--lowest", "3", "--highest", "3", *common],
    }
    for name, arguments in runs.items():
        two = torchrun_document(*arguments)
        single = run_cli(*arguments)
        assert single.exit_code == 0, single.stderr
        one = single.json()
        assert two["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1, name
        if name == "compare":
            assert compare_numbers(two) == pytest.approx(compare_numbers(one), rel=1e-12)
        elif name == "sweep-scale":
            assert two["collapsed_samples"] == one["collapsed_samples"]
            assert [item["count"] for item in one["collapsed_samples"]][0] > 0  # s = 1 collapses something
            assert [e["entropy"] for e in two["estimates"]] == pytest.approx([e["entropy"] for e in one["estimates"]],
                                                                              rel=1e-12)
        else:
            for part in ("lowest", "highest"):
                assert [row["index"] for row in two[part]] == [row["index"] for row in one[part]]


def test_compare_interrupted_resumes_to_the_uninterrupted_result(two_models, tmp_path, run_cli):
    """SIGINT after the 4th decoder call (2 batches of 2 models): partial result, exit 130; the
    rerun resumes from the checkpoint and equals a run that was never interrupted."""
    checkpoint = tmp_path / "compare.ckpt"
    arguments = ["compare", *two_models, *SCALES, "-n", "2500", "--batch-size", "100", "--dtype", "float64",
                 "--device", "cpu", "--json", "--quiet", "--checkpoint", str(checkpoint), "--checkpoint-every", "0"]
    interrupted = run_interrupted("SIGINT", 4, *arguments)
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    partial = parse_json(interrupted.stdout)
    assert partial["partial"] is True and partial["stop_reason"] == "interrupted"
    assert partial["settings"]["num_used"] < 2500
    resumed = run_cli(*arguments)
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.json()["diagnostics"]["resumed_from_samples"] > 0
    fresh = run_cli(*arguments[:-4])
    assert compare_numbers(resumed.json()) == pytest.approx(compare_numbers(fresh.json()), rel=1e-12)


def test_compare_refuses_a_checkpoint_of_other_models(two_models, tmp_path, run_cli):
    checkpoint = tmp_path / "compare.ckpt"
    base = ["compare", "-n", "300", "--dtype", "float64", "--device", "cpu", "--json", "--quiet",
            "--checkpoint", str(checkpoint)]
    assert run_cli(*base[:1], *two_models, *base[1:]).exit_code == 0
    swapped = run_cli(*base[:1], two_models[1], two_models[0], *base[1:])
    assert swapped.exit_code == 2 and "checkpoint" in swapped.stderr


def test_compare_target_stderr_and_per_sample_rows(two_models, tmp_path, run_cli):
    rows_file = tmp_path / "rows.jsonl"
    result = run_cli("compare", *two_models, *SCALES, "-n", "20000", "--target-stderr", "0.05", "--min-samples", "200",
                     "--dtype", "float64", "--device", "cpu", "--json", "--quiet", "--per-sample", rows_file)
    assert result.exit_code == 0, result.stderr
    document = result.json()
    used = document["settings"]["num_used"]
    assert document["stop_reason"] == "target_stderr" and 200 <= used < 20000
    assert all(e["stderr"] <= 0.05 for model in document["models"] for e in model["estimates"])
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert len(rows) == used and rows[0]["index"] == 0
    names = [model["name"] for model in document["models"]]
    assert set(rows[0]) == {"index"} | {f"{name}.{key}" for name in names for key in ("neg_log_density", "h", "collapsed")}
    # each model's mean of its per-sample h equals its estimate
    for model in document["models"]:
        values = np.array([row[f"{model['name']}.h"] for row in rows])
        assert values.mean(axis=0) == pytest.approx([e["entropy"] for e in model["estimates"]], rel=1e-12)


def test_samples_honours_the_run_options(tmp_path):
    """samples through the loop: a per-sample file of every scanned sample, and its extremes are
    the extremes of that file."""
    rows_file = tmp_path / "rows.npy"
    result = find_extreme_samples(small_mlp(), 4, lowest=2, highest=2, scale=1e-3, n_samples=700, batch_size=64,
                                  dtype="float64", device="cpu", per_sample=str(rows_file))
    rows = np.load(rows_file)
    order = np.argsort(rows["h"][:, 0], kind="stable")
    assert list(result.lowest["indices"]) == list(rows["index"][order[:2]])
    assert list(result.highest["indices"]) == list(rows["index"][order[::-1][:2]])
    assert result.settings["per_sample"] == str(rows_file)


def test_samples_interrupted_says_partial_and_exits_130(two_models):
    """SIGINT after the 3rd batch: the extremes of the samples scanned so far, marked partial."""
    arguments = ["samples", two_models[0], "-n", "3000", "--batch-size", "100", "--lowest", "2", "--highest", "2",
                 "--dtype", "float64", "--device", "cpu", "--json"]
    interrupted = run_interrupted("SIGINT", 3, *arguments)
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    document = parse_json(interrupted.stdout)
    assert document["partial"] is True and document["stop_reason"] == "interrupted"
    assert 300 <= document["num_scanned"] < 3000
    assert all(row["index"] < document["num_scanned"] + 100 for row in document["lowest"] + document["highest"])
    assert "PARTIAL" in interrupted.stderr
