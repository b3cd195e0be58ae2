"""``EntropyTorchMetric``: ``EntropyMetric``'s estimate as a ``torchmetrics.Metric`` (the optional
extra ``torchmetrics``; this module alone imports it).

    metric = EntropyTorchMetric(62, scales=[1e-4], n_samples=2000, seed=0)
    metric.update(generator)            # N more samples of the generator's h_i
    metric.compute()                    # {"entropy/s=0.0001": tensor, "entropy_stderr/s=0.0001": tensor}
    metric.reset()

Each ``update(generator)`` estimates the generator on N latents and adds their moments to the
metric's state; ``compute()`` gives, per scale, the mean of every h_i added since the last
``reset()`` and its standard error. Which latents: the u-th update counted over all processes
(u = k * world_size + rank for this process's k-th update since ``reset``) takes the N latents
of the seeded sequence of seed + u, so one update of one process is exactly
``EntropyMetric(..., seed=seed)``'s call, every epoch (after ``reset``) sees the same latents,
and processes never share a latent.

The state is one row (count, mean, M2) per update and scale, in float64, registered with
``dist_reduce_fx="cat"``; ``compute`` merges the rows in order with Chan's formula (exact for
any split: no sums of squares to cancel). Under DDP the rows of every rank are gathered, rank 0's
first, which is the order one process's updates would have: K processes give one process's
result over the union of their latents. The estimate itself runs in this process only (it never
joins the process group: ``distributed=False``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from genentropy_cli.core.latents import LatentDistribution, LatentSpec, make_latent_spec
from genentropy_cli.core.stats import RunningMoments
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.estimate import estimate_entropy
from genentropy_cli.jobs.metric import options_for_generator, preserved_random_state, scalar_name, unwrap_generator
from genentropy_cli.run.options import EstimateOptions, options_from

__all__ = ["EntropyTorchMetric"]


class EntropyTorchMetric(Metric):
    """The entropy of a generator (nats) and its standard error, per scale, as a torchmetrics
    ``Metric`` (see the module docstring). Arguments as for ``EntropyMetric``."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, latent: LatentSpec | int | Sequence[int], scales: Sequence[float] | None = None,
                 n_samples: int | None = None, *, options: EstimateOptions | None = None,
                 latent_distribution: str | LatentDistribution | None = None, prefix: str = "entropy",
                 **settings: Any) -> None:
        metric_keywords = {name: settings.pop(name) for name in list(settings)
                           if name in ("compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn",
                                       "distributed_available_fn", "sync_on_compute", "compute_with_cache")}
        super().__init__(**metric_keywords)
        given = {"scales": scales, "num_samples": n_samples}
        self.options = options_from(options, **{key: value for key, value in given.items() if value is not None},
                                    **settings).replace(distributed=False)
        for name in ("checkpoint", "per_sample"):
            if getattr(self.options, name) is not None:
                raise InputError(f"EntropyTorchMetric runs once per update: {name} is not supported (leave it None)")
        if latent_distribution is not None and not isinstance(latent, LatentSpec):
            self.spec = make_latent_spec(latent, latent_distribution)
        else:
            self.spec = make_latent_spec(latent)
        self.prefix = prefix
        self.updates = 0
        self.add_state("moments", default=[], dist_reduce_fx="cat")

    def _update_index(self) -> int:
        """u = k * world_size + rank: distinct over the processes of the default group."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return self.updates * torch.distributed.get_world_size() + torch.distributed.get_rank()
        return self.updates

    def update(self, generator: Any) -> None:  # type: ignore[override]
        """Estimate ``generator`` on the next N latents (see the module docstring) and keep their
        moments; the generator, its mode and the global random states are left as they were."""
        decoder = unwrap_generator(generator)
        options = options_for_generator(self.options, decoder).replace(seed=self.options.seed + self._update_index())
        with preserved_random_state(), torch.inference_mode(False), torch.enable_grad():
            result = estimate_entropy(decoder, self.spec, options=options)
        rows = [(item.num_samples, item.entropy, item.std ** 2 * (item.num_samples - 1) if item.num_samples > 1 else 0.0)
                for item in result.estimates]
        self.moments.append(torch.tensor([rows], dtype=torch.float64, device=self.device))
        self.updates += 1

    def merged(self) -> RunningMoments:
        """Every update's moments (this process's, or all processes' once synced) merged in order."""
        rows = dim_zero_cat(self.moments) if len(self.moments) else torch.zeros(0, len(self.options.scales), 3)
        total = RunningMoments.empty(len(self.options.scales))
        for row in rows.detach().cpu().double().numpy():
            counts = row[:, 0]
            if counts[0] > 0:
                total = total.merge(RunningMoments(int(counts[0]), np.array(row[:, 1]), np.array(row[:, 2])))
        return total

    def compute(self) -> dict[str, torch.Tensor]:
        """Per scale s: ``entropy/s=...`` (the mean h_i) and ``entropy_stderr/s=...`` (std / sqrt(N))."""
        if not len(self.moments):
            raise InputError("EntropyTorchMetric.compute() before any update(generator)")
        total = self.merged()
        values: dict[str, torch.Tensor] = {}
        for index, scale in enumerate(self.options.scales):
            values[scalar_name("entropy", scale, self.prefix)] = torch.tensor(float(total.mean[index]),
                                                                              dtype=torch.float64)
            values[scalar_name("stderr", scale, self.prefix)] = torch.tensor(float(total.stderr[index]),
                                                                             dtype=torch.float64)
        return values

    def forward(self, generator: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``update(generator)``, then ``compute()``: the value over every update so far."""
        self.update(generator)
        return self.compute()

    def reset(self) -> None:
        """Forget every update: the next one starts again from the first latents."""
        super().reset()
        self.updates = 0

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """torchmetrics' plot of ``compute()`` (or of ``val``, one result or a list of them);
        needs matplotlib (``pip install 'genentropy[plot]'``)."""
        return self._plot(val, ax)
