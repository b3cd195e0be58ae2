"""``track``: the checkpoints of one training run on common latents, in step order, and every
change between consecutive checkpoints with its paired standard error.

Every checkpoint sees the same latents z_i, so the change H(k+1) - H(k) is
mean_i [h_{k+1}(z_i) - h_k(z_i)] over the samples finite in both, with the paired standard error
std_i(h_{k+1} - h_k) / sqrt(n), tested two-sided with Holm's correction over the K - 1 changes
(per scale). Each checkpoint's entropy equals ``estimate --seed`` of that file alone (for a
conditional checkpoint: H(X|Y), its classes as ``estimate`` gives them).

Streaming: the checkpoints are opened, estimated and let go one at a time, in step order
(``track_stream``), so memory does not grow with their number. What is kept between two
checkpoints is the previous one's per-sample terms h(z_i): an (n, S) float64 array, 8 n S bytes
(800 KB for n = 100,000 at one scale), as ``EntropyMetric`` keeps. A Ctrl-C or SIGTERM stops
after the current checkpoint's batch: the checkpoints done so far (the last one partial) and
their changes are the result. With ``checkpoint`` the state after each finished checkpoint
(their estimates, the changes so far, the last one's per-sample terms) is saved, and a rerun
resumes at the first checkpoint not finished.

A checkpoint's step (``checkpoint_step``) is read from its file name first: a number after
``global_step``, ``step``, ``iteration``, ``iter`` or ``it`` (``epoch=3-step=300`` gives 300),
else after ``epoch`` or ``ep``, else the last number in the name (``vae-le-3`` gives 3); then
from what the file records (its metadata or embedded spec): the first integer under a key
``global_step``, ``step`` or ``epoch``, searched breadth-first (the sample models record
``training.final_epoch.epoch``). Checkpoints are sorted by step; equal steps keep the order given.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import LatentSpec, distribution_label, make_latent_spec
from genentropy_cli.core.significance import rank_descending
from genentropy_cli.core.stats import RunningMoments
from genentropy_cli.defaults import COMPARE_SIGNIFICANCE_LEVEL
from genentropy_cli.envelope import envelope
from genentropy_cli.errors import InputError, first_line
from genentropy_cli.jobs.compare import ComparisonResult, ModelSummary, latent_sharing_notes
from genentropy_cli.jobs.conditional import as_label_spec
from genentropy_cli.jobs.estimate import run_estimate
from genentropy_cli.jobs.pairs import PairDifference, latent_seeds, pair_differences, same_latents
from genentropy_cli.run.checkpoint import check_same_settings, load_checkpoint, save_checkpoint
from genentropy_cli.run.files import check_output_targets
from genentropy_cli.run.hooks import LogCallback, ProgressCallback, RunHooks, warn_to_python
from genentropy_cli.run.interrupts import graceful_interrupts
from genentropy_cli.run.loop import shared_process_group
from genentropy_cli.run.options import EstimateOptions, options_from
from genentropy_cli.run.results import ScaleEstimate
from genentropy_cli.run.stopping import STOP_INTERRUPTED

__all__ = ["Checkpoint", "TrackResult", "checkpoint_step", "order_by_step", "track_checkpoints", "track_stream"]

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


@dataclass
class Checkpoint:
    """One checkpoint as ``track_stream`` opens it: its decoder, latent, label (None: not
    conditional) and what describes it in the result (its path, format, ...)."""

    decoder: Any
    latent: LatentSpec | int | Sequence[int]
    label: LabelSpec | int | None = None
    info: dict = field(default_factory=dict)


Opener = Callable[[int], Checkpoint]
"""open(k): the k-th checkpoint in step order (called once per checkpoint, in order)."""


def track_checkpoints(
    decoders: Sequence[Any],
    latents: Sequence[LatentSpec | int | Sequence[int]],
    steps: Sequence[int | None],
    names: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
    n_samples: int | None = None,
    *,
    options: EstimateOptions | None = None,
    labels: LabelSpec | int | Sequence[LabelSpec | int | None] | None = None,
    step_sources: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
    **settings: Any,
) -> TrackResult:
    """Estimate the decoders (checkpoints, already in step order) on common latents and every
    consecutive change H(k+1) - H(k) with its paired standard error; ``labels`` (one for all, or
    one per checkpoint) tracks conditional decoders by H(X|Y). Settings as for
    ``estimate_entropy``. ``track_stream`` does the same from checkpoints opened one at a time."""
    if len(latents) != len(decoders):
        raise InputError(f"got {len(decoders)} decoders but {len(latents)} latent specs")
    per_model = list(labels) if isinstance(labels, (list, tuple)) else [labels] * len(decoders)
    if len(per_model) != len(decoders):
        raise InputError(f"got {len(decoders)} decoders but {len(per_model)} label specs")
    given = {"scales": scales, "num_samples": n_samples}
    run_options = options_from(options, **{key: value for key, value in given.items() if value is not None},
                               **settings)
    return track_stream(lambda index: Checkpoint(decoders[index], latents[index], per_model[index]), len(decoders),
                        steps, names, options=run_options, step_sources=step_sources, progress=progress, log=log)


@dataclass
class _TrackState:
    """What is kept between checkpoints: the summaries and changes so far, the last checkpoint's
    per-sample terms (NaN where not finite), the latent specs and seeds, the time spent."""

    summaries: list[ModelSummary] = field(default_factory=list)
    differences: list[RunningMoments] = field(default_factory=list)
    terms: np.ndarray | None = None
    specs: list[LatentSpec] = field(default_factory=list)
    elapsed: float = 0.0
    resumed: int = 0
    partial: bool = False
    stop_reason: str = "num_samples"
    settings: dict = field(default_factory=dict)


def track_stream(
    open_checkpoint: Opener,
    count: int,
    steps: Sequence[int | None],
    names: Sequence[str] | None = None,
    *,
    options: EstimateOptions,
    step_sources: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
) -> TrackResult:
    """``track_checkpoints`` from ``open_checkpoint(k)`` for k = 0..count-1 (in step order), one
    checkpoint in memory at a time (see the module docstring)."""
    if count < 2:
        raise InputError(f"track needs at least two checkpoints, got {count}")
    if len(steps) != count:
        raise InputError(f"got {count} checkpoints but {len(steps)} steps")
    names = list(names) if names is not None else [f"model {index + 1}" for index in range(count)]
    if len(names) != count or len(set(names)) != len(names):
        raise InputError(f"give {count} distinct checkpoint names, got {', '.join(map(str, names))}")
    if options.num_samples < 2:
        raise InputError(f"track needs at least 2 samples for standard errors, got {options.num_samples}")
    if options.per_sample is not None:
        raise InputError("track runs its checkpoints one at a time and writes no per-sample file; run "
                         "estimate --per-sample on the checkpoint you want the rows of")
    check_output_targets({"--checkpoint": options.checkpoint})
    notify = log or warn_to_python
    identity = {"command": "track", "names": list(names), "steps": list(steps), **options.checkpoint_settings()}
    state = _resume(options.checkpoint, identity, len(options.scales), notify)
    started = time.perf_counter()
    with shared_process_group(options) as group, graceful_interrupts(options.handle_signals, notify) as interrupt:
        for index in range(len(state.summaries), count):
            checkpoint = open_checkpoint(index) if not interrupt.requested else None
            if checkpoint is None or interrupt.requested:  # stopped while it loaded: it is not estimated
                state.partial = True
                break
            _run_checkpoint(state, checkpoint, names[index], options,
                            RunHooks(progress=_overall(progress, index, count), log=log, interrupt=interrupt))
            del checkpoint  # gone before the next one opens
            if state.partial:
                break
            if group.is_main:
                _save(options.checkpoint, identity, state, time.perf_counter() - started, notify)
    state.elapsed += time.perf_counter() - started
    return _track_result(state, list(steps), names, step_sources, options)


def _overall(progress: ProgressCallback | None, index: int, count: int) -> ProgressCallback | None:
    """One checkpoint's progress as part of the whole track (samples of all checkpoints)."""
    if progress is None:
        return None
    return lambda done, total, running: progress(index * total + done, count * total, running)


