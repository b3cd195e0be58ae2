"""The estimator: stream latents, batch Jacobians, float64 log-determinants, statistics.

    H_s = (1/N) sum_i h_i,   h_i = -log p(z_i) + 1/2 log det(J(z_i)^T J(z_i) + s^2 I)

(equation (3) of the paper with its sign fixed, NOTES.md), for every requested s from
one eigen-decomposition of J^T J per sample.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager, nullcontext
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from . import __version__
from .defaults import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SCALES,
    DEFAULT_SEED,
    CHECKPOINT_INTERVAL_SECONDS,
    PRECISION_PROBE_SAMPLES,
    STACKED_PROBE_COLUMNS,
    SUPPORTED_DTYPES,
    TARGET_STDERR_MIN_SAMPLES,
)
from .errors import InputError
from .jacobian import (
    DecoderFn,
    batched_jacobian,
    copy_with_fresh_torchscript,
    flat_decoder,
    fresh_torchscript_copy,
    is_torchscript,
    replicated_jacobian,
    reverse_mode_columns,
    torchscript_parts,
    torchscript_safe,
)
from .latents import LatentDistribution, LatentSpec, LatentStream, distribution_label, make_latent_spec
from .logdet import Workspace, gram_eigenvalues, half_log_det_regularised
from .memory import activation_bytes_per_row
from .stacked import UnsupportedOperation, stacked_jacobian, stacked_jacobian_profiled
from .stats import RunningMoments

ProgressCallback = Callable[[int, int, Sequence[float]], None]
"""progress(samples_done, samples_total, running_entropy_per_scale)."""


# --------------------------------------------------------------------------- settings


def resolve_device(name: str | torch.device = DEFAULT_DEVICE) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is an error."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu or auto")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise InputError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str | torch.dtype = DEFAULT_DTYPE) -> torch.dtype:
    """The decoder's compute dtype; Gram matrices and statistics are float64 regardless."""
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    text = str(name).strip().lower()
    if text not in SUPPORTED_DTYPES:
        raise InputError(f"unsupported dtype {name!r}; choose one of {', '.join(SUPPORTED_DTYPES)}")
    return getattr(torch, text)


def _tf32_switches() -> list[tuple[object, str]]:
    """(backend, attribute) pairs that control TF32: the fp32_precision API where this torch
    has it (mixing it with the legacy allow_tf32 flags raises), else the legacy flags."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return [(torch.backends.cuda.matmul, "fp32_precision"), (torch.backends.cudnn.conv, "fp32_precision"),
                (torch.backends.cudnn.rnn, "fp32_precision")]
    return [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]


@contextmanager
def strict_float32() -> Iterator[None]:
    """Switch TF32 off (matmul and cuDNN) for the estimate, then restore the user's settings.

    TF32 convolutions and matmuls keep 10 mantissa bits, which ruins Jacobians at small s.
    """
    switches = _tf32_switches()
    saved = [getattr(backend, name) for backend, name in switches]
    for backend, name in switches:
        setattr(backend, name, "ieee" if name == "fp32_precision" else False)
    try:
        yield
    finally:
        for (backend, name), value in zip(switches, saved):
            setattr(backend, name, value)


def tf32_enabled() -> bool:
    """Whether TF32 is allowed for CUDA matmuls or cuDNN convolutions right now."""
    return any(getattr(backend, name) in (True, "tf32") for backend, name in _tf32_switches())


def validate_scales(scales: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in scales)
    if not values:
        raise InputError("give at least one scale, e.g. --scale 1e-4")
    for value in values:
        if not (value > 0 and math.isfinite(value)):
            raise InputError(f"scale must be a positive number, got {value:g}")
    return values


def resolve_work_sizes(latent_dim: int, output_dim: int, dtype: torch.dtype, device: torch.device,
                       batch_size: int | None = None, tangent_chunk: int | None = None) -> tuple[int, int]:
    """(batch size, tangent chunk): the ones given, else ``planning.plan_batch``'s choice
    within the device's default memory budget."""
    from .memory import device_memory_budget
    from .planning import plan_batch

    plan = plan_batch(latent_dim, output_dim, dtype, device, None, working_memory=device_memory_budget(device),
                      batch_size=batch_size, tangent_chunk=tangent_chunk)
    return plan.batch_size, plan.tangent_chunk


# --------------------------------------------------------------------------- decoder


