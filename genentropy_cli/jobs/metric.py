"""``EntropyMetric``: a generator's entropy during training, and its change since the last call.

Built once with the latent spec, scales, N, seed and run options, the metric estimates every
generator it is called on from the SAME latents z_1..z_N (sample i's latent depends only on
(seed, i)). The change between two calls is then estimated with common random numbers:

    Delta_s = (1/n) sum_i [h_s^new(z_i) - h_s^old(z_i)],   se_paired = std_i(h_s^new - h_s^old) / sqrt(n)

over the n samples finite in both calls. Successive generators are close, so their terms are
strongly correlated and se_paired is far below the unpaired sqrt(se_new^2 + se_old^2), which
is also reported. To pair, the metric keeps the previous call's per-sample terms h_s(z_i): an
(N, S) float64 array of 8 N S bytes (400 KB at the default N = 50,000 and one scale; at most
two such arrays exist during a call), filled from the loop's ``on_rows`` hook, which hands every
sample's rows in sample order to every process.

A call never changes the generator: the loop estimates a private copy (``prepare_decoder``: a
deep copy put in eval mode, gradients off, moved to the run's device and dtype), so the
generator's training mode, ``requires_grad`` flags, device, parameters, gradients and buffers
stay as they were. Nor does it change the global random states of Python, NumPy and torch
(CPU, and the CUDA devices once CUDA is initialised): they are saved before the call and
restored after it. The loop itself draws its latents from its own seeded generators; the
restore also covers a decoder that draws random numbers itself.

Inside ``torch.distributed`` (DDP, Lightning's ddp strategy) every rank calls the metric at the
same point of training with the same generator (as DDP keeps it). The loop joins the
initialised default process group, never creating or destroying one, deals the latent blocks
round-robin and exchanges the rows, so every rank gets the same result, equal to one
process's (``run/distributed.py``).
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from genentropy_cli.core.latents import LatentDistribution, LatentSpec, make_latent_spec
from genentropy_cli.core.significance import significance_mark, two_sided_p_value, unpaired_stderr, z_score
from genentropy_cli.core.stats import RunningMoments
from genentropy_cli.defaults import DEFAULT_DEVICE
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.estimate import estimate_entropy
from genentropy_cli.run.options import EstimateOptions, options_from
from genentropy_cli.run.results import EntropyResult, ScaleEstimate

__all__ = ["EntropyChange", "EntropyMetric", "MetricResult", "options_for_generator", "scalar_name", "summary_writer",
           "write_scalars"]


@dataclass
class EntropyChange:
    """H_s(this call) - H_s(previous call) on common latents, with its paired standard error."""

    scale: float
    difference: float
    stderr: float  # paired: std of the per-sample differences / sqrt(n)
    unpaired_stderr: float  # sqrt(se_now^2 + se_before^2), what separate runs would give
    correlation: float  # of the two calls' per-sample terms
    num_samples: int  # n: samples finite in both calls

    @property
    def z_score(self) -> float:
        return z_score(self.difference, self.stderr)

    @property
    def p_value(self) -> float:
        """Two-sided normal test of no change."""
        return two_sided_p_value(self.z_score)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "difference": self.difference, "stderr": self.stderr,
                "unpaired_stderr": self.unpaired_stderr, "correlation": self.correlation,
                "num_samples": self.num_samples, "z": self.z_score, "p_value": self.p_value,
                "mark": significance_mark(self.p_value)}


def scalar_name(kind: str, scale: float, prefix: str = "entropy") -> str:
    """The logged name of a value: ``entropy/s=0.0001``, ``entropy_stderr/s=0.0001``, ..."""
    return f"{prefix}{'' if kind == 'entropy' else '_' + kind}/s={scale:g}"


@dataclass
class MetricResult:
    """One call: the estimate per scale and, from the second call on, the change since the last."""

    call: int  # 1 for the first call since the metric was built or reset
    estimates: list[ScaleEstimate]
    changes: list[EntropyChange]  # empty at the first call
    result: EntropyResult = field(repr=False)

    def scalars(self, prefix: str = "entropy") -> dict[str, float]:
        """What a logger records, per scale s: entropy/s=..., entropy_stderr/s=..., and from the
        second call entropy_change/s=..., entropy_change_stderr/s=... (paired)."""
        values: dict[str, float] = {}
        for estimate in self.estimates:
            values[scalar_name("entropy", estimate.scale, prefix)] = estimate.entropy
            values[scalar_name("stderr", estimate.scale, prefix)] = estimate.stderr
        for change in self.changes:
            values[scalar_name("change", change.scale, prefix)] = change.difference
            values[scalar_name("change_stderr", change.scale, prefix)] = change.stderr
        return values

    def to_dict(self) -> dict:
        return {"call": self.call, "estimates": [item.to_dict() for item in self.estimates],
                "changes": [item.to_dict() for item in self.changes]}


class EntropyMetric:
    """The entropy of a generator at every call, on common latents (see the module docstring).

        metric = EntropyMetric(62, scales=[1e-4], n_samples=2000, seed=0, dtype="float64")
        result = metric(generator)          # or metric.update(generator); metric.compute()
        result.estimates[0].entropy, result.changes[0].difference, result.changes[0].stderr

    ``latent`` is a LatentSpec, a dimension or a shape (``latent_distribution`` as for
    ``estimate_entropy``); the run settings are ``options`` and/or ``EstimateOptions`` fields as
    keywords. With the default device (auto) the generator is estimated on the device its
    parameters are on. ``checkpoint`` and ``per_sample`` are refused: each call is a run of its own.
    """

    def __init__(self, latent: LatentSpec | int | Sequence[int], scales: Sequence[float] | None = None,
                 n_samples: int | None = None, *, options: EstimateOptions | None = None,
                 latent_distribution: str | LatentDistribution | None = None,
                 log: Callable[[str], None] | None = None, **settings: Any):
        given = {"scales": scales, "num_samples": n_samples}
        self.options = options_from(options, **{key: value for key, value in given.items() if value is not None},
                                    **settings)
        for name in ("checkpoint", "per_sample"):
            if getattr(self.options, name) is not None:
                raise InputError(f"EntropyMetric runs once per call: {name} is not supported (leave it None)")
        if latent_distribution is not None and not isinstance(latent, LatentSpec):
            self.spec = make_latent_spec(latent, latent_distribution)
        else:
            self.spec = make_latent_spec(latent)
        self.log = log
        self.calls = 0
        self._terms: np.ndarray | None = None  # the previous call's h_s(z_i), (N, S) float64, NaN where absent
        self._latest: MetricResult | None = None

    def __call__(self, generator: Any) -> MetricResult:
        self.update(generator)
        return self.compute()

    def update(self, generator: Any) -> None:
        """Estimate ``generator`` (a module or a callable; DDP/DataParallel wrappers and
        ``torch.compile`` are unwrapped) on the metric's latents."""
        decoder = unwrap_generator(generator)
        num_samples, num_scales = self.options.num_samples, len(self.options.scales)
        terms = np.full((num_samples, num_scales), np.nan)

        def keep(first_index: int, rows: Any) -> None:
            terms[first_index:first_index + len(rows)] = rows.terms

        with preserved_random_state(), torch.inference_mode(False), torch.enable_grad():
            result = estimate_entropy(decoder, self.spec, options=self._options_for(decoder), on_rows=keep,
                                      log=self.log)
        changes: list[EntropyChange] = []
        if self._terms is not None and self._latest is not None:
            changes = paired_changes(terms, self._terms, result.estimates, self._latest.estimates)
        self.calls += 1
        self._terms = terms
        self._latest = MetricResult(self.calls, result.estimates, changes, result)

    def compute(self) -> MetricResult:
        """The latest call's result."""
        if self._latest is None:
            raise InputError("EntropyMetric.compute() before any update(generator)")
        return self._latest

    def reset(self) -> None:
        """Forget the previous call: the next one reports no change."""
        self.calls, self._terms, self._latest = 0, None, None

    def _options_for(self, decoder: Any) -> EstimateOptions:
        return options_for_generator(self.options, decoder)


