"""genentropy: differential entropy of generative models' decoders (Struminsky et al.).

The public Python API; every job takes its run settings as ``options=EstimateOptions(...)`` or
as keyword arguments (docs/python-api.md).

Importing the package is instant: each public name is imported from its module on first use
(PEP 562), so ``genentropy --help`` and ``__version__`` never load torch. A Ctrl-C while a name's
module loads torch ends the program with "interrupted" instead of a traceback.
"""

from genentropy_cli.version import __version__

_PUBLIC: dict[str, str] = {
    "Checkpoint": "jobs.track",
    "ComparisonResult": "jobs.compare",
    "ConditionalComparison": "jobs.conditional_compare",
    "ConditionalExtremes": "jobs.samples",
    "ConditionalResult": "jobs.conditional",
    "EntropyCallback": "jobs.training",  # imports Lightning, which takes seconds
    "EntropyChange": "jobs.metric",
    "EntropyMetric": "jobs.metric",
    "EntropyResult": "run.results",
    "EntropyTorchMetric": "jobs.torchmetric",  # needs the torchmetrics extra
    "EstimateOptions": "run.options",
    "ExtremeSamples": "jobs.samples",
    "LabelSpec": "core.labels",
    "LatentSpec": "core.latents",
    "ModelOptions": "models.resolve",
    "MetricResult": "jobs.metric",
    "Reference": "jobs.sweep",
    "ScaleEstimate": "run.results",
    "StandardNormal": "core.latents",
    "SweepResult": "jobs.sweep",
    "TrackResult": "jobs.track",
    "TruncatedNormal": "core.latents",
    "Uniform": "core.latents",
    "compare_files": "jobs.files",
    "compare_models": "jobs.compare",
    "estimate_entropy": "jobs.estimate",
    "estimate_file": "jobs.files",
    "find_extreme_samples": "jobs.samples",
    "inspect_file": "jobs.files",
    "make_latent_spec": "core.latents",
    "parse_distribution": "core.latents",
    "samples_file": "jobs.files",
    "summary_writer": "jobs.metric",
    "sweep_file": "jobs.files",
    "sweep_scale": "jobs.sweep",
    "track_checkpoints": "jobs.track",
    "track_files": "jobs.files",
    "track_stream": "jobs.track",
    "write_scalars": "jobs.metric",
}
"""Every public name but ``__version__`` -> the module (under the package) that defines it."""

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> object:
    """A public name, imported from its module on first access and then kept in the package."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    from genentropy_cli.errors import quiet_interrupt_while_loading

    loaded = quiet_interrupt_while_loading()  # Ctrl-C while torch loads: "interrupted", not a traceback
    value = getattr(import_module(f"{__name__}.{module}"), name)
    loaded()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (``__all__``), not the module's own machinery."""
    return sorted(__all__)