def _run_checkpoint(state: _TrackState, checkpoint: Checkpoint, name: str, options: EstimateOptions,
                    hooks: RunHooks) -> None:
    """Estimate one checkpoint, keep its per-sample terms (the statistic tracked: h, or for a
    conditional decoder w = sum_y p(y) h_y, the last column group), and the change from the
    previous checkpoint over the samples finite in both."""
    spec = make_latent_spec(checkpoint.latent)
    label = None if checkpoint.label is None else as_label_spec(checkpoint.label)
    if state.summaries and ("label" in state.summaries[0].info) != (label is not None):
        first = state.summaries[0].name
        raise InputError(f"{name} is {'' if label is not None else 'not '}conditional and {first} is "
                         f"{'not ' if label is not None else ''}: track needs every checkpoint conditional (H(X|Y) is "
                         "tracked) or none")
    seed = latent_seeds([*state.specs, spec], options.seed)[-1]
    num_scales = len(options.scales)
    pieces: list[np.ndarray] = []

    def keep(first_index: int, rows: Any) -> None:
        pieces.append(np.asarray(rows.terms[:, -num_scales:], dtype=np.float64))

    result = run_estimate(checkpoint.decoder, spec, label, options.replace(seed=seed, checkpoint=None),
                          RunHooks(hooks.progress, hooks.log, on_rows=keep, interrupt=hooks.interrupt))
    terms = np.concatenate(pieces) if pieces else np.zeros((0, num_scales))
    info = dict(checkpoint.info)
    if label is not None:
        info |= {"label": {**info.get("label", {}), **label.to_dict()},
                 "classes": [item.to_dict() for item in result.classes]}
    state.summaries.append(ModelSummary(
        name, spec, result.output_dim, list(result.estimates), latent_seed=seed, num_nonfinite=result.num_nonfinite,
        info=info, precision_probe=result.precision_probe, diagnostics=dict(result.diagnostics)))
    if state.terms is not None:
        common = min(len(terms), len(state.terms))
        now, before = terms[:common], state.terms[:common]
        finite = np.isfinite(now).all(axis=1) & np.isfinite(before).all(axis=1)
        state.differences.append(RunningMoments.from_values(now[finite] - before[finite]))
    state.terms, state.partial, state.stop_reason = terms, result.partial, result.stop_reason
    state.specs.append(spec)
    if not state.settings:
        state.settings = {key: value for key, value in result.settings.items() if key != "seed"}


