"""Entropy during training: ``EntropyMetric`` (paired changes, no side effects, DDP), the
Lightning callback, the TensorBoard helper."""

from __future__ import annotations

import json
import math
import random
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from longrun_support import linear_decoder, normal_neg_log_density
from training_support import (
    LATENT_DIM,
    make_generator,
    train_stand_in,
)

from genentropy_cli import EntropyMetric, estimate_entropy, write_scalars
from genentropy_cli.core.latents import LatentStream, make_latent_spec
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.training import EntropyCallback

SCALES = (1e-1, 1e-3)
RUN = {"dtype": "float64", "seed": 7, "device": "cpu"}
N = 400


def make_metric(**changes) -> EntropyMetric:
    return EntropyMetric(LATENT_DIM, SCALES, **{**RUN, "num_samples": N, **changes})


def cli_estimate(run_cli, path: Path) -> dict:
    result = run_cli("estimate", path, "-n", N, "-s", SCALES[0], "-s", SCALES[1], "--dtype", "float64", "--seed",
                     RUN["seed"], "--device", "cpu", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    return result.json()


# --------------------------------------------------------------------------- acceptance 1


def test_every_logged_value_equals_the_cli_estimate_of_that_epochs_checkpoint(tmp_path, run_cli):
    """A tiny GAN trained 3 epochs with the callback (hooks called as Lightning calls them):
    entropy and SE equal ``estimate`` of the checkpoint saved at that epoch, and the paired
    change equals ``track``'s change between consecutive checkpoints, all to 1e-10."""
    callback = EntropyCallback(make_metric(), generator="generator")
    module = train_stand_in(3, [callback], tmp_path)
    assert sorted(module.logged) == [1, 2, 3]
    assert [point.epoch for point in callback.history] == [0, 1, 2]
    for epoch, logged in module.logged.items():
        document = cli_estimate(run_cli, tmp_path / f"gen-epoch={epoch}.safetensors")
        for estimate in document["estimates"]:
            scale = estimate["scale"]
            assert abs(logged[f"entropy/s={scale:g}"] - estimate["entropy"]) <= 1e-10
            assert abs(logged[f"entropy_stderr/s={scale:g}"] - estimate["stderr"]) <= 1e-10
        assert ("entropy_change/s=0.1" in logged) == (epoch > 1)
    shuffled = [tmp_path / f"gen-epoch={epoch}.safetensors" for epoch in (3, 1, 2)]  # track sorts by step
    tracked = run_cli("track", *shuffled, "-n", N, "-s", SCALES[0], "-s", SCALES[1], "--dtype", "float64",
                      "--seed", RUN["seed"], "--device", "cpu", "--json", "--quiet")
    assert tracked.exit_code == 0, tracked.stderr
    document = tracked.json()
    assert [item["step"] for item in document["checkpoints"]] == [1, 2, 3]
    for change in document["changes"]:
        logged = module.logged[change["first_step"]]
        assert change["second_step"] == change["first_step"] - 1
        assert abs(logged[f"entropy_change/s={change['scale']:g}"] - change["difference"]) <= 1e-10
        assert abs(logged[f"entropy_change_stderr/s={change['scale']:g}"] - change["paired_stderr"]) <= 1e-10
    assert any(change["paired_stderr"] < 0.5 * change["unpaired_stderr"] for change in document["changes"])


def test_with_lightning_every_logged_value_equals_the_cli_estimate(tmp_path, run_cli):
    """The same with the real Lightning Trainer (CPU), logged through the module's logger."""
    lightning = pytest.importorskip("lightning.pytorch")
    from lightning_support import RecordingLogger, SaveGenerator, TinyGAN

    torch.manual_seed(0)
    logger = RecordingLogger()
    callback = EntropyCallback(make_metric(), generator="generator")
    trainer = lightning.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1,
                                callbacks=[SaveGenerator(tmp_path), callback], enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyGAN())
    records = [metrics for metrics in logger.records if "entropy/s=0.1" in metrics]
    assert len(records) == 3
    for epoch, metrics in enumerate(records, start=1):
        document = cli_estimate(run_cli, tmp_path / f"gen-epoch={epoch}.safetensors")
        for estimate in document["estimates"]:
            assert abs(metrics[f"entropy/s={estimate['scale']:g}"] - estimate["entropy"]) <= 1e-10
            assert abs(metrics[f"entropy_stderr/s={estimate['scale']:g}"] - estimate["stderr"]) <= 1e-10
        assert ("entropy_change_stderr/s=0.001" in metrics) == (epoch > 1)


