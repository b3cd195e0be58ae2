"""``EntropyCallback``: a Lightning callback that runs an ``EntropyMetric`` every k epochs or steps
and logs its values through the LightningModule's ``log`` (so to every logger of the Trainer).

Lightning is an optional extra (``pip install 'genentropy[lightning]'``): this module subclasses
``lightning.pytorch.Callback`` (else ``pytorch_lightning.Callback``) when one is installed and a
plain object otherwise, with the same hooks. Import it on demand
(``from genentropy_cli import EntropyCallback``): importing Lightning takes seconds.

Logged per scale s (``MetricResult.scalars``): ``entropy/s=...``, ``entropy_stderr/s=...`` and,
from the second evaluation on, ``entropy_change/s=...`` and ``entropy_change_stderr/s=...`` (the
change since the previous evaluation with its paired standard error). Epoch-wise values are
logged with ``on_epoch=True``; step-wise ones with ``on_step=True``, which Lightning hands to the
loggers every ``log_every_n_steps`` steps (make ``every_n_steps`` a multiple of it). Under DDP
every rank evaluates, gets the same values, and Lightning's loggers write rank 0's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from genentropy_cli.errors import InputError
from genentropy_cli.jobs.metric import EntropyMetric, MetricResult

__all__ = ["EntropyCallback", "TrainingPoint"]


def _lightning_callback_base() -> type:
    for module_name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            module = __import__(module_name, fromlist=["Callback"])
        except ImportError:
            continue
        return module.Callback
    return object


@dataclass
class TrainingPoint:
    """One evaluation: after which epoch (0-based, as Lightning counts) and optimizer step."""

    epoch: int
    global_step: int
    result: MetricResult


class EntropyCallback(_lightning_callback_base()):  # type: ignore[misc]
    """Evaluate ``metric`` on the generator every ``every_n_epochs`` epochs (at the epoch's end)
    or every ``every_n_steps`` optimizer steps, and log its values with ``pl_module.log``.

    ``generator`` says where the generator is: None (the LightningModule itself), an attribute
    name (``"generator"``) or a function of the LightningModule. ``history`` keeps every
    evaluation. The metric never changes the generator nor the random states (``metric.py``), so
    training is the same with or without the callback.
    """

    def __init__(self, metric: EntropyMetric, generator: str | Callable[[Any], Any] | None = None,
                 every_n_epochs: int | None = 1, every_n_steps: int | None = None, prefix: str = "entropy",
                 prog_bar: bool = False):
        super().__init__()
        if every_n_steps is not None:
            every_n_epochs = None
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and int(value) < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if every_n_epochs is None and every_n_steps is None:
            raise InputError("give every_n_epochs or every_n_steps")
        self.metric, self.generator = metric, generator
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.prefix, self.prog_bar = prefix, prog_bar
        self.history: list[TrainingPoint] = []

    def generator_of(self, pl_module: Any) -> Any:
        if self.generator is None:
            return pl_module
        if isinstance(self.generator, str):
            return getattr(pl_module, self.generator)
        return self.generator(pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs is None or getattr(trainer, "sanity_checking", False):
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module, on_step=False)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps is None or trainer.global_step == 0 or trainer.global_step % self.every_n_steps:
            return
        if self.history and self.history[-1].global_step == trainer.global_step:
            return  # several optimizers, or a batch without a step: once per step
        self.evaluate(trainer, pl_module, on_step=True)

    def evaluate(self, trainer: Any, pl_module: Any, on_step: bool) -> MetricResult:
        """Run the metric now and log its values."""
        result = self.metric(self.generator_of(pl_module))
        self.history.append(TrainingPoint(int(trainer.current_epoch), int(trainer.global_step), result))
        device = torch.device(getattr(pl_module, "device", "cpu"))
        dtype = torch.float32 if device.type == "mps" else torch.float64  # a float would become float32
        for name, value in result.scalars(self.prefix).items():
            pl_module.log(name, torch.tensor(value, dtype=dtype, device=device), on_step=on_step,
                          on_epoch=not on_step, prog_bar=self.prog_bar, batch_size=1)
        return result
