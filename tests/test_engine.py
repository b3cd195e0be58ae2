"""Engine invariants: reproducibility, TorchScript, latents, statistics, non-finite samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genentropy_cli import estimate_entropy
from genentropy_cli.core.device import tf32_enabled
from genentropy_cli.core.jacobian import batched_jacobian, replicated_jacobian
from genentropy_cli.core.latents import LatentStream, make_latent_spec
from genentropy_cli.core.stats import BlockAccumulator, RunningMoments
from genentropy_cli.errors import InputError, NonFiniteSampleError
from genentropy_cli.models.loading import load_model, save_torchscript


class SmallDecoder(torch.nn.Module):
    """A nonlinear decoder with BatchNorm (eval mode matters) and a conv layer."""

    def __init__(self, latent_dim: int = 5):
        super().__init__()
        self.fc = torch.nn.Sequential(torch.nn.Linear(latent_dim, 32), torch.nn.BatchNorm1d(32), torch.nn.Tanh(),
                                      torch.nn.Linear(32, 2 * 4 * 4))
        self.conv = torch.nn.ConvTranspose2d(2, 1, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(self.fc(z).view(-1, 2, 4, 4)))


def make_decoder(seed: int = 0) -> SmallDecoder:
    torch.manual_seed(seed)
    decoder = SmallDecoder()
    with torch.no_grad():  # non-trivial running statistics, so train/eval mode differ
        decoder.fc[1].running_mean.uniform_(-0.5, 0.5)
        decoder.fc[1].running_var.uniform_(0.5, 2.0)
    return decoder


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def entropies(result) -> list[float]:
    return [item.entropy for item in result.estimates]


def test_module_scripted_and_traced_files_agree_over_many_batches(tmp_path):
    decoder = make_decoder()
    spec = make_latent_spec(5)
    scripted = tmp_path / "scripted.pt"
    traced = tmp_path / "traced.pt"
    save_torchscript(decoder, scripted, latent=spec)
    save_torchscript(decoder, traced, latent=spec, example=torch.randn(3, 5))
    kwargs = dict(scales=[1e-1, 1e-4], n_samples=300, batch_size=50, dtype="float64", seed=11)  # 6 batches
    reference = estimate_entropy(decoder, spec, **kwargs)
    for path in (scripted, traced):
        loaded = load_model(path)
        for _ in range(2):  # the same loaded module twice: executor state must not leak
            result = estimate_entropy(loaded.decoder, spec, **kwargs)
            for ours, theirs in zip(entropies(result), entropies(reference)):
                assert relative_difference(ours, theirs) < 1e-9


def test_torchscript_jacobian_is_exact_on_every_call_even_after_optimised_use(tmp_path):
    """A script module already run under the optimising executor still gives right Jacobians."""
    decoder = make_decoder().double().eval()
    scripted = torch.jit.script(decoder)
    latents = torch.randn(4, 5, dtype=torch.float64)
    flat = lambda module: (lambda z: module(z).reshape(z.shape[0], -1))  # noqa: E731
    for _ in range(3):  # poison the executor the way docs/method.md describes
        batched_jacobian(flat(scripted), latents)
    spec = make_latent_spec(5)
    kwargs = dict(scales=[1e-3], n_samples=60, batch_size=10, dtype="float64")
    assert relative_difference(estimate_entropy(scripted, spec, **kwargs).estimates[0].entropy,
                               estimate_entropy(decoder, spec, **kwargs).estimates[0].entropy) < 1e-9


def test_vmap_and_replicated_jacobians_match_autograd():
    decoder = make_decoder().double().eval()
    latents = torch.randn(3, 5, dtype=torch.float64)
    flat = lambda z: decoder(z).reshape(z.shape[0], -1)  # noqa: E731
    expected = torch.stack([torch.autograd.functional.jacobian(lambda v: flat(v[None])[0], z) for z in latents])
    for method in (batched_jacobian, replicated_jacobian):
        for chunk in (None, 1, 2, 7):
            columns = method(flat, latents, chunk)  # (d, B, D)
            assert torch.allclose(columns.permute(1, 2, 0), expected, atol=1e-12)


@pytest.mark.parametrize("batch_size", [7, 256])
def test_batch_size_does_not_change_the_estimate(batch_size):
    decoder = make_decoder()
    kwargs = dict(scales=[1e-1, 1e-4], n_samples=1100, dtype="float64", seed=5)  # spans two latent blocks
    reference = estimate_entropy(decoder, 5, batch_size=1, **kwargs)
    result = estimate_entropy(decoder, 5, batch_size=batch_size, **kwargs)
    for ours, theirs in zip(entropies(result), entropies(reference)):
        assert relative_difference(ours, theirs) < 1e-10
    assert result.estimates[0].std == pytest.approx(reference.estimates[0].std, rel=1e-10)


def test_tangent_chunk_does_not_change_the_estimate():
    decoder = make_decoder()
    kwargs = dict(scales=[1e-2], n_samples=200, dtype="float64")
    values = [estimate_entropy(decoder, 5, tangent_chunk=chunk, **kwargs).estimates[0].entropy for chunk in (1, 2, 5)]
    assert max(values) - min(values) <= 1e-10 * abs(values[0])


def test_seed_changes_the_latents_and_same_seed_repeats():
    decoder = make_decoder()
    first = estimate_entropy(decoder, 5, n_samples=200, seed=1, dtype="float64").estimates[0].entropy
    again = estimate_entropy(decoder, 5, n_samples=200, seed=1, dtype="float64").estimates[0].entropy
    other = estimate_entropy(decoder, 5, n_samples=200, seed=2, dtype="float64").estimates[0].entropy
    assert first == again
    assert first != other


def test_latent_i_depends_only_on_seed_and_index():
    spec = make_latent_spec(3)
    stream = LatentStream(spec, seed=4, block_size=16)
    whole = stream.range(0, 50)
    assert torch.equal(LatentStream(spec, seed=4, block_size=16).range(13, 37), whole[13:37])
    assert torch.equal(stream.range(31, 33), whole[31:33])  # across a block boundary
    assert whole.dtype == torch.float64
    assert not torch.equal(LatentStream(spec, seed=5, block_size=16).range(0, 50), whole)
    # every (seed, block) has its own generator: no block repeats another of this seed, and seed
    # s's block b + 1 is not seed s + 1's block b (a seed derived as seed + block would make it so)
    blocks = [LatentStream(spec, seed=seed, block_size=16).block(block) for seed in (0, 1) for block in (0, 1)]
    assert all(not torch.equal(a, b) for i, a in enumerate(blocks) for b in blocks[i + 1:])


def test_chan_merge_equals_two_pass_on_any_split():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=(1000, 2))
    whole = RunningMoments.from_values(values)
    merged = RunningMoments.empty(2)
    for piece in np.array_split(values, [3, 4, 500, 999]):
        merged = merged.merge(RunningMoments.from_values(piece))
    assert merged.count == 1000
    np.testing.assert_allclose(merged.mean, values.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(merged.std, values.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(whole.stderr, values.std(axis=0, ddof=1) / math.sqrt(1000), rtol=1e-12)


def test_block_accumulator_merges_in_block_order_whatever_the_completion_order():
    rng = np.random.default_rng(1)
    blocks = {index: rng.normal(size=(10, 1)) for index in range(4)}
    accumulator = BlockAccumulator(1, [0, 1, 2, 3])
    for index in (2, 0, 3, 1):
        accumulator.add(index, blocks[index])
        accumulator.complete_block(index)
    assert accumulator.total.count == 40
    np.testing.assert_allclose(accumulator.total.mean, np.concatenate(list(blocks.values())).mean(axis=0), rtol=1e-14)


class NanAtSample(torch.nn.Module):
    """Identity-like decoder that returns NaN when the first latent coordinate is large."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = torch.cat([z, torch.sin(z)], dim=1)
        return torch.where(z[:, :1] > 2.5, torch.full_like(out, torch.nan), out)


