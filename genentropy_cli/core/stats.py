"""Float64 streaming moments (Welford/Chan) per scale, merged in a fixed block order."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from genentropy_cli.defaults import CONFIDENCE_Z_95

__all__ = ["BlockAccumulator", "LogHistogram", "RunningMoments"]


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations (M2) of a stream, one column per scale."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, num_scales: int) -> "RunningMoments":
        return cls(0, np.zeros(num_scales), np.zeros(num_scales))

    @classmethod
    def from_values(cls, values: np.ndarray) -> "RunningMoments":
        """Exact two-pass moments of a (n, S) float64 array."""
        values = np.asarray(values, dtype=np.float64)
        count = values.shape[0]
        if count == 0:
            return cls.empty(values.shape[1])
        mean = values.mean(axis=0)
        deviations = values - mean
        return cls(count, mean, (deviations * deviations).sum(axis=0))

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """Chan et al.'s parallel combination: exact for any split of the stream."""
        if other.count == 0:
            return RunningMoments(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return RunningMoments(other.count, other.mean.copy(), other.m2.copy())
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / total)
        return RunningMoments(total, mean, m2)

    @property
    def std(self) -> np.ndarray:
        """Per-sample standard deviation (ddof = 1)."""
        if self.count < 2:
            return np.full_like(self.mean, math.nan)
        return np.sqrt(self.m2 / (self.count - 1))

    @property
    def stderr(self) -> np.ndarray:
        """Standard error of the mean: std / sqrt(N)."""
        if self.count < 2:
            return np.full_like(self.mean, math.nan)
        return self.std / math.sqrt(self.count)

    def ci95(self) -> tuple[np.ndarray, np.ndarray]:
        half_width = CONFIDENCE_Z_95 * self.stderr
        return self.mean - half_width, self.mean + half_width

    def to_state(self) -> dict:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "RunningMoments":
        return cls(int(state["count"]), np.asarray(state["mean"], dtype=np.float64), np.asarray(state["m2"], dtype=np.float64))


@dataclass
class BlockAccumulator:
    """Collects per-sample values by latent block and merges whole blocks in block order.

    Each block's moments are computed from its own values (two-pass, float64), then the
    blocks are merged in the order of ``block_order`` (default 0, 1, 2, ...), so the result
    does not depend on how samples were batched, or on which process computed a block.
    """

    num_scales: int
    block_order: list[int]
    total: RunningMoments = field(init=False)
    merged_blocks: int = field(default=0, init=False)
    _pending: dict[int, list[np.ndarray]] = field(default_factory=dict, init=False)
    _completed: dict[int, RunningMoments] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.total = RunningMoments.empty(self.num_scales)

    def add(self, block_index: int, values: np.ndarray) -> None:
        """Record the values (n, S) of the next samples of a block, in sample order."""
        self._pending.setdefault(block_index, []).append(np.asarray(values, dtype=np.float64))

    def complete_block(self, block_index: int) -> RunningMoments:
        """Close a block (every sample recorded or skipped) and merge what is now in order."""
        pieces = self._pending.pop(block_index, [])
        values = np.concatenate(pieces) if pieces else np.zeros((0, self.num_scales))
        moments = RunningMoments.from_values(values)
        self._completed[block_index] = moments
        while self.merged_blocks < len(self.block_order) and self.block_order[self.merged_blocks] in self._completed:
            self.total = self.total.merge(self._completed.pop(self.block_order[self.merged_blocks]))
            self.merged_blocks += 1
        return moments


@dataclass
class LogHistogram:
    """Counts of non-negative values in log10 bins (``PER_DECADE`` per decade over
    [10^LOW, 10^HIGH)), with the exact minimum and maximum.

    Quantiles come out within a factor 10^(1/PER_DECADE) (2.3 %) of the exact ones, in
    constant memory however many samples there are, and histograms merge exactly (counts add),
    so a checkpoint stays small for runs of millions of samples.
    """

    LOW = -30
    HIGH = 30
    PER_DECADE = 100
    counts: np.ndarray = field(default_factory=lambda: np.zeros((LogHistogram.HIGH - LogHistogram.LOW)
                                                                 * LogHistogram.PER_DECADE, dtype=np.int64))
    minimum: float = math.inf
    maximum: float = -math.inf

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        with np.errstate(divide="ignore"):
            positions = np.floor((np.log10(np.maximum(values, 0.0)) - self.LOW) * self.PER_DECADE)
        bins = np.clip(np.nan_to_num(positions, neginf=0.0), 0, self.counts.size - 1).astype(np.int64)
        self.counts += np.bincount(bins, minlength=self.counts.size)

    def copy(self) -> "LogHistogram":
        return LogHistogram(self.counts.copy(), self.minimum, self.maximum)

    def quantile(self, level: float) -> float | None:
        """The value at ``level`` in [0, 1]: the exact extremes at 0 and 1, else the geometric
        centre of the bin holding the sample of rank level * (n - 1), kept within the extremes."""
        total = self.total
        if total == 0:
            return None
        if level <= 0:
            return self.minimum
        if level >= 1:
            return self.maximum
        rank = level * (total - 1)
        index = int(np.searchsorted(np.cumsum(self.counts), rank, side="right"))
        if index == 0:
            return self.minimum
        centre = 10.0 ** (self.LOW + (index + 0.5) / self.PER_DECADE)
        return float(min(max(centre, self.minimum), self.maximum))
