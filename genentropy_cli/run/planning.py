"""Batch size and tangent chunk from the decoder's activation size and a memory budget.

A batch of B samples computes its Jacobians in calls of k tangent directions; with the
stacked method (``stacked``) one call pushes R = (k + 1) B rows through the decoder, with
torch.func (``jacobian``) B k tangent rows plus the B primal rows. Two things fix (B, k):

* speed: a call should touch about ``CPU_CALL_BYTES`` (``CUDA_CALL_BYTES`` on a GPU) of
  activations, so R ~ target / (bytes per row): fewer rows leave the CPU's vector units
  idle between small ops, more spill its caches (benchmarks/RESULTS.md, the rows-per-call
  sweep). Where R allows, k = d: every direction in one call, the primal computed once;
* memory: the batch's peak (``batch_peak_bytes``: its Jacobian, plus the larger of one
  call's live activations and the float64 Gram step) must fit the budget; B shrinks first,
  then k.

``plan_batch`` is a pure function of sizes and budgets; the caller measures the activation
bytes per row (``stacked.StackedRows`` or ``memory.activation_bytes_per_row``) and the memory
already in use (``memory.memory_in_use``).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import torch

from genentropy_cli.core.logdet import log_det_path
from genentropy_cli.core.methods import jacobian_method
from genentropy_cli.defaults import (
    ACTIVATION_SAFETY_FACTOR,
    CPU_CALL_BYTES,
    CPU_MAX_ROWS_PER_CALL,
    CUDA_CALL_BYTES,
    CUDA_MAX_ROWS_PER_CALL,
    DEFAULT_ACTIVATION_BYTES_PER_OUTPUT,
    EIGENVALUE_SUBSAMPLE_STRIDE,
    GRAM_SLAB_BYTES,
    JACOBIAN_COST_FACTORS,
    JACOBIAN_MEMORY_BUDGET_BYTES,
    LONG_RUN_SECONDS,
    MAX_AUTO_BATCH_SIZE,
    QUICK_RUN_SECONDS,
)
from genentropy_cli.errors import InputError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


class BatchPlan(NamedTuple):
    """Samples per batch and tangent directions per decoder call (unpacks as (batch, chunk))."""

    batch_size: int
    tangent_chunk: int


def parse_memory_size(value: int | float | str, option: str = "--max-memory") -> int:
    """Bytes from 2147483648, '512MB', '2GB' (powers of 1000) or '1.5GiB' (powers of 1024)."""
    if isinstance(value, bool):
        raise InputError(f"{option}: give a size such as 512MB, 2GB or 1.5GiB, not {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise InputError(f"{option}: cannot read {value!r}; give a size such as 512MB, 2GB or 1.5GiB")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = number * _UNITS[unit]
    if not (math.isfinite(size) and size >= 1):
        raise InputError(f"{option} must be a positive size such as 512MB, 2GB or 1.5GiB, got {value!r}")
    return int(size)


def format_bytes(size: float) -> str:
    """'1.50 GiB', '512.0 MiB': for messages."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= factor:
            return f"{size / factor:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{int(size)} B"


def default_activation_bytes(output_dim: int, itemsize: int) -> int:
    """A stand-in for the bytes per row when nothing was measured: a multiple of the output."""
    return DEFAULT_ACTIVATION_BYTES_PER_OUTPUT * output_dim * itemsize


def rows_per_call(batch_size: int, tangent_chunk: int) -> int:
    """Decoder rows one call pushes: the primal batch and its tangent chunk."""
    return (tangent_chunk + 1) * batch_size


