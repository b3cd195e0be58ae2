"""genentropy: differential entropy of generative models' decoders (Struminsky et al.)."""

from genentropy_cli.version import __version__

from genentropy_cli.run.results import EntropyResult, ScaleEstimate
from genentropy_cli.jobs.estimate import estimate_entropy
from genentropy_cli.core.latents import (
    LatentSpec,
    StandardNormal,
    TruncatedNormal,
    Uniform,
    make_latent_spec,
    parse_distribution,
)
from genentropy_cli.jobs.sweep import Reference, SweepResult, sweep_scale

__all__ = [
    "__version__",
    "EntropyResult",
    "ScaleEstimate",
    "estimate_entropy",
    "LatentSpec",
    "StandardNormal",
    "TruncatedNormal",
    "Uniform",
    "make_latent_spec",
    "parse_distribution",
    "Reference",
    "SweepResult",
    "sweep_scale",
]
