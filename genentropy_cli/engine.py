"""The estimator: stream latents, batch Jacobians, float64 log-determinants, statistics.

    H_s = (1/N) sum_i h_i,   h_i = -log p(z_i) + 1/2 log det(J(z_i)^T J(z_i) + s^2 I)

(equation (3) of the paper with its sign fixed, NOTES.md), for every requested s from
one eigen-decomposition of J^T J per sample.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from . import __version__
from .defaults import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SCALES,
    DEFAULT_SEED,
    AUTO_TANGENT_CHUNK,
    CPU_EFFECTIVE_BATCH,
    CUDA_EFFECTIVE_BATCH,
    JACOBIAN_MEMORY_BUDGET_BYTES,
    LATENT_BLOCK_SIZE,
    MAX_AUTO_BATCH_SIZE,
    MIN_AUTO_BATCH_SIZE,
    SUPPORTED_DTYPES,
)
from .errors import EstimationError, InputError, NonFiniteSampleError
from .jacobian import (
    DecoderFn,
    batched_jacobian,
    flat_decoder,
    fresh_torchscript_copy,
    is_torchscript,
    replicated_jacobian,
    torchscript_safe,
)
from .latents import LatentDistribution, LatentSpec, LatentStream, distribution_label, make_latent_spec
from .logdet import gram_eigenvalues, half_log_det_regularised
from .stats import BlockAccumulator, RunningMoments

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


def auto_tangent_chunk(latent_dim: int) -> int:
    return min(latent_dim, AUTO_TANGENT_CHUNK)


def auto_batch_size(latent_dim: int, output_dim: int, dtype: torch.dtype, device: torch.device,
                    tangent_chunk: int, memory_budget: int = JACOBIAN_MEMORY_BUDGET_BYTES) -> int:
    """Samples per batch: (samples x tangent chunk) near the device's efficient decoder batch,
    and the batch's Jacobian (decoder dtype plus its float64 copy, with room for the
    tangents of the activations) within ``memory_budget`` bytes."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_sample = latent_dim * output_dim * (2 * itemsize + 8)
    by_memory = memory_budget // max(per_sample, 1)
    effective = CUDA_EFFECTIVE_BATCH if device.type == "cuda" else CPU_EFFECTIVE_BATCH
    by_speed = max(1, effective // max(tangent_chunk, 1))
    return int(min(MAX_AUTO_BATCH_SIZE, max(MIN_AUTO_BATCH_SIZE, min(by_memory, by_speed))))


def resolve_work_sizes(latent_dim: int, output_dim: int, dtype: torch.dtype, device: torch.device,
                       batch_size: int | None = None, tangent_chunk: int | None = None) -> tuple[int, int]:
    """(batch size, tangent chunk): the ones given, else the automatic choices."""
    chunk = int(tangent_chunk) if tangent_chunk else auto_tangent_chunk(latent_dim)
    batch = int(batch_size) if batch_size else auto_batch_size(latent_dim, output_dim, dtype, device, chunk)
    return batch, chunk


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
        module = copy.deepcopy(decoder)
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
    except Exception as error:  # the decoder's own message says what it expected
        shape = "x".join(str(size) for size in latent.shape)
        raise InputError(
            f"latent size {shape} does not fit the decoder ({_first_line(error)}); "
            "set --latent-dim or --latent-shape to what the decoder takes"
        ) from None
    if not isinstance(output, torch.Tensor):
        raise InputError(
            f"the decoder returned a {type(output).__name__}, not a tensor; "
            "wrap it so that it returns one output tensor"
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


def _choose_jacobian_method(prepared: PreparedDecoder) -> str:
    """vmap over tangents where the decoder's ops support it, else the replicated batch."""
    probe = torch.zeros(2, prepared.latent.dim, dtype=prepared.dtype, device=prepared.device)
    with prepared.context():
        try:
            batched_jacobian(prepared.flat(), probe, tangent_chunk=1)
            return "vmap"
        except Exception:
            pass
        try:
            replicated_jacobian(prepared.flat(), probe, tangent_chunk=1)
            return "replicated"
        except Exception as error:
            raise InputError(
                f"forward-mode AD fails through this decoder ({_first_line(error)}); "
                "it must be differentiable with torch.func.jvp"
            ) from None


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


def compute_sample_terms(
    prepared: PreparedDecoder,
    flat_latents: torch.Tensor,
    scales: Sequence[float],
    tangent_chunk: int | None = None,
) -> SampleTerms:
    """h_i's pieces for a batch of float64 CPU latents (B, d)."""
    neg_log_density = -prepared.latent.distribution.log_density(flat_latents)
    inputs = flat_latents.to(device=prepared.device, dtype=prepared.dtype)
    jacobian_fn = batched_jacobian if prepared.jacobian_method == "vmap" else replicated_jacobian
    with prepared.context():
        columns, outputs = jacobian_fn(prepared.flat(), inputs, tangent_chunk, with_outputs=True)
    output_finite = torch.isfinite(outputs).all(dim=1).cpu()
    spectrum = gram_eigenvalues(columns)
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

    @property
    def samples_per_second(self) -> float:
        used = self.settings["num_samples"]
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
        }


def estimates_from_moments(scales: Sequence[float], moments: RunningMoments) -> list[ScaleEstimate]:
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


def batch_plan(num_samples: int, batch_size: int, block_size: int,
               blocks: Sequence[int] | None = None) -> Iterator[list[tuple[int, int, int]]]:
    """Batches of at most ``batch_size`` samples, as lists of (block, start, stop) in-block
    segments, walking ``blocks`` (default all) in order; a batch may span blocks."""
    num_blocks = -(-num_samples // block_size)
    order = range(num_blocks) if blocks is None else blocks
    current: list[tuple[int, int, int]] = []
    room = batch_size
    for block_index in order:
        length = min(block_size, num_samples - block_index * block_size)
        start = 0
        while start < length:
            take = min(room, length - start)
            current.append((block_index, start, start + take))
            start += take
            room -= take
            if room == 0:
                yield current
                current, room = [], batch_size
    if current:
        yield current


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
) -> EntropyResult:
    """Estimate the differential entropy of ``decoder``'s output distribution (nats).

    ``decoder`` maps a batch of latents shaped (B, *latent_shape) to outputs (B, ...), which
    are flattened to D. ``latent`` is a LatentSpec, a dimension or a shape (standard normal
    unless ``latent_distribution`` says otherwise). Same seed, same answer: sample i's latent
    depends only on (seed, i), whatever the batch size or device.
    """
    if latent_distribution is not None and not isinstance(latent, LatentSpec):
        spec = make_latent_spec(latent, latent_distribution)
    else:
        spec = make_latent_spec(latent)
    scale_values = validate_scales(scales)
    if int(n_samples) <= 0:
        raise InputError(f"the number of samples must be positive, got {n_samples}")
    if batch_size is not None and int(batch_size) <= 0:
        raise InputError(f"the batch size must be positive, got {batch_size}")
    if tangent_chunk is not None and int(tangent_chunk) <= 0:
        raise InputError(f"the tangent chunk must be positive, got {tangent_chunk}")
    num_samples = int(n_samples)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)

    started = time.perf_counter()
    with strict_float32():
        prepared = prepare_decoder(decoder, spec, torch_device, torch_dtype)
        chosen_chunk = int(tangent_chunk) if tangent_chunk else auto_tangent_chunk(spec.dim)
        chosen_batch = int(batch_size) if batch_size else auto_batch_size(
            spec.dim, prepared.output_dim, torch_dtype, torch_device, chosen_chunk)
        stream = LatentStream(spec, seed)
        accumulator = BlockAccumulator(len(scale_values), list(range(-(-num_samples // stream.block_size))))
        running_sum = np.zeros(len(scale_values))
        done = used = 0
        nonfinite_indices: list[int] = []
        num_nonfinite = 0
        clipped = 0
        smallest_eigenvalue, largest_eigenvalue = math.inf, 0.0
        for segments in batch_plan(num_samples, chosen_batch, stream.block_size):
            indices = np.concatenate([
                np.arange(block * stream.block_size + start, block * stream.block_size + stop)
                for block, start, stop in segments
            ])
            latents = torch.cat([stream.block(block)[start:stop] for block, start, stop in segments])
            try:
                terms = compute_sample_terms(prepared, latents, scale_values, chosen_chunk)
            except (InputError, EstimationError):
                raise
            except RuntimeError as error:
                raise EstimationError(
                    f"the decoder failed on samples {indices[0]}..{indices[-1]} ({_first_line(error)})"
                ) from error
            if on_batch is not None:
                on_batch(indices, latents, terms)
            values = terms.entropy_terms.numpy()
            finite = np.isfinite(values).all(axis=1)
            if not finite.all():
                bad = indices[~finite]
                if not skip_nonfinite:
                    bad_scale = int(np.argmin(np.isfinite(values[~finite][0])))
                    raise NonFiniteSampleError(int(bad[0]), scale_values[bad_scale])
                num_nonfinite += int(bad.size)
                nonfinite_indices.extend(int(i) for i in bad[: max(0, 100 - len(nonfinite_indices))])
            clipped += terms.clipped_eigenvalues
            if terms.eigenvalues.numel():
                smallest_eigenvalue = min(smallest_eigenvalue, float(terms.eigenvalues[:, 0].min()))
                largest_eigenvalue = max(largest_eigenvalue, float(terms.eigenvalues[:, -1].max()))
            position = 0
            for block, start, stop in segments:
                block_finite = finite[position : position + stop - start]
                accumulator.add(block, values[position : position + stop - start][block_finite])
                position += stop - start
                block_length = min(stream.block_size, num_samples - block * stream.block_size)
                if stop == block_length:
                    accumulator.complete_block(block)
            running_sum += values[finite].sum(axis=0)
            done += len(indices)
            used += int(finite.sum())
            if progress is not None:
                progress(done, num_samples, (running_sum / max(used, 1)).tolist())
    elapsed = time.perf_counter() - started

    if accumulator.total.count == 0:
        raise EstimationError("no finite samples were left to estimate from")
    settings = {
        "num_samples": num_samples,
        "batch_size": chosen_batch,
        "seed": int(seed),
        "device": str(torch_device),
        "dtype": str(torch_dtype).removeprefix("torch."),
        "scales": list(scale_values),
        "skip_nonfinite": bool(skip_nonfinite),
        "tangent_chunk": chosen_chunk,
    }
    diagnostics = {
        "jacobian_method": prepared.jacobian_method,
        "torchscript": prepared.torchscript,
        "clipped_eigenvalues": clipped,
        "smallest_singular_value": math.sqrt(smallest_eigenvalue) if math.isfinite(smallest_eigenvalue) else None,
        "largest_singular_value": math.sqrt(largest_eigenvalue),
        "latent_block_size": stream.block_size,
    }
    return EntropyResult(
        estimates=estimates_from_moments(scale_values, accumulator.total),
        latent=spec,
        output_dim=prepared.output_dim,
        output_shape=prepared.output_shape,
        settings=settings,
        elapsed_seconds=elapsed,
        num_nonfinite=num_nonfinite,
        nonfinite_indices=nonfinite_indices,
        diagnostics=diagnostics,
    )
