"""The ledger of a run: every computed sample's row, by latent block, merged in global order.

Batches (from any process, in any order) hand in rows: per sample, the entropy term h_i per
scale, -log p(z_i), the collapsed-direction counts and the extreme singular values. The ledger
keeps them per latent block and advances a frontier over the samples in global order:

* rows that reach the frontier are checked (a non-finite term fails unless skipped) and
  handed out once, in order, for the per-sample file;
* with a target standard error, the frontier stops at the first sample count that meets it
  (``stopping.first_index_meeting_target``), rows beyond it are dropped;
* a block whose rows are all in is merged: its two-pass float64 moments join the running
  total by Chan's formula, blocks in index order.

The merged total therefore depends only on the per-sample values, never on batching, process
count, completion order or interruptions. The whole state round-trips through ``to_state``
(checkpoints) exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from genentropy_cli.errors import NonFiniteSampleError
from genentropy_cli.core.logdet import collapsed_directions
from genentropy_cli.core.stats import LogHistogram, RunningMoments
from genentropy_cli.run.stopping import first_index_meeting_target

MAX_LISTED_NONFINITE = 100
SINGULAR_VALUE_QUANTILES = {"min": 0.0, "q01": 0.01, "median": 0.5, "q99": 0.99, "max": 1.0}


@dataclass
class SampleRows:
    """Per-sample columns of consecutive samples (float64 except the collapsed counts)."""

    terms: np.ndarray  # (n, S) h_i per scale
    neg_log_density: np.ndarray  # (n,)   -log p(z_i)
    collapsed: np.ndarray  # (n, S) directions with lambda < s^2
    sigma_min: np.ndarray  # (n,)   smallest singular value of J
    sigma_max: np.ndarray  # (n,)   largest singular value of J

    COLUMNS = ("terms", "neg_log_density", "collapsed", "sigma_min", "sigma_max")

    @classmethod
    def from_terms(cls, terms, scales: Sequence[float]) -> "SampleRows":
        """From an ``engine.SampleTerms`` batch."""
        eigenvalues = terms.eigenvalues
        return cls(
            terms.entropy_terms.numpy().astype(np.float64, copy=False),
            terms.neg_log_density.numpy().astype(np.float64, copy=False),
            collapsed_directions(eigenvalues, scales).numpy().astype(np.int64),
            np.sqrt(eigenvalues[:, 0].numpy()) if eigenvalues.shape[1] else np.zeros(len(eigenvalues)),
            np.sqrt(eigenvalues[:, -1].numpy()) if eigenvalues.shape[1] else np.zeros(len(eigenvalues)),
        )

    def __len__(self) -> int:
        return int(self.terms.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.COLUMNS}

    def slice(self, start: int, stop: int) -> "SampleRows":
        return SampleRows(**{name: column[start:stop] for name, column in self.columns().items()})

    @classmethod
    def concat(cls, pieces: Sequence["SampleRows"]) -> "SampleRows":
        if len(pieces) == 1:
            return pieces[0]
        return cls(**{name: np.concatenate([getattr(piece, name) for piece in pieces]) for name in cls.COLUMNS})

    @property
    def finite(self) -> np.ndarray:
        return np.isfinite(self.terms).all(axis=1)


@dataclass
class SampleSummary:
    """What the diagnostics report about the samples used: extreme singular values, collapsed
    directions, non-finite samples."""

    num_scales: int
    count: int = 0
    collapsed_sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    sigma_min: LogHistogram = field(default_factory=LogHistogram)
    sigma_max: LogHistogram = field(default_factory=LogHistogram)
    num_nonfinite: int = 0
    nonfinite_indices: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.collapsed_sum is None:
            self.collapsed_sum = np.zeros(self.num_scales, dtype=np.int64)

    def add(self, rows: SampleRows, first_index: int) -> None:
        finite = rows.finite
        bad = np.flatnonzero(~finite) + first_index
        self.num_nonfinite += int(bad.size)
        room = MAX_LISTED_NONFINITE - len(self.nonfinite_indices)
        self.nonfinite_indices.extend(int(index) for index in bad[: max(room, 0)])
        self.count += int(finite.sum())
        self.collapsed_sum = self.collapsed_sum + rows.collapsed[finite].sum(axis=0)
        self.sigma_min.add(rows.sigma_min[finite])
        self.sigma_max.add(rows.sigma_max[finite])

    def copy(self) -> "SampleSummary":
        return SampleSummary(self.num_scales, self.count, self.collapsed_sum.copy(), self.sigma_min.copy(),
                             self.sigma_max.copy(), self.num_nonfinite, list(self.nonfinite_indices))

    def diagnostics(self, scales: Sequence[float]) -> dict:
        return {
            "smallest_singular_value": self.sigma_min.quantile(0.0),
            "largest_singular_value": self.sigma_max.quantile(1.0),
            "smallest_singular_value_quantiles": _quantiles(self.sigma_min),
            "largest_singular_value_quantiles": _quantiles(self.sigma_max),
            "mean_collapsed_directions": {
                f"{scale:g}": (float(total) / self.count if self.count else None)
                for scale, total in zip(scales, self.collapsed_sum)
            },
        }

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"count": self.count, "num_nonfinite": self.num_nonfinite,
                "nonfinite_indices": list(self.nonfinite_indices),
                "sigma_extremes": [self.sigma_min.minimum, self.sigma_min.maximum,
                                   self.sigma_max.minimum, self.sigma_max.maximum]}
        arrays = {"summary_collapsed_sum": self.collapsed_sum,
                  "summary_sigma_min": self.sigma_min.counts, "summary_sigma_max": self.sigma_max.counts}
        return meta, arrays

    @classmethod
    def from_state(cls, num_scales: int, meta: dict, arrays: dict[str, np.ndarray]) -> "SampleSummary":
        low_min, low_max, high_min, high_max = (float(value) for value in meta["sigma_extremes"])
        return cls(num_scales, int(meta["count"]), np.asarray(arrays["summary_collapsed_sum"], dtype=np.int64),
                   LogHistogram(np.asarray(arrays["summary_sigma_min"], dtype=np.int64), low_min, low_max),
                   LogHistogram(np.asarray(arrays["summary_sigma_max"], dtype=np.int64), high_min, high_max),
                   int(meta["num_nonfinite"]), [int(index) for index in meta["nonfinite_indices"]])


def _quantiles(histogram: LogHistogram) -> dict | None:
    if histogram.total == 0:
        return None
    return {name: histogram.quantile(level) for name, level in SINGULAR_VALUE_QUANTILES.items()}


@dataclass
class Emitted:
    """Rows that reached the frontier: global index of the first, and the rows."""

    first_index: int
    rows: SampleRows


class RunLedger:
    """Rows by block, the merged prefix of whole blocks, and the frontier (see the module)."""

    def __init__(self, num_samples: int, block_size: int, scales: Sequence[float], *,
                 skip_nonfinite: bool = False, target_stderr: float | None = None, min_samples: int = 2):
        self.num_samples = int(num_samples)
        self.block_size = int(block_size)
        self.scales = tuple(float(scale) for scale in scales)
        self.skip_nonfinite = skip_nonfinite
        self.target_stderr = target_stderr
        self.min_samples = int(min_samples)
        self.num_blocks = -(-self.num_samples // self.block_size)
        self.prefix = RunningMoments.empty(len(self.scales))
        self.summary = SampleSummary(len(self.scales))
        self.merged_blocks = 0
        self.emitted = 0  # samples before this global index have been handed out
        self.stop_at: int | None = None  # samples used when the target was met
        self.clipped_eigenvalues = 0
        self.blocks: dict[int, SampleRows] = {}

    # ------------------------------------------------------------------ recording

    def block_length(self, block: int) -> int:
        return min(self.block_size, self.num_samples - block * self.block_size)

    def recorded(self, block: int) -> int:
        """Samples of ``block`` recorded so far (a merged block counts as complete)."""
        if block < self.merged_blocks:
            return self.block_length(block)
        rows = self.blocks.get(block)
        return len(rows) if rows is not None else 0

    def record(self, block: int, start: int, rows: SampleRows) -> None:
        """Rows for positions start, start + 1, ... of ``block`` (each block fills in order)."""
        if self.finished or block < self.merged_blocks:
            return
        have = self.recorded(block)
        if start != have:
            raise ValueError(f"rows for block {block} start at {start}, but {have} are recorded")
        current = self.blocks.get(block)
        self.blocks[block] = rows if current is None else SampleRows.concat([current, rows])

    @property
    def finished(self) -> bool:
        return self.stop_at is not None or self.merged_blocks >= self.num_blocks

    @property
    def stop_reason_is_target(self) -> bool:
        return self.stop_at is not None

    def remaining_spans(self) -> list[tuple[int, int, int]]:
        """(block, start, stop) of every sample still to compute, in block order."""
        if self.finished:
            return []
        spans = []
        for block in range(self.merged_blocks, self.num_blocks):
            start, stop = self.recorded(block), self.block_length(block)
            if start < stop:
                spans.append((block, start, stop))
        return spans

    # ------------------------------------------------------------------ the frontier

    def advance(self) -> list[Emitted]:
        """Move the frontier over newly contiguous rows; returns them in global order."""
        emitted: list[Emitted] = []
        while not self.finished and self.merged_blocks in self.blocks:
            block = self.merged_blocks
            rows = self.blocks[block]
            base = block * self.block_size
            first_new = max(0, self.emitted - base)
            if first_new == len(rows) and len(rows) < self.block_length(block):
                break
            finite = rows.finite
            if not self.skip_nonfinite and not finite[first_new:].all():
                self._fail_on_nonfinite(rows, base, first_new)
            stop = None
            if self.target_stderr is not None and first_new < len(rows):
                hit = first_index_meeting_target(self.prefix, rows.terms[finite], self.target_stderr, self.min_samples)
                stop = None if hit is None else int(np.flatnonzero(finite)[hit]) + 1
            end = len(rows) if stop is None else stop
            if end > first_new:
                emitted.append(Emitted(base + first_new, rows.slice(first_new, end)))
            self.emitted = base + end
            if stop is not None:  # the target holds after sample base + stop - 1: the run ends there
                self._merge(block, rows.slice(0, stop))
                self.stop_at = base + stop
                self.blocks.clear()
                break
            if len(rows) < self.block_length(block):
                break
            self._merge(block, rows)
        return emitted

    def _fail_on_nonfinite(self, rows: SampleRows, base: int, first_new: int) -> None:
        local = first_new + int(np.flatnonzero(~rows.finite[first_new:])[0])
        scale_index = int(np.argmin(np.isfinite(rows.terms[local])))
        raise NonFiniteSampleError(base + local, self.scales[scale_index])

    def _merge(self, block: int, rows: SampleRows) -> None:
        self.prefix = self.prefix.merge(RunningMoments.from_values(rows.terms[rows.finite]))
        self.summary.add(rows, block * self.block_size)
        self.blocks.pop(block, None)
        self.merged_blocks = block + 1

    # ------------------------------------------------------------------ results

    @property
    def samples_used(self) -> int:
        return self.stop_at if self.stop_at is not None else min(self.merged_blocks * self.block_size, self.num_samples)

    def snapshot(self) -> tuple[RunningMoments, SampleSummary, int]:
        """Moments and summary of every recorded sample (merged prefix, then the other blocks
        in block order) and how many samples that is: the partial result of an interrupt."""
        moments, summary, samples = self.prefix, self.summary.copy(), self.samples_used
        if self.stop_at is None:
            for block in sorted(self.blocks):
                rows = self.blocks[block]
                moments = moments.merge(RunningMoments.from_values(rows.terms[rows.finite]))
                summary.add(rows, block * self.block_size)
                samples += len(rows)
        return moments, summary, samples

    def running_mean(self) -> np.ndarray:
        """Mean over the merged prefix and the frontier block's rows (for progress display)."""
        rows = self.blocks.get(self.merged_blocks)
        if rows is None or self.stop_at is not None:
            return self.prefix.mean
        return self.prefix.merge(RunningMoments.from_values(rows.terms[rows.finite])).mean

    # ------------------------------------------------------------------ checkpoint state

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        summary_meta, arrays = self.summary.to_state()
        meta = {
            "merged_blocks": self.merged_blocks, "emitted": self.emitted, "stop_at": self.stop_at,
            "clipped_eigenvalues": self.clipped_eigenvalues, "prefix_count": self.prefix.count,
            "summary": summary_meta, "blocks": sorted(self.blocks),
        }
        arrays = {**arrays, "prefix_mean": self.prefix.mean, "prefix_m2": self.prefix.m2}
        for block, rows in self.blocks.items():
            arrays.update({f"block{block}_{name}": column for name, column in rows.columns().items()})
        return meta, arrays

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.merged_blocks = int(meta["merged_blocks"])
        self.emitted = int(meta["emitted"])
        self.stop_at = None if meta["stop_at"] is None else int(meta["stop_at"])
        self.clipped_eigenvalues = int(meta["clipped_eigenvalues"])
        self.prefix = RunningMoments(int(meta["prefix_count"]), np.asarray(arrays["prefix_mean"], dtype=np.float64),
                                     np.asarray(arrays["prefix_m2"], dtype=np.float64))
        self.summary = SampleSummary.from_state(len(self.scales), meta["summary"], arrays)
        self.blocks = {
            int(block): SampleRows(**{name: np.asarray(arrays[f"block{block}_{name}"]) for name in SampleRows.COLUMNS})
            for block in meta["blocks"]
        }

