"""The commands as functions of a path: ``estimate_file``, ``sweep_file``, ``compare_files``,
``track_files``, ``samples_file`` and ``inspect_file``.

Each takes the path(s) the command takes and, as keyword arguments, exactly the command's
options under their Python names: the model options (``ModelOptions``' fields: ``spec``,
``latent_dim``, ``latent_distribution``, ``output_range``, ``num_classes``, ...), the run
options (``EstimateOptions``' fields: ``scales``, ``num_samples`` or ``n_samples``, ``seed``,
``dtype``, ``device``, ``target_stderr``, ...; or ``options=EstimateOptions(...)``) and the
command's own (``reference``, ``lowest``, ``keep_order``, ...). An unknown keyword is a
TypeError that lists the valid ones. Each returns the job's result with the model's record
bound, so ``result.to_dict()`` is the document ``genentropy COMMAND --json`` prints (less the
``configuration`` block of the command line's flags).

What a flag-less run would warn about on stderr (a flag that contradicts the file, a trusted
pickle) goes to ``log`` (default ``warnings.warn``), as the jobs' run notes do.
"""

from __future__ import annotations

import dataclasses
import glob
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from genentropy_cli.defaults import (
    DEFAULT_AGREEMENT_SE,
    DEFAULT_SCALES,
    DEFAULT_SWEEP_SCALES,
    INSPECT_PROBE_LATENTS,
    RUN_OPTION_DEFAULTS,
    SAMPLES_DEFAULT_K,
    SAMPLES_DEFAULT_NUM_SAMPLES,
)
from genentropy_cli.errors import InputError
from genentropy_cli.models.resolve import ModelOptions, ResolvedModel, resolve_model
from genentropy_cli.run.files import same_file
from genentropy_cli.run.hooks import LogCallback, ProgressCallback
from genentropy_cli.run.options import API_ALIASES, OPTION_NAMES, EstimateOptions, options_from

__all__ = ["MODEL_OPTION_NAMES", "checkpoint_names", "compare_files", "estimate_file", "expand_checkpoints",
           "inspect_file", "model_names", "open_file", "samples_file", "sweep_file", "track_files"]

MODEL_OPTION_NAMES: tuple[str, ...] = tuple(item.name for item in dataclasses.fields(ModelOptions)
                                            if item.name != "path")
"""The model options every file function takes (the CLI's model options, ``--config`` aside)."""
RUN_OPTION_NAMES: tuple[str, ...] = (*OPTION_NAMES, *API_ALIASES)
"""The run options (``EstimateOptions``' fields and ``n_samples``)."""
INSPECT_RUN_OPTIONS: tuple[str, ...] = ("device", "dtype", "seed", "max_memory")
"""The run options ``inspect`` has (it probes a few latents; it runs no batch loop)."""
GLOB_CHARACTERS = "*?["


def _split(function: str, given: Mapping[str, Any], run_names: Sequence[str],
           own: Sequence[str] = ()) -> tuple[dict, dict, dict]:
    """``given`` as (model options, run options, the function's own); any other name is a TypeError."""
    parts: tuple[dict, dict, dict] = ({}, {}, {})
    for name, value in given.items():
        if name in MODEL_OPTION_NAMES:
            parts[0][name] = value
        elif name in run_names:
            parts[1][name] = value
        elif name in own:
            parts[2][name] = value
        else:
            valid = sorted({*MODEL_OPTION_NAMES, *run_names, *own})
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}; "
                            f"the valid ones are: {', '.join(valid)}")
    return parts


def _run_options(function: str, settings: dict, default_scales: Sequence[float],
                 default_samples: int | None = None) -> EstimateOptions:
    """The run's options: ``options=`` (default: the command's defaults) with the keywords over it."""
    base = settings.pop("options", None)
    if base is not None and not isinstance(base, EstimateOptions):
        raise TypeError(f"{function}(): options must be an EstimateOptions, got {type(base).__name__}")
    if base is None:
        base = EstimateOptions(scales=tuple(default_scales), **({"num_samples": default_samples}
                                                                 if default_samples is not None else {}))
    return options_from(base, **settings)


def open_file(path: str | Path, log: LogCallback | None = None, **model_options: Any) -> ResolvedModel:
    """Load and resolve the model at ``path`` with the model options; its loading warnings go to
    ``log`` (default ``warnings.warn``)."""
    resolved = resolve_model(ModelOptions(path, **model_options))
    for message in resolved.loaded.warnings:
        _say(log, message)
    return resolved