def batch_peak_bytes(latent_dim: int, output_dim: int, itemsize: int, batch_size: int, tangent_chunk: int,
                     activation_bytes_per_row: int, method: str = "stacked") -> int:
    """The memory model: bytes one batch holds at its peak.

        Jacobian (d B D, decoder dtype) + outputs (B D)
        + max( one call: R rows x (activations x safety + the stacked latent row),
               Gram step: a float64 slab of the Jacobian + the B d x d Gram matrices and eigenvalues )

    torch.func (``vmap``, ``replicated``) also holds each chunk's columns before copying them
    into the Jacobian, and moves tangents between layouts (twice the activations).
    """
    rows = rows_per_call(batch_size, tangent_chunk)
    jacobian = latent_dim * batch_size * output_dim * itemsize
    call = rows * (activation_bytes_per_row * ACTIVATION_SAFETY_FACTOR + latent_dim * itemsize)
    entry = jacobian_method(method)
    call = entry.memory_factor * call
    if entry.holds_chunk_columns:
        call += tangent_chunk * batch_size * output_dim * itemsize
    slab = min(batch_size, max(1, GRAM_SLAB_BYTES // max(1, latent_dim * output_dim * 8)))
    gram = slab * latent_dim * output_dim * 8 + 3 * batch_size * latent_dim * latent_dim * 8
    return int(jacobian + batch_size * output_dim * itemsize + max(call, gram))


def speed_plan(latent_dim: int, output_dim: int, itemsize: int, activation_bytes_per_row: int,
               device_type: str) -> BatchPlan:
    """(B, k) whose call touches about the device's target bytes (see the module doc)."""
    target, most = (CUDA_CALL_BYTES, CUDA_MAX_ROWS_PER_CALL) if device_type == "cuda" else (
        CPU_CALL_BYTES, CPU_MAX_ROWS_PER_CALL)
    per_row = activation_bytes_per_row + (output_dim + latent_dim) * itemsize
    rows = int(min(most, max(2, target // max(1, per_row))))
    if rows >= latent_dim + 1:
        return BatchPlan(max(1, min(MAX_AUTO_BATCH_SIZE, rows // (latent_dim + 1))), latent_dim)
    return BatchPlan(1, max(1, rows - 1))


def _largest(fits, upper: int) -> int:
    """The largest n in [1, upper] with fits(n) (fits is monotone), or 0 if none."""
    if not fits(1):
        return 0
    low, high = 1, upper
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def plan_batch(
    latent_dim: int,
    output_dim: int,
    dtype: torch.dtype,
    device: torch.device | str,
    max_memory: int | None = None,
    *,
    activation_bytes_per_row: int | None = None,
    memory_in_use: int = 0,
    working_memory: int | None = None,
    batch_size: int | None = None,
    tangent_chunk: int | None = None,
    method: str = "stacked",
) -> BatchPlan:
    """Samples per batch and tangent chunk for a decoder R^d -> R^D in ``dtype`` on ``device``.

    The batch may use ``max_memory - memory_in_use`` bytes when ``max_memory`` (a ceiling for the
    whole process on the CPU, for PyTorch's allocations on a GPU) is given, else
    ``working_memory`` (default: the CPU default budget). ``batch_size`` / ``tangent_chunk`` fix
    either size (the other is planned). ``activation_bytes_per_row``: the largest bytes one op
    of the decoder holds per row (inputs plus output), measured; a multiple of the output
    size when None. Raises InputError when ``max_memory`` cannot hold one sample.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    device_type = torch.device(device).type
    per_row = activation_bytes_per_row or default_activation_bytes(output_dim, itemsize)
    if max_memory is not None:
        budget = int(max_memory) - int(memory_in_use)
    else:
        budget = JACOBIAN_MEMORY_BUDGET_BYTES if working_memory is None else int(working_memory)
    fast = speed_plan(latent_dim, output_dim, itemsize, per_row, device_type)
    chunk = min(latent_dim, int(tangent_chunk)) if tangent_chunk else fast.tangent_chunk

    def peak(batch: int, k: int) -> int:
        return batch_peak_bytes(latent_dim, output_dim, itemsize, batch, k, per_row, method)

    if batch_size:
        batch = int(batch_size)
        if not tangent_chunk:
            chunk = max(1, _largest(lambda k: peak(batch, k) <= budget, chunk))
        return BatchPlan(batch, chunk)
    speed_batch = fast.batch_size if not tangent_chunk else max(1, fast.batch_size * (fast.tangent_chunk + 1) // (chunk + 1))
    batch = _largest(lambda b: peak(b, chunk) <= budget, speed_batch)
    if batch == 0 and not tangent_chunk:
        batch, chunk = 1, _largest(lambda k: peak(1, k) <= budget, chunk)
    if batch == 0 or chunk == 0:
        if max_memory is None:  # a default budget only guides; out-of-memory retries are the net
            return BatchPlan(1, 1 if not tangent_chunk else chunk)
        needed = peak(1, 1 if not tangent_chunk else chunk)
        raise InputError(
            f"--max-memory {format_bytes(max_memory)} is too small: {format_bytes(memory_in_use)} is already in use "
            f"and one sample needs about {format_bytes(needed)} more; give at least "
            f"{format_bytes(memory_in_use + needed)}"
        )
    return BatchPlan(batch, chunk)


class SampleCost(NamedTuple):
    """The work of one sample (docs/performance.md, Cost model): ``forward_rows`` = d + 1 decoder
    rows (the stacked method's rows, or d + 1 forward passes); ``gram_flops`` = 2 d^2 D for the
    float64 J^T J (``torch.bmm``: the whole square); ``log_det_flops``: S d^3/3 for S Cholesky
    factorisations plus 4/3 d^3 (syevd's tridiagonal reduction, eigenvalues only) on every
    ``EIGENVALUE_SUBSAMPLE_STRIDE``-th sample, or 4/3 d^3 on the ``eigenvalues`` path."""

    forward_rows: int
    gram_flops: float
    log_det_flops: float
    log_det_path: str

    def seconds(self, forward_seconds_per_row: float, gram_flops_per_second: float,
                log_det_flops_per_second: float) -> float:
        """Projected seconds per sample: (d + 1) t_row + Gram / its rate + log-det / its rate."""
        return (self.forward_rows * forward_seconds_per_row + self.gram_flops / gram_flops_per_second
                + self.log_det_flops / log_det_flops_per_second)


def sample_cost(latent_dim: int, output_dim: int, num_scales: int = 1) -> SampleCost:
    """``SampleCost`` of one sample of a decoder R^d -> R^D at ``num_scales`` scales (all > 0), on
    the log-det path the run would take (``logdet.log_det_path``). A pure function of the sizes:
    with a measured forward time per row (``inspect``'s ``forward_seconds_per_sample``) and the
    device's float64 rates, ``SampleCost.seconds`` projects a run's time."""
    dim = int(latent_dim)
    path = log_det_path(dim, [1.0] * num_scales)
    eigen = 4 / 3 * dim**3
    log_det = (num_scales * dim**3 / 3 + eigen / EIGENVALUE_SUBSAMPLE_STRIDE) if path == "cholesky" else eigen
    return SampleCost(dim + 1, 2.0 * dim * dim * output_dim, log_det, path)


def resolve_work_sizes(latent_dim: int, output_dim: int, dtype: torch.dtype, device: torch.device,
                       batch_size: int | None = None, tangent_chunk: int | None = None) -> tuple[int, int]:
    """(batch size, tangent chunk): the ones given, else ``planning.plan_batch``'s choice
    within the device's default memory budget."""
    from genentropy_cli.run.memory import device_memory_budget

    plan = plan_batch(latent_dim, output_dim, dtype, device, None, working_memory=device_memory_budget(device),
                      batch_size=batch_size, tangent_chunk=tangent_chunk)
    return plan.batch_size, plan.tangent_chunk


# ---------------------------------------------------------------------- run time


def predicted_seconds_per_sample(forward_seconds_per_sample: float, latent_dim: int, method: str,
                                 gram_seconds_per_sample: float = 0.0) -> float:
    """A sample's cost from a plain forward pass's: its Jacobian is d + 1 rows of forward passes
    times the method's factor (``JACOBIAN_COST_FACTORS``), plus the float64 Gram and eigenvalue
    step (measured apart: it does not scale with the decoder)."""
    return forward_seconds_per_sample * (latent_dim + 1) * JACOBIAN_COST_FACTORS[method] + gram_seconds_per_sample


def format_duration(seconds: float) -> str:
    """'45 s', '3.5 min', '2.1 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run_time_note(remaining_samples: int, seconds_per_sample: float, std: float | None = None,
                  passes: int = 1, long_seconds: float = LONG_RUN_SECONDS,
                  quick_seconds: float = QUICK_RUN_SECONDS) -> str | None:
    """The one-line note for a run expected to take over ``long_seconds``, else None: its expected
    time, the ``-n`` that would finish in about ``quick_seconds`` and, given the per-sample std,
    the standard error std / sqrt(n) that gives and the matching ``--target-stderr``. ``passes``:
    runs over the samples (one per class of a conditional decoder)."""
    per_sample = seconds_per_sample * passes
    expected = remaining_samples * per_sample
    if not expected > long_seconds or per_sample <= 0:
        return None
    quick = max(2, int(quick_seconds / per_sample))
    note = (f"expected run time about {format_duration(expected)} ({remaining_samples:,} samples at "
            f"{1 / per_sample:,.1f}/s); -n {quick} would finish in about {format_duration(quick_seconds)}")
    if std is not None and math.isfinite(std) and std > 0:
        stderr = std / math.sqrt(quick)
        note += f" with standard error about {stderr:.2g} (or stop there: --target-stderr {stderr:.2g})"
    return note
