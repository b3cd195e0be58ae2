"""Tests of differences between estimates: standard errors of differences, z-scores, p-values
with Holm's correction over all pairs, and ranks. Pure functions of numbers."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["correlation_from_moments", "holm_adjust", "rank_descending", "significance_mark", "two_sided_p_value",
           "unpaired_stderr", "z_score"]



def unpaired_stderr(stderr_a: float, stderr_b: float) -> float:
    """Standard error of a difference of two independent means: sqrt(se_a^2 + se_b^2)."""
    return math.sqrt(stderr_a**2 + stderr_b**2)


def correlation_from_moments(std_a: float, std_b: float, std_difference: float) -> float:
    """Pearson correlation of a and b from var(a - b) = var a + var b - 2 cov(a, b)."""
    if not (std_a > 0 and std_b > 0):
        return math.nan
    covariance = 0.5 * (std_a**2 + std_b**2 - std_difference**2)
    return covariance / (std_a * std_b)


def two_sided_p_value(z_score: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    if math.isnan(z_score):
        return math.nan
    return math.erfc(abs(z_score) / math.sqrt(2.0))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control over all pairs):
    the k-th smallest p (k = 0, 1, ...) becomes max over j <= k of min(1, (m - j) p_(j))."""
    count = len(p_values)
    order = sorted(range(count), key=lambda index: (math.inf if math.isnan(p_values[index]) else p_values[index]))
    adjusted = [math.nan] * count
    running = 0.0
    for rank, index in enumerate(order):
        value = p_values[index]
        if math.isnan(value):
            continue
        running = max(running, min(1.0, (count - rank) * value))
        adjusted[index] = running
    return adjusted


def significance_mark(p_value: float) -> str:
    """*** p < 0.001, ** p < 0.01, * p < 0.05 (on Holm-adjusted p), else empty."""
    if math.isnan(p_value):
        return ""
    for threshold, mark in ((0.001, "***"), (0.01, "**"), (0.05, "*")):
        if p_value < threshold:
            return mark
    return ""


def rank_descending(values: Sequence[float]) -> list[int]:
    """Rank 1 = largest value (most entropy); ties share the smaller rank."""
    return [1 + sum(1 for other in values if other > value) for value in values]


def z_score(difference: float, stderr: float) -> float:
    """difference / stderr; a nonzero difference with zero error is infinitely significant. An
    unknown error or difference (NaN: one sample, a non-finite term) gives NaN, so p is NaN and
    no significance is claimed: p = 0 from a NaN error would be a false discovery."""
    if math.isnan(stderr) or math.isnan(difference):
        return math.nan
    if stderr > 0:
        return difference / stderr
    return math.nan if difference == 0 else math.copysign(math.inf, difference)
