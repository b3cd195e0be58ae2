"""A tiny GAN for the training-time tests: a generator 3 -> 16 -> 8 (the built-in ``mlp``
architecture, so the CLI loads its checkpoints), a discriminator, 256 points on a noisy ring
embedded in 8 dimensions, and a plain training loop with Lightning's hook signatures
(``StandInTrainer``, ``StandInModule``) that the real Lightning test mirrors."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from genentropy_cli.models.architectures import MLPDecoder
from genentropy_cli.models.specs import save_safetensors

LATENT_DIM, OUTPUT_DIM, HIDDEN = 3, 8, (16,)
GENERATOR_KWARGS = {"latent_dim": LATENT_DIM, "output_dim": OUTPUT_DIM, "hidden": list(HIDDEN), "activation": "tanh",
                    "output_activation": "none"}
BATCH = 32


def make_generator() -> MLPDecoder:
    return MLPDecoder(**GENERATOR_KWARGS)


def make_discriminator() -> nn.Module:
    return nn.Sequential(nn.Linear(OUTPUT_DIM, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))


def ring_data(count: int = 256, seed: int = 3) -> torch.Tensor:
    """Points on a noisy circle, embedded in OUTPUT_DIM dimensions by a fixed random map."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.rand(count, generator=generator) * 2 * math.pi
    circle = torch.stack([angles.cos(), angles.sin()], dim=1) + 0.05 * torch.randn(count, 2, generator=generator)
    return circle @ torch.randn(2, OUTPUT_DIM, generator=generator)


def gan_step(generator: nn.Module, discriminator: nn.Module, real: torch.Tensor, optimizers) -> None:
    """One discriminator step and one generator step (non-saturating loss); the latents come
    from torch's global generator, as in most training scripts."""
    generator_optimizer, discriminator_optimizer = optimizers
    loss = nn.functional.binary_cross_entropy_with_logits
    fake = generator(torch.randn(len(real), LATENT_DIM))
    real_score, fake_score = discriminator(real), discriminator(fake.detach())
    d_loss = loss(real_score, torch.ones_like(real_score)) + loss(fake_score, torch.zeros_like(fake_score))
    discriminator_optimizer.zero_grad()
    d_loss.backward()
    discriminator_optimizer.step()
    fake_score = discriminator(fake)
    g_loss = loss(fake_score, torch.ones_like(fake_score))
    generator_optimizer.zero_grad()
    g_loss.backward()
    generator_optimizer.step()


def make_optimizers(generator: nn.Module, discriminator: nn.Module):
    return (torch.optim.Adam(generator.parameters(), lr=1e-2, betas=(0.5, 0.999)),
            torch.optim.Adam(discriminator.parameters(), lr=1e-2, betas=(0.5, 0.999)))


def save_generator(generator: nn.Module, folder: Path, epoch: int) -> Path:
    """``gen-epoch=E.safetensors`` with its spec (and the epoch) embedded: the CLI needs no flags."""
    spec = {"architecture": "mlp", "kwargs": GENERATOR_KWARGS, "latent": {"shape": [LATENT_DIM], "distribution": "normal"},
            "training": {"epoch": epoch}}
    return save_safetensors(generator, folder / f"gen-epoch={epoch}.safetensors", spec)


class StandInTrainer:
    """What the callback reads of a Lightning Trainer."""

    def __init__(self):
        self.current_epoch, self.global_step, self.sanity_checking = 0, 0, False


class StandInModule(nn.Module):
    """A LightningModule's part the callback uses: the generator attribute and ``log``."""

    def __init__(self):
        super().__init__()
        self.generator, self.discriminator = make_generator(), make_discriminator()
        self.logged: dict[int, dict[str, float]] = {}  # epoch (1-based) -> name -> value
        self.epoch = 0

    def log(self, name: str, value, **settings) -> None:
        assert value.dtype == torch.float64
        self.logged.setdefault(self.epoch, {})[name] = value.item()


def train_stand_in(epochs: int, callbacks=(), folder: Path | None = None, seed: int = 0) -> StandInModule:
    """Train the tiny GAN with Lightning's hooks called as Lightning calls them; save the
    generator after every epoch into ``folder`` (if given)."""
    torch.manual_seed(seed)
    module, trainer = StandInModule(), StandInTrainer()
    optimizers = make_optimizers(module.generator, module.discriminator)
    data = ring_data()
    for epoch in range(epochs):
        trainer.current_epoch, module.epoch = epoch, epoch + 1
        for batch_index, start in enumerate(range(0, len(data), BATCH)):
            real = data[start:start + BATCH]
            gan_step(module.generator, module.discriminator, real, optimizers)
            trainer.global_step += 1
            for callback in callbacks:
                callback.on_train_batch_end(trainer, module, None, real, batch_index)
        if folder is not None:
            save_generator(module.generator, folder, epoch + 1)
        for callback in callbacks:
            callback.on_train_epoch_end(trainer, module)
    return module