# --------------------------------------------------------------------------- resuming


def _summary_state(summary: ModelSummary) -> dict:
    return {"name": summary.name, "latent_shape": list(summary.latent.shape),
            "latent_distribution": distribution_label(summary.latent.distribution), "output_dim": summary.output_dim,
            "estimates": [item.to_dict() for item in summary.estimates], "latent_seed": summary.latent_seed,
            "num_nonfinite": summary.num_nonfinite, "info": summary.info, "precision_probe": summary.precision_probe,
            "diagnostics": summary.diagnostics}


def _summary_from_state(meta: dict) -> ModelSummary:
    estimates = [ScaleEstimate(float(item["scale"]), float(item["entropy"]), float(item["stderr"]), float(item["std"]),
                               (float(item["ci95"][0]), float(item["ci95"][1])), int(item["num_samples"]))
                 for item in meta["estimates"]]
    return ModelSummary(str(meta["name"]), make_latent_spec(tuple(meta["latent_shape"]), meta["latent_distribution"]),
                        int(meta["output_dim"]), estimates, latent_seed=int(meta["latent_seed"]),
                        num_nonfinite=int(meta["num_nonfinite"]), info=dict(meta["info"]),
                        precision_probe=meta["precision_probe"], diagnostics=dict(meta["diagnostics"]))