def test_step_wise_evaluation_runs_every_k_steps():
    callback = EntropyCallback(make_metric(num_samples=50), generator="generator", every_n_steps=5)
    train_stand_in(2, [callback])  # 8 steps per epoch: steps 5, 10, 15
    assert [point.global_step for point in callback.history] == [5, 10, 15]
    with pytest.raises(InputError):
        EntropyCallback(make_metric(), every_n_epochs=0)


# --------------------------------------------------------------------------- the paired change


def test_the_change_of_two_linear_decoders_is_exact_with_zero_paired_error():
    """x = A z vs x = B z: h_i differ by the constant 1/2 [logdet(B^T B + s^2) - logdet(A^T A + s^2)],
    so the paired SE is round-off while the unpaired one is the spread of -log p(z_i)."""
    first, second = [1.0, 0.5, 2.0], [3.0, 0.25, 1.5]
    metric = EntropyMetric(3, SCALES, N, **RUN)
    metric(linear_decoder(first))
    result = metric(linear_decoder(second))
    for change in result.changes:
        expected = 0.5 * sum(math.log(b**2 + change.scale**2) - math.log(a**2 + change.scale**2)
                             for a, b in zip(first, second))
        assert change.difference == pytest.approx(expected, abs=1e-10)
        assert change.stderr < 1e-10 < 0.05 < change.unpaired_stderr
        assert change.num_samples == N
    latents = LatentStream(make_latent_spec(3), RUN["seed"]).range(0, N)
    spread = normal_neg_log_density(latents).std(ddof=1) / math.sqrt(N)
    assert result.changes[0].unpaired_stderr == pytest.approx(math.sqrt(2) * spread, rel=1e-10)


class Holed(torch.nn.Module):
    """x = A z, NaN where z_0 is beyond ``edge`` on the given side (dropped with skip_nonfinite)."""

    def __init__(self, singular_values, edge: float):
        super().__init__()
        self.linear, self.edge = linear_decoder(singular_values), edge

    def forward(self, latents):
        outputs = self.linear(latents)
        beyond = latents[:, :1] > self.edge if self.edge > 0 else latents[:, :1] < self.edge
        return torch.where(beyond, torch.full_like(outputs, math.nan), outputs)


def test_the_change_uses_the_samples_finite_in_both_calls():
    first, second = [1.0, 0.5, 2.0], [3.0, 0.25, 1.5]
    metric = EntropyMetric(3, SCALES, N, **RUN, skip_nonfinite=True)
    metric(Holed(first, 1.0))
    result = metric(Holed(second, -1.0))
    latents = LatentStream(make_latent_spec(3), RUN["seed"]).range(0, N)
    both = int(((latents[:, 0] <= 1.0) & (latents[:, 0] >= -1.0)).sum())
    assert 0 < both < result.estimates[0].num_samples < N
    for change in result.changes:
        expected = 0.5 * sum(math.log(b**2 + change.scale**2) - math.log(a**2 + change.scale**2)
                             for a, b in zip(first, second))
        assert change.num_samples == both and change.difference == pytest.approx(expected, abs=1e-10)