@dataclass
class PreparedDecoder:
    """A decoder ready for estimation: a private copy in eval mode, gradients off, on
    ``device`` in ``dtype``; TorchScript reloaded fresh and run without the optimising
    executor so forward-mode AD stays exact on every call."""

    function: DecoderFn
    latent: LatentSpec
    device: torch.device
    dtype: torch.dtype
    output_dim: int
    output_shape: tuple[int, ...]
    torchscript: bool
    jacobian_method: str = "vmap"
    fallback_method: str | None = None
    """The torch.func method (vmap or replicated) that works; used where stacked meets an op it
    lacks. Found on first need (``fallback_method``) when the stacked method is chosen."""
    activation_bytes_per_row: int | None = None
    """Largest bytes one op of the decoder holds per row (inputs plus output), measured on the probe."""
    method_note: str | None = None
    """Why the stacked method is not used, when it is not."""
    workspace: Workspace = field(default_factory=Workspace, repr=False)
    """The float64 buffer the Gram step reuses from batch to batch."""

    def context(self):
        return torchscript_safe() if self.torchscript else nullcontext()

    def flat(self) -> DecoderFn:
        return flat_decoder(self.function, self.latent.shape)

    def decode(self, flat_latents: torch.Tensor) -> torch.Tensor:
        """Decoder outputs for flat float64 latents (B, d), as (B, *output_shape)."""
        with torch.no_grad(), self.context():
            batch = flat_latents.shape[0]
            inputs = flat_latents.to(device=self.device, dtype=self.dtype).reshape(batch, *self.latent.shape)
            return self.function(inputs)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def prepare_decoder(
    decoder: Any,
    latent: LatentSpec,
    device: torch.device,
    dtype: torch.dtype,
) -> PreparedDecoder:
    """Copy, configure and probe ``decoder`` on two latents; bad fits are InputErrors."""
    torchscript = is_torchscript(decoder)
    if torchscript:
        module = fresh_torchscript_copy(decoder)
    elif isinstance(decoder, torch.nn.Module):
        torchscript = bool(torchscript_parts(decoder))  # e.g. an output transform around TorchScript
        module = copy_with_fresh_torchscript(decoder)
    elif callable(decoder):
        module = decoder
    else:
        raise InputError(f"the decoder must be a torch.nn.Module or a callable, got {type(decoder).__name__}")
    if isinstance(module, torch.nn.Module):
        module = module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        module = module.to(device=device, dtype=dtype)

    probe = torch.zeros(2, *latent.shape, dtype=dtype, device=device)
    try:
        with torch.no_grad(), (torchscript_safe() if torchscript else nullcontext()):
            output = module(probe)
    except InputError:
        raise
    except Exception as error:  # the decoder's own message says what it expected
        shape = "x".join(str(size) for size in latent.shape)
        raise InputError(
            f"latent size {shape} does not fit the decoder ({_first_line(error)}); "
            "set --latent-dim or --latent-shape to what the decoder takes"
        ) from None
    if not isinstance(output, torch.Tensor):
        raise InputError(
            f"the decoder returned a {type(output).__name__}, not a tensor; "
            "pick one output with --output-select KEY|INDEX, or wrap it so that it returns one tensor"
        )
    if output.dim() == 0 or output.shape[0] != 2:
        raise InputError(
            f"the decoder's output shape {tuple(output.shape)} has no batch dimension matching its input; "
            "it must map a batch of latents (B, ...) to a batch of outputs (B, ...)"
        )
    if not output.is_floating_point():
        raise InputError(f"the decoder returned a {output.dtype} tensor; it must return floating-point outputs")
    output_shape = tuple(output.shape[1:])
    output_dim = math.prod(output_shape)
    if output_dim < latent.dim:
        raise InputError(
            f"the decoder's output dimension D = {output_dim} is smaller than the latent dimension d = {latent.dim}; "
            "the estimator needs D >= d (check the latent size)"
        )
    prepared = PreparedDecoder(module, latent, device, dtype, output_dim, output_shape, torchscript)
    prepared.jacobian_method = _choose_jacobian_method(prepared)
    return prepared


JACOBIAN_METHODS = {"stacked": stacked_jacobian, "vmap": batched_jacobian, "replicated": replicated_jacobian}
"""stacked: one plain forward pass over stacked primal and tangent rows (``stacked``), the
fastest; vmap: torch.func jvp under vmap; replicated: jvp on a repeated batch (no vmap)."""


def stacked_tolerance(dtype: torch.dtype) -> float:
    """How far (relative to the largest entry) stacked and torch.func Jacobians may differ on
    the probe: round-off of the dtype, far below any missing or wrong derivative rule."""
    return min(0.1, max(1e-10, 1000 * torch.finfo(dtype).eps))