def _save(path: str | None, identity: dict, state: _TrackState, elapsed: float, notify: LogCallback) -> None:
    """The state after a finished checkpoint (a full disk costs the resume, not the run)."""
    if path is None:
        return
    arrays = {"terms": state.terms}
    for index, moments in enumerate(state.differences):
        arrays[f"change{index}_mean"], arrays[f"change{index}_m2"] = moments.mean, moments.m2
    meta = {"checkpoints": [_summary_state(item) for item in state.summaries],
            "change_counts": [int(item.count) for item in state.differences],
            "elapsed_seconds": state.elapsed + elapsed, "run_settings": state.settings}
    try:
        save_checkpoint(path, identity, meta, arrays)
    except OSError as error:
        notify(f"could not write the checkpoint {path} ({error.strerror or error}); the run goes on, but cannot be "
               "resumed from it")


def _resume(path: str | None, identity: dict, num_scales: int, notify: LogCallback) -> _TrackState:
    """The state a ``--checkpoint`` file holds (a fresh one where there is none)."""
    loaded = None if path is None else load_checkpoint(path)
    if loaded is None:
        return _TrackState()
    saved, meta, arrays = loaded
    check_same_settings(path, saved, identity)
    try:
        summaries = [_summary_from_state(item) for item in meta["checkpoints"]]
        counts = [int(item) for item in meta["change_counts"]]
        differences = [RunningMoments(count, np.asarray(arrays[f"change{index}_mean"], dtype=np.float64),
                                      np.asarray(arrays[f"change{index}_m2"], dtype=np.float64))
                       for index, count in enumerate(counts)]
        terms = np.asarray(arrays["terms"], dtype=np.float64)
        if not 1 <= len(summaries) <= len(identity["names"]) or len(differences) != len(summaries) - 1 \
                or terms.ndim != 2 or terms.shape[1] != num_scales:
            raise ValueError("its checkpoints, changes and terms do not fit together")
        state = _TrackState(summaries, differences, terms, [item.latent for item in summaries],
                            float(meta["elapsed_seconds"]), len(summaries), settings=dict(meta["run_settings"]))
    except (KeyError, ValueError, TypeError, IndexError, InputError) as error:
        raise InputError(f"checkpoint {path} holds a state no track can have left ({first_line(error)}); "
                         "delete it to start over, or choose another --checkpoint file") from None
    notify(f"resumed from the checkpoint {path}: {len(summaries)} checkpoint(s) done")
    return state


# --------------------------------------------------------------------------- the result


def _track_result(state: _TrackState, steps: list[int | None], names: Sequence[str],
                  step_sources: Sequence[str] | None, options: EstimateOptions) -> TrackResult:
    """Ranks, the changes with Holm's correction over them (per scale), the settings of a
    comparison; only the checkpoints estimated (all of them unless interrupted)."""
    summaries, scales = state.summaries, list(options.scales)
    done = len(summaries)
    for scale_index in range(len(scales)):
        for item, rank in zip(summaries, rank_descending([item.estimates[scale_index].entropy for item in summaries])):
            item.ranks.append(rank)
    pairs = [(index + 1, index) for index in range(done - 1)]
    shared = [same_latents(summaries[a].latent, summaries[b].latent) for a, b in pairs]
    differences = pair_differences(summaries, pairs, shared, state.differences, scales)
    warnings = latent_sharing_notes(names[:done], state.specs, [item.latent_seed for item in summaries], True)
    used = [item.estimates[0].num_samples for item in summaries]
    settings = {**(state.settings or {"scales": scales, "num_samples": options.num_samples}), "seed": options.seed,
                "num_used": min(used, default=0), "shared_latents": True,
                "significance_level": COMPARE_SIGNIFICANCE_LEVEL, "multiple_comparisons": "holm"}
    diagnostics = {"streamed": True, "checkpoints_estimated": done - state.resumed, "resumed_checkpoints": state.resumed,
                   "change_samples": [int(item.count) for item in state.differences]}
    comparison = ComparisonResult(summaries, differences, warnings, settings=settings, elapsed_seconds=state.elapsed,
                                  partial=state.partial, stop_reason=STOP_INTERRUPTED if state.partial else state.stop_reason,
                                  diagnostics=diagnostics)
    sources = list(step_sources) if step_sources is not None else ["given"] * len(steps)
    return TrackResult(comparison, steps[:done], sources[:done])
