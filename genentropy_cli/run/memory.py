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
from typing import Callable, TypeVar

import torch

from genentropy_cli.defaults import (
    CALIBRATION_DIVISOR,
    CALIBRATION_ROOM_SHARE,
    CUDA_MEMORY_FRACTION,
    JACOBIAN_MEMORY_BUDGET_BYTES,
)

T = TypeVar("T")


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


_RESIDENT_PEAK_BEFORE_RESETS = [0]
"""The process's resident peak as it was before ``peak_growth`` last reset it (VmHWM restarts
from the current resident size), so that ``peak_memory`` still reports the whole run's."""


def resident_peak_bytes() -> int | None:
    """VmHWM, the process's resident peak, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_growth(compute: Callable[[], T]) -> tuple[T, int | None]:
    """``compute()``, and how far the process's resident peak rose above its resident size before
    it (bytes): the peak is restarted through /proc/self/clear_refs. None where that cannot be
    measured (not Linux, or /proc not writable)."""
    previous_peak = resident_peak_bytes()
    if previous_peak is None:
        return compute(), None
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return compute(), None
    _RESIDENT_PEAK_BEFORE_RESETS[0] = max(_RESIDENT_PEAK_BEFORE_RESETS[0], previous_peak)
    start = memory_in_use(torch.device("cpu"))
    result = compute()
    peak = resident_peak_bytes()
    return result, None if peak is None else max(0, peak - start)


class FirstBatchCalibration:
    """A memory plan checked against a measurement before it is trusted (CPU, under a cap): the
    plan is a model (kernel workspaces, per-thread heaps and allocator slack are not in it), so
    the first batch runs at 1/``CALIBRATION_DIVISOR`` of the planned size while the resident peak
    is watched, and later batches get the size that measurement leaves room for."""

    def __init__(self, max_memory: int | None, device: torch.device, planned: int, fixed: bool = False):
        self.max_memory, self.planned = max_memory, int(planned)
        self.active = (max_memory is not None and device.type == "cpu" and self.planned > 1 and not fixed
                       and resident_peak_bytes() is not None)
        self.calibrated: int | None = None

    def first_size(self) -> int:
        return max(1, self.planned // CALIBRATION_DIVISOR) if self.active else self.planned

    def run(self, samples: int, compute: Callable[[], T]) -> T:
        """``compute()`` of the first batch (``samples`` samples); sets ``calibrated``."""
        self.active = False
        room = int(self.max_memory) - memory_in_use(torch.device("cpu"))
        result, growth = peak_growth(compute)
        if growth is not None:
            self.calibrated = calibrated_batch_size(growth, samples, room, self.planned)
        return result


def calibrated_batch_size(growth: int, samples: int, room: int, planned: int) -> int:
    """Samples per batch from one measured batch: ``CALIBRATION_ROOM_SHARE`` of the room the cap
    leaves over the measured resident growth per sample (its fixed part counted per sample too),
    at most ``planned`` and at least 1."""
    per_sample = max(1, int(growth)) / max(1, int(samples))
    return int(max(1, min(int(planned), CALIBRATION_ROOM_SHARE * room // per_sample)))


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
    peak = max(int(peak * scale), _RESIDENT_PEAK_BEFORE_RESETS[0], resident_peak_bytes() or 0)
    return {"peak_memory_bytes": peak, "peak_memory_kind": "process peak RSS"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU {platform.machine()} ({threads} thread{'' if threads == 1 else 's'})"


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