def _say(log: LogCallback | None, message: str) -> None:
    if log is not None:
        log(message)
    else:
        warnings.warn(message, stacklevel=3)


def estimate_file(path: str | Path, *, progress: ProgressCallback | None = None, log: LogCallback | None = None,
                  **options: Any) -> Any:
    """``genentropy estimate PATH``: an ``EntropyResult`` (a ``ConditionalResult`` for a
    conditional decoder) whose ``to_dict()`` is the command's JSON document."""
    from genentropy_cli.jobs.estimate import estimate_entropy

    model, settings, _ = _split("estimate_file", options, (*RUN_OPTION_NAMES, "options"))
    run = _run_options("estimate_file", settings, DEFAULT_SCALES)
    resolved = open_file(path, log, **model)
    result = estimate_entropy(resolved.decoder, resolved.latent, options=run, labels=resolved.label,
                              progress=progress, log=log)
    result.model_record = resolved.describe()
    return result


def sweep_file(path: str | Path, *, progress: ProgressCallback | None = None, log: LogCallback | None = None,
               **options: Any) -> Any:
    """``genentropy sweep-scale PATH``: a ``SweepResult`` (default scales: Table 1's); ``reference``
    and ``tolerance_se`` as the command's ``--reference`` (``"model"``: what the file records)
    and ``--tolerance-se``."""
    from genentropy_cli.jobs.sweep import parse_reference, sweep_scale

    model, settings, own = _split("sweep_file", options, (*RUN_OPTION_NAMES, "options"),
                                  ("reference", "tolerance_se"))
    run = _run_options("sweep_file", settings, DEFAULT_SWEEP_SCALES)
    resolved = open_file(path, log, **model)
    reference = own.get("reference")
    known = parse_reference(reference, resolved.metadata) if isinstance(reference, str) else reference
    sweep = sweep_scale(resolved.decoder, resolved.latent, run.scales, reference=known,
                        tolerance_se=own.get("tolerance_se", DEFAULT_AGREEMENT_SE), options=run,
                        labels=resolved.label, progress=progress, log=log)
    sweep.result.model_record = resolved.describe()
    return sweep


def model_names(paths: Sequence[str | Path]) -> list[str]:
    """File stems (``vae`` for sample_models/vae.safetensors); where stems repeat, file names
    (``mlp.pt``, ``mlp.pt2``); where those repeat too, the full paths."""
    for names in ([Path(path).stem for path in paths], [Path(path).name for path in paths]):
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]


def compare_files(paths: Sequence[str | Path], *, independent_latents: bool = False,
                  progress: ProgressCallback | None = None, log: LogCallback | None = None, **options: Any) -> Any:
    """``genentropy compare PATH PATH ...``: a ``ComparisonResult`` (``ConditionalComparison``
    for conditional decoders); the model options apply to every file."""
    from genentropy_cli.jobs.compare import compare_models

    if isinstance(paths, (str, Path)) or len(paths) < 2:
        raise InputError("compare needs at least two model files")
    model, settings, _ = _split("compare_files", options, (*RUN_OPTION_NAMES, "options"))
    run = _run_options("compare_files", settings, DEFAULT_SCALES)
    loaded = [open_file(path, log, **model) for path in paths]
    labels = [item.label for item in loaded]
    result = compare_models([item.decoder for item in loaded], [item.latent for item in loaded],
                            names=model_names(paths), options=run, shared_latents=not independent_latents,
                            labels=labels if any(label is not None for label in labels) else None,
                            progress=progress, log=log)
    for summary, item in zip(result.models, loaded):
        summary.info.update(item.describe())
    return result


def expand_checkpoints(patterns: Sequence[str | Path]) -> list[str]:
    """Every path, each glob pattern replaced by its matches (sorted); a pattern matching nothing
    is an error, and so is a file named twice."""
    paths: list[str] = []
    for pattern in map(str, patterns):
        if any(character in pattern for character in GLOB_CHARACTERS) and not Path(pattern).exists():
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise InputError(f"no checkpoint matches {pattern!r}")
            paths.extend(matches)
        else:
            paths.append(pattern)
    repeated = sorted({path for path in paths if paths.count(path) > 1})
    if repeated:
        raise InputError(f"{repeated[0]} is given more than once; name each checkpoint once")
    for index, path in enumerate(paths):  # one file under two names (a link, ./a and a)
        twin = next((other for other in paths[:index] if Path(other).exists() and same_file(path, other)), None)
        if twin is not None:
            raise InputError(f"{path} and {twin} are the same file; name each checkpoint once")
    return paths