def test_the_paired_error_is_the_spread_of_the_per_sample_differences():
    """Independent check: the per-sample terms from ``estimate_entropy``'s on_rows hook."""
    torch.manual_seed(1)
    decoders = [make_generator(), make_generator()]
    metric = make_metric()
    metric(decoders[0])
    change = metric(decoders[1]).changes

    def terms(decoder):
        rows = []
        estimate_entropy(decoder, LATENT_DIM, SCALES, N, **RUN, on_rows=lambda first, part: rows.append(part.terms))
        return np.concatenate(rows)

    differences = terms(decoders[1]) - terms(decoders[0])
    for index, item in enumerate(change):
        assert item.difference == pytest.approx(differences[:, index].mean(), rel=1e-12, abs=1e-12)
        assert item.stderr == pytest.approx(differences[:, index].std(ddof=1) / math.sqrt(N), rel=1e-10)
    metric.reset()
    assert metric(decoders[0]).changes == [] and metric.compute().call == 1


def test_refusals():
    with pytest.raises(InputError, match="checkpoint"):
        EntropyMetric(3, checkpoint="x.ckpt")
    with pytest.raises(InputError, match="before any update"):
        EntropyMetric(3).compute()


# --------------------------------------------------------------------------- acceptance 2: no side effects


class Busy(torch.nn.Module):
    """Train mode, BatchNorm buffers, dropout, a frozen layer, gradients present."""

    def __init__(self):
        super().__init__()
        self.frozen = torch.nn.Linear(LATENT_DIM, 16)
        self.frozen.requires_grad_(False)
        self.body = torch.nn.Sequential(torch.nn.BatchNorm1d(16), torch.nn.Tanh(), torch.nn.Dropout(0.3),
                                        torch.nn.Linear(16, 8))

    def forward(self, latents):
        return self.body(self.frozen(latents))


def snapshot(module: torch.nn.Module) -> dict:
    return {
        "state": {name: tensor.clone() for name, tensor in module.state_dict(keep_vars=True).items()},
        "training": [item.training for item in module.modules()],
        "requires_grad": [parameter.requires_grad for parameter in module.parameters()],
        "grads": [None if parameter.grad is None else parameter.grad.clone() for parameter in module.parameters()],
        "devices_dtypes": [(tensor.device, tensor.dtype) for tensor in module.state_dict().values()],
        "identity": [id(parameter) for parameter in module.parameters()],
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert before["training"] == after["training"] and before["requires_grad"] == after["requires_grad"]
    assert before["devices_dtypes"] == after["devices_dtypes"] and before["identity"] == after["identity"]
    assert before["state"].keys() == after["state"].keys()
    for name in before["state"]:
        assert torch.equal(before["state"][name], after["state"][name]), name
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)


def random_states() -> tuple:
    return torch.get_rng_state().clone(), np.random.get_state(), random.getstate()


def assert_same_random_states(before: tuple, after: tuple) -> None:
    assert torch.equal(before[0], after[0])
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1]) and before[1][2:] == after[1][2:]
    assert before[2] == after[2]


def test_a_call_changes_neither_the_generator_nor_the_random_states():
    torch.manual_seed(0)
    module = Busy().train()
    module(torch.randn(32, LATENT_DIM)).square().sum().backward()
    np.random.seed(5)
    random.seed(5)
    before, states = snapshot(module), random_states()
    EntropyMetric(LATENT_DIM, SCALES, 100, device="cpu")(module)  # float32: the float64 precision probe runs too
    assert_same_snapshot(before, snapshot(module))
    assert_same_random_states(states, random_states())
    # The loop alone draws nothing from them either (the metric's restore is a second guard).
    estimate_entropy(module, LATENT_DIM, SCALES, 100, device="cpu")
    assert_same_random_states(states, random_states())


def test_a_call_restores_the_random_states_a_decoder_draws_from():
    class Noisy(torch.nn.Module):
        def forward(self, latents):
            random.random()
            np.random.rand()
            return torch.cat([latents, latents + 0 * torch.rand(())], dim=1)

    states = random_states()
    EntropyMetric(2, SCALES, 20, **RUN)(Noisy())
    assert_same_random_states(states, random_states())


