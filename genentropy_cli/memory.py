"""Device memory: the budget the automatic batch size plans into, out-of-memory errors, peaks.

The automatic batch size (``planning.plan_batch``) takes a byte budget: ``--max-memory`` less
the memory already in use (``memory_in_use``), or else on CUDA a share of the device's free
memory and on the CPU a fixed default; and the decoder's activation bytes per row
(``activation_bytes_per_row``, or the stacked method's own count). Where the plan is still too
large, the run loop catches the out-of-memory error, halves the batch (then the tangent chunk)
and retries the same samples, so nothing is lost.
"""

from __future__ import annotations

import platform
import resource
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .defaults import CUDA_MEMORY_FRACTION, JACOBIAN_MEMORY_BUDGET_BYTES

METER_ROWS = 13
"""Rows of the plain forward pass ``activation_bytes_per_row`` meters: a prime, so that few
weight shapes are mistaken for batch-carrying tensors."""

_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def device_memory_budget(device: torch.device, fraction: float = CUDA_MEMORY_FRACTION) -> int:
    """Bytes the Jacobians of one batch may take: ``fraction`` of the CUDA device's free memory
    now, or the fixed CPU default."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    return JACOBIAN_MEMORY_BUDGET_BYTES


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA (or CPU allocator) out-of-memory failure, whatever wrapper raised it."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _OOM_MESSAGES)


def release_cached_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, before the retry."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """The peak allocation on a CUDA device since ``reset_peak_memory``, or the process's peak
    resident set size on the CPU (which includes everything the process ever held)."""
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_memory_kind": "cuda max_memory_allocated"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_memory_bytes": int(peak * scale), "peak_memory_kind": "process peak RSS"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"


def memory_in_use(device: torch.device) -> int:
    """Bytes this process holds now: resident set size on the CPU (Linux /proc; elsewhere the
    peak so far, an overestimate), PyTorch's allocations on a CUDA device."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return peak_memory(device)["peak_memory_bytes"]


class _RowBytesMeter(TorchDispatchMode):
    """The largest bytes one op holds in batch-carrying tensors (inputs plus outputs), per row."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No torch._dynamo wrapper around ``__torch_dispatch__``: nothing is compiled in here, and
        the wrapper's first call imports torch._dynamo (seconds of start-up)."""
        return False

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.peak = rows, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        leaves = tree_flatten((args, kwargs, result))[0]
        held = sum(leaf.numel() * leaf.element_size() for leaf in leaves
                   if isinstance(leaf, torch.Tensor) and leaf.dim() and leaf.shape[0] % self.rows == 0)
        self.peak = max(self.peak, held // self.rows)
        return result


def activation_bytes_per_row(flat_fn, probe: torch.Tensor) -> int:
    """Meter a plain forward pass of ``flat_fn`` on ``METER_ROWS`` rows built from ``probe``."""
    rows = probe[torch.arange(METER_ROWS, device=probe.device) % probe.shape[0]]
    meter = _RowBytesMeter(METER_ROWS)
    with torch.no_grad(), meter:
        flat_fn(rows)
    return meter.peak
