"""``genentropy track``: checkpoints in step order on common latents, consecutive changes."""

from __future__ import annotations

import shutil

import pytest
import torch
from training_support import make_generator, save_generator

from genentropy_cli.jobs.track import checkpoint_step, order_by_step
from tests.test_cli import assert_one_line_error

COMMON = ("-n", "120", "--dtype", "float64", "--device", "cpu", "--seed", "3", "-q")


@pytest.mark.parametrize("name, expected", [
    ("wgan-gp-epoch100.safetensors", (100, "file name (epoch)")),
    ("epoch=3-step=300.ckpt", (300, "file name (step)")),
    ("model-global_step=12.pt", (12, "file name (step)")),
    ("gen_it500.pt", (500, "file name (step)")),
    ("vae-le-3-long.safetensors", (3, "file name (number)")),
    ("split7.pt", (7, "file name (number)")),  # "it" inside a word is no label
    ("gan.safetensors", None),
])
def test_the_step_is_read_from_the_file_name(name, expected):
    assert checkpoint_step(name) == expected


def test_the_step_is_read_from_metadata_when_the_name_has_none():
    spec = {"architecture": "mlp", "training": {"epochs": 200, "final_epoch": {"epoch": 200, "loss": 1.0}}}
    assert checkpoint_step("gan.safetensors", {}, spec) == (200, "spec: training.final_epoch.epoch")
    assert checkpoint_step("gan.pt", {"global_step": 5}, spec) == (5, "metadata: global_step")
    assert order_by_step(["a", "b", "c"], [(3, ""), (1, ""), (3, "")]) == [1, 0, 2]  # ties keep the order given


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(4)
    folder = tmp_path / "run"
    folder.mkdir()
    return [save_generator(make_generator(), folder, epoch) for epoch in (1, 2, 10)]


def test_track_sorts_by_step_and_each_entropy_is_the_files_estimate(run_cli, checkpoints, tmp_path):
    folder = checkpoints[0].parent
    plot = tmp_path / "track.png"
    result = run_cli("track", f"{folder}/gen-epoch=*.safetensors", *COMMON, "--json", "--plot", plot)
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["command"] == "track" and plot.stat().st_size > 0
    assert [item["step"] for item in document["checkpoints"]] == [1, 2, 10]  # the glob sorts 1, 10, 2
    assert {item["step_source"] for item in document["checkpoints"]} == {"file name (epoch)"}
    changes = document["changes"]
    assert [(item["first_step"], item["second_step"]) for item in changes] == [(2, 1), (10, 2)]
    entropies = [item["estimates"][0]["entropy"] for item in document["checkpoints"]]
    for index, path in enumerate(sorted(checkpoints, key=lambda item: int(item.stem.split("=")[1]))):
        alone = run_cli("estimate", path, *COMMON, "--json")
        assert alone.json()["estimates"][0]["entropy"] == pytest.approx(entropies[index], rel=1e-12)
    for change, (later, earlier) in zip(changes, ((1, 0), (2, 1))):
        assert change["difference"] == pytest.approx(entropies[later] - entropies[earlier], abs=1e-10)
        assert change["paired_stderr"] == change["stderr"] and change["p_holm"] >= change["p_value"]
    table = run_cli("track", *checkpoints, *COMMON)
    assert table.exit_code == 0 and "Paired SE" in table.stdout and "gen-epoch=10.safetensors" in table.stdout


def test_track_refusals_are_one_line(run_cli, checkpoints, tmp_path):
    assert_one_line_error(run_cli("track", checkpoints[0], *COMMON), "at least two checkpoints")
    assert_one_line_error(run_cli("track", f"{tmp_path}/none-*.pt", checkpoints[0], *COMMON), "no checkpoint matches")
    assert_one_line_error(run_cli("track", checkpoints[0], checkpoints[0], *COMMON), "more than once")
    unnamed = tmp_path / "final.safetensors"
    shutil.copyfile(checkpoints[0], unnamed)
    plain = tmp_path / "plain.safetensors"
    save_generator(make_generator(), tmp_path, 0).rename(plain)  # its spec records epoch 0
    kept = run_cli("track", unnamed, plain, *COMMON, "--json")  # names without numbers: the recorded epochs
    assert kept.exit_code == 0, kept.stderr
    assert [item["step_source"] for item in kept.json()["checkpoints"]] == ["spec: training.epoch"] * 2
    assert [item["step"] for item in kept.json()["checkpoints"]] == [0, 1]


def test_track_keeps_the_order_given_where_no_step_is_known(run_cli, tmp_path):
    from genentropy_cli.core.latents import make_latent_spec
    from genentropy_cli.models.loading import save_torchscript

    torch.manual_seed(5)
    paths = []
    for name in ("late", "early"):
        paths.append(tmp_path / f"{name}.pt")
        save_torchscript(make_generator(), paths[-1], latent=make_latent_spec(3))
    assert_one_line_error(run_cli("track", *paths, *COMMON), "--keep-order")
    kept = run_cli("track", *paths, *COMMON, "--keep-order", "--json")
    assert kept.exit_code == 0, kept.stderr
    assert [item["name"] for item in kept.json()["checkpoints"]] == ["late.pt", "early.pt"]
    assert [item["step"] for item in kept.json()["checkpoints"]] == [1, 2]


def test_a_track_checkpoint_resumes_track_and_not_compare(run_cli, checkpoints, tmp_path):
    saved = tmp_path / "track.ckpt"
    first = run_cli("track", *checkpoints, *COMMON, "--json", "--checkpoint", saved)
    assert first.exit_code == 0, first.stderr
    again = run_cli("track", *checkpoints, *COMMON, "--json", "--checkpoint", saved)
    assert again.exit_code == 0, again.stderr
    assert again.json()["changes"] == first.json()["changes"]
    assert again.json()["diagnostics"]["resumed_checkpoints"] == 3  # every checkpoint was done: none is rerun
    assert again.json()["diagnostics"]["checkpoints_estimated"] == 0
    other = run_cli("compare", *checkpoints, *COMMON, "--checkpoint", saved)
    assert other.exit_code == 2 and "Traceback" not in other.stderr
