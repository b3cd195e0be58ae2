"""Start-up tracing for benchmarks: ``GENENTROPY_TRACE_STARTUP=1`` writes one line to stderr
when the first batch of a run starts,

    genentropy: first batch starts at unix time 1764512345.123456, 2.84 s after the process started

so the time a command spends before it computes (imports, loading, probes, planning) can be
measured from outside (``benchmarks/startup.py`` compares it with ``python -c "import torch"``).
The process's age is read from ``/proc`` (Linux; 10 ms resolution); elsewhere only the unix time.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["TRACE_VARIABLE", "process_age_seconds", "trace_first_batch"]

TRACE_VARIABLE = "GENENTROPY_TRACE_STARTUP"
"""Set to anything but empty or 0: ``trace_first_batch`` writes its line."""

_traced = False


def process_age_seconds() -> float | None:
    """Seconds since this process started (Linux: ``/proc/self/stat``'s start time against
    ``/proc/uptime``, both in clock ticks of 10 ms); None where ``/proc`` cannot tell."""
    try:
        with open("/proc/self/stat") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def trace_first_batch() -> None:
    """The trace line, once per process, where ``GENENTROPY_TRACE_STARTUP`` asks for it."""
    global _traced
    if _traced or os.environ.get(TRACE_VARIABLE, "") in ("", "0"):
        return
    _traced = True
    now, age = time.time(), process_age_seconds()
    since = f", {age:.2f} s after the process started" if age is not None else ""
    sys.stderr.write(f"genentropy: first batch starts at unix time {now:.6f}{since}\n")
    sys.stderr.flush()