def jacobians_agree(candidate: torch.Tensor, reference: torch.Tensor, tolerance: float) -> bool:
    finite = torch.isfinite(reference)
    if not torch.equal(finite, torch.isfinite(candidate)):
        return False
    if not bool(finite.any()):
        return True
    scale = float(reference[finite].abs().max())
    return float((candidate[finite] - reference[finite]).abs().max()) <= tolerance * max(scale, 1e-300)


def _probe_latents(prepared: PreparedDecoder) -> torch.Tensor:
    return LatentStream(prepared.latent, seed=0).range(0, 2).to(device=prepared.device, dtype=prepared.dtype)


def _torch_func_method(prepared: PreparedDecoder, columns: int) -> tuple[str, torch.Tensor]:
    """The torch.func method that runs through the decoder (vmap over tangents, else the
    replicated batch) and its first ``columns`` Jacobian columns on the probe latents."""
    probe, flat = _probe_latents(prepared), prepared.flat()
    failure: Exception | None = None
    with prepared.context():
        for method in ("vmap", "replicated"):
            try:
                return method, JACOBIAN_METHODS[method](flat, probe, tangent_chunk=columns, max_columns=columns)
            except Exception as error:
                failure = error
    raise InputError(
        f"forward-mode AD fails through this decoder ({_first_line(failure)}); "
        "it must be differentiable with torch.func.jvp"
    ) from None


def fallback_method(prepared: PreparedDecoder) -> str:
    """The torch.func method to use where the stacked method meets an op it has no rule for,
    found on first need (``_torch_func_method``)."""
    if prepared.fallback_method is None:
        prepared.fallback_method, _ = _torch_func_method(prepared, 1)
    return prepared.fallback_method


def _choose_jacobian_method(prepared: PreparedDecoder) -> str:
    """The stacked method where its result matches an independent AD reference on probe
    latents, else the torch.func method (compared and probed on the first
    ``STACKED_PROBE_COLUMNS`` columns: the full Jacobian costs d directions).

    The reference is reverse mode (``reverse_mode_columns``), or torch.func's forward mode
    where the decoder lacks double backward. Also records the decoder's activation bytes per
    row for batch planning."""
    columns = min(prepared.latent.dim, STACKED_PROBE_COLUMNS)
    probe, flat = _probe_latents(prepared), prepared.flat()
    tolerance = stacked_tolerance(prepared.dtype)
    with prepared.context():
        try:
            stacked, _, row_bytes = stacked_jacobian_profiled(flat, probe, columns, max_columns=columns)
        except UnsupportedOperation as error:
            stacked, prepared.method_note = None, f"stacked method unavailable: {error}"
        if stacked is not None:
            try:
                reference = reverse_mode_columns(flat, probe, columns)
            except Exception:  # no double backward through some op: compare with torch.func
                reference = None
            if reference is not None and jacobians_agree(stacked, reference, tolerance):
                prepared.activation_bytes_per_row = row_bytes
                return "stacked"
    method, reference = _torch_func_method(prepared, columns)
    prepared.fallback_method = method
    if stacked is not None:
        if jacobians_agree(stacked, reference, tolerance):
            prepared.activation_bytes_per_row = row_bytes
            return "stacked"
        prepared.method_note = "the stacked Jacobian differed from torch.func's on the probe latents"
    with prepared.context():
        prepared.activation_bytes_per_row = activation_bytes_per_row(flat, probe)
    return method


# --------------------------------------------------------------------------- per-sample terms


@dataclass
class SampleTerms:
    """Per-sample quantities of one batch, all float64 on the CPU."""

    neg_log_density: torch.Tensor  # (B,)   -log p(z_i)
    half_log_det: torch.Tensor  # (B, S) 1/2 log det(J^T J + s^2 I)
    eigenvalues: torch.Tensor  # (B, d) eigenvalues of J^T J, ascending
    clipped_eigenvalues: int

    @property
    def entropy_terms(self) -> torch.Tensor:
        """h_i per scale: (B, S)."""
        return self.neg_log_density.unsqueeze(1) + self.half_log_det

    @classmethod
    def concat(cls, parts: Sequence["SampleTerms"]) -> "SampleTerms":
        """One batch's terms from those of its consecutive pieces."""
        return cls(
            torch.cat([part.neg_log_density for part in parts]),
            torch.cat([part.half_log_det for part in parts]),
            torch.cat([part.eigenvalues for part in parts]),
            sum(part.clipped_eigenvalues for part in parts),
        )


