"""Device memory: the budget the automatic batch size plans into, out-of-memory errors, peaks.

The automatic batch size (``engine.auto_batch_size``) takes a byte budget; on CUDA that budget
is a share of the device's free memory, on the CPU a fixed default. Where the plan is still too
large, the run loop catches the out-of-memory error, halves the batch (then the tangent chunk)
and retries the same samples, so nothing is lost.
"""

from __future__ import annotations

import platform
import resource
import sys

import torch

from .defaults import CUDA_MEMORY_FRACTION, JACOBIAN_MEMORY_BUDGET_BYTES

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
