"""The stacked method on the generator families users hold, called as their users call them:
BigGAN (``pytorch-pretrained-biggan``), a diffusers ``AutoencoderKL`` decoder, and a StyleGAN2-ADA
-like generator of our own (``stylegan_like``: NVlabs' code is not a package). Tiny random-weight
models in float32: the engine must choose the stacked method, and its Jacobians must equal
per-sample reverse-mode autograd within the tolerance the engine itself checks
(``stacked_tolerance``, relative to the largest entry)."""

from __future__ import annotations

import pytest
import torch
from stylegan_like import StyleGANLike
from torch import nn

from genentropy_cli.core.decoder import jacobians_agree, prepare_decoder, stacked_tolerance
from genentropy_cli.core.latents import LatentStream, make_latent_spec


def per_sample_reverse(function, latents: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(d, B, D): each sample's Jacobian by reverse mode alone, one backward pass per output."""
    def one(flat: torch.Tensor) -> torch.Tensor:
        return function(flat.reshape(1, *shape)).reshape(-1)

    rows = [torch.autograd.functional.jacobian(one, z) for z in latents]
    return torch.stack(rows).permute(2, 0, 1)


def check_stacked(decoder: nn.Module, shape: tuple[int, ...], samples: int = 3) -> None:
    """The engine chooses the stacked method on ``decoder`` (float32) and its Jacobians at
    ``samples`` latents equal per-sample reverse mode."""
    spec = make_latent_spec(shape)
    prepared = prepare_decoder(decoder, spec, torch.device("cpu"), torch.float32)
    assert prepared.jacobian_method == "stacked", prepared.method_note
    latents = LatentStream(spec, seed=5).range(0, samples)
    columns, outputs = prepared.jacobian(latents)
    assert prepared.jacobian_method == "stacked", prepared.method_note  # no fallback mid-run
    expected = per_sample_reverse(prepared.function, latents.float(), shape)
    assert columns.shape == expected.shape
    assert jacobians_agree(columns, expected, stacked_tolerance(torch.float32)), float(
        (columns - expected).abs().max() / expected.abs().max())
    torch.testing.assert_close(outputs.reshape(samples, -1),
                               prepared.decode(latents).reshape(samples, -1), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- BigGAN


class BigGANCall(nn.Module):
    """G(z, class one-hot, truncation), the package's call, for one class."""

    def __init__(self, generator: nn.Module, num_classes: int, label: int, truncation: float):
        super().__init__()
        self.generator, self.num_classes, self.label, self.truncation = generator, num_classes, label, truncation

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        onehot = torch.zeros(z.shape[0], self.num_classes, dtype=z.dtype, device=z.device)
        onehot[:, self.label] = 1
        return self.generator(z, onehot, self.truncation)


def tiny_biggan(z_dim: int = 8, classes: int = 5) -> nn.Module:
    """BigGAN at 8 px with channel width 4 and self-attention at 8 px, random weights; its
    unconditional batch norm's weight and bias (left uninitialised by the package) and its stored
    statistics are set, and spectral norm's power iteration is converged (it runs in train mode)."""
    biggan = pytest.importorskip("pytorch_pretrained_biggan")
    torch.manual_seed(0)
    config = biggan.BigGANConfig(output_dim=8, z_dim=z_dim, class_embed_dim=z_dim, channel_width=4,
                                 num_classes=classes, layers=[(True, 16, 8), (False, 8, 4), (False, 4, 2), (False, 2, 1)],
                                 attention_layer_position=2)
    generator = biggan.BigGAN(config)
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith("generator.bn.weight"):
                parameter.uniform_(0.5, 1.5)
            elif name.endswith("generator.bn.bias"):
                parameter.uniform_(-0.5, 0.5)
            elif name.endswith("gamma"):  # attention's residual weight (0 at init): make it count
                parameter.fill_(0.7)
        for name, buffer in generator.named_buffers():
            if name.endswith("running_means"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_vars"):
                buffer.uniform_(0.5, 1.5)
        generator.train()
        for _ in range(10):
            generator(torch.randn(2, z_dim), torch.eye(classes)[:2], 0.4)
    return generator.eval()


def test_biggan_runs_stacked_and_matches_reverse_mode():
    check_stacked(BigGANCall(tiny_biggan(), 5, 2, 0.4), (8,), samples=2)


# ----------------------------------------------------------------------------- diffusers


class Decode(nn.Module):
    """vae.decode(z).sample, the decoder of a latent diffusion model."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


def test_autoencoder_kl_decoder_runs_stacked_and_matches_reverse_mode():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, sample_size=8, norm_num_groups=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2)
    check_stacked(Decode(vae), (4, 4, 4), samples=2)  # GroupNorm, SiLU, attention, nearest upsampling


# ----------------------------------------------------------------------------- StyleGAN2-ADA-like


class StyleGANCall(nn.Module):
    """G(z, c, truncation_psi, noise_mode='const'), c empty (unconditional) or one class's one-hot."""

    def __init__(self, generator: StyleGANLike, label: int | None, psi: float, cutoff: int | None = None):
        super().__init__()
        self.generator, self.label, self.psi, self.cutoff = generator, label, psi, cutoff

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = torch.zeros(z.shape[0], self.generator.c_dim, dtype=z.dtype, device=z.device)
        if self.label is not None:
            c[:, self.label] = 1
        return self.generator(z, c, truncation_psi=self.psi, truncation_cutoff=self.cutoff, noise_mode="const")


@pytest.mark.parametrize("c_dim, label, psi, cutoff", [(0, None, 1, None), (0, None, 0.7, None), (3, 1, 0.7, 2)])
def test_stylegan_like_runs_stacked_and_matches_reverse_mode(c_dim, label, psi, cutoff):
    torch.manual_seed(0)
    check_stacked(StyleGANCall(StyleGANLike(c_dim=c_dim), label, psi, cutoff), (8,), samples=2)


def test_stylegan_like_collapses_the_radial_direction_of_z():
    """The mapping network normalises z's second moment, so G(a z) = G(z) up to its 1e-8 epsilon:
    J z = 0 and the Jacobian has rank d - 1 (the closed form behind the note for StyleGAN users)."""
    torch.manual_seed(0)
    decoder = StyleGANCall(StyleGANLike(), None, 0.7).double().eval().requires_grad_(False)
    latents = torch.randn(3, 8, dtype=torch.float64)
    jacobians = per_sample_reverse(decoder, latents, (8,))  # (d, B, D)
    for sample in range(3):
        jacobian = jacobians[:, sample].T  # (D, d)
        radial = jacobian @ latents[sample]
        assert float(radial.norm()) <= 1e-6 * float(jacobian.norm()) * float(latents[sample].norm())
        singular = torch.linalg.svdvals(jacobian)
        assert float(singular[-1]) <= 1e-6 * float(singular[0]) < float(singular[-2])