def compute_sample_terms(
    prepared: PreparedDecoder,
    flat_latents: torch.Tensor,
    scales: Sequence[float],
    tangent_chunk: int | None = None,
) -> SampleTerms:
    """h_i's pieces for a batch of float64 CPU latents (B, d)."""
    neg_log_density = -prepared.latent.distribution.log_density(flat_latents)
    inputs = flat_latents.to(device=prepared.device, dtype=prepared.dtype)
    with prepared.context():
        try:
            columns, outputs = JACOBIAN_METHODS[prepared.jacobian_method](
                prepared.flat(), inputs, tangent_chunk, with_outputs=True)
        except UnsupportedOperation as error:  # a branch of the decoder the probe did not reach
            prepared.jacobian_method = fallback_method(prepared)
            prepared.method_note = f"stacked method left mid-run: {error}"
            columns, outputs = JACOBIAN_METHODS[prepared.jacobian_method](
                prepared.flat(), inputs, tangent_chunk, with_outputs=True)
    output_finite = torch.isfinite(outputs).all(dim=1).cpu()
    spectrum = gram_eigenvalues(columns, workspace=prepared.workspace)
    del columns, outputs
    half_log_det = half_log_det_regularised(spectrum.eigenvalues, scales)
    if not bool(output_finite.all()):  # a NaN/inf output makes the sample non-finite, reported
        half_log_det[~output_finite.to(half_log_det.device)] = torch.nan
    return SampleTerms(
        neg_log_density.cpu(),
        half_log_det.cpu(),
        spectrum.eigenvalues.cpu(),
        spectrum.clipped_count,
    )


# --------------------------------------------------------------------------- results


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


@dataclass
class EntropyResult:
    """The estimate at every scale, the settings that produced it, and diagnostics."""

    estimates: list[ScaleEstimate]
    latent: LatentSpec
    output_dim: int
    output_shape: tuple[int, ...]
    settings: dict
    elapsed_seconds: float
    num_nonfinite: int = 0
    nonfinite_indices: list[int] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)
    partial: bool = False
    """True when the run was interrupted: the estimate uses the samples done so far."""
    stop_reason: str = "num_samples"
    """What ended the run: num_samples (the -n cap), target_stderr or interrupted."""
    precision_probe: dict | None = None
    """The float64 check of the decoder dtype (``precision.PrecisionProbe.report``); None in float64."""
    samples_computed: int | None = None
    """Samples this call computed (less than N after a resume, more after an adaptive stop)."""

    @property
    def samples_per_second(self) -> float:
        used = self.settings["num_samples"] if self.samples_computed is None else self.samples_computed
        return used / self.elapsed_seconds if self.elapsed_seconds > 0 else math.inf

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
        """The JSON document of the README's schema (stable key names)."""
        return {
            "genentropy_version": __version__,
            "command": command,
            "model": {**(model or {}), **self.model_dict()},
            "settings": dict(self.settings),
            "estimates": [item.to_dict() for item in self.estimates],
            "num_nonfinite": self.num_nonfinite,
            "nonfinite_indices": list(self.nonfinite_indices),
            "elapsed_seconds": self.elapsed_seconds,
            "samples_per_second": self.samples_per_second,
            "diagnostics": dict(self.diagnostics),
            "partial": self.partial,
            "stop_reason": self.stop_reason,
            "precision_probe": self.precision_probe,
        }


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


# --------------------------------------------------------------------------- the run


BatchCallback = Callable[[np.ndarray, torch.Tensor, SampleTerms], None]
"""on_batch(sample_indices, flat_latents, terms): sees every batch (e.g. per-sample output)."""


class SpanBatcher:
    """Batches taken in order from (block, start, stop) spans of samples; a batch may span
    blocks, and each ``take`` may ask for another size (the run loop halves it after an
    out-of-memory error)."""

    def __init__(self, spans: Iterable[tuple[int, int, int]]):
        self._spans = deque((block, start, stop) for block, start, stop in spans if stop > start)

    @property
    def empty(self) -> bool:
        return not self._spans

    def take(self, size: int) -> list[tuple[int, int, int]]:
        batch: list[tuple[int, int, int]] = []
        room = int(size)
        while room > 0 and self._spans:
            block, start, stop = self._spans[0]
            count = min(room, stop - start)
            batch.append((block, start, start + count))
            room -= count
            if start + count == stop:
                self._spans.popleft()
            else:
                self._spans[0] = (block, start + count, stop)
        return batch


