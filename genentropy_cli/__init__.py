"""genentropy: differential entropy of generative models' decoders (Struminsky et al.).

The public Python API; every job takes its run settings as ``options=EstimateOptions(...)`` or
as keyword arguments (docs/python-api.md)."""

from genentropy_cli.errors import quiet_interrupt_while_loading

_loaded = quiet_interrupt_while_loading()  # Ctrl-C while torch loads: "interrupted", not a traceback

from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import (
    LatentSpec,
    StandardNormal,
    TruncatedNormal,
    Uniform,
    make_latent_spec,
    parse_distribution,
)
from genentropy_cli.jobs.compare import ComparisonResult, compare_models
from genentropy_cli.jobs.conditional import ConditionalResult
from genentropy_cli.jobs.conditional_compare import ConditionalComparison
from genentropy_cli.jobs.estimate import estimate_entropy
from genentropy_cli.jobs.metric import EntropyChange, EntropyMetric, MetricResult, summary_writer, write_scalars
from genentropy_cli.jobs.samples import ConditionalExtremes, ExtremeSamples, find_extreme_samples
from genentropy_cli.jobs.sweep import Reference, SweepResult, sweep_scale
from genentropy_cli.jobs.track import TrackResult, track_checkpoints
from genentropy_cli.run.options import EstimateOptions
from genentropy_cli.run.results import EntropyResult, ScaleEstimate
from genentropy_cli.version import __version__

_loaded()

__all__ = [
    "__version__",
    "ComparisonResult",
    "ConditionalComparison",
    "ConditionalExtremes",
    "ConditionalResult",
    "EntropyCallback",
    "EntropyChange",
    "EntropyMetric",
    "EntropyResult",
    "EstimateOptions",
    "ExtremeSamples",
    "LabelSpec",
    "LatentSpec",
    "MetricResult",
    "Reference",
    "ScaleEstimate",
    "StandardNormal",
    "SweepResult",
    "TrackResult",
    "TruncatedNormal",
    "Uniform",
    "compare_models",
    "estimate_entropy",
    "find_extreme_samples",
    "make_latent_spec",
    "parse_distribution",
    "summary_writer",
    "sweep_scale",
    "track_checkpoints",
    "write_scalars",
]


def __getattr__(name: str):
    """``EntropyCallback`` on demand: its module imports Lightning, which takes seconds."""
    if name == "EntropyCallback":
        from genentropy_cli.jobs.training import EntropyCallback

        return EntropyCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
