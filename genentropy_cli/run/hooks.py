"""What a caller can watch a run with: progress, notes, each batch, and every sample's rows."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from genentropy_cli.core.terms import SampleTerms
from genentropy_cli.run.interrupts import InterruptFlag

ProgressCallback = Callable[[int, int, Sequence[float]], None]
"""progress(samples_done, samples_total, running_entropy_per_scale). A callback may also have a
``stage(text)`` attribute: the run calls it with what it does before its first count ("checking
the decoder", "float64 precision probe", "first batch"; ``loop.announce_stage``)."""

LogCallback = Callable[[str], None]
"""log(note): out-of-memory retries, the precision warning, a peak over --max-memory."""

BatchCallback = Callable[[np.ndarray, torch.Tensor, SampleTerms], None]
"""on_batch(sample_indices, flat_latents, terms): each batch this process computes."""

RowsCallback = Callable[[int, Any], None]
"""on_rows(first_index, rows): every sample's rows, in global sample order, on every process
(under torchrun too): what a job that summarises all samples (extremes, collapse counts) uses."""


def warn_to_python(message: str) -> None:
    """The API's default for run notes."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)


@dataclass(frozen=True)
class RunHooks:
    progress: ProgressCallback | None = None
    log: LogCallback | None = None
    on_batch: BatchCallback | None = None
    on_rows: RowsCallback | None = None
    interrupt: InterruptFlag | None = None
    """A stop flag shared by several runs (``track``'s checkpoints, one after another): the run
    reads it instead of installing handlers of its own, so a Ctrl-C between two runs is not lost."""

    @property
    def notify(self) -> LogCallback:
        return self.log or warn_to_python
