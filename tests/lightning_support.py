"""The tiny GAN of ``training_support`` as a LightningModule, a callback that saves the
generator after every epoch, and a logger that records what Lightning hands it (imported
only where Lightning is installed)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as lightning
import torch
from lightning.pytorch.loggers import Logger
from training_support import BATCH, gan_step, make_discriminator, make_generator, make_optimizers, ring_data


class TinyGAN(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.generator, self.discriminator = make_generator(), make_discriminator()
        self.automatic_optimization = False

    def training_step(self, batch, batch_index):
        generator_optimizer, discriminator_optimizer = self.optimizers()
        gan_step(self.generator, self.discriminator, batch[0], (generator_optimizer, discriminator_optimizer))

    def configure_optimizers(self):
        return list(make_optimizers(self.generator, self.discriminator))

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(ring_data())
        return torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False)


class SaveGenerator(lightning.Callback):
    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_epoch_end(self, trainer, pl_module):
        from training_support import save_generator

        save_generator(pl_module.generator, self.folder, trainer.current_epoch + 1)


class RecordingLogger(Logger):
    def __init__(self):
        super().__init__()
        self.records: list[dict] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append(dict(metrics))
