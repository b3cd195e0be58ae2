"""The precision policy: what the decoder's compute dtype does to the estimate.

The decoder may run in float64, float32, bfloat16 or float16; the Gram matrix, its eigenvalues
and all statistics are float64 whatever it runs in. The probe computes the first few samples
again with the decoder in float64 (and float32, for the 16-bit dtypes) and reports, per scale,

    delta_s = mean_i [ h_i(dtype) - h_i(float64) ],   in standard errors: delta_s / stderr_s,

where stderr_s is the run's final standard error. Above ``PRECISION_PROBE_THRESHOLD`` the
dtype is flagged and the least precise dtype that stays under it is suggested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from genentropy_cli.core.decoder import PreparedDecoder, prepare_decoder, runs_in
from genentropy_cli.core.logdet import eigenvalue_subsample
from genentropy_cli.core.terms import compute_sample_terms
from genentropy_cli.defaults import PRECISION_PROBE_THRESHOLD, SUPPORTED_DTYPES
from genentropy_cli.errors import InputError, first_line
from genentropy_cli.run.memory import FirstBatchCalibration, is_out_of_memory, release_cached_memory


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def more_precise_dtypes(dtype: str) -> list[str]:
    """The supported dtypes more precise than ``dtype``, least precise first (float32, float64)."""
    order = list(SUPPORTED_DTYPES)  # most precise first
    wider = order[: order.index(dtype)]
    return [name for name in reversed(wider) if name in ("float32", "float64")]


@dataclass
class ProbeComparison:
    """Per-sample h_i(dtype) - h_i(reference) over the probe samples, summarised per scale."""

    reference: str
    num_samples: int  # probe samples finite in both dtypes
    mean: list[float]
    stderr: list[float]  # of the mean difference (its own sampling noise)
    max_abs: list[float]

    @classmethod
    def from_differences(cls, reference: str, differences: np.ndarray) -> "ProbeComparison":
        finite = np.isfinite(differences).all(axis=1)
        values = differences[finite]
        count = int(values.shape[0])
        if count == 0:
            nan = [math.nan] * differences.shape[1]
            return cls(reference, 0, nan, nan, nan)
        spread = values.std(axis=0, ddof=1) / math.sqrt(count) if count > 1 else np.full(values.shape[1], math.nan)
        return cls(reference, count, values.mean(axis=0).tolist(), spread.tolist(), np.abs(values).max(axis=0).tolist())


@dataclass
class PrecisionProbe:
    """What the probe measured; ``report`` turns it into standard errors of the final run."""

    dtype: str
    num_samples: int
    comparisons: list[ProbeComparison] = field(default_factory=list)
    skipped: str | None = None

    def to_state(self) -> dict:
        return {"dtype": self.dtype, "num_samples": self.num_samples, "skipped": self.skipped,
                "comparisons": [vars(item) for item in self.comparisons]}

    @classmethod
    def from_state(cls, state: dict) -> "PrecisionProbe":
        return cls(state["dtype"], int(state["num_samples"]),
                   [ProbeComparison(**item) for item in state["comparisons"]], state.get("skipped"))

    def report(self, scales: Sequence[float], stderr: Sequence[float],
               threshold: float = PRECISION_PROBE_THRESHOLD) -> dict:
        """The JSON block: the float64 difference per scale in the run's standard errors, whether
        it exceeds ``threshold``, and the least precise dtype that would not."""
        document: dict[str, Any] = {"dtype": self.dtype, "reference_dtype": "float64",
                                    "num_samples": self.num_samples, "scales": list(scales),
                                    "threshold_in_stderr": threshold}
        if self.skipped:
            return {**document, "skipped": self.skipped, "flagged": False, "suggested_dtype": None}
        in_stderr = {item.reference: _in_stderr(item.mean, stderr) for item in self.comparisons}
        reference = self.comparisons[-1]  # float64
        flagged = _exceeds(in_stderr[reference.reference], threshold)
        suggestion = None
        if flagged:
            suggestion = next((item.reference for item in self.comparisons
                               if item.reference != "float64" and not _exceeds(_in_stderr(
                                   _difference_to_float64(self.comparisons, item), stderr), threshold)), "float64")
        document.update({
            "difference": reference.mean,
            "difference_stderr": reference.stderr,
            "max_abs_difference": reference.max_abs,
            "difference_in_stderr": in_stderr[reference.reference],
            "flagged": flagged,
            "suggested_dtype": suggestion,
        })
        if len(self.comparisons) > 1:
            document["other_references"] = [
                {"dtype": item.reference, "difference": item.mean, "difference_in_stderr": in_stderr[item.reference]}
                for item in self.comparisons[:-1]
            ]
        return document


def measure_precision(decoder: Any, prepared: PreparedDecoder, latents: torch.Tensor,
                      scales: Sequence[float], tangent_chunk: int | None,
                      batch_size: int | None = None,
                      plan: Callable[[PreparedDecoder], tuple[int, int]] | None = None,
                      calibration: Callable[[int], FirstBatchCalibration] | None = None) -> PrecisionProbe | None:
    """Compute the probe samples ``latents`` with ``prepared`` (the run's dtype) and again with
    the decoder in each more precise dtype, ``batch_size`` samples at a time (None: all at
    once); None where the run already uses float64. ``plan``, where given, sizes the batches
    (batch, chunk) of each more precise copy once that copy exists, so that a memory plan
    counts the copy's own bytes. ``calibration``, where given, makes each pass's first batch a
    measured one (``memory.FirstBatchCalibration``) that sizes the rest."""
    dtype = dtype_name(prepared.dtype)
    references = more_precise_dtypes(dtype)
    if not references or latents.shape[0] == 0:
        return None
    probe = PrecisionProbe(dtype, int(latents.shape[0]))
    if not isinstance(decoder, torch.nn.Module):
        probe.skipped = "the decoder is a plain callable, which cannot be run again in float64 to check --dtype"
        return probe

    def terms(which: PreparedDecoder, batch: int | None, chunk: int | None) -> np.ndarray:
        count = latents.shape[0]
        step = int(batch) if batch else count

        def compute(first: int, last: int) -> np.ndarray:
            return compute_sample_terms(which, latents[first:last], scales, chunk,
                                        eigenvalue_subsample(range(first, last))).entropy_terms.numpy()

        parts, first = [], 0
        measured = calibration(step) if calibration is not None else None
        if measured is not None and measured.active:
            first = min(count, measured.first_size())
            parts.append(measured.run(first, lambda: compute(0, first)))
            step = min(step, measured.calibrated or step)
        parts += [compute(start, min(count, start + step)) for start in range(first, count, step)]
        return np.concatenate(parts)

    if not any(runs_in(decoder, prepared.latent, prepared.device, getattr(torch, reference))
               for reference in references):  # nothing to compare with: no sample is computed for nothing
        return _cannot_run(decoder, prepared, dtype, references[0], int(latents.shape[0]))
    try:
        low = terms(prepared, batch_size, tangent_chunk)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        release_cached_memory(prepared.device)
        return PrecisionProbe(dtype, int(latents.shape[0]), skipped="out of memory for the probe samples")
    for reference in references:
        try:
            precise = prepare_decoder(decoder, prepared.latent, prepared.device, getattr(torch, reference))
        except InputError as error:  # e.g. a float32-only export: the check cannot run, the estimate can
            return _unchecked(dtype, reference, error, int(latents.shape[0]))
        try:
            batch, chunk = plan(precise) if plan is not None else (batch_size, tangent_chunk)
        except InputError as error:  # the memory cap leaves no room for the copy's batch
            return PrecisionProbe(dtype, int(latents.shape[0]),
                                  skipped=f"no room for the {reference} copy of the decoder ({error})")
        try:
            high = terms(precise, batch, chunk)
        except RuntimeError as error:
            del precise
            release_cached_memory(prepared.device)
            reason = (f"out of memory for the {reference} copy of the decoder" if is_out_of_memory(error)
                      else f"the decoder fails in {reference} ({first_line(error)})")
            return PrecisionProbe(dtype, int(latents.shape[0]), skipped=reason)
        del precise
        probe.comparisons.append(ProbeComparison.from_differences(reference, low - high))
    return probe


def _unchecked(dtype: str, reference: str, error: InputError, count: int) -> PrecisionProbe:
    """The probe skipped because the decoder cannot be prepared in ``reference`` (``error`` says why)."""
    why = str(error).split(" but runs in")[0].removeprefix(f"the decoder fails in {reference} ")
    return PrecisionProbe(dtype, count, skipped=f"the decoder runs only in {str(dtype).removeprefix('torch.')}, not in "
                                                f"{reference} {why}: the estimate stands, unchecked against {reference}")


def _cannot_run(decoder: Any, prepared: PreparedDecoder, dtype: str, reference: str, count: int) -> PrecisionProbe:
    """Why no copy in a more precise dtype runs (``reference``'s failure), found before the probe
    samples are computed: with nothing to compare them with, they would be computed for nothing
    (a StyleGAN2 at 256 px: 20 samples of a 20-sample run, twice the run's time)."""
    try:
        prepare_decoder(decoder, prepared.latent, prepared.device, getattr(torch, reference))
    except InputError as error:
        return _unchecked(dtype, reference, error, count)
    return PrecisionProbe(dtype, count, skipped=f"the decoder does not run in {reference}: the estimate stands, "
                                                f"unchecked against {reference}")


def _in_stderr(difference: Sequence[float], stderr: Sequence[float]) -> list[float]:
    return [value / error if error > 0 else math.nan for value, error in zip(difference, stderr)]


def _exceeds(values: Sequence[float], threshold: float) -> bool:
    return any(abs(value) > threshold for value in values if math.isfinite(value))


def _difference_to_float64(comparisons: list[ProbeComparison], item: ProbeComparison) -> list[float]:
    """h(candidate) - h(float64) = [h(dtype) - h(float64)] - [h(dtype) - h(candidate)]."""
    reference = comparisons[-1]
    return [whole - part for whole, part in zip(reference.mean, item.mean)]


def probe_warning(report: dict) -> str | None:
    """One line for stderr when the dtype moves the estimate too much, naming the remedy."""
    if not report or not report.get("flagged"):
        return None
    worst = max(range(len(report["scales"])), key=lambda index: abs(_nan_to_zero(report["difference_in_stderr"][index])))
    return (
        f"--dtype {report['dtype']} moves the estimate at s = {report['scales'][worst]:g} by "
        f"{report['difference_in_stderr'][worst]:+.2f} standard errors (float64 check on the first "
        f"{report['num_samples']} samples, threshold {report['threshold_in_stderr']:g}); "
        f"rerun with --dtype {report['suggested_dtype']}"
    )


def _nan_to_zero(value: float) -> float:
    return value if math.isfinite(value) else 0.0
