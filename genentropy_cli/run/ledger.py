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

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from genentropy_cli.core.logdet import LogDetTally
from genentropy_cli.core.stats import RunningMoments
from genentropy_cli.errors import NonFiniteSampleError
from genentropy_cli.run.rows import PairedRows, PairedSummary, SampleRows, SampleSummary
from genentropy_cli.run.stopping import first_index_meeting_target

__all__ = ["Emitted", "PairedRows", "RunLedger", "SampleRows"]

@dataclass
class Emitted:
    """Rows that reached the frontier: global index of the first, and the rows."""

    first_index: int
    rows: SampleRows


class RunLedger:
    """Rows by block, the merged prefix of whole blocks, and the frontier (see the module)."""

    def __init__(self, num_samples: int, block_size: int, scales: Sequence[float], *,
                 skip_nonfinite: bool = False, target_stderr: float | None = None, min_samples: int = 2,
                 rows_template: SampleRows | PairedRows | None = None):
        self.num_samples = int(num_samples)
        self.block_size = int(block_size)
        self.scales = tuple(float(scale) for scale in scales)
        self.skip_nonfinite = skip_nonfinite
        self.target_stderr = target_stderr
        self.min_samples = int(min_samples)
        self.num_blocks = -(-self.num_samples // self.block_size)
        self.rows_template = rows_template if rows_template is not None else SampleRows.empty(len(self.scales))
        """An empty rows object of the kind recorded: makes the summary and restores checkpointed rows."""
        self.prefix = RunningMoments.empty(self.rows_template.terms.shape[1])
        self.summary = self.rows_template.new_summary(len(self.scales))
        self.merged_blocks = 0
        self.emitted = 0  # samples before this global index have been handed out
        self.stop_at: int | None = None  # samples used when the target was met
        self.clipped_eigenvalues = 0
        self.log_det = LogDetTally()
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
        self.blocks[block] = rows if current is None else type(rows).concat([current, rows])

    @property
    def finished(self) -> bool:
        return self.stop_at is not None or self.merged_blocks >= self.num_blocks

    @property
    def stop_reason_is_target(self) -> bool:
        return self.stop_at is not None

    def remaining_spans(self) -> Iterator[tuple[int, int, int]]:
        """(block, start, stop) of every sample still to compute, in block order, made as they
        are taken: a run of 10^12 samples (10^9 blocks) starts at once, holding no list of them."""
        if self.finished:
            return
        for block in range(self.merged_blocks, self.num_blocks):
            start, stop = self.recorded(block), self.block_length(block)
            if start < stop:
                yield block, start, stop

    def recorded_total(self) -> int:
        """Samples recorded so far: the merged blocks' and the stored rows of later blocks."""
        merged = min(self.merged_blocks * self.block_size, self.num_samples)
        return merged + sum(len(rows) for block, rows in self.blocks.items() if block >= self.merged_blocks)

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
        column = int(np.argmin(np.isfinite(rows.terms[local])))
        raise NonFiniteSampleError(base + local, self.scales[column % len(self.scales)],
                                   rows.column_owner(column, len(self.scales)))

    def _merge(self, block: int, rows: SampleRows) -> None:
        self.prefix = self.prefix.merge(RunningMoments.from_values(rows.terms[rows.finite]))
        self.summary.add(rows, block * self.block_size)
        self.blocks.pop(block, None)
        self.merged_blocks = block + 1

    # ------------------------------------------------------------------ results

    @property
    def samples_used(self) -> int:
        return self.stop_at if self.stop_at is not None else min(self.merged_blocks * self.block_size, self.num_samples)

    def snapshot(self) -> tuple[RunningMoments, SampleSummary | PairedSummary, int]:
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
            "clipped_eigenvalues": self.clipped_eigenvalues, "log_det": self.log_det.to_dict(),
            "prefix_count": self.prefix.count,
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
        self.log_det = LogDetTally.from_dict(meta.get("log_det"))  # absent from older checkpoints
        self.prefix = RunningMoments(int(meta["prefix_count"]), np.asarray(arrays["prefix_mean"], dtype=np.float64),
                                     np.asarray(arrays["prefix_m2"], dtype=np.float64))
        self.summary = self.rows_template.summary_from_state(len(self.scales), meta["summary"], arrays)
        names = self.rows_template.columns()
        if not all(type(block) is int and self.merged_blocks <= block < self.num_blocks for block in meta["blocks"]):
            raise ValueError("its stored blocks do not fit the run")
        self.blocks = {
            int(block): self.rows_template.with_columns({name: arrays[f"block{block}_{name}"] for name in names})
            for block in meta["blocks"]
        }
        self._check_restored()

    def _check_restored(self) -> None:
        """A ValueError where the restored state cannot come from a run: non-finite moments, a
        non-finite stored term that the run would have refused (no ``skip_nonfinite``), rows
        beyond their block, counts past the samples. Such a state would give a wrong estimate."""
        prefix, columns = self.prefix, self.rows_template.terms.shape[1]
        if not 0 <= self.merged_blocks <= self.num_blocks or not 0 <= prefix.count <= self.samples_used:
            raise ValueError("its sample counts do not fit the run")
        if prefix.mean.shape != (columns,) or prefix.m2.shape != (columns,) \
                or not (np.isfinite(prefix.mean).all() and np.isfinite(prefix.m2).all()):
            raise ValueError("its merged moments are not finite")
        if (prefix.m2 < 0).any():
            raise ValueError("its merged moments hold a negative sum of squares")
        self._check_counters()
        for block, rows in self.blocks.items():
            if not self.merged_blocks <= block < self.num_blocks or len(rows) > self.block_length(block) \
                    or rows.terms.shape[1:] != (columns,):
                raise ValueError(f"its rows of block {block} do not fit the run")
            if not self.skip_nonfinite and not rows.finite.all():
                raise ValueError(f"its block {block} holds non-finite terms, which this run (no --skip-nonfinite) "
                                 "would have refused")

    def _check_counters(self) -> None:
        """The counters agree with each other and with the rows (a ValueError otherwise): every
        merged sample is counted once, finite (in the moments) or not; the frontier lies between
        the merged samples and the stored rows of the frontier block; a met target ends the run
        inside the last merged block and leaves no rows behind."""
        merged, summary = self.samples_used, self.summary
        if summary.count != self.prefix.count or summary.count + summary.num_nonfinite != merged \
                or min(summary.num_nonfinite, self.clipped_eigenvalues) < 0:
            raise ValueError(f"its counters disagree: {merged} samples merged, {self.prefix.count} in the moments, "
                             f"{summary.count} + {summary.num_nonfinite} counted")
        if summary.num_nonfinite and not self.skip_nonfinite:
            raise ValueError("it counts non-finite samples, which this run (no --skip-nonfinite) would have refused")
        tally = self.log_det
        if min(tally.cholesky, tally.eigenvalues, tally.fallbacks, tally.checked) < 0 \
                or not 0 <= tally.max_difference < float("inf"):
            raise ValueError("its log-determinant counters are negative or not finite")
        for part in getattr(summary, "models", [summary]):
            if not 0 <= part.eigen_count <= part.count:
                raise ValueError(f"it counts {part.eigen_count} samples with eigenvalues of {part.count}")
        models = getattr(self.rows_template, "models", None)
        if models is not None and len(getattr(summary, "models", ())) != len(models):
            raise ValueError("its summaries do not match the models of this run")
        frontier = self.blocks.get(self.merged_blocks)
        if not merged <= self.emitted <= merged + (len(frontier) if frontier is not None else 0):
            raise ValueError(f"its frontier {self.emitted} is not within the recorded samples")
        if self.stop_at is not None and (self.blocks or self.merged_blocks == 0
                                         or not (self.merged_blocks - 1) * self.block_size < self.stop_at
                                         <= self.num_samples):
            raise ValueError(f"its stop at sample {self.stop_at} does not fit its blocks")