def options_for_generator(options: EstimateOptions, decoder: Any) -> EstimateOptions:
    """``options`` with the automatic device made the device of the generator's parameters."""
    if options.device != DEFAULT_DEVICE or not isinstance(decoder, torch.nn.Module):
        return options
    tensor = next(chain(decoder.parameters(), decoder.buffers()), None)
    return options if tensor is None else options.replace(device=str(tensor.device))


def paired_changes(now: np.ndarray, before: np.ndarray, estimates_now: Sequence[ScaleEstimate],
                   estimates_before: Sequence[ScaleEstimate]) -> list[EntropyChange]:
    """The change per scale from two calls' per-sample terms (N, S) on common latents: the mean
    and standard error of h_i(now) - h_i(before) over the samples finite in both."""
    common = np.isfinite(now).all(axis=1) & np.isfinite(before).all(axis=1)
    differences = RunningMoments.from_values(now[common] - before[common])
    changes = []
    for index, (current, previous) in enumerate(zip(estimates_now, estimates_before)):
        correlation = math.nan
        if differences.count >= 2 and now[common, index].std() > 0 and before[common, index].std() > 0:
            correlation = float(np.corrcoef(now[common, index], before[common, index])[0, 1])
        difference = float(differences.mean[index]) if differences.count else math.nan
        changes.append(EntropyChange(current.scale, difference, float(differences.stderr[index]),
                                     unpaired_stderr(current.stderr, previous.stderr), correlation,
                                     int(differences.count)))
    return changes


def unwrap_generator(generator: Any) -> Any:
    """The module inside DistributedDataParallel / DataParallel and ``torch.compile`` wrappers
    (a deep copy of DDP itself would copy its process group)."""
    while True:
        if isinstance(generator, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            generator = generator.module
        elif isinstance(getattr(generator, "_orig_mod", None), torch.nn.Module):
            generator = generator._orig_mod
        else:
            return generator


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Python's, NumPy's and torch's global random states (CPU, and every CUDA device once CUDA
    is initialised) as they were before the block, whatever the block draws."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------- plain PyTorch logging


def write_scalars(writer: Any, result: MetricResult, step: int, prefix: str = "entropy") -> dict[str, float]:
    """Log a call's values (``MetricResult.scalars``) with ``writer.add_scalar(name, value, step)``:
    TensorBoard's ``SummaryWriter`` or anything with that method. Returns what was written."""
    values = result.scalars(prefix)
    for name, value in values.items():
        writer.add_scalar(name, value, step)
    return values


def summary_writer(log_dir: str) -> Any:
    """``torch.utils.tensorboard.SummaryWriter(log_dir)``; a one-line error if tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                         "(or pass any object with add_scalar(name, value, step) to write_scalars)") from None
    return SummaryWriter(log_dir)
