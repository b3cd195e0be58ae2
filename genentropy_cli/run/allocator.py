"""Keep freed memory for reuse during an estimate (Linux with glibc).

Every batch allocates the same large tensors again (a decoder's activations for thousands of
stacked rows, the Jacobian, its float64 copy). With glibc's defaults a block of that size is
either a fresh ``mmap`` or the top of the heap, which is given back to the OS on ``free`` once
it exceeds the trim threshold: every batch then page-faults and zeroes its memory again. On
2 CPU cores that cost as much as the MLP benchmark's whole decoder pass (benchmarks/RESULTS.md:
engine 2x faster, the forward-pass floor 1.4x faster, and far steadier timings).

``keep_freed_memory`` raises the mmap threshold to glibc's largest (32 MiB: smaller blocks come
from the heap) and the trim threshold to ``MALLOC_TRIM_THRESHOLD_BYTES``, once per process. The
cost: the process keeps up to that much freed memory instead of returning it. Set
``GENENTROPY_KEEP_FREED_MEMORY=0`` to leave the allocator alone; environment settings
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` are respected as they are.
``release_freed_memory`` (``malloc_trim``) gives the kept memory back at the end of a run, so a
later run in the same process, which plans ``--max-memory`` from the memory in use, does not
count it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from genentropy_cli.defaults import MALLOC_MMAP_THRESHOLD_BYTES, MALLOC_TRIM_THRESHOLD_BYTES

OPT_OUT_VARIABLE = "GENENTROPY_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3

_state: dict[str, object] = {"applied": None, "libc": None}


def keep_freed_memory() -> bool:
    """Apply the malloc thresholds of the module doc (once); True if they are in effect."""
    if _state["applied"] is not None:
        return bool(_state["applied"])
    _state["applied"] = _apply()
    return bool(_state["applied"])


def _apply() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT_VARIABLE, "1").strip() in ("0", "false", "no"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the user tuned glibc themselves
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state["libc"] = libc
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES))


def release_freed_memory() -> bool:
    """Return the freed memory kept by ``keep_freed_memory`` to the OS (glibc's malloc_trim);
    True if anything was released. Does nothing where the thresholds were not applied."""
    libc = _state["libc"]
    if not _state["applied"] or libc is None:
        return False
    trim = libc.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


@contextmanager
def reusing_freed_memory() -> Iterator[bool]:
    """``keep_freed_memory`` for the block, ``release_freed_memory`` after it (an estimate)."""
    try:
        yield keep_freed_memory()
    finally:
        release_freed_memory()