def checkpoint_names(paths: Sequence[str]) -> list[str]:
    """File names without the folder (with it where two names repeat)."""
    names = [Path(path).name for path in paths]
    return names if len(set(names)) == len(names) else list(paths)


def track_files(checkpoints: Sequence[str | Path] | str, *, keep_order: bool = False,
                progress: ProgressCallback | None = None, log: LogCallback | None = None, **options: Any) -> Any:
    """``genentropy track CHECKPOINT ...``: a ``TrackResult``. ``checkpoints`` are files or glob
    patterns, ordered by the step in their names or metadata unless ``keep_order``."""
    from genentropy_cli.jobs.track import checkpoint_step, order_by_step, track_checkpoints

    model, settings, _ = _split("track_files", options, (*RUN_OPTION_NAMES, "options"))
    run = _run_options("track_files", settings, DEFAULT_SCALES)
    paths = expand_checkpoints([checkpoints] if isinstance(checkpoints, (str, Path)) else checkpoints)
    if len(paths) < 2:
        raise InputError(f"track needs at least two checkpoints, got {len(paths)}")
    loaded = [open_file(path, log, **model) for path in paths]
    found = [checkpoint_step(item.path, item.metadata, item.loaded.spec) for item in loaded]
    order = order_by_step(paths, found, keep_order)
    loaded, found = [loaded[index] for index in order], [found[index] for index in order]
    steps = [item[0] if item else position + 1 for position, item in enumerate(found)]
    step_sources = [item[1] if item else "order given" for item in found]
    result = track_checkpoints([item.decoder for item in loaded], [item.latent for item in loaded], steps,
                               names=checkpoint_names([item.path for item in loaded]), options=run,
                               step_sources=step_sources, progress=progress, log=log)
    for summary, item in zip(result.comparison.models, loaded):
        summary.info.update(item.describe())
    return result


def samples_file(path: str | Path, *, lowest: int = SAMPLES_DEFAULT_K, highest: int = SAMPLES_DEFAULT_K,
                 scale: float = DEFAULT_SCALES[0], progress: ProgressCallback | None = None,
                 log: LogCallback | None = None, **options: Any) -> Any:
    """``genentropy samples PATH --json``: an ``ExtremeSamples`` (``ConditionalExtremes``) of
    ``num_samples`` latents (default 5,000) at one ``scale``. The image grid is the command
    line's (``genentropy_cli.cli.grids``)."""
    from genentropy_cli.jobs.samples import find_extreme_samples

    run_names = tuple(name for name in (*RUN_OPTION_NAMES, "options") if name != "scales")
    model, settings, _ = _split("samples_file", options, run_names)
    settings["scales"] = (scale,)
    run = _run_options("samples_file", settings, (scale,), SAMPLES_DEFAULT_NUM_SAMPLES)
    resolved = open_file(path, log, **model)
    result = find_extreme_samples(resolved.decoder, resolved.latent, lowest, highest, options=run,
                                  labels=resolved.label, progress=progress, log=log)
    result.model_record = resolved.describe()
    return result


def inspect_file(path: str | Path, *, probe_latents: int = INSPECT_PROBE_LATENTS, scale: float = DEFAULT_SCALES[0],
                 log: LogCallback | None = None, **options: Any) -> dict:
    """``genentropy inspect PATH --json``: the report as a dict (a checkpoint that no model can be
    built from yet: what it holds, and why, under ``checkpoint`` and ``load_error``)."""
    from genentropy_cli.jobs.inspect import checkpoint_report, inspect_model
    from genentropy_cli.models.contents import checkpoint_contents
    from genentropy_cli.run.options import validate_scales

    model, machine, _ = _split("inspect_file", options, INSPECT_RUN_OPTIONS)
    contents = checkpoint_contents(ModelOptions(path, **model))
    try:
        resolved = open_file(path, log, **model)
    except InputError as error:
        if not contents or not contents["candidates"]:
            raise
        _say(log, f"no model built yet: {error}")
        return checkpoint_report(contents, error)
    machine = {name: machine.get(name, RUN_OPTION_DEFAULTS[name]) for name in INSPECT_RUN_OPTIONS}
    return inspect_model(resolved, probe_latents=probe_latents, scale=validate_scales([scale])[0],
                         checkpoint=contents, **machine)


FILE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "estimate": estimate_file, "sweep-scale": sweep_file, "compare": compare_files, "track": track_files,
    "samples": samples_file, "inspect": inspect_file,
}
"""Each command -> its function of a path."""