def batch_plan(num_samples: int, batch_size: int, block_size: int,
               blocks: Sequence[int] | None = None) -> Iterator[list[tuple[int, int, int]]]:
    """Batches of at most ``batch_size`` samples, as lists of (block, start, stop) in-block
    segments, walking ``blocks`` (default all) in order; a batch may span blocks."""
    num_blocks = -(-num_samples // block_size)
    order = range(num_blocks) if blocks is None else blocks
    batcher = SpanBatcher((block, 0, min(block_size, num_samples - block * block_size)) for block in order)
    while not batcher.empty:
        yield batcher.take(batch_size)


def estimate_entropy(
    decoder: Any,
    latent: LatentSpec | int | Sequence[int],
    scales: Sequence[float] = DEFAULT_SCALES,
    n_samples: int = DEFAULT_NUM_SAMPLES,
    batch_size: int | None = None,
    device: str | torch.device = DEFAULT_DEVICE,
    dtype: str | torch.dtype = DEFAULT_DTYPE,
    seed: int = DEFAULT_SEED,
    progress: ProgressCallback | None = None,
    *,
    latent_distribution: str | LatentDistribution | None = None,
    skip_nonfinite: bool = False,
    tangent_chunk: int | None = None,
    on_batch: BatchCallback | None = None,
    target_stderr: float | None = None,
    min_samples: int = TARGET_STDERR_MIN_SAMPLES,
    checkpoint: str | Path | None = None,
    checkpoint_every: float = CHECKPOINT_INTERVAL_SECONDS,
    per_sample: str | Path | None = None,
    save_latents: bool = False,
    probe_samples: int = PRECISION_PROBE_SAMPLES,
    handle_signals: bool = False,
    log: Callable[[str], None] | None = None,
    distributed: bool | None = None,
    max_memory: int | str | None = None,
) -> EntropyResult:
    """Estimate the differential entropy of ``decoder``'s output distribution (nats).

    ``decoder`` maps a batch of latents shaped (B, *latent_shape) to outputs (B, ...), which
    are flattened to D. ``latent`` is a LatentSpec, a dimension or a shape (standard normal
    unless ``latent_distribution`` says otherwise). Same seed, same answer: sample i's latent
    depends only on (seed, i), whatever the batch size, device, process count or interruption.

    Long and large runs (``runner`` has the loop):

    * ``target_stderr``: stop at the first sample count (>= ``min_samples``) where the standard
      error is at most this at every scale, ``n_samples`` being the cap;
    * ``checkpoint``: a file saved atomically every ``checkpoint_every`` seconds and at the end;
      an existing one (same settings) is resumed, one with other settings refused;
    * ``per_sample``: a .npy/.csv/.jsonl file of per-sample rows (with ``save_latents`` the latents);
    * ``probe_samples``: how many first samples are also computed in float64 (0: no probe);
    * ``handle_signals``: SIGINT/SIGTERM finish the batch and return a partial result;
    * ``log``: where run notes go (out-of-memory retries, the precision warning; default:
      ``warnings.warn``); ``distributed``: None joins torchrun's process group when launched by it;
    * ``max_memory``: bytes (or '2GB', '1.5GiB') the process may hold on the CPU, or PyTorch may
      allocate on a GPU: the batch size and tangent chunk are planned to fit (``planning``).
    """
    from .runner import RunOptions, run_estimate  # the run loop builds on this module

    if latent_distribution is not None and not isinstance(latent, LatentSpec):
        spec = make_latent_spec(latent, latent_distribution)
    else:
        spec = make_latent_spec(latent)
    scale_values = validate_scales(scales)
    if int(n_samples) <= 0:
        raise InputError(f"the number of samples must be positive, got {n_samples}")
    if batch_size is not None and int(batch_size) <= 0:
        raise InputError(f"the batch size must be positive, got {batch_size}")
    options = RunOptions(
        skip_nonfinite=skip_nonfinite, tangent_chunk=tangent_chunk, on_batch=on_batch, target_stderr=target_stderr,
        min_samples=min_samples, checkpoint=checkpoint, checkpoint_every=checkpoint_every, per_sample=per_sample,
        save_latents=save_latents, probe_samples=probe_samples, handle_signals=handle_signals, log=log,
        distributed=distributed, max_memory=max_memory,
    )
    return run_estimate(decoder, spec, scale_values, int(n_samples), batch_size, device, resolve_dtype(dtype),
                        seed, progress, options)