def test_training_is_bit_for_bit_the_same_with_and_without_the_callback():
    plain = train_stand_in(2)
    watched = train_stand_in(2, [EntropyCallback(make_metric(num_samples=100), generator="generator")])
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- acceptance 2: DDP


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_rank(rank: int, world_size: int, port: int, folder: str) -> None:
    """One rank: join a gloo group as a training script would, call the metric on two
    generators, check the group is still there and usable, write the results."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world_size)
    torch.manual_seed(0)
    generators = [make_generator(), make_generator()]
    metric = EntropyMetric(LATENT_DIM, SCALES, 2500, **RUN, batch_size=300)  # 3 latent blocks, dealt 0, 2 / 1
    states = random_states()
    results = [metric(torch.nn.parallel.DistributedDataParallel(generators[0])).to_dict(),
               metric(generators[1]).to_dict()]
    assert_same_random_states(states, random_states())
    assert torch.distributed.is_initialized()
    total = torch.ones(1)
    torch.distributed.all_reduce(total)
    document = {"results": results, "world_size": metric.compute().result.settings["world_size"],
                "all_reduce": float(total)}
    Path(folder, f"rank{rank}.json").write_text(json.dumps(document))
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_give_the_result_of_one(tmp_path):
    """Acceptance 2: every rank of an existing process group gets the one-process result."""
    import torch.multiprocessing as multiprocessing

    for attempt in range(4):  # a port taken between choosing and binding it: choose another
        try:
            multiprocessing.spawn(_ddp_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
            break
        except Exception as error:  # ProcessRaisedException carries the rank's traceback as text
            if "Address already in use" not in str(error) or attempt == 3:
                raise
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0]["results"] == ranks[1]["results"]
    assert [item["world_size"] for item in ranks] == [2, 2] and ranks[0]["all_reduce"] == 2.0
    torch.manual_seed(0)
    generators = [make_generator(), make_generator()]
    metric = EntropyMetric(LATENT_DIM, SCALES, 2500, **RUN, batch_size=300)
    single = [metric(generators[0]).to_dict(), metric(generators[1]).to_dict()]
    assert metric.compute().result.settings["world_size"] == 1
    for two, one in zip(ranks[0]["results"], single):
        for key in ("estimates", "changes"):
            for a, b in zip(two[key], one[key]):
                for field in ("entropy", "stderr", "difference", "unpaired_stderr"):
                    if field in a:
                        assert a[field] == pytest.approx(b[field], rel=1e-12, abs=1e-12), (key, field)


# --------------------------------------------------------------------------- logging helpers


def test_write_scalars_with_a_duck_typed_writer_and_tensorboards():
    class Recorder:
        def __init__(self):
            self.calls = []

        def add_scalar(self, name, value, step):
            self.calls.append((name, value, step))

    metric = make_metric(num_samples=60)
    torch.manual_seed(2)
    recorder = Recorder()
    write_scalars(recorder, metric(make_generator()), step=1)
    written = write_scalars(recorder, metric(make_generator()), step=2)
    assert [call[0] for call in recorder.calls[:4]] == ["entropy/s=0.1", "entropy_stderr/s=0.1", "entropy/s=0.001",
                                                        "entropy_stderr/s=0.001"]
    assert len(recorder.calls) == 4 + 8 and recorder.calls[-1] == ("entropy_change_stderr/s=0.001",
                                                                   written["entropy_change_stderr/s=0.001"], 2)


def test_summary_writer_needs_tensorboard_and_writes_events(tmp_path, monkeypatch):
    from genentropy_cli import summary_writer

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were missing
    with pytest.raises(InputError, match="pip install tensorboard"):
        summary_writer(str(tmp_path))
    monkeypatch.undo()
    pytest.importorskip("tensorboard")
    writer = summary_writer(str(tmp_path))
    write_scalars(writer, make_metric(num_samples=20)(make_generator()), step=1)
    writer.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))
