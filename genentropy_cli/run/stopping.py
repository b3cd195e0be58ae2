"""When a run ends: the sample cap, a target standard error, an interrupt.

``--target-stderr X`` stops at the first sample count n (at least ``min_samples``) at which
the standard error of the first n finite samples, std_n / sqrt(n), is at most X at every
scale. The rule is evaluated on samples in their global order, so the stopping point, like the
estimate, does not depend on batch size, process count or interruptions.
"""

from __future__ import annotations

import numpy as np

from genentropy_cli.core.stats import RunningMoments

STOP_NUM_SAMPLES = "num_samples"
"""Every requested sample was used (the -n cap)."""
STOP_TARGET_STDERR = "target_stderr"
"""The standard error reached --target-stderr at every scale."""
STOP_INTERRUPTED = "interrupted"
"""Ctrl-C / SIGTERM: the result is partial."""

STOP_REASONS = {
    STOP_NUM_SAMPLES: "all requested samples used",
    STOP_TARGET_STDERR: "target standard error reached at every scale",
    STOP_INTERRUPTED: "interrupted: partial result",
}


def first_index_meeting_target(base: RunningMoments, values: np.ndarray, target: float,
                               min_samples: int) -> int | None:
    """The first row j such that ``base`` plus rows 0..j of ``values`` (n, S) has a standard
    error <= ``target`` at every scale and at least ``min_samples`` (and 2) samples; None if
    no row does.

    Running moments of the appended rows, shifted by c (base's mean, or the first row):
    M2_n = [M2_0 + n_0 (m_0 - c)^2] + sum_k (x_k - c)^2 - (sum of all x - c)^2 / n.
    """
    rows = np.asarray(values, dtype=np.float64)
    if rows.shape[0] == 0:
        return None
    counts = base.count + np.arange(1, rows.shape[0] + 1)
    shift = base.mean if base.count else rows[0]
    deviations = rows - shift
    base_offset = base.count * (base.mean - shift)
    sums = base_offset + np.cumsum(deviations, axis=0)
    squares = base.m2 + base_offset * (base.mean - shift) + np.cumsum(deviations * deviations, axis=0)
    m2 = np.maximum(squares - sums * sums / counts[:, None], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        stderr = np.sqrt(m2 / ((counts - 1) * counts)[:, None])
    met = (stderr <= target).all(axis=1) & (counts >= max(int(min_samples), 2))
    hits = np.flatnonzero(met)
    return int(hits[0]) if hits.size else None