def test_nonfinite_sample_is_an_error_naming_its_index():
    with pytest.raises(NonFiniteSampleError) as raised:
        estimate_entropy(NanAtSample(), 2, n_samples=2000, dtype="float64")
    latents = LatentStream(make_latent_spec(2), seed=0).range(0, 2000)
    first_bad = int(torch.nonzero(latents[:, 0] > 2.5)[0])
    assert f"sample {first_bad} " in str(raised.value)


def test_skip_nonfinite_reports_the_count():
    result = estimate_entropy(NanAtSample(), 2, n_samples=2000, dtype="float64", skip_nonfinite=True)
    latents = LatentStream(make_latent_spec(2), seed=0).range(0, 2000)
    expected_bad = int((latents[:, 0] > 2.5).sum())
    assert expected_bad > 0
    assert result.num_nonfinite == expected_bad
    assert result.estimates[0].num_samples == 2000 - expected_bad
    assert math.isfinite(result.estimates[0].entropy)


def test_users_module_is_left_as_it_was_and_tf32_is_restored():
    decoder = make_decoder().train()
    seen = []

    def spy(done, total, running):
        seen.append(tf32_enabled())

    assert tf32_enabled()  # cuDNN convolutions default to TF32
    estimate_entropy(decoder, 5, n_samples=20, batch_size=10, dtype="float64", progress=spy)
    assert seen == [False, False]
    assert tf32_enabled()
    assert decoder.training
    assert all(parameter.requires_grad for parameter in decoder.parameters())
    assert next(decoder.parameters()).dtype == torch.float32


def test_eval_mode_is_used_for_batchnorm():
    """With running statistics differing from batch statistics, train mode would be wrong."""
    decoder = make_decoder()
    eval_copy = make_decoder().eval()
    a = estimate_entropy(decoder.train(), 5, n_samples=50, dtype="float64").estimates[0].entropy
    b = estimate_entropy(eval_copy, 5, n_samples=50, dtype="float64").estimates[0].entropy
    assert a == b  # the same process, batches and code path (eval mode either way): identical by construction


def test_callable_decoder_and_latent_shape():
    """Any callable works, and a (C, 1, 1) latent shape is passed to it unflattened."""
    seen_shapes = []

    def decoder(z):
        seen_shapes.append(tuple(z.shape[1:]))
        return torch.cat([z.flatten(1), z.flatten(1) ** 3], dim=1)

    result = estimate_entropy(decoder, (3, 1, 1), n_samples=30, dtype="float64")
    assert set(seen_shapes) == {(3, 1, 1)}
    assert result.latent.dim == 3


def test_cuda_asked_for_without_cuda_is_an_input_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(InputError, match="CUDA is not available"):
        estimate_entropy(make_decoder(), 5, n_samples=10, device="cuda")


@pytest.mark.gpu
def test_cuda_matches_cpu_in_float64():
    decoder = make_decoder()
    kwargs = dict(scales=[1e-2], n_samples=500, dtype="float64")
    cpu = estimate_entropy(decoder, 5, device="cpu", **kwargs).estimates[0].entropy
    gpu = estimate_entropy(decoder, 5, device="cuda", **kwargs).estimates[0].entropy
    assert relative_difference(cpu, gpu) < 1e-9
