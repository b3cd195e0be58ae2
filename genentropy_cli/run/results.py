"""Results of a run: the estimate per scale, with the settings and diagnostics that produced it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from genentropy_cli.core.latents import LatentSpec, distribution_label
from genentropy_cli.core.stats import RunningMoments
from genentropy_cli.envelope import envelope


@dataclass
class ScaleEstimate:
    scale: float
    entropy: float
    stderr: float
    std: float
    ci95: tuple[float, float]
    num_samples: int

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "entropy": self.entropy,
            "stderr": self.stderr,
            "std": self.std,
            "ci95": [self.ci95[0], self.ci95[1]],
            "num_samples": self.num_samples,
        }


@dataclass(kw_only=True)
class RunRecord:
    """What every job's result records of its run; keyword fields, after each result's own."""

    settings: dict
    elapsed_seconds: float
    diagnostics: dict = field(default_factory=dict)
    partial: bool = False
    """True when the run was interrupted: the result uses the samples done so far."""
    stop_reason: str = "num_samples"
    """What ended the run: num_samples (the -n cap), target_stderr or interrupted."""


@dataclass(kw_only=True)
class DecoderRunRecord(RunRecord):
    """... and, for a run of one decoder, its latent, its output and its sample accounting."""

    latent: LatentSpec
    output_dim: int
    output_shape: tuple[int, ...]
    num_nonfinite: int = 0
    nonfinite_indices: list[int] = field(default_factory=list)
    precision_probe: dict | None = None
    """The float64 check of the decoder dtype (``precision.PrecisionProbe.report``); None in float64."""
    samples_computed: int | None = None
    """Samples this call computed (less than N after a resume, more after an adaptive stop)."""
    model_record: dict | None = field(default=None, repr=False)
    """The model's file record (``ResolvedModel.describe()``) where the run was of a file (the
    ``*_file`` functions): ``to_dict()`` then needs no ``model`` and equals the CLI's document."""

    @property
    def samples_per_second(self) -> float:
        used = self.settings["num_samples"] if self.samples_computed is None else self.samples_computed
        return used / self.elapsed_seconds if self.elapsed_seconds > 0 else math.inf

    def run_dict(self) -> dict:
        """The JSON keys every decoder result ends with (docs/json.md)."""
        return {
            "num_nonfinite": self.num_nonfinite,
            "nonfinite_indices": list(self.nonfinite_indices),
            "elapsed_seconds": self.elapsed_seconds,
            "samples_per_second": self.samples_per_second,
            "diagnostics": dict(self.diagnostics),
            "partial": self.partial,
            "stop_reason": self.stop_reason,
            "precision_probe": self.precision_probe,
        }


@dataclass
class EntropyResult(DecoderRunRecord):
    """The estimate at every scale, the settings that produced it, and diagnostics."""

    estimates: list[ScaleEstimate]

    def estimate(self, scale: float) -> ScaleEstimate:
        for item in self.estimates:
            if math.isclose(item.scale, scale, rel_tol=1e-12):
                return item
        raise KeyError(scale)

    def model_dict(self) -> dict:
        return {
            "latent_shape": list(self.latent.shape),
            "latent_distribution": distribution_label(self.latent.distribution),
            "output_dim": self.output_dim,
            "output_shape": list(self.output_shape),
        }

    def to_dict(self, command: str = "estimate", model: dict | None = None) -> dict:
        """The JSON document described in docs/json.md (stable key names)."""
        return envelope(command, {
            "model": {**((self.model_record if model is None else model) or {}), **self.model_dict()},
            "settings": dict(self.settings),
            "estimates": [item.to_dict() for item in self.estimates],
            **self.run_dict(),
        })


def estimates_from_moments(scales: Sequence[float], moments: RunningMoments) -> list[ScaleEstimate]:
    """One ScaleEstimate per scale (NaN where no sample was used, as in an early interrupt)."""
    if moments.count == 0:
        moments = RunningMoments(0, np.full(len(scales), math.nan), np.full(len(scales), math.nan))
    lower, upper = moments.ci95()
    return [
        ScaleEstimate(
            scale=float(scale),
            entropy=float(moments.mean[index]),
            stderr=float(moments.stderr[index]),
            std=float(moments.std[index]),
            ci95=(float(lower[index]), float(upper[index])),
            num_samples=int(moments.count),
        )
        for index, scale in enumerate(scales)
    ]
