"""``track``: the checkpoints of one training run on common latents, in step order, and every
change between consecutive checkpoints with its paired standard error.

It is ``compare`` restricted to the pairs (k, k+1): every checkpoint sees the same latents z_i,
so the change H(k+1) - H(k) is mean_i [h_{k+1}(z_i) - h_k(z_i)] with the paired standard error
std_i(h_{k+1} - h_k) / sqrt(N), tested two-sided with Holm's correction over the K - 1 changes
(per scale). Each checkpoint's entropy equals ``estimate --seed`` of that file alone.

A checkpoint's step (``checkpoint_step``) is read from its file name first: a number after
``global_step``, ``step``, ``iteration``, ``iter`` or ``it`` (``epoch=3-step=300`` gives 300),
else after ``epoch`` or ``ep``, else the last number in the name (``vae-le-3`` gives 3); then
from what the file records (its metadata or embedded spec): the first integer under a key
``global_step``, ``step`` or ``epoch``, searched breadth-first (the sample models record
``training.final_epoch.epoch``). Checkpoints are sorted by step; equal steps keep the order given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from genentropy_cli.core.latents import LatentSpec
from genentropy_cli.envelope import envelope
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.compare import ComparisonResult, PairDifference, compare_models
from genentropy_cli.run.hooks import LogCallback, ProgressCallback
from genentropy_cli.run.options import EstimateOptions

__all__ = ["TrackResult", "checkpoint_step", "order_by_step", "track_checkpoints"]

_NUMBER = r"[=_\-.]?(\d+)(?!\d)"
STEP_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("step", re.compile(r"(?<![a-z])(?:global_step|step|iteration|iter|it)" + _NUMBER, re.IGNORECASE)),
    ("epoch", re.compile(r"(?<![a-z])(?:epoch|ep)" + _NUMBER, re.IGNORECASE)),
    ("number", re.compile(r"(\d+)(?!.*\d)")),
)
"""What a number in a file name stands for, most specific first."""
STEP_KEYS: tuple[str, ...] = ("global_step", "step", "epoch")
"""Keys of a file's metadata or spec that hold its step."""


def checkpoint_step(path: str | Path, metadata: Mapping | None = None, spec: Mapping | None = None,
                    ) -> tuple[int, str] | None:
    """(step, where it was found) of a checkpoint, or None (see the module docstring)."""
    stem = Path(path).stem
    for kind, pattern in STEP_PATTERNS:
        found = pattern.findall(stem)
        if found:
            return int(found[-1]), f"file name ({kind})"
    for origin, record in (("metadata", metadata), ("spec", spec)):
        found = _find_step(record)
        if found is not None:
            return found[0], f"{origin}: {found[1]}"
    return None


def _find_step(record: Mapping | None) -> tuple[int, str] | None:
    """The first integer under a STEP_KEYS key, breadth-first through nested mappings."""
    queue: list[tuple[str, Any]] = [("", record)]
    while queue:
        prefix, node = queue.pop(0)
        if not isinstance(node, Mapping):
            continue
        for key in STEP_KEYS:
            value = node.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value, prefix + key
        queue.extend((f"{prefix}{key}.", value) for key, value in node.items() if isinstance(value, Mapping))
    return None


def order_by_step(paths: Sequence[str], found: Sequence[tuple[int, str] | None], keep_order: bool = False,
                  ) -> list[int]:
    """The order of the checkpoints: by step (stable); as given with ``keep_order``."""
    if keep_order:
        return list(range(len(paths)))
    missing = [path for path, step in zip(paths, found) if step is None]
    if missing:
        raise InputError(f"no step found in the name or metadata of {missing[0]}: name checkpoints like "
                         "gen-step1000.safetensors or gen-epoch=3.pt, or pass --keep-order to use the order given")
    return sorted(range(len(paths)), key=lambda index: found[index][0])  # type: ignore[index]


@dataclass
class TrackResult:
    """Every checkpoint's estimate (``comparison.models``, in step order) and the consecutive
    changes (``comparison.pairs``: (k+1, k) per scale, so that the difference is H(k+1) - H(k))."""

    comparison: ComparisonResult
    steps: list[int | None]
    step_sources: list[str]

    @property
    def partial(self) -> bool:
        return self.comparison.partial

    def changes(self, scale_index: int = 0) -> list[PairDifference]:
        """H(k+1) - H(k) for k = 0..K-2 at one scale (``first`` is k+1, ``second`` k)."""
        scale = self.comparison.settings["scales"][scale_index]
        return [pair for pair in self.comparison.pairs if pair.scale == scale]

    def to_dict(self) -> dict:
        """JSON: settings, checkpoints (step, step source, the estimate schema per scale) and
        changes (the compare pair schema, first = the later checkpoint, with both steps)."""
        compared = self.comparison
        checkpoints = [{**model.to_dict(), "step": step, "step_source": source}
                       for model, step, source in zip(compared.models, self.steps, self.step_sources)]
        changes = [{**pair.to_dict(compared.names), "first_step": self.steps[pair.first],
                    "second_step": self.steps[pair.second]} for pair in compared.pairs]  # first: the later one
        return envelope("track", {
            "settings": {**compared.settings, "multiple_comparisons": "holm over consecutive changes"},
            "checkpoints": checkpoints,
            "changes": changes,
            "warnings": list(compared.warnings),
            "elapsed_seconds": compared.elapsed_seconds,
            "partial": compared.partial,
            "stop_reason": compared.stop_reason,
            "diagnostics": dict(compared.diagnostics),
        })


def track_checkpoints(
    decoders: Sequence[Any],
    latents: Sequence[LatentSpec | int | Sequence[int]],
    steps: Sequence[int | None],
    names: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
    n_samples: int | None = None,
    *,
    options: EstimateOptions | None = None,
    step_sources: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
    **settings: Any,
) -> TrackResult:
    """Estimate the decoders (checkpoints, already in step order) on common latents and every
    consecutive change H(k+1) - H(k) with its paired standard error. Settings as for
    ``compare_models``."""
    if len(decoders) < 2:
        raise InputError(f"track needs at least two checkpoints, got {len(decoders)}")
    if len(steps) != len(decoders):
        raise InputError(f"got {len(decoders)} checkpoints but {len(steps)} steps")
    consecutive = [(index + 1, index) for index in range(len(decoders) - 1)]  # difference H(k+1) - H(k)
    comparison = compare_models(decoders, latents, names, scales, n_samples, options=options, pairs=consecutive,
                                progress=progress, log=log, **settings)
    sources = list(step_sources) if step_sources is not None else ["given"] * len(decoders)
    return TrackResult(comparison, list(steps), sources)
