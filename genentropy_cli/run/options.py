"""Every setting of a run in one frozen object, validated in one place.

``EstimateOptions`` is what the CLI builds from its flags and what the Python API builds from
its keyword arguments (``options_from``), so both share one source of defaults
(``genentropy_cli.defaults``). The JSON ``settings`` block and the settings a checkpoint must
share with the run that resumes it are derived from its fields (``settings`` and
``checkpoint_settings``), never listed by hand.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from genentropy_cli.core.latents import validate_seed
from genentropy_cli.defaults import RUN_OPTION_DEFAULTS, SUPPORTED_DTYPES
from genentropy_cli.errors import InputError
from genentropy_cli.run.per_sample import per_sample_format
from genentropy_cli.run.planning import parse_memory_size

DEFINES_CHECKPOINT = "defines_checkpoint"
"""Field metadata: a checkpoint made under one value cannot be resumed under another."""
IN_SETTINGS = "in_settings"
"""Field metadata: the field is reported in the JSON ``settings`` block (default True)."""


def _setting(name: str, *, defines_checkpoint: bool = False, in_settings: bool = True) -> Any:
    """A field whose default is ``RUN_OPTION_DEFAULTS[name]`` (the CLI's flags read the same table)."""
    return field(default=RUN_OPTION_DEFAULTS[name],
                 metadata={DEFINES_CHECKPOINT: defines_checkpoint, IN_SETTINGS: in_settings})


MIN_SCALE, MAX_SCALE = 1e-150, 1e150
"""Scales whose square s^2 (added to J^T J's eigenvalues, in float64) is a normal float64."""

MAX_NUM_SAMPLES = 2**53
"""Most samples a run may ask for: sample indices and counts stay exact in float64 and JSON."""

MAX_BATCH_SIZE = 2**24
"""Most samples per batch: far beyond what any device holds, so a larger value is a typo."""


def validate_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """The scales s as floats; each must be positive with s^2 a normal float64 (1e-150 to
    1e150), and there must be one."""
    values = tuple(_number(s, "a scale") for s in scales)
    if not values:
        raise InputError("give at least one scale, e.g. --scale 1e-4")
    for value in values:
        if not (value > 0 and math.isfinite(value)):
            raise InputError(f"scale must be a positive number, got {value:g}")
        if not MIN_SCALE <= value <= MAX_SCALE:
            raise InputError(f"scale {value:g} is outside {MIN_SCALE:g} to {MAX_SCALE:g}, where s^2 is a normal "
                             "float64 number; the paper's scales are 1e-1 to 1e-4")
    return values


def dtype_name(dtype: str | torch.dtype) -> str:
    """'float32' for torch.float32 or ' Float32 '; unsupported names are an InputError."""
    text = str(dtype).removeprefix("torch.").strip().lower()
    if text not in SUPPORTED_DTYPES:
        raise InputError(f"unsupported dtype {dtype!r}; choose one of {', '.join(SUPPORTED_DTYPES)}")
    return text


@dataclass(frozen=True)
class EstimateOptions:
    """The settings of one run of the batch loop (estimate, sweep-scale, compare, samples).

    Callbacks (progress, log, per-batch hooks) are not settings: the jobs take them apart."""

    scales: tuple[float, ...] = _setting("scales", defines_checkpoint=True)
    num_samples: int = _setting("num_samples", defines_checkpoint=True)
    seed: int = _setting("seed", defines_checkpoint=True)
    dtype: str = _setting("dtype", defines_checkpoint=True)
    """The decoder's compute dtype; Gram matrices, eigenvalues and statistics are float64."""
    device: str = _setting("device")
    batch_size: int | None = _setting("batch_size")
    """Samples per batch; None plans it from the device's memory (``planning.plan_batch``)."""
    tangent_chunk: int | None = _setting("tangent_chunk")
    """Jacobian columns per decoder call; None plans it."""
    max_memory: int | None = _setting("max_memory")
    """Bytes the process (CPU) or PyTorch (GPU) may hold; '2GB' and '1.5GiB' are read too."""
    skip_nonfinite: bool = _setting("skip_nonfinite", defines_checkpoint=True)
    target_stderr: float | None = _setting("target_stderr", defines_checkpoint=True)
    """Stop at the first sample count where the standard error is at most this at every scale."""
    min_samples: int = _setting("min_samples", defines_checkpoint=True)
    """With ``target_stderr``: never stop before this many finite samples."""
    probe_samples: int = _setting("probe_samples", defines_checkpoint=True)
    """The first samples also computed in float64 to check ``dtype`` (0: no probe)."""
    checkpoint: str | None = _setting("checkpoint")
    checkpoint_every: float = _setting("checkpoint_every")
    per_sample: str | None = _setting("per_sample", defines_checkpoint=True)
    save_latents: bool = _setting("save_latents", defines_checkpoint=True)
    distributed: bool | None = _setting("distributed", in_settings=False)
    """None joins torchrun's process group when launched by it; False never does."""
    handle_signals: bool = _setting("handle_signals", in_settings=False)
    """SIGINT/SIGTERM finish the batch and return a partial result (the CLI sets it)."""

    def __post_init__(self) -> None:
        """Normalise and validate every field: an invalid setting never reaches a run."""
        normalised = {
            "scales": validate_scales(self.scales if not isinstance(self.scales, (int, float)) else [self.scales]),
            "num_samples": _positive_int(self.num_samples, "the number of samples", MAX_NUM_SAMPLES),
            "seed": validate_seed(self.seed),
            "dtype": dtype_name(self.dtype),
            "device": str(self.device),
            "batch_size": None if self.batch_size is None else _positive_int(self.batch_size, "the batch size",
                                                                              MAX_BATCH_SIZE),
            "tangent_chunk": None if self.tangent_chunk is None else _positive_int(self.tangent_chunk, "the tangent chunk",
                                                                                   MAX_BATCH_SIZE),
            "max_memory": None if self.max_memory is None else parse_memory_size(self.max_memory),
            "skip_nonfinite": bool(self.skip_nonfinite),
            "min_samples": _integer(self.min_samples, "--min-samples"),
            "probe_samples": _integer(self.probe_samples, "--probe-samples"),
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "checkpoint_every": _number(self.checkpoint_every, "--checkpoint-every"),
            "per_sample": None if self.per_sample is None else str(self.per_sample),
            "save_latents": bool(self.save_latents),
            "handle_signals": bool(self.handle_signals),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)
        target = self.target_stderr
        if target is not None and not (_number(target, "--target-stderr") > 0 and math.isfinite(float(target))):
            raise InputError(f"--target-stderr must be a positive number, got {float(target):g}")
        object.__setattr__(self, "target_stderr", None if target is None else float(target))
        if self.min_samples < 2:
            raise InputError(f"--min-samples must be at least 2, got {self.min_samples}")
        if not (self.checkpoint_every >= 0 and math.isfinite(self.checkpoint_every)):
            raise InputError(f"--checkpoint-every must be a number of seconds >= 0, got {self.checkpoint_every:g}")
        if self.probe_samples < 0:
            raise InputError(f"--probe-samples must be 0 (off) or positive, got {self.probe_samples}")
        if self.save_latents and self.per_sample is None:
            raise InputError("--save-latents needs --per-sample FILE to save them in")
        if self.per_sample is not None:
            per_sample_format(self.per_sample)

    def replace(self, **changes: Any) -> "EstimateOptions":
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict:
        """The JSON ``settings`` block's part that the options give (the run adds what it resolved:
        the device, batch size and tangent chunk it used, the process count)."""
        document = {item.name: _plain(getattr(self, item.name)) for item in dataclasses.fields(self)
                    if item.metadata.get(IN_SETTINGS, True)}
        if self.target_stderr is None:
            document["min_samples"] = None  # only meaningful with a target
        return document

    def checkpoint_settings(self) -> dict:
        """The settings a checkpoint must share with the run that resumes it."""
        document = {item.name: _plain(getattr(self, item.name)) for item in dataclasses.fields(self)
                    if item.metadata.get(DEFINES_CHECKPOINT)}
        if self.target_stderr is None:
            document["min_samples"] = None
        return document


OPTION_NAMES: tuple[str, ...] = tuple(item.name for item in dataclasses.fields(EstimateOptions))
API_ALIASES: dict[str, str] = {"n_samples": "num_samples"}
"""Keyword arguments of the Python API spelled otherwise than the option (``n_samples``)."""


def options_from(options: EstimateOptions | None = None, **settings: Any) -> EstimateOptions:
    """``options`` (default: all defaults) with the keyword ``settings`` given (not None where
    None means "not given") applied over it. Unknown names are a TypeError, as for any call."""
    base = options if options is not None else EstimateOptions()
    changes: dict[str, Any] = {}
    for name, value in settings.items():
        key = API_ALIASES.get(name, name)
        if key not in OPTION_NAMES:
            raise TypeError(f"unknown run setting {name!r}; the settings are: {', '.join(OPTION_NAMES)}")
        changes[key] = value
    return base.replace(**changes) if changes else base


def _integer(value: Any, what: str) -> int:
    """An int (a bool, a fraction or text is refused: ``True`` is not 1 sample, 3.7 not 3)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _positive_int(value: Any, what: str, most: int) -> int:
    number = _integer(value, what)
    if number <= 0:
        raise InputError(f"{what} must be positive, got {value}")
    if number > most:
        raise InputError(f"{what} must be at most {most}, got {value}")
    return number


def _number(value: Any, what: str) -> float:
    """A float from an int or float (a bool or text is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{what} must be a number, got {value!r}")
    return float(value)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def option_defaults() -> Mapping[str, Any]:
    """Every option's default (the CLI's flags take theirs from here)."""
    return {item.name: item.default for item in dataclasses.fields(EstimateOptions)}
